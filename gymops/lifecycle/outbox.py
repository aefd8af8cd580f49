"""The transactional outbox for model events, and their wire format.

A registry change and the event announcing it are written in ONE database transaction (pass the
registry's connection to ``Outbox.record``, or give ``ModelRegistry`` an outbox), so an event is
never announced for a change that rolled back, and never lost for one that committed. A relay
(``publish_pending``) then sends pending rows and marks each published only after the publisher
returned: at-least-once, so consumers de-duplicate on ``eventId`` (also the AMQP message id).

Events are versioned JSON (camelCase, ``eventType``, ``schemaVersion`` 1, ``eventId``,
``timestamp``), published to the durable fanout exchange ``gymops.model-events``.
"""
from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy as sa

from gymops.db import as_utc, metadata
from gymops.ingest.events import SCHEMA_VERSION, format_timestamp

log = logging.getLogger(__name__)

MODEL_EVENTS_EXCHANGE = "gymops.model-events"
MODEL_VERIFICATION_FAILED = "ModelVerificationFailedEvent"
MODEL_DEPLOYED = "ModelDeployedEvent"
MODEL_ROLLED_BACK = "ModelRolledBackEvent"
EVENT_TYPES = (MODEL_VERIFICATION_FAILED, MODEL_DEPLOYED, MODEL_ROLLED_BACK)
REASON_KEYS = ("gate", "check", "value", "threshold", "message")
MAX_ERROR = 2000

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Index("outbox_pending", "published_at", "id"),
)


