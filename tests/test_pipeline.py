"""The laundry training pipeline as Dagster runs it: real Feast history, real training (tiny),
real gates, real registry and outbox (embedded profile)."""
import json

import dagster as dg
import pytest

from fixtures import LENIENT_GATES, check_results, materialised, run_training, tiny_run_config
from gymops.simulator.history import ingest_simulated_history

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory):
    from gymops.history import feature_store
    from gymops.settings import GateSettings, Settings

    settings = Settings(profile="embedded", home=tmp_path_factory.mktemp("pipeline"), ingest_token="t",
                        gates=GateSettings(**LENIENT_GATES))
    feature_store.apply(settings)
    first, last = ingest_simulated_history(settings, tasks=160, days=3)
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster"))) as instance:
        yield settings, instance, first, last


@pytest.fixture(scope="module")
def first_run(pipeline_env):
    settings, instance, first, last = pipeline_env
    return run_training(settings, instance, first, last, tiny_run_config())


def strict(settings):
    """The same profile with a validation gate no tiny training passes (settings.gates, nothing else)."""
    return settings.replace(gates={"val_accuracy": 0.999})


def registry(settings):
    from gymops.db import engine_for
    from gymops.lifecycle.outbox import Outbox
    from gymops.lifecycle.registry import ModelRegistry

    engine = engine_for(settings)
    return ModelRegistry(engine, outbox=Outbox(engine)), Outbox(engine)


def test_full_materialisation_learns_and_registers_a_candidate(pipeline_env, first_run):
    settings, *_ = pipeline_env
    assert first_run.success
    for asset in ("corrected_tasks", "training_dataset", "trained_checkpoint", "candidate_model"):
        assert materialised(first_run, asset), asset
    assert all(check_results(first_run).values()), check_results(first_run)
    [candidate] = materialised(first_run, "candidate_model")
    meta = candidate.event_specific_data.materialization.metadata
    assert meta["holdout_accuracy"].value > 0.7 and meta["val_accuracy"].value > 0.7  # chance is ~0.5-0.6
    [ckpt] = materialised(first_run, "trained_checkpoint")
    ckpt_meta = ckpt.event_specific_data.materialization.metadata
    assert "| **defective** |" in ckpt_meta["confusion_matrix"].value and "val_loss" in ckpt_meta["training_curves"].value
    reg, _ = registry(settings)
    [version] = reg.history("laundry", limit=1)
    assert version.status == "candidate" and version.version == meta["version"].value
    assert version.dataset_id and version.run_id == first_run.run_id
    # The dataset is stored under its id (lineage from the registry finds its files).
    assert (settings.home / "pipeline" / "datasets" / version.dataset_id / "manifest.json").exists()


def test_a_failing_gate_blocks_and_records_the_event(pipeline_env, first_run):
    settings, instance, first, last = pipeline_env
    reg, outbox = registry(settings)
    active_before = reg.active("laundry")
    result = run_training(strict(settings), instance, first, last, tiny_run_config())
    assert not result.success
    assert check_results(result)["accuracy_gate"] is False
    [version] = reg.history("laundry", limit=1)
    assert version.status == "rejected" and "val_accuracy" in version.status_reason
    events = [row for row in outbox.pending() if row.event_type == "ModelVerificationFailedEvent"]
    payload = events[-1].payload if isinstance(events[-1].payload, dict) else json.loads(events[-1].payload)
    assert payload["version"] == version.version
    assert any(r["check"] == "val_accuracy" and r["threshold"] == 0.999 for r in payload["reasons"])
    assert reg.active("laundry") == active_before  # the serving model is untouched


