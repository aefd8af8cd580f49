"""The retraining rule (UC-24) through the real sensor, with build_sensor_context, against a real
embedded Feast history and model registry."""
import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from gymops.lifecycle.retraining import Decision, decide
from gymops.settings import RetrainSettings, Settings
from gymops.ingest.replicator import Replicator
from test_replicator import task_event

NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
POLICY = RetrainSettings(min_corrections=100, min_days=7, urgent_corrections=300)


@pytest.mark.parametrize("corrections,days_ago,retrain,why", [
    (99, 30, False, "fewer than 100"),
    (100, 3, False, "only 3 of 7 days"),
    (150, 7, True, "7 days since"),
    (299, 6, False, "urgent at 300"),
    (300, 1, True, "urgent threshold"),
    (100, None, True, "no model trained yet"),
])
def test_the_rule(corrections, days_ago, retrain, why):
    since = None if days_ago is None else NOW - timedelta(days=days_ago)
    decision = decide(corrections, since, NOW, POLICY)
    assert decision.retrain is retrain and why in decision.reason


@pytest.fixture
def sensor_env(tmp_path):
    """An embedded profile of its own (empty history and registry); the sensor's resources are built
    from these settings (the default retraining rule: 100 corrections and 7 days, or 300)."""

    from gymops.history import feature_store

    settings = Settings(profile="embedded", home=tmp_path / "home", ingest_token="t", retrain=POLICY)
    feature_store.apply(settings)
    return settings


def ingest_corrections(settings, n, corrected=True):
    photo = f"file://{settings.photo_root}/tasks/BR-1/p.jpg"
    Replicator(settings).ingest([json.dumps(task_event(photo, corrected=corrected)) for _ in range(n)], "test")


def register_training(settings, days_ago):
    from gymops.db import engine_for
    from gymops.lifecycle.registry import ModelRegistry

    return ModelRegistry(engine_for(settings)).register_candidate(
        "laundry", "efficientnet_lite0", {"accuracy": 0.9}, "ds-1", "run-1", "/nonexistent.onnx",
        trained_at=datetime.now(timezone.utc) - timedelta(days=days_ago))


def evaluate(settings, cursor=None):
    from assets.location import build_definitions
    from resources import build_resources

    sensor = build_definitions(settings).get_sensor_def("laundry_corrections_sensor")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=build_resources(settings))
        result = sensor.evaluate_tick(context)
        return result, context.cursor


def test_below_threshold_skips(sensor_env):
    ingest_corrections(sensor_env, 40)
    ingest_corrections(sensor_env, 60, corrected=False)  # confirmations as-is do not count
    result, _ = evaluate(sensor_env)
    assert not result.run_requests
    assert "40 corrections" in result.skip_message


def test_threshold_reached_before_seven_days_waits(sensor_env):
    register_training(sensor_env, days_ago=3)
    ingest_corrections(sensor_env, 120)
    result, _ = evaluate(sensor_env)
    assert not result.run_requests and "only 3 of 7 days" in result.skip_message


def test_threshold_and_seven_days_launch_once(sensor_env):
    register_training(sensor_env, days_ago=8)
    ingest_corrections(sensor_env, 120)
    result, cursor = evaluate(sensor_env)
    [request] = result.run_requests
    assert request.run_key.startswith("laundry-since-")
    start, end = request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]
    assert start <= end
    # a second tick with no new data launches nothing
    again, _ = evaluate(sensor_env, cursor)
    assert not again.run_requests and "corrections since the last training" in again.skip_message


def test_urgent_threshold_launches_early(sensor_env):
    """settings.retrain reaches the sensor: 160 corrections one day after a training wait under the
    default rule (urgent at 300) and launch with an urgent threshold of 150."""
    register_training(sensor_env, days_ago=1)
    ingest_corrections(sensor_env, 160)
    result, _ = evaluate(sensor_env)
    assert not result.run_requests and "urgent at 300" in result.skip_message
    result, _ = evaluate(sensor_env.replace(retrain={"urgent_corrections": 150}))
    [request] = result.run_requests
    assert "urgent" in request.tags["gymops/trigger"]


def test_the_window_starts_at_the_first_partition_of_the_settings(sensor_env):
    """settings.partitions reaches the sensor's window (a first training reads from the first day)."""
    ingest_corrections(sensor_env, 100)
    result, _ = evaluate(sensor_env.replace(partitions={"start": "2026-10-15"}))
    [request] = result.run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2026-10-15"


def test_first_training_launches_when_enough_corrections(sensor_env):
    ingest_corrections(sensor_env, 100)
    result, _ = evaluate(sensor_env)
    [request] = result.run_requests
    assert request.run_key == "laundry-since-never"


def test_face_schedule_is_nightly_on_gym_days():
    from assets.location import build_definitions

    schedule = build_definitions(Settings()).get_schedule_def("face_nightly_schedule")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "Asia/Seoul"
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance,
                                            scheduled_execution_time=datetime(2026, 11, 22, 3, tzinfo=timezone(timedelta(hours=9))))
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-21"  # the gym day that just ended
