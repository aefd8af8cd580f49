"""The dead-letter store: every event that failed validation (or could not be delivered), kept with
its reason for an operator to inspect and replay. Writing here is what lets the stream move on past
a bad event.

One row per message, however often it arrives: a consumer killed between committing a batch's dead
letters and acknowledging the batch gets the same messages again, and a producer may resend. Each
row carries ``message_key``, a digest of the eventId when the payload has a usable one and of the
payload bytes otherwise, under a unique index; adding an existing key returns the existing row.

Everything written is made storable first: PostgreSQL's text type refuses U+0000 and UTF-8 cannot
encode a lone surrogate, so both are written as backslash escapes (no valid event contains either,
so an escaped payload replays exactly as the original would: as a failure). Columns with a length
are truncated rather than failing the insert.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

import sqlalchemy as sa

from gymops.db import as_utc, metadata

MAX_PAYLOAD_CHARS = 1024 * 1024  # a bigger payload was refused for its size; its head is enough to see why

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
    sa.Column("message_key", sa.String(64)),
    sa.Column("deliveries", sa.Integer),
    sa.Index("dead_letters_open", "replayed_at", "id"),
    sa.Index("dead_letters_message_key", "message_key", unique=True),
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
    message_key: str | None = None
    deliveries: int | None = None

    def summary(self) -> str:
        """One line for listings: id, when, where from, what, state, field and reason."""
        state = (f"replayed {self.replayed_at:%Y-%m-%d %H:%M} ({self.replay_outcome})" if self.replayed_at else "open")
        tries = f" after {self.deliveries} deliveries" if self.deliveries else ""
        return (f"#{self.id} {self.received_at:%Y-%m-%d %H:%M:%S} {self.source:5} {self.event_type or '?'} "
                f"{self.event_id or '?'} [{state}{tries}] {self.field}: {self.reason}")

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["received_at"] = self.received_at.isoformat()
        out["replayed_at"] = self.replayed_at.isoformat() if self.replayed_at else None
        return out


def storable(text: str, limit: int | None = None) -> str:
    """``text`` as any database stores it: lone surrogates and NUL as backslash escapes, at most ``limit``."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


def payload_bytes(raw) -> bytes:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return json.dumps(raw, ensure_ascii=False, default=str, sort_keys=True).encode("utf-8", "surrogatepass")


def payload_text(raw) -> str:
    if isinstance(raw, (bytes, bytearray, memoryview)):
        text = bytes(raw).decode("utf-8", errors="backslashreplace")
    elif isinstance(raw, str):
        text = raw
    else:
        try:
            text = json.dumps(raw, ensure_ascii=False, default=str)
        except (ValueError, TypeError, RecursionError):
            text = repr(raw)
    return storable(text, MAX_PAYLOAD_CHARS)


def _fields(raw) -> dict:
    """The decoded object of an invalid payload, when it is one (decoded with the validator's own
    bounded decoder: this must not raise on what made the event invalid)."""
    if isinstance(raw, dict):
        return raw
    from gymops.ingest.events import MAX_EVENT_BYTES, decode_json

    try:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = bytes(raw)
            if len(raw) > MAX_EVENT_BYTES:
                return {}
            raw = raw.decode("utf-8")
        if not isinstance(raw, str) or len(raw) > MAX_EVENT_BYTES:
            return {}
        data = decode_json(raw)
    except Exception:  # noqa: BLE001 - best effort only
        return {}
    return data if isinstance(data, dict) else {}


def _usable(value, limit: int) -> str | None:
    if isinstance(value, str) and value.strip() and len(value) <= limit and storable(value) == value:
        return value
    return None


def message_key(raw, data: dict | None = None) -> str:
    """The identity of a message in the dead-letter store: its eventId when it has a usable one,
    the digest of its bytes otherwise."""
    data = _fields(raw) if data is None else data
    event_id = _usable(data.get("eventId"), 128)
    if event_id is not None:
        return hashlib.sha256(b"eventId\x00" + event_id.encode("utf-8")).hexdigest()
    return hashlib.sha256(b"body\x00" + payload_bytes(raw)).hexdigest()


