"""Launching the Dagster jobs from Python (demo, benchmarks, tests): the same jobs the sensor and
the UI launch, run in this process against a given instance."""
from __future__ import annotations

import dagster as dg

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def laundry_job():
    from definitions import defs

    return defs.resolve_job_def("laundry_training")


def laundry_retrain_job():
    from definitions import defs

    return defs.resolve_job_def("laundry_retrain")


def training_run_config(copies: int = 5, max_epochs: int = 50, lr: float = 1e-3, max_retries: int = 3,
                        holdout_min_per_class: int = 10, **training) -> dict:
    return {"ops": {
        "training_dataset": {"config": {"copies": copies, "holdout_min_per_class": holdout_min_per_class}},
        "trained_checkpoint": {"config": {"max_epochs": max_epochs, "lr": lr, "max_retries": max_retries, **training}},
    }, "execution": {"config": {"in_process": {}}}}


def run_laundry_training(instance, first_day: str, last_day: str, run_config: dict, raise_on_error: bool = False,
                         tags: dict | None = None, deploy: bool = False):
    job = laundry_retrain_job if deploy else laundry_job
    return dg.execute_job(dg.reconstructable(job), instance=instance, run_config=run_config,
                          tags={RANGE_START: first_day, RANGE_END: last_day, **(tags or {})},
                          raise_on_error=raise_on_error)


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
