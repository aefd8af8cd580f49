from datetime import date

import dagster as dg
import pandas as pd

from assets.partitions import CONFIRMATION_DAYS
from gymops.history import confirmations
from resources.feast import FeastResource
from resources.pipeline import PipelineStore


def partition_days(context) -> list[str]:
    keys = CONFIRMATION_DAYS.get_partition_keys_in_range(context.partition_key_range)
    return list(keys)


def label_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no confirmations)"
    table = frame.groupby(["final_result", "corrected"]).size().rename("tasks").reset_index()
    return table.to_markdown(index=False)


@dg.asset(
    partitions_def=CONFIRMATION_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="laundry",
    kinds={"feast", "parquet"},
    description="Laundry confirmations of each day (corrected and confirmed as-is), read point-in-time "
                "from Feast's offline store.",
)
def corrected_tasks(context: dg.AssetExecutionContext, feast: FeastResource, pipeline: PipelineStore):
    settings, store = feast.settings(), feast.store()
    frames = []
    for key in partition_days(context):
        frame = confirmations.confirmations_on(settings, store, date.fromisoformat(key))
        pipeline.write_frame(frame, "corrected_tasks", f"{key}.parquet")
        context.log.info("%s: %d confirmations, %d corrected", key, len(frame), int(frame.corrected.sum()) if len(frame) else 0)
        frames.append(frame)
    both = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=confirmations.COLUMNS)
    return dg.MaterializeResult(metadata={
        "days": dg.MetadataValue.int(len(frames)),
        "confirmations": dg.MetadataValue.int(len(both)),
        "corrections": dg.MetadataValue.int(int(both.corrected.sum()) if len(both) else 0),
        "labels": dg.MetadataValue.md(label_table(both)),
    })


def load_days(pipeline: PipelineStore, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The materialised partitions among ``keys`` (and the keys that are missing)."""
    frames, missing = [], []
    for key in keys:
        frame = pipeline.read_frame("corrected_tasks", f"{key}.parquet")
        (missing.append(key) if frame is None else frames.append(frame))
    frames = [f for f in frames if len(f)]
    both = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=confirmations.COLUMNS)
    return both, missing
