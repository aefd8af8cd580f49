import json
from datetime import datetime, timezone

import dagster as dg

from assets.partitions import CONFIRMATION_DAYS
from gymops.lifecycle.retraining import decide
from gymops.settings import load_settings
from resources.feast import FeastResource
from resources.registry import RegistryResource

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def training_window(since: datetime | None, now: datetime) -> tuple[str, str]:
    """The confirmation days a retraining reads: from the last training's day through today."""
    first = CONFIRMATION_DAYS.get_first_partition_key()
    last = now.astimezone(timezone.utc).date().isoformat()  # today is a partition (end_offset=1)
    start = max(first, since.date().isoformat()) if since else first
    return min(start, last), last


def laundry_corrections_sensor_fn(context: dg.SensorEvaluationContext, feast: FeastResource,
                                  registry: RegistryResource):
    now = datetime.now(timezone.utc)
    cursor = json.loads(context.cursor) if context.cursor else {}
    launched = datetime.fromisoformat(cursor["launched_at"]) if cursor.get("launched_at") else None
    trained = registry.last_trained_at("laundry")
    # since the last training, or since the last launch if that is newer (a run may still be going)
    since = max((t for t in (trained, launched) if t is not None), default=None)
    corrections = feast.corrections_since("laundry", since or EPOCH)
    decision = decide(corrections, since, now, load_settings().retrain)
    if not decision.retrain:
        return dg.SkipReason(decision.reason)
    start, end = training_window(since, now)
    context.update_cursor(json.dumps({"launched_at": now.isoformat(), "corrections": corrections}))
    context.log.info("launching laundry training: %s", decision.reason)
    return dg.RunRequest(
        run_key=f"laundry-since-{since.isoformat() if since else 'never'}",
        tags={RANGE_START: start, RANGE_END: end, "gymops/trigger": decision.reason[:200]},
    )


def build_laundry_corrections_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(name="laundry_corrections_sensor", job=job, minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Retrain the laundry model when >= 100 corrections arrived since the last training "
                           "and 7 days have passed (or the urgent threshold is reached).")
    def laundry_corrections_sensor(context, feast: FeastResource, registry: RegistryResource):
        return laundry_corrections_sensor_fn(context, feast, registry)

    return laundry_corrections_sensor
