"""Reading laundry confirmations back out of Feast, point-in-time correct, for training.

The history tables say which tasks were confirmed when; Feast's offline store answers what each
task's features were as of that moment (a later re-confirmation never leaks into an earlier row).
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pandas as pd

from gymops.history import tables as history

FEATURES = [f"{history.TASK_CONFIRMATIONS}:{c}" for c in (
    "event_id", "photo_url", "ai_result", "ai_model_version", "final_result", "corrected",
    "correction_reason", "branch_id", "helper_id",
)]
COLUMNS = ["task_id", "event_timestamp", "created"] + [f.split(":")[1] for f in FEATURES]


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def point_in_time(store, entities: pd.DataFrame, features: list[str], columns: list[str]) -> pd.DataFrame:
    """Feast's offline features of each (entity, event_timestamp, created) row, as of that time."""
    if entities.empty:
        return pd.DataFrame(columns=columns)
    frame = store.get_historical_features(
        entity_df=entities.rename(columns={"created": "ingested_at"}), features=features,
    ).to_df().rename(columns={"ingested_at": "created"})  # Feast reserves "created" for its own column
    for col in ("event_timestamp", "created"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame[columns].sort_values(["event_timestamp", columns[0]]).reset_index(drop=True)


def _point_in_time(store, entities: pd.DataFrame) -> pd.DataFrame:
    frame = point_in_time(store, entities, FEATURES, COLUMNS)
    frame["corrected"] = frame["corrected"].astype(bool)
    return frame


def confirmations_on(settings, store, day: date) -> pd.DataFrame:
    """Every confirmation (corrected or confirmed as-is) whose timestamp falls on ``day`` (UTC)."""
    start, end = day_bounds(day)
    rows = history.history_for(settings, history.TASK_CONFIRMATIONS).entity_rows(start, end)
    return _point_in_time(store, rows)


def newest_corrections(settings, store, limit: int) -> pd.DataFrame:
    """The ``limit`` most recent corrections, whatever their day: these always go into training."""
    rows = history.history_for(settings, history.TASK_CONFIRMATIONS).entity_rows(corrected_only=True, newest=limit)
    return _point_in_time(store, rows)
