import os

import dagster as dg

# Confirmation days (UTC). end_offset=1 makes today a partition too, so a training run can include it.
CONFIRMATION_DAYS = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("GYMOPS_PARTITIONS_START", "2026-11-01"), timezone="UTC", end_offset=1,
)
