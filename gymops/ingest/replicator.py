"""The replicator: validates events, de-duplicates them by eventId and pushes them into Feast.

Every ingestion path (RabbitMQ consumer, HTTP endpoint, JSONL CLI, dead-letter replay) goes
through ``Replicator.ingest``. When it returns, each input is either in both Feast stores, known
as a duplicate of one that is, or committed to the dead-letter store: only then may the caller
acknowledge. If it raises, nothing may be acknowledged; retrying the same batch is safe.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import pandas as pd

from gymops.history import tables as history
from gymops.ingest.events import (
    Event,
    EventValidationError,
    FaceAuthenticatedEvent,
    TaskConfirmedEvent,
    UserCreatedEvent,
    parse_event,
)

log = logging.getLogger(__name__)

STORED, DUPLICATE, DEAD_LETTER = "stored", "duplicate", "dead_letter"


@dataclass(frozen=True)
class Outcome:
    status: str
    event_id: str | None = None
    field: str | None = None
    reason: str | None = None
    dead_letter_id: int | None = None


@dataclass
class IngestReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def _n(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def stored(self) -> int:
        return self._n(STORED)

    @property
    def duplicates(self) -> int:
        return self._n(DUPLICATE)

    @property
    def dead_lettered(self) -> int:
        return self._n(DEAD_LETTER)

    def summary(self) -> dict[str, int]:
        return {"stored": self.stored, "duplicates": self.duplicates, "deadLettered": self.dead_lettered}


def history_row(event: Event, created: datetime) -> tuple[str, dict[str, Any]]:
    """The history table and row an event becomes. Column names are the event's fields."""
    if isinstance(event, TaskConfirmedEvent):
        row = dict(
            event_id=event.event_id, task_id=event.task_id, helper_id=event.helper_id, branch_id=event.branch_id,
            photo_url=event.photo_url, ai_result=event.ai_result, ai_model_version=event.ai_model_version,
            final_result=event.final_result, corrected=event.corrected, correction_reason=event.correction_reason,
        )
        table = history.TASK_CONFIRMATIONS
    elif isinstance(event, UserCreatedEvent):
        row = dict(
            event_id=event.event_id, user_id=event.user_id, sample_kind="enrolment", role=event.role,
            branch_id=event.branch_id, photo_url=event.face_photo_url, similarity=None, model_version=None,
        )
        table = history.FACE_SAMPLES
    elif isinstance(event, FaceAuthenticatedEvent):
        row = dict(
            event_id=event.event_id, user_id=event.user_id, sample_kind="entry", role=None, branch_id=None,
            photo_url=event.photo_url, similarity=event.similarity, model_version=event.model_version,
        )
        table = history.FACE_SAMPLES
    else:  # pragma: no cover - parse_event only returns the types above
        raise TypeError(type(event))
    row.update(model_type=event.model_type, event_timestamp=event.timestamp, created=created)
    return table, row


def history_frame(table: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=history.column_names(table))
    for col in ("event_timestamp", "created"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


class Replicator:
    def __init__(self, settings, store=None, dead_letters=None, check_photo_url: Callable[[str], None] | None = None):
        from gymops.db import engine_for
        from gymops.ingest.deadletters import DeadLetterStore
        from gymops.history.feature_store import open_store

        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetterStore(engine_for(settings))
        if check_photo_url is None:
            from gymops.storage.photos import photo_store_for

            check_photo_url = photo_store_for(settings).check_url
        self.check_photo_url = check_photo_url
        self.histories = {t: history.history_for(settings, t) for t in history.TABLES}
        self._lock = threading.Lock()  # one batch at a time per process keeps the file ledger simple

    def stores_ok(self) -> bool:
        """Whether this tier's database, the offline history and (services) Redis answer now. Tells
        an outage (every batch would fail: hold and retry) from a poison event (only it fails)."""
        import sqlalchemy as sa

        try:
            with self.dead_letters.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            for h in self.histories.values():
                h.present(["(probe)"])
            if getattr(self.settings, "services", False):
                import redis

                redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5).ping()
            return True
        except Exception as exc:  # noqa: BLE001
            log.error("stores unavailable: %r", exc)
            return False

    def recover(self) -> int:
        return sum(h.recover() for h in self.histories.values())

    def validate(self, raw) -> Event:
        """parse_event with this deployment's limits. Raises EventValidationError only."""
        return parse_event(raw, check_photo_url=self.check_photo_url,
                           max_bytes=getattr(self.settings, "event_max_bytes", 64 * 1024),
                           max_depth=getattr(self.settings, "event_max_depth", 8))

    def _row(self, raw, created: datetime) -> tuple[Event, str, dict]:
        """Validate and shape one input; anything but a storable row is an EventValidationError, so
        one odd event is dead-lettered instead of failing (and blocking) its whole batch."""
        event = self.validate(raw)
        try:
            table, row = history_row(event, created)
        except Exception as exc:  # noqa: BLE001
            log.error("event %s passed validation but cannot be stored: %r", event.event_id, exc)
            raise EventValidationError("(validation)", f"not storable: {type(exc).__name__}: {str(exc)[:200]}") from exc
        return event, table, row

    def ingest(self, raws: Sequence[Any], source: str) -> IngestReport:
        outcomes: list[Outcome | None] = [None] * len(raws)
        invalid: list[tuple[int, Any, EventValidationError]] = []
        by_table: dict[str, list[tuple[int, dict]]] = {}
        seen_in_batch: set[str] = set()
        created = datetime.now(timezone.utc)
        for i, raw in enumerate(raws):
            try:
                event, table, row = self._row(raw, created)
            except EventValidationError as exc:
                invalid.append((i, raw, exc))
                continue
            if event.event_id in seen_in_batch:
                outcomes[i] = Outcome(DUPLICATE, event.event_id)
                continue
            seen_in_batch.add(event.event_id)
            by_table.setdefault(table, []).append((i, row))

        with self._lock:
            # Dead letters first: once committed, the stream may move past them whatever happens next.
            # If the push below fails the batch is redelivered; the store keys each message, so its
            # dead letters are not written twice.
            ids = self.dead_letters.add([(raw, exc.field, exc.reason) for _, raw, exc in invalid], source)
            for (i, _, exc), letter_id in zip(invalid, ids):
                outcomes[i] = Outcome(DEAD_LETTER, None, exc.field, exc.reason, letter_id)
            for table, items in by_table.items():
                known = self.histories[table].present(row["event_id"] for _, row in items)
                fresh = []
                for i, row in items:
                    if row["event_id"] in known:
                        outcomes[i] = Outcome(DUPLICATE, row["event_id"])
                    else:
                        fresh.append((i, row))
                if fresh:
                    self._push(table, [row for _, row in fresh])
                    for i, row in fresh:
                        outcomes[i] = Outcome(STORED, row["event_id"])
        return IngestReport(outcomes)  # type: ignore[arg-type]

    def _push(self, table: str, rows: list[dict]) -> None:
        from feast.data_source import PushMode

        self.store.push(f"{table}_push", history_frame(table, rows), to=PushMode.ONLINE_AND_OFFLINE)


