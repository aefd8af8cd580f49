"""Face samples (enrolments and successful entries) of a night's window, read from Feast."""
from __future__ import annotations

from datetime import datetime

import pandas as pd

from gymops.history import tables as history
from gymops.history.confirmations import point_in_time

FEATURES = [f"{history.FACE_SAMPLES}:{c}" for c in (
    "event_id", "sample_kind", "role", "branch_id", "photo_url", "similarity", "model_version",
)]
COLUMNS = ["user_id", "event_timestamp", "created"] + [f.split(":")[1] for f in FEATURES]


def samples_between(settings, store, start: datetime, end: datetime) -> pd.DataFrame:
    rows = history.history_for(settings, history.FACE_SAMPLES).entity_rows(start, end)
    return point_in_time(store, rows, FEATURES, COLUMNS)


ENROLMENT_COLUMNS = ["event_id", "user_id", "role", "branch_id", "photo_url", "event_timestamp", "created"]


def enrolments_ingested_since(settings, since: datetime) -> pd.DataFrame:
    """The enrolments (UserCreatedEvents) ingested at or after ``since``, oldest ingestion first:
    what the enrolment follower (gymops.face.enrolments) has not seen yet.

    Read straight from the offline store's history table, not through a point-in-time join: each
    enrolment is an event row of its own, not a member's feature as of a moment (a join on
    (user_id, event_timestamp) would hand back an entry that shares the enrolment's timestamp
    instead), and the follower asks every few seconds, where a Feast query costs ~1 s."""
    table = history.history_for(settings, history.FACE_SAMPLES).ingested_since(since, model_type="face")
    frame = table.to_pandas()
    frame = frame[frame.sample_kind == "enrolment"][ENROLMENT_COLUMNS]
    for col in ("event_timestamp", "created"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame.sort_values(["created", "event_id"], kind="mergesort").reset_index(drop=True)
