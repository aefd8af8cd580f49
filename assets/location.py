"""The code location as a function of the settings: ``build_definitions(settings)``.

Why a factory: the partitionings' first days (settings.partitions), the gate thresholds
(settings.gates), the retraining rule (settings.retrain) and every resource's connection details
are settings, and Dagster fixes a partitions definition when an asset is defined. Building the
partitioned assets, the jobs, the sensor, the schedule and the resources inside one function of a
``Settings`` means nothing reads the environment at import, a test or the demo gets a location of
its own from explicit values, and a process that runs a step rebuilds the same location from the
settings its reconstructable job carries (``job_for``). ``definitions.py`` calls it once with the
process's settings for `dagster dev`.
"""
from __future__ import annotations

from typing import Mapping

import dagster as dg

from assets.candidate_model import candidate_model
from assets.corrected_tasks import build_corrected_tasks
from assets.delivery import live_delivery, live_delivery_sensor
from assets.deployed_model import deployed_model
from assets.face import build_face_samples_daily
from assets.face_release import FACE_CHECKS, face_candidate, face_deployed
from assets.face_training import face_checkpoint, face_dataset
from assets.gates import GATES
from assets.history import replicated_history
from assets.jobs import build_jobs
from assets.partitions import confirmation_days, face_days
from assets.trained_checkpoint import trained_checkpoint
from assets.training_dataset import training_dataset
from gymops.settings import Settings
from resources import build_resources
from sensors.corrections import build_laundry_corrections_sensor
from sensors.face_nightly import build_face_nightly_schedule


def build_definitions(settings: Settings) -> dg.Definitions:
    days = confirmation_days(settings.partitions.start)
    gym_days = face_days(settings.partitions.face_start)
    jobs = build_jobs()
    return dg.Definitions(
        assets=[replicated_history, build_corrected_tasks(days), training_dataset, trained_checkpoint,
                candidate_model, deployed_model, build_face_samples_daily(gym_days), face_dataset, face_checkpoint,
                face_candidate, face_deployed, live_delivery],
        asset_checks=GATES + FACE_CHECKS,
        jobs=list(jobs.values()),
        schedules=[build_face_nightly_schedule(jobs["face_nightly"])],
        sensors=[build_laundry_corrections_sensor(jobs["laundry_retrain"], days), live_delivery_sensor],
        resources=build_resources(settings),
    )


def job_for(name: str, settings: Mapping[str, str]) -> dg.JobDefinition:
    """The reconstructor of ``assets.jobs.reconstructable_job``: job ``name`` of the location built
    from ``settings`` (``Settings.to_dict()`` form)."""
    return build_definitions(Settings.from_dict(settings)).resolve_job_def(name)
