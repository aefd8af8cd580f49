import json
from datetime import datetime, timezone

import dagster as dg

from assets.partitions import RANGE_END, RANGE_START
from gymops.lifecycle.registry import LAUNDRY
from gymops.lifecycle.retraining import decide
from resources.feast import FeastResource
from resources.policy import RetrainResource
from resources.registry import RegistryResource

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def training_window(first_day: str, since: datetime | None, now: datetime) -> tuple[str, str]:
    """The confirmation days a retraining reads: from the last training's day (never before the
    first partition) through today."""
    last = now.astimezone(timezone.utc).date().isoformat()  # today is a partition (end_offset=1)
    start = max(first_day, since.date().isoformat()) if since else first_day
    return min(start, last), last


def laundry_corrections_sensor_fn(context: dg.SensorEvaluationContext, first_day: str, feast: FeastResource,
                                  registry: RegistryResource, retrain: RetrainResource):
    now = datetime.now(timezone.utc)
    cursor = json.loads(context.cursor) if context.cursor else {}
    launched = datetime.fromisoformat(cursor["launched_at"]) if cursor.get("launched_at") else None
    trained = registry.last_trained_at(LAUNDRY)
    # since the last training, or since the last launch if that is newer (a run may still be going)
    since = max((t for t in (trained, launched) if t is not None), default=None)
    corrections = feast.corrections_since(LAUNDRY, since or EPOCH)
    decision = decide(corrections, since, now, retrain.settings())
    if not decision.retrain:
        return dg.SkipReason(decision.reason)
    start, end = training_window(first_day, since, now)
    context.update_cursor(json.dumps({"launched_at": now.isoformat(), "corrections": corrections}))
    context.log.info("launching laundry training: %s", decision.reason)
    return dg.RunRequest(
        run_key=f"laundry-since-{since.isoformat() if since else 'never'}",
        tags={RANGE_START: start, RANGE_END: end, "gymops/trigger": decision.reason[:200]},
    )


def build_laundry_corrections_sensor(job, confirmation_days: dg.PartitionsDefinition) -> dg.SensorDefinition:
    """The sensor launching ``job`` over a range of ``confirmation_days``; its thresholds come from
    the ``retrain`` resource (settings.retrain)."""
    first_day = confirmation_days.get_first_partition_key()

    @dg.sensor(name="laundry_corrections_sensor", job=job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Retrain the laundry model when enough corrections arrived since the last training "
                           "and enough days have passed, or the urgent threshold is reached (resource `retrain`; "
                           "defaults 100 and 7 days, or 300).")
    def laundry_corrections_sensor(context, feast: FeastResource, registry: RegistryResource,
                                   retrain: RetrainResource):
        return laundry_corrections_sensor_fn(context, first_day, feast, registry, retrain)

    return laundry_corrections_sensor
