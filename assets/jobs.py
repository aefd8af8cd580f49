"""Every job of the code location, and launching them from Python (demo, benchmarks, tests).

The jobs are made by ``build_jobs`` (partitioned as their assets are); the
launchers run the very jobs the sensor and the UI launch, in this process, against a given
instance, as reconstructable jobs that carry the settings: ``assets.location.job_for`` rebuilds the
code location from them in any process a step runs in.
"""
from __future__ import annotations

import dagster as dg

from assets.deployed_model import rollback_laundry
from assets.face_release import rollback_face
from assets.partitions import PARTITION, RANGE_END, RANGE_START
from gymops.settings import Settings

LAUNDRY_ASSETS = ("corrected_tasks", "training_dataset", "trained_checkpoint", "candidate_model")
FACE_ASSETS = ("face_samples_daily", "face_dataset", "face_checkpoint", "face_candidate", "face_deployed")


@dg.job(description="Roll the laundry model back, with no failed request.")
def laundry_rollback():
    rollback_laundry()


@dg.job(description="Roll the face model back to the previous model-and-gallery pair, with no failed request.")
def face_rollback():
    rollback_face()


def build_jobs() -> dict[str, dg.JobDefinition | dg.UnresolvedAssetJobDefinition]:
    """The code location's jobs, by name. A laundry training reads a range of confirmation days
    (RANGE_START/RANGE_END tags), its other assets are not partitioned; face_nightly's partitioning
    is its assets' (gym days)."""
    jobs = [
        dg.define_asset_job(
            "laundry_training", selection=dg.AssetSelection.assets(*LAUNDRY_ASSETS),
            description="UC-24: corrections -> dataset -> checkpoint -> gated candidate model (no deploy)."),
        dg.define_asset_job(
            "laundry_retrain", selection=dg.AssetSelection.assets(*LAUNDRY_ASSETS, "deployed_model"),
            description="The whole loop: retrain, gate, and hot-swap the new version into Triton."),
        laundry_rollback,
        dg.define_asset_job(
            "face_nightly", selection=dg.AssetSelection.assets(*FACE_ASSETS),
            description="The nightly face batch (03:00 gym time): the night's samples -> the window's dataset -> "
                        "fine-tune -> gated candidate -> re-index and flip. A backfill of past nights is one run "
                        "over the range."),
        face_rollback,
    ]
    return {job.name: job for job in jobs}


# -- launching ------------------------------------------------------------------------------------
def reconstructable_job(name: str, settings: Settings) -> dg.ReconstructableJob:
    """Job ``name`` of the code location built from ``settings``, rebuildable in another process."""
    return dg.build_reconstructable_job("assets.location", "job_for",
                                        reconstructable_kwargs={"name": name, "settings": settings.to_dict()})


def training_run_config(copies: int = 2, max_epochs: int = 50, lr: float = 1e-3, max_retries: int = 3,
                        holdout_min_per_class: int = 10, **training) -> dict:
    return {"ops": {
        "training_dataset": {"config": {"copies": copies, "holdout_min_per_class": holdout_min_per_class}},
        "trained_checkpoint": {"config": {"max_epochs": max_epochs, "lr": lr, "max_retries": max_retries, **training}},
    }, "execution": {"config": {"in_process": {}}}}


def run_laundry_training(settings: Settings, instance, first_day: str, last_day: str, run_config: dict,
                         raise_on_error: bool = False, tags: dict | None = None, deploy: bool = False):
    """laundry_training (or laundry_retrain with ``deploy``) over the confirmation days first..last."""
    job = reconstructable_job("laundry_retrain" if deploy else "laundry_training", settings)
    return dg.execute_job(job, instance=instance, run_config=run_config,
                          tags={RANGE_START: first_day, RANGE_END: last_day, **(tags or {})},
                          raise_on_error=raise_on_error)


def face_run_config(dataset: dict | None = None, training: dict | None = None, in_process: bool = True) -> dict:
    """Run config of face_nightly: FaceDatasetConfig and FaceTrainingConfig fields."""
    config = {"ops": {"face_dataset": {"config": dict(dataset or {})},
                      "face_checkpoint": {"config": dict(training or {})}}}
    if in_process:
        config["execution"] = {"config": {"in_process": {}}}
    return config


def run_face_nightly(settings: Settings, instance, first_night: str, last_night: str | None = None,
                     run_config: dict | None = None, raise_on_error: bool = False, tags: dict | None = None):
    """face_nightly for one gym night (the schedule's run) or, with ``last_night``, over the range
    first..last (a backfill of past nights: one run, one training over the window ending last)."""
    job = reconstructable_job("face_nightly", settings)
    if last_night is None or last_night == first_night:
        nights = {PARTITION: first_night}
    else:
        nights = {RANGE_START: first_night, RANGE_END: last_night}
    return dg.execute_job(job, instance=instance, run_config=run_config or face_run_config(),
                          tags={**nights, **(tags or {})}, raise_on_error=raise_on_error)


# -- reading a finished run -----------------------------------------------------------------------
def materialisations(result, asset: str) -> list:
    return [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
            and e.asset_key.to_user_string() == asset]


def metadata(result, asset: str) -> dict:
    events = materialisations(result, asset)
    return {k: v.value for k, v in events[-1].event_specific_data.materialization.metadata.items()} if events else {}


def check_results(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.event_specific_data.check_name: e.event_specific_data
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def step_seconds(instance, run_id: str) -> dict[str, float]:
    """Wall seconds per step of a run, from its event log (start -> success/failure)."""
    started, out = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = record.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in started:
            out[event.step_key] = round(record.timestamp - started[event.step_key], 2)
    return out
