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
