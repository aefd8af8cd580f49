"""Face samples (enrolments and successful entries) of a night's window, read from Feast."""
from __future__ import annotations

from datetime import datetime

import pandas as pd

from gymops import history

FEATURES = [f"{history.FACE_SAMPLES}:{c}" for c in (
    "event_id", "sample_kind", "role", "branch_id", "photo_url", "similarity", "model_version",
)]
COLUMNS = ["user_id", "event_timestamp", "created"] + [f.split(":")[1] for f in FEATURES]


def samples_between(settings, store, start: datetime, end: datetime) -> pd.DataFrame:
    rows = history.history_for(settings, history.FACE_SAMPLES).entity_rows(start, end)
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame = store.get_historical_features(
        entity_df=rows.rename(columns={"created": "ingested_at"}), features=FEATURES,
    ).to_df().rename(columns={"ingested_at": "created"})  # Feast reserves "created" for its own column
    for col in ("event_timestamp", "created"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame[COLUMNS].sort_values(["event_timestamp", "user_id"]).reset_index(drop=True)
