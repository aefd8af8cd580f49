"""The Dagster code location: `dagster dev -w workspace.yaml` (or `make up`) loads it."""
import dagster as dg

from assets.candidate_model import candidate_model
from assets.corrected_tasks import corrected_tasks
from assets.deployed_model import deployed_model, laundry_rollback
from assets.face import face_nightly_job, face_samples_daily
from assets.gates import GATES
from assets.history import replicated_history
from assets.trained_checkpoint import trained_checkpoint
from assets.training_dataset import training_dataset
from resources.feast import FeastResource
from resources.photos import PhotoStoreResource
from resources.pipeline import PipelineStore
from resources.registry import RegistryResource
from resources.triton import TritonResource
from sensors.corrections import build_laundry_corrections_sensor
from sensors.face_nightly import face_nightly_schedule

LAUNDRY = [corrected_tasks, training_dataset, trained_checkpoint, candidate_model]

laundry_training_job = dg.define_asset_job(
    "laundry_training",
    selection=dg.AssetSelection.assets(*LAUNDRY),
    description="UC-24: corrections -> dataset -> checkpoint -> gated candidate model (no deploy).",
)
laundry_retrain_job = dg.define_asset_job(
    "laundry_retrain",
    selection=dg.AssetSelection.assets(*LAUNDRY, deployed_model),
    description="The whole loop: retrain, gate, and hot-swap the new version into Triton.",
)

RESOURCES = {
    "feast": FeastResource(), "pipeline": PipelineStore(), "registry": RegistryResource(),
    "photos": PhotoStoreResource(), "triton": TritonResource(),
}

defs = dg.Definitions(
    assets=[replicated_history, *LAUNDRY, deployed_model, face_samples_daily],
    asset_checks=GATES,
    jobs=[laundry_training_job, laundry_retrain_job, laundry_rollback, face_nightly_job],
    schedules=[face_nightly_schedule],
    sensors=[build_laundry_corrections_sensor(laundry_retrain_job)],
    resources=RESOURCES,
)