class Batcher:
    """Gathers events from concurrent callers (HTTP requests) into batched ``ingest`` calls.

    Natural batching: whatever queued up while the previous batch was being pushed goes out as
    the next batch (up to ``batch_size`` events), so one caller pays no added latency and many
    callers share pushes. ``submit`` blocks until its events are stored, duplicates or
    dead-lettered, and returns their outcomes; it raises what the batch raised, in which case
    nothing of it was acknowledged.
    """

    def __init__(self, replicator: Replicator, source: str, batch_size: int):
        self.replicator, self.source, self.batch_size = replicator, source, batch_size
        self._cond = threading.Condition()
        self._queue: list[tuple[list, Future]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ingest-batcher", daemon=True)
        self._thread.start()

    def submit(self, raws: list, timeout: float | None = None) -> list[Outcome]:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._queue.append((raws, future))
            self._cond.notify()
        return future.result(timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[tuple[list, Future]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            taken, count = [], 0
            while self._queue and (not taken or count + len(self._queue[0][0]) <= self.batch_size):
                item = self._queue.pop(0)
                taken.append(item)
                count += len(item[0])
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                return
            flat = [raw for raws, _ in taken for raw in raws]
            try:
                report = self.replicator.ingest(flat, self.source)
            except Exception as exc:
                log.error("batch of %d events from %d callers failed (%r); retrying each caller's on its own",
                          len(flat), len(taken), exc)
                self._one_by_one(taken, exc)
                continue
            at = 0
            for raws, future in taken:
                future.set_result(report.outcomes[at : at + len(raws)])
                at += len(raws)

    def _one_by_one(self, taken: list[tuple[list, Future]], first: Exception) -> None:
        """One caller's events must never fail another caller's: after a shared batch failed,
        each caller's events are ingested alone, and only a caller whose own events fail (a
        store down) learns of a failure."""
        for raws, future in taken:
            if len(taken) == 1:
                future.set_exception(first)
                continue
            try:
                future.set_result(self.replicator.ingest(raws, self.source).outcomes)
            except Exception as exc:  # noqa: BLE001 - reported to this caller only
                log.exception("ingest of %d events failed", len(raws))
                future.set_exception(exc)


def replay_dead_letters(replicator: Replicator, ids: Sequence[int] | None = None, payload: str | None = None,
                        **filters):
    """Re-validate dead letters (or one, with a corrected ``payload``) and ingest those now valid.
    Without ids: every open one, or those matching ``filters`` (``reason``, ``source``, ``field``
    as in ``DeadLetterStore.list``).

    Returns (letter, outcome) pairs. A letter that still fails stays open with its old reason and
    the new one reported; it is not copied into a second dead letter.
    """
    store = replicator.dead_letters
    letters = store.get(ids) if ids else store.list(limit=10_000, **{k: v for k, v in filters.items() if v})
    results = []
    for letter in letters:
        if letter.replayed_at is not None:
            results.append((letter, Outcome(DUPLICATE, letter.event_id, reason="already replayed")))
            continue
        raw = payload if payload is not None else letter.payload
        try:
            replicator.validate(raw)
        except EventValidationError as exc:
            results.append((letter, Outcome(DEAD_LETTER, letter.event_id, exc.field, exc.reason, letter.id)))
            continue
        outcome = replicator.ingest([raw], "replay").outcomes[0]
        store.resolve(letter.id, outcome.status)
        results.append((letter, outcome))
    return results
