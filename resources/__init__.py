"""Dagster resources: the only place the Dagster code talks to Feast, the registry database, the
photo store, Triton and the pipeline's files, plus the gate and retraining policies. Each is a
ConfigurableResource with fields; ``build_resources(settings)`` makes the set once from a Settings."""
from __future__ import annotations

from gymops.settings import Settings
from resources.face import FaceResource
from resources.feast import FeastResource
from resources.photos import PhotoStoreResource
from resources.pipeline import PipelineStore
from resources.policy import GatesResource, RetrainResource
from resources.registry import RegistryResource
from resources.triton import TritonResource


def build_resources(settings: Settings) -> dict:
    """Every resource the assets, checks and sensors ask for, built from these settings."""
    return {
        "feast": FeastResource.from_settings(settings),
        "registry": RegistryResource.from_settings(settings),
        "photos": PhotoStoreResource.from_settings(settings),
        "triton": TritonResource.from_settings(settings),
        "pipeline": PipelineStore(root=str(settings.pipeline_root)),
        "gates": GatesResource.from_settings(settings.gates),
        "retrain": RetrainResource.from_settings(settings.retrain),
        "face": FaceResource.from_settings(settings),
    }


__all__ = ["build_resources", "FaceResource", "FeastResource", "PhotoStoreResource", "PipelineStore", "GatesResource",
           "RetrainResource", "RegistryResource", "TritonResource"]
