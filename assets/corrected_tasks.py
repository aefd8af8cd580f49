from datetime import date

import dagster as dg
import pandas as pd

from gymops.history import confirmations
from resources.feast import FeastResource
from resources.pipeline import PipelineStore

KEY = dg.AssetKey("corrected_tasks")


def label_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no confirmations)"
    table = frame.groupby(["final_result", "corrected"]).size().rename("tasks").reset_index()
    return table.to_markdown(index=False)


def day_figures(frame: pd.DataFrame) -> dict:
    return {
        "confirmations": dg.MetadataValue.int(len(frame)),
        "corrections": dg.MetadataValue.int(int(frame.corrected.sum()) if len(frame) else 0),
        "labels": dg.MetadataValue.md(label_table(frame)),
    }


def build_corrected_tasks(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """The asset over the given confirmation days (their first day is a setting)."""

    @dg.asset(
        key=KEY,
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="laundry",
        kinds={"feast", "parquet"},
        description="Laundry confirmations of each day (corrected and confirmed as-is), read point-in-time "
                    "from Feast's offline store. Each partition's metadata is that day's; a run over a range "
                    "adds the range's totals (range_*).",
    )
    def corrected_tasks(context: dg.AssetExecutionContext, feast: FeastResource, pipeline: PipelineStore):
        frames = []
        for key in context.partition_keys:
            frame = confirmations.confirmations_on(feast.tree(), feast.store(), date.fromisoformat(key))
            pipeline.write_frame(frame, "corrected_tasks", f"{key}.parquet")
            context.log.info("%s: %d confirmations, %d corrected", key, len(frame),
                             int(frame.corrected.sum()) if len(frame) else 0)
            context.add_asset_metadata(day_figures(frame), partition_key=key)
            frames.append(frame)
        both = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=confirmations.COLUMNS)
        return dg.MaterializeResult(metadata={
            "range_days": dg.MetadataValue.int(len(frames)),
            "range_confirmations": dg.MetadataValue.int(len(both)),
            "range_corrections": dg.MetadataValue.int(int(both.corrected.sum()) if len(both) else 0),
        })

    return corrected_tasks


def load_days(pipeline: PipelineStore, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The materialised partitions among ``keys`` (and the keys that are missing)."""
    return pipeline.read_partitions("corrected_tasks", keys, confirmations.COLUMNS)
