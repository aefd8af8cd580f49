"""The model-and-gallery pair: enrolment into every live gallery, the re-index of a candidate, the
flip that changes probe model and gallery together, rollback. Plain Python, no Dagster (issue 12,
items 3 and 5).

Why a state machine in the database and not a flag in memory: a re-index of 10^4 members takes
minutes and may be killed; the persisted state says which galleries are live, so a restarted process
knows that the active pair is untouched (the candidate was only ever "indexing") and either resumes
the re-index where it stopped (members whose candidate vector is already stored are skipped) or
aborts it (the candidate's rows are dropped).

States of a model version's gallery (table face_galleries):
    indexing  -> ready -> active -> previous -> archived
       |           |                   \\-> active (rollback)
       +-----------+--> aborted         (rollback: active <-> previous)
Exactly one version is ``active`` (entry probes are embedded by it and compared with its gallery).
``previous`` keeps its gallery up to date for an instant rollback. Live versions = active, previous,
indexing and ready ones: an enrolment is embedded by EVERY live version in one transaction
(gymops.face.gallery.GalleryStore.enrol), so enrolments that arrive during a re-index are embedded by
both, and a rollback finds the previous gallery complete.

The flip (``flip``): (1) fill any member still missing from the candidate's gallery, (2) load the
candidate's index into the matcher, (3) swap the served model (a callable: Triton's gRPC swap in
production), (4) record candidate active / old active previous / older previous archived. Until (3)
returns, probes come back from the old version and are compared with its still-loaded gallery; after
it, with the candidate's; each probe is matched in the version that embedded it (matching.py), so no
comparison crosses versions at any moment of the swap. A crash before (4) leaves the old active pair
recorded as active: on restart ``recover`` re-serves it (the swap callable is idempotent).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

import numpy as np
import sqlalchemy as sa

from gymops.db import metadata
from gymops.face.gallery import Enrolment, GalleryIndex, GalleryStore, gallery as gallery_table
from gymops.face.matching import Embedder, FaceMatcher

galleries = sa.Table(
    "face_galleries", metadata,
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
LIVE = ("active", "previous", "indexing", "ready")
TRANSITIONS = {
    "indexing": {"ready", "aborted"}, "ready": {"active", "aborted"},
    "active": {"previous"}, "previous": {"active", "archived"},
}


class SwapError(RuntimeError):
    pass


@dataclass(frozen=True)
class GalleryState:
    model_version: str
    state: str
    threshold: float


def _now() -> datetime:
    return datetime.now(timezone.utc)


class FaceGalleries:
    """The persisted pair state, the store, and the process's matcher kept in step with them.

    ``embedder_for(version)`` gives the embedder of a version (LocalEmbedder of its folder);
    ``serve(version)`` makes the served public name answer with that version (idempotent)."""

    def __init__(self, store: GalleryStore, matcher: FaceMatcher, embedder_for: Callable[[str], Embedder],
                 serve: Callable[[str], None] = lambda version: None):
        self.store, self.matcher, self.embedder_for, self.serve = store, matcher, embedder_for, serve
        metadata.create_all(store.engine, tables=[galleries])

    # -- state -----------------------------------------------------------------------------------
    def states(self) -> dict[str, GalleryState]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(galleries)).all()
        return {r.model_version: GalleryState(r.model_version, r.state, float(r.threshold)) for r in rows}

    def in_state(self, *states: str) -> list[GalleryState]:
        return sorted((s for s in self.states().values() if s.state in states), key=lambda s: s.model_version)

    def active(self) -> GalleryState | None:
        found = self.in_state("active")
        return found[0] if found else None

    def live_versions(self) -> list[str]:
        return [s.model_version for s in self.in_state(*LIVE)]

    def _set(self, conn, version: str, state: str, threshold: float | None = None) -> None:
        row = conn.execute(sa.select(galleries.c.state).where(galleries.c.model_version == version)).first()
        if row is None:
            conn.execute(sa.insert(galleries).values(model_version=version, state=state, threshold=threshold,
                                                     updated_at=_now()))
            return
        if state not in TRANSITIONS.get(row.state, set()):
            raise SwapError(f"gallery {version}: {row.state} -> {state} is not a transition")
        conn.execute(sa.update(galleries).where(galleries.c.model_version == version)
                     .values(state=state, updated_at=_now()))

    def _load_index(self, state: GalleryState) -> None:
        self.matcher.set_index(GalleryIndex.load(self.store, state.model_version, state.threshold))

    # -- first version and restart ---------------------------------------------------------------
    def initialise(self, version: str, threshold: float) -> None:
        """The first active pair (an empty gallery of the first served version)."""
        with self.store.engine.begin() as conn:
            if conn.execute(sa.select(galleries.c.model_version).where(galleries.c.state == "active")).first():
                raise SwapError("an active gallery exists already")
            self._set(conn, version, "active", threshold)
        self.recover()

    def recover(self) -> GalleryState | None:
        """A (re)started process: load the active and previous galleries into the matcher and serve the
        active version. Candidates still indexing are left as they are (resume or abort them)."""
        for s in self.in_state("active", "previous"):
            self._load_index(s)
        active = self.active()
        if active is not None:
            self.serve(active.model_version)
        return active

    # -- enrolment -------------------------------------------------------------------------------
    def enrol(self, enrolment: Enrolment, photo: bytes) -> bool:
        """A UserCreatedEvent: embedded by every live version, stored in one transaction, then put
        into the loaded indexes. False when the store already holds this enrolment or a newer one."""
        for _attempt in range(3):
            versions = self.live_versions()
            if not versions:
                raise SwapError("no live face gallery: initialise the first version")
            vectors = {v: self._embed_one(v, photo) for v in versions}
            if set(self.live_versions()) - set(versions):
                continue  # a re-index began meanwhile: embed with it too
            if not self.store.enrol(enrolment, vectors):
                return False
            for version, vector in vectors.items():
                index = self.matcher.loaded(version)
                if index is not None:
                    index.upsert(enrolment.user_id, vector)
            return True
        raise SwapError("live galleries kept changing during an enrolment")

    def delete(self, user_id: str) -> bool:
        done = self.store.delete(user_id)
        for version in self.live_versions():
            index = self.matcher.loaded(version)
            if index is not None:
                index.remove(user_id)
        return done

    def _embed_one(self, version: str, photo: bytes) -> np.ndarray:
        vectors, versions = self.embedder_for(version).embed([photo])
        if versions[0] != version:
            raise SwapError(f"the embedder of {version} answered with {versions[0]}")
        return vectors[0]

    # -- re-index --------------------------------------------------------------------------------
    def begin(self, candidate: str, threshold: float) -> None:
        """Make ``candidate`` live (indexing): enrolments from now on are embedded by it too."""
        with self.store.engine.begin() as conn:
            row = conn.execute(sa.select(galleries.c.state).where(galleries.c.model_version == candidate)).first()
            if row is not None and row.state == "indexing":
                return  # resuming
            if row is not None:
                raise SwapError(f"gallery {candidate} is {row.state}; a candidate version is new")
            self._set(conn, candidate, "indexing", threshold)

    def reindex(self, candidate: str, photo_for: Callable[[str], bytes], batch_size: int = 32,
                progress: Callable[[int, int], None] | None = None) -> int:
        """Re-embed every enrolled member's stored enrolment photo with the candidate into its gallery.
        Resumable: members whose candidate vector is already stored are skipped. Returns rows written."""
        state = self.states().get(candidate)
        if state is None or state.state != "indexing":
            raise SwapError(f"gallery {candidate} is not indexing")
        done = set(self.store.vectors(candidate)[0])
        todo = [e for e in self.store.active_enrolments() if e.user_id not in done]
        embedder = self.embedder_for(candidate)
        written = 0
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            vectors, versions = embedder.embed([photo_for(e.photo_url) for e in chunk])
            if set(versions) != {candidate}:
                raise SwapError(f"the embedder of {candidate} answered with {sorted(set(versions))}")
            written += self.store.put_vectors(candidate, [(e.user_id, v, e.enrolled_at) for e, v in zip(chunk, vectors)])
            if progress:
                progress(min(i + batch_size, len(todo)), len(todo))
        return written

    def missing(self, version: str) -> list[Enrolment]:
        have = set(self.store.vectors(version)[0])
        return [e for e in self.store.active_enrolments() if e.user_id not in have]

    def complete(self, candidate: str, photo_for: Callable[[str], bytes]) -> None:
        """indexing -> ready once every enrolled member has a candidate vector."""
        self.reindex(candidate, photo_for)
        if self.missing(candidate):
            raise SwapError(f"gallery {candidate} still misses {len(self.missing(candidate))} members")
        with self.store.engine.begin() as conn:
            self._set(conn, candidate, "ready")

    def abort(self, candidate: str) -> None:
        """Give up a candidate (a failed gate, a killed re-index nobody resumes): its rows go."""
        with self.store.engine.begin() as conn:
            self._set(conn, candidate, "aborted")
            conn.execute(sa.delete(gallery_table).where(gallery_table.c.model_version == candidate))
        self.matcher.drop_index(candidate)

    # -- flip and rollback -----------------------------------------------------------------------
    def flip(self, candidate: str, photo_for: Callable[[str], bytes]) -> None:
        states = self.states()
        cand = states.get(candidate)
        if cand is None or cand.state != "ready":
            raise SwapError(f"gallery {candidate} is not ready")
        self.reindex_missing(candidate, photo_for)
        self._load_index(self.states()[candidate])  # (2) before the model answers with it
        self.serve(candidate)  # (3)
        with self.store.engine.begin() as conn:  # (4)
            for s in states.values():
                if s.state == "previous":
                    self._set(conn, s.model_version, "archived")
                    conn.execute(sa.delete(gallery_table).where(gallery_table.c.model_version == s.model_version))
            for s in states.values():
                if s.state == "active":
                    self._set(conn, s.model_version, "previous")
            self._set(conn, candidate, "active")
        for s in states.values():
            if s.state == "previous":
                self.matcher.drop_index(s.model_version)

    def reindex_missing(self, version: str, photo_for: Callable[[str], bytes]) -> int:
        missing = self.missing(version)
        if not missing:
            return 0
        vectors, _ = self.embedder_for(version).embed([photo_for(e.photo_url) for e in missing])
        return self.store.put_vectors(version, [(e.user_id, v, e.enrolled_at) for e, v in zip(missing, vectors)])

    def rollback(self) -> str:
        """Serve the previous pair again (its gallery was kept complete by every enrolment since the
        flip); the rolled-back version becomes the previous pair, so rolling forward is one more call.
        Returns the version now active."""
        states = self.states()
        prev = [s for s in states.values() if s.state == "previous"]
        active = self.active()
        if not prev or active is None:
            raise SwapError("no previous face gallery to roll back to")
        back = prev[0]
        self._load_index(back)
        self.serve(back.model_version)
        with self.store.engine.begin() as conn:
            self._set(conn, active.model_version, "previous")
            self._set(conn, back.model_version, "active")
        return back.model_version


def gallery_loader(store: GalleryStore) -> Callable[[str], GalleryIndex | None]:
    """For a matcher in a process that does not flip (the Access service: FaceMatcher(loader=...)):
    a version's gallery from the database, or None unless it is complete (ready, active, previous)."""
    def load(version: str) -> GalleryIndex | None:
        with store.engine.connect() as conn:
            row = conn.execute(sa.select(galleries).where(galleries.c.model_version == version)).first()
        if row is None or row.state not in ("ready", "active", "previous"):
            return None
        return GalleryIndex.load(store, version, float(row.threshold))

    return load


def enrolment_from_event(event) -> Enrolment:
    """A gymops.ingest.events.UserCreatedEvent as a gallery enrolment."""
    return Enrolment(event.user_id, event.face_photo_url, event.timestamp, event.role, event.branch_id)


def enrol_events(pairs: FaceGalleries, events: Iterable, photo_for: Callable[[str], bytes]) -> int:
    """Enrol a batch of UserCreatedEvents (others are ignored); returns how many changed the gallery."""
    n = 0
    for event in events:
        if getattr(event, "EVENT_TYPE", "") == "UserCreatedEvent":
            n += pairs.enrol(enrolment_from_event(event), photo_for(event.face_photo_url))
    return n
