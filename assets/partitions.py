"""The two daily partitionings. Their first day is a setting (settings.partitions), so they are made
by functions of it, called by the code-location factory (assets/location.py), never at import."""
from datetime import date, timedelta

import dagster as dg

GYM_TIMEZONE = "Asia/Seoul"
# The tags of a single-run backfill / a run over a range of partitions (the sensor's, the launchers').
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
PARTITION = "dagster/partition"  # the tag of a run of one partition (the face schedule's runs)
# On the unpartitioned assets downstream of a partitioned one: `dagster asset materialize
# --partition-range` refuses a selection unless EVERY selected asset has this policy (dagster/_cli/
# asset.py), partitioned or not; on an unpartitioned asset it changes nothing else.
SINGLE_RUN = dg.BackfillPolicy.single_run()


def confirmation_days(start: str) -> dg.DailyPartitionsDefinition:
    """Confirmation days (UTC). end_offset=1 makes today a partition too, so a training run can include it."""
    return dg.DailyPartitionsDefinition(start_date=start, timezone="UTC", end_offset=1)


def face_days(start: str) -> dg.DailyPartitionsDefinition:
    """Gym days (Seoul time) of the nightly face batch."""
    return dg.DailyPartitionsDefinition(start_date=start, timezone=GYM_TIMEZONE)


def days_in_range(first: str, last: str) -> list[str]:
    """The daily keys first..last inclusive (a range the sensor or a launcher tagged)."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
