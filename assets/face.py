"""The nightly face batch's input: each gym day's enrolments and entries, read from Feast, one
partition per gym day (Asia/Seoul). The training assets downstream are in assets/face_training.py
and assets/face_release.py; the face_nightly job runs them all at 03:00 gym time."""
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from assets.partitions import GYM_TIMEZONE
from gymops.history.face_samples import COLUMNS, samples_between
from resources.feast import FeastResource
from resources.pipeline import PipelineStore

KEY = dg.AssetKey("face_samples_daily")


def night_figures(frame: pd.DataFrame) -> dict:
    kinds = frame.sample_kind.value_counts().to_dict() if len(frame) else {}
    return {
        "samples": dg.MetadataValue.int(len(frame)),
        "members": dg.MetadataValue.int(frame.user_id.nunique() if len(frame) else 0),
        "enrolments": dg.MetadataValue.int(int(kinds.get("enrolment", 0))),
        "entries": dg.MetadataValue.int(int(kinds.get("entry", 0))),
    }


def build_face_samples_daily(partitions_def: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    """The asset over the given gym days (their first day is settings.partitions.face_start). A
    backfill of past nights is ONE run over the range (single-run policy): the training downstream
    runs once, over the window that ends with the range's last night."""

    @dg.asset(key=KEY, partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
              group_name="face", kinds={"feast", "parquet"},
              description="One gym day's face samples (enrolments and successful entries), for the nightly batch. "
                          "Each partition's metadata is that night's; a run over a range adds its totals (range_*).")
    def face_samples_daily(context: dg.AssetExecutionContext, feast: FeastResource, pipeline: PipelineStore):
        frames = []
        for key in context.partition_keys:
            day = datetime.fromisoformat(key).date()
            start = datetime.combine(day, time.min, tzinfo=ZoneInfo(GYM_TIMEZONE))
            frame = samples_between(feast.tree(), feast.store(), start, start + timedelta(days=1))
            pipeline.write_frame(frame, "face_samples", f"{key}.parquet")
            context.log.info("%s: %d face samples of %d members", key, len(frame),
                             frame.user_id.nunique() if len(frame) else 0)
            context.add_asset_metadata(night_figures(frame), partition_key=key)
            frames.append(frame)
        nonempty = [f for f in frames if len(f)]
        total = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame(columns=COLUMNS)
        return dg.MaterializeResult(metadata={
            "range_nights": dg.MetadataValue.int(len(context.partition_keys)),
            **{f"range_{k}": v for k, v in night_figures(total).items()},
        })

    return face_samples_daily


def load_nights(pipeline: PipelineStore, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The materialised nights among ``keys`` as one frame (and the keys that are missing)."""
    return pipeline.read_partitions("face_samples", keys, COLUMNS)