def _migrate(engine: sa.Engine) -> None:
    """Add the columns this version needs to a dead_letters table created by an older one."""
    have = {c["name"] for c in sa.inspect(engine).get_columns("dead_letters")}
    for name, kind in (("message_key", "VARCHAR(64)"), ("deliveries", "INTEGER")):
        if name not in have:
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE dead_letters ADD COLUMN {name} {kind}"))
            except sa.exc.DBAPIError:  # another process added it first
                if name not in {c["name"] for c in sa.inspect(engine).get_columns("dead_letters")}:
                    raise
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_message_key ON dead_letters (message_key)"))


_MIGRATED: set[str] = set()


class DeadLetterStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        url = str(engine.url)
        if url not in _MIGRATED:
            _migrate(engine)
            _MIGRATED.add(url)

    def _insert(self):
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(dead_letters)

    def add(self, items: Iterable[tuple], source: str) -> list[int]:
        """items: (raw payload, field, reason) or (raw payload, field, reason, deliveries).
        Committed before returning. Returns each item's row id: a message already in the store
        (same key) keeps its row and gets its id back."""
        now = datetime.now(timezone.utc)
        rows = []
        for item in items:
            raw, field, reason = item[:3]
            deliveries = item[3] if len(item) > 3 else None
            data = _fields(raw)
            rows.append(dict(
                received_at=now, source=storable(source, 32),
                event_type=_usable(data.get("eventType"), 64), event_id=_usable(data.get("eventId"), 128),
                field=storable(str(field), 128), reason=storable(str(reason), 10_000), payload=payload_text(raw),
                message_key=message_key(raw, data), deliveries=deliveries))
        if not rows:
            return []
        keys = [row["message_key"] for row in rows]
        with self.engine.begin() as conn:
            for row in rows:
                conn.execute(self._insert().values(**row).on_conflict_do_nothing(index_elements=["message_key"]))
            found = dict(conn.execute(sa.select(dead_letters.c.message_key, dead_letters.c.id)
                                      .where(dead_letters.c.message_key.in_(set(keys)))).all())
        return [found[key] for key in keys]

    def list(self, include_replayed: bool = False, limit: int = 100, offset: int = 0,
             reason: str | None = None, source: str | None = None, field: str | None = None) -> list[DeadLetter]:
        """Open dead letters (all with ``include_replayed``), oldest first; ``reason`` matches a
        substring of the reason, ``source`` (http, amqp, amqp-parked, cli, ...) and ``field`` exactly."""
        query = sa.select(dead_letters).order_by(dead_letters.c.id).limit(limit).offset(offset)
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        if reason:
            query = query.where(dead_letters.c.reason.contains(reason, autoescape=True))
        if source:
            query = query.where(dead_letters.c.source == source)
        if field:
            query = query.where(dead_letters.c.field == field)
        with self.engine.connect() as conn:
            return [_letter(row) for row in conn.execute(query)]

    def get(self, ids: Iterable[int]) -> list[DeadLetter]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(dead_letters).where(dead_letters.c.id.in_(list(ids))).order_by(dead_letters.c.id))
            return [_letter(row) for row in rows]

    def count(self, include_replayed: bool = False) -> int:
        query = sa.select(sa.func.count()).select_from(dead_letters)
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def count_keys(self, keys: Sequence[str]) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(dead_letters)
                                .where(dead_letters.c.message_key.in_(list(keys)))).scalar_one()

    def resolve(self, letter_id: int, outcome: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                dead_letters.update().where(dead_letters.c.id == letter_id)
                .values(replayed_at=datetime.now(timezone.utc), replay_outcome=storable(outcome))
            )


def _letter(row) -> DeadLetter:
    data = dict(row._mapping)
    data["received_at"] = as_utc(data["received_at"])
    data["replayed_at"] = as_utc(data["replayed_at"])
    return DeadLetter(**data)
