"""The retraining rule (UC-24) through the real sensor, with build_sensor_context, against a real
embedded Feast history and model registry."""
import json
import uuid
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from gymops.lifecycle.retraining import decide
from gymops.settings import RetrainSettings, Settings
from gymops.ingest.replicator import Replicator
from fixtures import task_event

NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
POLICY = RetrainSettings(min_corrections=100, min_days=7, urgent_corrections=300)


@pytest.mark.parametrize("corrections,days_ago,retrain,why", [
    (99, 30, False, "fewer than 100"),
    (100, 3, False, "only 3 of 7 days"),
    (150, 7, True, "7 days since"),
    (299, 6, False, "urgent at 300"),
    (300, 1, True, "urgent threshold"),
    (100, None, True, "no model serving yet"),
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


def ingest_corrections(settings, n, corrected=True, version="none"):
    photo = f"file://{settings.photo_root}/tasks/BR-1/p.jpg"
    Replicator(settings).ingest([json.dumps(task_event(photo, corrected=corrected, aiModelVersion=version))
                                 for _ in range(n)], "test")


def ingest_verdicts(settings, version, pattern, after=0):
    """Confirmations of tasks ``version`` judged, in this order (True = corrected), a second apart
    (from ``after`` seconds past 10:00)."""
    photo = f"file://{settings.photo_root}/tasks/BR-1/p.jpg"
    start = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
    Replicator(settings).ingest([json.dumps(task_event(
        photo, corrected=c, aiModelVersion=version,
        timestamp=(start + timedelta(seconds=after + i)).isoformat().replace("+00:00", "Z"))) for i, c in enumerate(pattern)],
        "test")


def _registry(settings):
    from gymops.db import engine_for
    from gymops.lifecycle.registry import ModelRegistry

    return ModelRegistry(engine_for(settings))


def register_training(settings, days_ago, holdout_accuracy=0.97, activate=True):
    """A version trained ``days_ago``, serving (active) unless ``activate`` is False."""
    reg = _registry(settings)
    version = reg.register_candidate(
        "laundry", "efficientnet_lite0", {"holdout": {"accuracy": holdout_accuracy}}, "ds-1", "run-1",
        f"/nonexistent-{uuid.uuid4().hex}.onnx", trained_at=datetime.now(timezone.utc) - timedelta(days=days_ago))
    return reg.activate("laundry", version.version) if activate else version


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
    assert request.run_key.startswith("laundry-")
    start, end = request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]
    assert start <= end
    # a second tick with no new data launches nothing
    again, _ = evaluate(sensor_env, cursor)
    assert not again.run_requests and "another launch at 50" in again.skip_message


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
    """settings.partitions reaches the sensor's window (never before the first day)."""
    ingest_corrections(sensor_env, 100)
    first = (datetime.now(timezone.utc) - timedelta(days=20)).date().isoformat()
    result, _ = evaluate(sensor_env.replace(partitions={"start": first}))
    [request] = result.run_requests
    assert request.tags["dagster/asset_partition_range_start"] == first


def test_a_rejected_candidate_does_not_reset_the_count(sensor_env):
    """Corrections count from the SERVED model's training: a candidate trained (and rejected) since
    leaves the count as it was; another launch waits for retry_corrections new ones only."""
    served = register_training(sensor_env, days_ago=8)
    ingest_corrections(sensor_env, 120)
    result, cursor = evaluate(sensor_env)
    [request] = result.run_requests
    reg = _registry(sensor_env)
    rejected = register_training(sensor_env, days_ago=0, activate=False)  # the launched run's candidate ...
    reg.reject("laundry", rejected.version, [{"gate": "accuracy", "check": "x", "message": "worse"}])  # ... rejected
    again, cursor2 = evaluate(sensor_env, cursor)
    assert not again.run_requests
    assert "120 corrections and 8 days" in again.skip_message and "another launch at 50" in again.skip_message
    ingest_corrections(sensor_env, 50)
    third, _ = evaluate(sensor_env, cursor2)
    [retry] = third.run_requests
    assert "170 corrections" in retry.tags["gymops/trigger"] and retry.run_key != request.run_key
    assert reg.active("laundry").version == served.version


def test_a_correction_rate_above_the_promise_is_urgent(sensor_env):
    """16 corrections in 40 verdicts of the served version (40%, it promised 3%): the alarm is
    raised at once, and the retrain launches as soon as 100 corrections are there to learn from,
    a day after the served model's training instead of a week; 2 in 100 (as promised) is no alarm."""
    served = register_training(sensor_env, days_ago=1, holdout_accuracy=0.97)
    ingest_verdicts(sensor_env, served.version, [False] * 49 + [True] + [False] * 49 + [True])
    result, _ = evaluate(sensor_env)
    assert not result.run_requests and "as promised" in result.skip_message, result.skip_message
    ingest_verdicts(sensor_env, served.version, [i % 5 in (0, 3) for i in range(40)], after=100)
    result, _ = evaluate(sensor_env)
    assert not result.run_requests and result.skip_message.startswith("ALARM: 18 of 140 verdicts"), result.skip_message
    assert "waits for 100 corrections to learn from (18 since" in result.skip_message
    ingest_verdicts(sensor_env, served.version, [True] * 82, after=140)
    result, _ = evaluate(sensor_env)
    [request] = result.run_requests
    assert request.tags["gymops/trigger"].startswith("urgent:") and "SPRT" in request.tags["gymops/trigger"]


def test_the_window_reaches_back_window_days(sensor_env):
    """A retraining reads the confirmed history of the last window_days, not only the days since
    the last training (settings.retrain.window_days)."""
    register_training(sensor_env, days_ago=8)
    ingest_corrections(sensor_env, 120)
    settings = sensor_env.replace(partitions={"start": "2026-01-01"}, retrain={"window_days": 30})
    [request] = evaluate(settings)[0].run_requests
    start, end = request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]
    assert (datetime.fromisoformat(end) - datetime.fromisoformat(start)).days == 30


