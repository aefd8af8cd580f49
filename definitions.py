"""The Dagster code location: `dagster dev -w workspace.yaml` (or `make up`) loads it."""
import dagster as dg

from assets.corrected_tasks import corrected_tasks
from assets.face import face_nightly_job, face_samples_daily
from assets.history import replicated_history
from resources.feast import FeastResource
from resources.pipeline import PipelineStore
from resources.registry import RegistryResource
from sensors.corrections import build_laundry_corrections_sensor
from sensors.face_nightly import face_nightly_schedule

laundry_training_job = dg.define_asset_job(
    "laundry_training",
    selection=dg.AssetSelection.assets(corrected_tasks).downstream(),
    description="UC-24: corrections -> dataset -> checkpoint -> gated candidate model.",
)

defs = dg.Definitions(
    assets=[replicated_history, corrected_tasks, face_samples_daily],
    jobs=[laundry_training_job, face_nightly_job],
    schedules=[face_nightly_schedule],
    sensors=[build_laundry_corrections_sensor(laundry_training_job)],
    resources={"feast": FeastResource(), "pipeline": PipelineStore(), "registry": RegistryResource()},
)
