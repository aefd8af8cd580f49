"""The nightly face batch. Its training assets arrive with the face-model issue; the partitioned
input below is real today: each night's enrolments and entries, read from Feast."""
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from gymops.history.face_samples import samples_between
from resources.feast import FeastResource
from resources.pipeline import PipelineStore

GYM_TIMEZONE = "Asia/Seoul"
FACE_DAYS = dg.DailyPartitionsDefinition(start_date="2026-11-01", timezone=GYM_TIMEZONE)


@dg.asset(partitions_def=FACE_DAYS, group_name="face", kinds={"feast", "parquet"},
          description="One gym day's face samples (enrolments and successful entries), for the nightly batch.")
def face_samples_daily(context: dg.AssetExecutionContext, feast: FeastResource, pipeline: PipelineStore):
    day = datetime.fromisoformat(context.partition_key).date()
    start = datetime.combine(day, time.min, tzinfo=ZoneInfo(GYM_TIMEZONE))
    frame = samples_between(feast.settings(), feast.store(), start, start + timedelta(days=1))
    pipeline.write_frame(frame, "face_samples", f"{context.partition_key}.parquet")
    kinds = frame.sample_kind.value_counts().to_dict() if len(frame) else {}
    return dg.MaterializeResult(metadata={
        "samples": dg.MetadataValue.int(len(frame)),
        "members": dg.MetadataValue.int(frame.user_id.nunique() if len(frame) else 0),
        "enrolments": dg.MetadataValue.int(int(kinds.get("enrolment", 0))),
        "entries": dg.MetadataValue.int(int(kinds.get("entry", 0))),
    })


face_nightly_job = dg.define_asset_job("face_nightly", selection=[face_samples_daily],
                                       description="The nightly face batch (03:00 gym time).")
