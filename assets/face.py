"""The nightly face batch. Its training assets arrive with the face-model issue; the partitioned
input below is real today: each night's enrolments and entries, read from Feast."""
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from assets.partitions import GYM_TIMEZONE
from gymops.history.face_samples import samples_between
from resources.feast import FeastResource
from resources.pipeline import PipelineStore


def build_face_samples_daily(partitions_def: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    """The asset over the given gym days (their first day is settings.partitions.face_start)."""

    @dg.asset(partitions_def=partitions_def, group_name="face", kinds={"feast", "parquet"},
              description="One gym day's face samples (enrolments and successful entries), for the nightly batch.")
    def face_samples_daily(context: dg.AssetExecutionContext, feast: FeastResource, pipeline: PipelineStore):
        day = datetime.fromisoformat(context.partition_key).date()
        start = datetime.combine(day, time.min, tzinfo=ZoneInfo(GYM_TIMEZONE))
        frame = samples_between(feast.tree(), feast.store(), start, start + timedelta(days=1))
        pipeline.write_frame(frame, "face_samples", f"{context.partition_key}.parquet")
        kinds = frame.sample_kind.value_counts().to_dict() if len(frame) else {}
        return dg.MaterializeResult(metadata={
            "samples": dg.MetadataValue.int(len(frame)),
            "members": dg.MetadataValue.int(frame.user_id.nunique() if len(frame) else 0),
            "enrolments": dg.MetadataValue.int(int(kinds.get("enrolment", 0))),
            "entries": dg.MetadataValue.int(int(kinds.get("entry", 0))),
        })

    return face_samples_daily