def test_a_rate_alarm_waives_the_week_not_the_corrections_to_learn_from():
    from gymops.lifecycle.retraining import correction_rate

    alarm = correction_rate([True] * 5, 0.03, POLICY)
    # 5 corrections: the alarm is raised, the retrain waits for min_corrections (100) to learn from
    waiting = decide(5, NOW - timedelta(hours=2), NOW, POLICY, alarm)
    assert not waiting.retrain and waiting.reason.startswith("ALARM: 5 of 5 verdicts")
    assert "waits for 100 corrections" in waiting.reason and "(5 since" in waiting.reason
    # 100 after two hours: urgent, where the count rule alone would wait the week
    decision = decide(100, NOW - timedelta(hours=2), NOW, POLICY, alarm)
    assert decision.retrain and decision.reason.startswith("urgent: 5 of 5 verdicts")
    calm = correction_rate([False] * 30, 0.03, POLICY)
    assert not decide(100, NOW - timedelta(hours=2), NOW, POLICY, calm).retrain


def test_correction_rate_against_known_cases():
    from gymops.lifecycle.retraining import correction_rate

    # p0 = 0.03, p1 = 0.15: an error adds log(5) = 1.609, a right verdict log(0.85/0.97) = -0.132;
    # alarm at log(0.95/0.001) = 6.856: 5 errors in a row (8.05) alarm, 4 (6.44) do not
    assert correction_rate([True] * 5, 0.03, POLICY).alarm
    assert correction_rate([True] * 4, 0.03, POLICY).decision == "undecided"
    # the lower bound log(0.05/0.999) = -2.995 is 23 right verdicts: then the test starts again
    check = correction_rate([False] * 23 + [True] * 4, 0.03, POLICY)
    assert not check.alarm and check.llr == pytest.approx(4 * 1.6094379, abs=1e-6)
    assert correction_rate([], 0.03, POLICY).decision == "no data"
    assert correction_rate([True] * 10, 0.20, POLICY).decision == "undecided"  # promised worse than the alarm rate


def test_first_training_launches_when_enough_corrections(sensor_env):
    ingest_corrections(sensor_env, 100)
    result, _ = evaluate(sensor_env)
    [request] = result.run_requests
    assert request.run_key.startswith("laundry-none-100")


def test_face_schedule_is_nightly_on_gym_days():
    from assets.location import build_definitions

    schedule = build_definitions(Settings()).get_schedule_def("face_nightly_schedule")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.execution_timezone == "Asia/Seoul"
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance,
                                            scheduled_execution_time=datetime(2026, 11, 22, 3, tzinfo=timezone(timedelta(hours=9))))
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2026-11-21"  # the gym day that just ended