# -- payloads ---------------------------------------------------------------------------------
def _json_safe(value):
    """Plain JSON values (numpy scalars, datetimes, sets and non-finite floats made portable)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_json_safe(v) for v in items]
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _json_safe(item())
    return str(value)


def _envelope(event_type: str, event_id: str | None, timestamp: datetime | None, body: dict) -> dict:
    return {
        "eventType": event_type,
        "schemaVersion": SCHEMA_VERSION,
        "eventId": event_id or str(uuid.uuid4()),
        "timestamp": format_timestamp(timestamp or datetime.now(timezone.utc)),
        **_json_safe(body),
    }


def _text(name: str, value, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty string, got {value!r}")
    return value


def _seconds(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a non-negative number of seconds, got {value!r}")
    return round(float(value), 3)


def failure_reason(gate: str, check: str, value, threshold, message: str) -> dict:
    """One reason of a ModelVerificationFailedEvent (the gates' failed checks and the deployer's
    failed steps are both reported in this shape)."""
    return {"gate": gate, "check": check, "value": value, "threshold": threshold, "message": message}


def model_verification_failed(model_type: str, version: str, reasons: list[dict], run_id: str | None = None,
                              event_id: str | None = None, timestamp: datetime | None = None) -> dict:
    """reasons: [failure_reason(...)] (gates.failures_as_reasons, the deployer's failed steps)."""
    if not isinstance(reasons, list) or not reasons:
        raise ValueError("reasons: must be a non-empty list of {gate, check, value, threshold, message}")
    for i, reason in enumerate(reasons):
        missing = [k for k in ("gate", "check", "message") if not isinstance(reason, dict) or k not in reason]
        if missing:
            raise ValueError(f"reasons[{i}]: missing {', '.join(missing)}")
    return _envelope(MODEL_VERIFICATION_FAILED, event_id, timestamp, {
        "modelType": _text("modelType", model_type),
        "version": _text("version", version),
        "reasons": [{k: r.get(k) for k in REASON_KEYS} for r in reasons],
        "runId": _text("runId", run_id, required=False),
    })


def model_deployed(model_type: str, version: str, triton_version: int, previous_version: str | None,
                   deployed_at: datetime, deploy_seconds: float | None = None,
                   event_id: str | None = None, timestamp: datetime | None = None) -> dict:
    if isinstance(triton_version, bool) or not isinstance(triton_version, int) or triton_version < 1:
        raise ValueError(f"tritonVersion: must be a positive integer, got {triton_version!r}")
    return _envelope(MODEL_DEPLOYED, event_id, timestamp, {
        "modelType": _text("modelType", model_type),
        "version": _text("version", version),
        "tritonVersion": triton_version,
        "previousVersion": _text("previousVersion", previous_version, required=False),
        "deployedAt": deployed_at,
        "deploySeconds": _seconds("deploySeconds", deploy_seconds),
    })


def model_rolled_back(model_type: str, from_version: str, to_version: str, reason: str,
                      seconds: float | None = None, event_id: str | None = None,
                      timestamp: datetime | None = None) -> dict:
    return _envelope(MODEL_ROLLED_BACK, event_id, timestamp, {
        "modelType": _text("modelType", model_type),
        "fromVersion": _text("fromVersion", from_version),
        "toVersion": _text("toVersion", to_version),
        "reason": _text("reason", reason),
        "seconds": _seconds("seconds", seconds),
    })


# -- the outbox table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OutboxRow:
    id: int
    event_type: str
    event_id: str
    payload: dict
    created_at: datetime
    published_at: datetime | None
    attempts: int
    last_error: str | None



def _row(row) -> OutboxRow:
    m = dict(row._mapping)
    m["created_at"], m["published_at"] = as_utc(m["created_at"]), as_utc(m["published_at"])
    return OutboxRow(**m)


class Outbox:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        metadata.create_all(engine, tables=[outbox])

    def record(self, event_type: str, payload: dict, conn: sa.Connection | None = None) -> str:
        """Store one event to publish; returns its eventId. With ``conn`` it joins the caller's
        transaction (committed or rolled back with it); without, it commits on its own."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r} (expected one of {', '.join(EVENT_TYPES)})")
        if not isinstance(payload, dict):
            raise ValueError(f"payload must be a dict, got {type(payload).__name__}")
        if payload.get("eventType", event_type) != event_type:
            raise ValueError(f"payload eventType {payload['eventType']!r} does not match {event_type!r}")
        payload = _json_safe({"eventType": event_type, "schemaVersion": SCHEMA_VERSION, **payload})
        payload.setdefault("eventId", str(uuid.uuid4()))
        payload.setdefault("timestamp", format_timestamp(datetime.now(timezone.utc)))
        values = dict(event_type=event_type, event_id=payload["eventId"], payload=payload,
                      created_at=datetime.now(timezone.utc), attempts=0)
        if conn is not None:
            conn.execute(outbox.insert().values(**values))
        else:
            with self.engine.begin() as own:
                own.execute(outbox.insert().values(**values))
        return payload["eventId"]

    def record_event(self, payload: dict, conn: sa.Connection | None = None) -> str:
        """``record`` for a payload from one of the builders above (its eventType names the type)."""
        return self.record(payload.get("eventType"), payload, conn=conn)

    def amend_pending(self, event_id: str, changes: dict, conn: sa.Connection | None = None) -> bool:
        """Set fields of a still-pending event's payload (e.g. a measurement only known after the
        change it announces); True when amended, False when the event is unknown or already
        published (then it went out without the change). The envelope (eventType, eventId,
        schemaVersion, timestamp) cannot be changed."""
        frozen = {"eventType", "eventId", "schemaVersion", "timestamp"} & set(changes)
        if frozen:
            raise ValueError(f"cannot amend the envelope fields {sorted(frozen)}")

        def amend(c: sa.Connection) -> bool:
            row = c.execute(sa.select(outbox.c.id, outbox.c.payload).where(
                outbox.c.event_id == event_id, outbox.c.published_at.is_(None))).first()
            if row is None:
                return False
            payload = {**row.payload, **_json_safe(changes)}
            return c.execute(outbox.update().where(outbox.c.id == row.id, outbox.c.published_at.is_(None))
                             .values(payload=payload)).rowcount == 1

        if conn is not None:
            return amend(conn)
        with self.engine.begin() as own:
            return amend(own)

    def pending(self, limit: int = 100) -> list[OutboxRow]:
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(
                sa.select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(limit))]

    def get(self, event_id: str) -> OutboxRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(outbox).where(outbox.c.event_id == event_id)).first()
            return _row(row) if row is not None else None

    def publish_pending(self, publish: Callable[[dict], None], limit: int = 1000,
                        stop_on_error: bool = True) -> int:
        """Send pending events in order, oldest first; returns how many were published.

        Each row is marked published only after ``publish(payload)`` returned; a failure counts an
        attempt and keeps the error on the row, which stays pending for the next call. By default
        the first failure ends the call (the broker is likely down, and order is kept). On
        PostgreSQL each row is claimed with FOR UPDATE SKIP LOCKED, so relays may run side by side."""
        published = 0
        skip: list[int] = []
        for _ in range(limit):
            with self.engine.connect() as conn:
                query = (sa.select(outbox).where(outbox.c.published_at.is_(None), outbox.c.id.not_in(skip))
                         .order_by(outbox.c.id).limit(1))
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                row = conn.execute(query).first()
                if row is None:
                    conn.rollback()
                    break
                item = _row(row)
                if conn.dialect.name != "postgresql":
                    conn.rollback()  # SQLite: no read snapshot held across the publish call
                try:
                    publish(item.payload)
                except Exception as exc:  # noqa: BLE001 - any publisher failure leaves the row pending
                    conn.execute(outbox.update().where(outbox.c.id == item.id).values(
                        attempts=outbox.c.attempts + 1, last_error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR]))
                    conn.commit()
                    log.warning("outbox: publishing %s %s failed: %r", item.event_type, item.event_id, exc)
                    if stop_on_error:
                        break
                    skip.append(item.id)
                    continue
                conn.execute(outbox.update().where(outbox.c.id == item.id).values(
                    published_at=datetime.now(timezone.utc), attempts=outbox.c.attempts + 1, last_error=None))
                conn.commit()
                published += 1
        return published


# -- RabbitMQ -----------------------------------------------------------------------------------
class RabbitMQEventPublisher:
    """Publishes a payload as a persistent message on the durable fanout exchange, returning only
    once the broker confirmed it (raises otherwise, so the outbox keeps the row pending).

    The exchange is not mandatory-routed: with no queue bound the broker confirms and drops the
    message, so subscribers bind durable queues of their own."""

    def __init__(self, settings, exchange: str = MODEL_EVENTS_EXCHANGE):
        self.settings = settings
        self.exchange = exchange
        self._conn = None
        self._channel = None

    def _connect(self) -> None:
        import pika

        from gymops.ingest.broker import parameters

        self._conn = pika.BlockingConnection(parameters(self.settings))
        self._channel = self._conn.channel()
        self._channel.exchange_declare(self.exchange, exchange_type="fanout", durable=True)
        self._channel.confirm_delivery()

    def __call__(self, payload: dict) -> None:
        import pika
        from pika.exceptions import AMQPError

        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                                     message_id=payload.get("eventId"), type=payload.get("eventType"))
        for attempt in (1, 2):  # one reconnect (a broker restart since the last call), then give up
            try:
                if self._channel is None or not self._channel.is_open:
                    self._connect()
                self._channel.basic_publish(self.exchange, "", body, props)
                return
            except (AMQPError, OSError) as exc:
                self.close()
                if attempt == 2:
                    raise ConnectionError(f"RabbitMQ publish to {self.exchange} failed: {exc!r}") from exc

    def close(self) -> None:
        from gymops.ingest.broker import close_quietly

        close_quietly(self._conn)
        self._conn = self._channel = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rabbitmq_publisher(settings, exchange: str = MODEL_EVENTS_EXCHANGE) -> RabbitMQEventPublisher:
    """A callable for ``Outbox.publish_pending`` (call ``.close()`` when done)."""
    return RabbitMQEventPublisher(settings, exchange)
