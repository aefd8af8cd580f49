"""The dead-letter store: every event that failed validation, kept with its reason for an operator
to inspect and replay. Writing here is what lets the stream move on past a bad event."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import sqlalchemy as sa

from gymops.db import metadata

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("event_type", sa.String(64)),
    sa.Column("event_id", sa.String(128)),
    sa.Column("field", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("replayed_at", sa.DateTime(timezone=True)),
    sa.Column("replay_outcome", sa.Text),
    sa.Index("dead_letters_open", "replayed_at", "id"),
)


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: datetime
    source: str
    event_type: str | None
    event_id: str | None
    field: str
    reason: str
    payload: str
    replayed_at: datetime | None
    replay_outcome: str | None


def payload_text(raw) -> str:
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", errors="backslashreplace")
    if isinstance(raw, str):
        return raw
    return json.dumps(raw, ensure_ascii=False, default=str)


def _guess(raw, key: str) -> str | None:
    """Best-effort eventType/eventId of an invalid payload, for listing and filtering."""
    data = raw
    if isinstance(raw, (bytes, bytearray, str)):
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
    value = data.get(key) if isinstance(data, dict) else None
    return value[:128] if isinstance(value, str) else None


class DeadLetterStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def add(self, items: Iterable[tuple[object, str, str]], source: str) -> list[int]:
        """items: (raw payload, field, reason). Committed before returning."""
        now = datetime.now(timezone.utc)
        rows = [
            dict(received_at=now, source=source, event_type=_guess(raw, "eventType"), event_id=_guess(raw, "eventId"),
                 field=field, reason=reason, payload=payload_text(raw))
            for raw, field, reason in items
        ]
        if not rows:
            return []
        with self.engine.begin() as conn:
            return [conn.execute(dead_letters.insert().values(**row)).inserted_primary_key[0] for row in rows]

    def list(self, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        query = sa.select(dead_letters).order_by(dead_letters.c.id).limit(limit)
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            return [DeadLetter(**row._mapping) for row in conn.execute(query)]

    def get(self, ids: Iterable[int]) -> list[DeadLetter]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dead_letters).where(dead_letters.c.id.in_(list(ids))).order_by(dead_letters.c.id))
            return [DeadLetter(**row._mapping) for row in rows]

    def count(self, include_replayed: bool = False) -> int:
        query = sa.select(sa.func.count()).select_from(dead_letters)
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def resolve(self, letter_id: int, outcome: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                dead_letters.update().where(dead_letters.c.id == letter_id)
                .values(replayed_at=datetime.now(timezone.utc), replay_outcome=outcome)
            )
