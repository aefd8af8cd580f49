"""Enrolments as they arrive (issue 12, item 3): UserCreatedEvents from the tier's history into every
live gallery, and the deletion of a member.

Where they come from: the history this tier keeps (Feast's offline store, gymops.history), which the
ingestion paths fill from the event stream; never the Auth service's database (DD-03). The follower
asks the history for the enrolment rows ingested since its high-water mark
(gymops.history.face_samples.enrolments_ingested_since) and enrols each through
gymops.face.swap.FaceGalleries.enrol, so every live version embeds it (the active pair, the previous
one kept for rollback, and a candidate being re-indexed). A newer UserCreatedEvent for an enrolled
member replaces their photo and every version's vector; an older or repeated one changes nothing
(gymops.face.gallery.GalleryStore.enrol decides by the events' timestamps).

The high-water mark is the history's ``created`` column (when a batch was ingested), kept in the
tier's database (face_enrolment_follower). Why it is read again ``overlap_s`` back, with a ledger of
handled event ids (face_enrolment_events): a batch is stamped when its ingestion starts and becomes
visible when its push commits; the HTTP endpoint and the RabbitMQ consumer commit independently, so
a batch stamped earlier can become visible after a later one was read. Re-reading the overlap finds
it; the ledger keeps the events already handled from being looked at again, and is pruned once they
fall out of the window. A batch that took longer than the overlap (default 600 s: ~10^3 times a
batch's push) between its stamp and its commit would be missed; `gymops face enrol-sync --since`
reads again from any moment.

Restart: an event is recorded in the ledger after FaceGalleries.enrol returns; a crash in between
re-reads it, and the stored enrolment (as new as the event, or a deletion after it) skips it BEFORE
any photo is fetched or embedded: a restart neither loses an enrolment nor embeds one twice.

Deletion: the event contract has no member-deletion or deactivation event (gymops/ingest/events.py
knows TaskConfirmedEvent, UserCreatedEvent, FaceAuthenticatedEvent), so an operator deletes with
`gymops face delete USER_ID` (FaceGalleries.delete): every version's vector goes at once, the
enrolment row stays marked deleted, so a replayed or late UserCreatedEvent older than the deletion
cannot bring the member back; a NEWER one (the member enrols again) does. A running Access service
drops the member from its loaded galleries on its next sync (gymops.face.service).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import sqlalchemy as sa

from gymops.db import as_utc, metadata
from gymops.face.gallery import Enrolment
from gymops.face.matching import InvalidPhoto
from gymops.face.swap import FaceGalleries

log = logging.getLogger(__name__)

follower_state = sa.Table(
    "face_enrolment_follower", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),  # history `created` read up to
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
handled = sa.Table(
    "face_enrolment_events", metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("follower", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),  # its ingestion time (pruning)
    sa.Column("outcome", sa.String(16), nullable=False),  # enrolled / unchanged / rejected
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False),
)
BEGINNING = datetime(2000, 1, 1, tzinfo=timezone.utc)  # the event contract's earliest timestamp
OUTCOMES = ("enrolled", "unchanged", "rejected")


@dataclass
class PassReport:
    read: int = 0  # enrolment rows read from the history (the overlap included)
    new: int = 0  # of those, not handled before
    enrolled: int = 0  # changed the galleries (new member or newer photo)
    unchanged: int = 0  # the store already held this enrolment, a newer one or a later deletion
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (event_id, reason): photo missing/undecodable
    pending: int = 0  # left for the next pass (max_events)
    watermark: datetime | None = None
    waiting: str | None = None  # why nothing was enrolled (no live gallery yet)

    def as_dict(self) -> dict:
        return {"read": self.read, "new": self.new, "enrolled": self.enrolled, "unchanged": self.unchanged,
                "rejected": len(self.rejected), "pending": self.pending,
                "watermark": self.watermark.isoformat() if self.watermark else None, "waiting": self.waiting}


def _now() -> datetime:
    return datetime.now(timezone.utc)


class EnrolmentFollower:
    """Reads new enrolments from the history and enrols them into ``pairs`` (module docstring).

    ``photo_for(url)``: the enrolment photo's bytes (default: the profile's photo store); a missing
    or undecodable photo rejects that event (recorded with the reason), any other error stops the
    pass and the next pass tries again. ``name`` keys the persisted mark and ledger (one follower
    per name). ``max_events`` bounds one pass, so a service's other duties are not starved by a
    catch-up; ``catch_up`` repeats passes until nothing is pending."""

    def __init__(self, settings, pairs: FaceGalleries, photo_for: Callable[[str], bytes] | None = None,
                 name: str = "enrolments", overlap_s: float | None = None, max_events: int = 1000):
        if photo_for is None:
            from gymops.storage.photos import photo_store_for

            photo_for = photo_store_for(settings).get
        self.settings, self.pairs, self.photo_for, self.name = settings, pairs, photo_for, name
        self.overlap = timedelta(seconds=settings.face.enrol_overlap_s if overlap_s is None else overlap_s)
        self.max_events = max_events
        self.engine = pairs.store.engine
        metadata.create_all(self.engine, tables=[follower_state, handled])

    # -- the persisted mark ----------------------------------------------------------------------
    def watermark(self) -> datetime | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(follower_state.c.watermark)
                                 .where(follower_state.c.name == self.name)).scalar()
        return as_utc(value)

    def status(self) -> dict:
        return follower_status(self.engine, self.name)

    def _set_watermark(self, conn, value: datetime) -> None:
        done = conn.execute(sa.update(follower_state).where(follower_state.c.name == self.name)
                            .values(watermark=value, updated_at=_now())).rowcount
        if not done:
            conn.execute(sa.insert(follower_state).values(name=self.name, watermark=value, updated_at=_now()))

    def _handled_ids(self, event_ids: list[str]) -> set[str]:
        found: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(event_ids), 500):
                chunk = event_ids[i:i + 500]
                found.update(conn.execute(sa.select(handled.c.event_id).where(handled.c.event_id.in_(chunk))).scalars())
        return found

    def _record(self, row, outcome: str, reason: str | None = None) -> None:
        values = dict(event_id=row.event_id, follower=self.name, user_id=row.user_id, created=row.created.to_pydatetime(),
                      outcome=outcome, reason=reason, handled_at=_now())
        with self.engine.begin() as conn:
            conn.execute(sa.delete(handled).where(handled.c.event_id == row.event_id))
            conn.execute(sa.insert(handled).values(**values))

    # -- one pass --------------------------------------------------------------------------------
    def run_once(self, since: datetime | None = None) -> PassReport:
        """Enrol what the history holds beyond the mark (or, with ``since``, everything ingested from
        then on, the ledger ignored: a replay; the store still skips what it holds, unembedded)."""
        from gymops.history.face_samples import enrolments_ingested_since

        report = PassReport(watermark=self.watermark())
        if not self.pairs.live_versions():
            report.waiting = "no live face gallery yet (gymops face init)"
            return report
        start = since if since is not None else (report.watermark - self.overlap if report.watermark else BEGINNING)
        rows = enrolments_ingested_since(self.settings, start)
        report.read = len(rows)
        if not len(rows):
            return report
        done = set() if since is not None else self._handled_ids(rows.event_id.tolist())
        todo = rows[~rows.event_id.isin(done)]
        report.new = len(todo)
        batch, rest = todo.iloc[:self.max_events], todo.iloc[self.max_events:]
        report.pending = len(rest)
        # a member's older enrolments in the same pass are superseded by the newest: not embedded
        newest = batch.groupby("user_id").event_timestamp.transform("max")
        for row, superseded in zip(batch.itertuples(index=False), batch.event_timestamp < newest):
            outcome, reason = ("unchanged", None) if superseded else self._enrol(row)
            if outcome == "rejected":
                report.rejected.append((row.event_id, reason))
            else:
                setattr(report, outcome, getattr(report, outcome) + 1)
            self._record(row, outcome, reason)
        # the mark: everything read is handled, or the first event left for the next pass
        mark = rest.created.min() if len(rest) else rows.created.max()
        mark = mark.to_pydatetime()
        if report.watermark is None or mark > report.watermark or len(rest):
            with self.engine.begin() as conn:
                self._set_watermark(conn, mark)
                conn.execute(sa.delete(handled).where(handled.c.follower == self.name,
                                                      handled.c.created < mark - self.overlap,
                                                      handled.c.outcome != "rejected"))
            report.watermark = mark
        return report

    def catch_up(self, since: datetime | None = None) -> PassReport:
        """Passes until nothing is pending; the reports added up."""
        total = self.run_once(since)
        while total.pending and total.waiting is None:
            more = self.run_once()
            total.read += more.read
            total.enrolled += more.enrolled
            total.unchanged += more.unchanged
            total.rejected += more.rejected
            total.pending, total.watermark = more.pending, more.watermark
        return total

    def _enrol(self, row) -> tuple[str, str | None]:
        at = row.event_timestamp.to_pydatetime()
        stored = self.pairs.store.enrolment(row.user_id)
        if stored is not None and max(stored.enrolled_at, stored.deleted_at or stored.enrolled_at) >= at:
            return "unchanged", None  # already enrolled from this event, or superseded: nothing to embed
        try:
            photo = self.photo_for(row.photo_url)
        except (FileNotFoundError, ValueError) as exc:  # no such photo, or a URL outside the store
            return "rejected", f"photo: {type(exc).__name__}: {exc}"
        try:
            changed = self.pairs.enrol(Enrolment(row.user_id, row.photo_url, at, row.role or "", row.branch_id or ""),
                                       photo)
        except InvalidPhoto as exc:
            return "rejected", f"photo: {exc}"
        return ("enrolled" if changed else "unchanged"), None


def follower_status(engine, name: str = "enrolments") -> dict:
    """What an operator looks at: the follower's mark, its ledger's outcomes, the latest rejections."""
    metadata.create_all(engine, tables=[follower_state, handled])
    with engine.connect() as conn:
        mark = as_utc(conn.execute(sa.select(follower_state.c.watermark).where(follower_state.c.name == name)).scalar())
        counts = dict(conn.execute(sa.select(handled.c.outcome, sa.func.count())
                                   .where(handled.c.follower == name).group_by(handled.c.outcome)).all())
        rejected = conn.execute(sa.select(handled.c.event_id, handled.c.user_id, handled.c.reason)
                                .where(handled.c.follower == name, handled.c.outcome == "rejected")
                                .order_by(handled.c.created.desc()).limit(20)).all()
    return {"follower": name, "watermark": mark.isoformat() if mark else None,
            "ledger": {k: int(counts.get(k, 0)) for k in OUTCOMES},
            "rejected": [{"eventId": e, "userId": u, "reason": r} for e, u, r in rejected]}