def test_reexecution_from_the_failed_gate_reuses_upstream(pipeline_env, first_run):
    settings, instance, first, last = pipeline_env
    failed = run_training(strict(settings), instance, first, last, tiny_run_config())
    assert not failed.success
    options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
    from assets.jobs import reconstructable_job

    # the operator lowers the gate again (the lenient settings) and re-executes from the failure
    again = dg.execute_job(reconstructable_job("laundry_training", settings), instance=instance,
                           reexecution_options=options,
                           run_config=tiny_run_config(), raise_on_error=False)
    assert again.success
    # only the failed check ran again: nothing upstream was rebuilt
    assert not materialised(again, "trained_checkpoint") and not materialised(again, "training_dataset")
    assert check_results(again) == {"accuracy_gate": True}


def test_data_check_fails_on_corrupt_history(pipeline_env, tmp_path):
    """A corrupt row in the offline store (bypassing the replicator's validation) fails the Great
    Expectations check on corrected_tasks, and the run stops before training."""
    import pandas as pd
    import pyarrow as pa
    from datetime import datetime, timezone

    from gymops.history import tables as history
    from gymops.ingest.replicator import history_frame

    settings, instance, first, last = pipeline_env
    row = {c: None for c in history.column_names(history.TASK_CONFIRMATIONS)}
    now = datetime.now(timezone.utc)
    row.update(event_id="corrupt-1", task_id="TASK-CORRUPT", helper_id="h", branch_id="b", photo_url="",
               ai_result="good", ai_model_version="none", final_result="so-so", corrected=True,
               model_type="laundry", event_timestamp=pd.Timestamp(last + "T12:00:00Z"), created=now)
    table = pa.Table.from_pandas(history_frame(history.TASK_CONFIRMATIONS, [row]), preserve_index=False)
    history.FileHistory(settings.feast_offline_dir / history.TASK_CONFIRMATIONS).append(table)
    try:
        result = run_training(settings, instance, last, last, tiny_run_config())
        assert not result.success
        assert check_results(result) == {"corrected_tasks_data_check": False}
        assert not materialised(result, "training_dataset")
    finally:
        _remove_row(settings, "corrupt-1")


def _remove_row(settings, event_id):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from gymops.history import tables as history

    folder = settings.feast_offline_dir / history.TASK_CONFIRMATIONS
    for path in folder.glob("*.parquet"):
        table = pq.read_table(path)
        if event_id in table.column("event_id").to_pylist():
            pq.write_table(table.filter(pc.invert(pc.equal(table.column("event_id"), event_id))), path)


def test_backfill_of_a_range_reports_each_day(pipeline_env):
    """A single-run backfill of the three days: one materialisation per day, whose metadata is that
    day's (the range's totals beside them), and one parquet file per day with only that day's rows."""
    settings, instance, first, last = pipeline_env
    from assets.location import build_definitions
    from assets.partitions import RANGE_END, RANGE_START, days_in_range

    defs = build_definitions(settings)
    job = dg.define_asset_job("backfill_corrected", selection=["corrected_tasks"]).resolve(
        asset_graph=defs.resolve_asset_graph())
    days = days_in_range(first, last)
    assert len(days) == 3
    result = job.execute_in_process(instance=instance, resources=defs.resources,
                                    tags={RANGE_START: days[0], RANGE_END: days[-1]})
    assert result.success
    events = materialised(result, "corrected_tasks")
    per_day = {e.event_specific_data.materialization.partition: e.event_specific_data.materialization.metadata
               for e in events}
    assert set(per_day) == set(days)
    frames = {d: defs.resources["pipeline"].read_frame("corrected_tasks", f"{d}.parquet") for d in days}
    assert all(f is not None and len(f) > 0 for f in frames.values())
    assert all(set(f.event_timestamp.dt.date.astype(str)) == {d} for d, f in frames.items())
    counts = {d: meta["confirmations"].value for d, meta in per_day.items()}
    total = per_day[days[0]]["range_confirmations"].value
    assert counts == {d: len(frames[d]) for d in days}  # each partition reports its own day
    assert sum(counts.values()) == total and len(set(counts.values())) > 1, counts
    assert all(meta["corrections"].value == int(frames[d].corrected.sum()) for d, meta in per_day.items())
