import json
from datetime import datetime, timezone

import dagster as dg

from assets.partitions import RANGE_END, RANGE_START
from gymops.lifecycle.registry import LAUNDRY
from gymops.lifecycle.retraining import MIN_EXPECTED_ERROR, correction_rate, decide, training_window
from resources.feast import FeastResource
from resources.policy import RetrainResource
from resources.registry import RegistryResource

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def laundry_corrections_sensor_fn(context: dg.SensorEvaluationContext, first_day: str, feast: FeastResource,
                                  registry: RegistryResource, retrain: RetrainResource):
    """Evidence against the SERVED model (gymops.lifecycle.retraining): corrections since its
    training, and the SPRT over its own verdicts. The cursor remembers the last launch and the
    served version then: while the same version serves, another launch needs retry_corrections
    new corrections (a rejected candidate keeps the count, it does not retrain on the same evidence)."""
    now = datetime.now(timezone.utc)
    policy = retrain.settings()
    cursor = json.loads(context.cursor) if context.cursor else {}
    served = registry.registry().active(LAUNDRY)
    since = served.trained_at if served else None
    corrections = feast.corrections_since(LAUNDRY, since or EPOCH)
    rate = None
    if served is not None:
        holdout = (served.metrics or {}).get("holdout") or {}
        expected = 1 - float(holdout.get("accuracy", 1 - MIN_EXPECTED_ERROR))
        rate = correction_rate(feast.verdicts(LAUNDRY, served.version), expected, policy)
    decision = decide(corrections, since, now, policy, rate)
    if not decision.retrain:
        return dg.SkipReason(decision.reason)
    serving = served.version if served else "none"
    if cursor.get("serving") == serving and cursor.get("launched_at"):
        new = corrections - int(cursor.get("corrections", 0))
        if new < policy.retry_corrections:
            return dg.SkipReason(
                f"{decision.reason}; a training was launched at {cursor['launched_at']} for {serving} with "
                f"{cursor.get('corrections')} corrections: {new} new since, another launch at {policy.retry_corrections}")
    start, end = training_window(first_day, now, policy.window_days)
    context.update_cursor(json.dumps({"launched_at": now.isoformat(), "serving": serving, "corrections": corrections}))
    context.log.info("launching laundry training: %s", decision.reason)
    return dg.RunRequest(
        run_key=f"laundry-{serving}-{corrections}-{rate.verdicts if rate else 0}",
        tags={RANGE_START: start, RANGE_END: end, "gymops/trigger": decision.reason[:200]},
    )


def build_laundry_corrections_sensor(job, confirmation_days: dg.PartitionsDefinition) -> dg.SensorDefinition:
    """The sensor launching ``job`` over a range of ``confirmation_days``; its thresholds come from
    the ``retrain`` resource (settings.retrain)."""
    first_day = confirmation_days.get_first_partition_key()

    @dg.sensor(name="laundry_corrections_sensor", job=job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Retrain the laundry model when enough corrections arrived since the served model "
                           "was trained and enough days have passed, or the urgent threshold is reached, or its "
                           "correction rate is significantly above its promise (SPRT; the alarm waives the days, "
                           "not the corrections to learn from) (resource `retrain`; defaults 100 and 7 days, or "
                           "300, or 15% errors).")
    def laundry_corrections_sensor(context, feast: FeastResource, registry: RegistryResource,
                                   retrain: RetrainResource):
        return laundry_corrections_sensor_fn(context, first_day, feast, registry, retrain)

    return laundry_corrections_sensor
