"""The face Access service's process (`gymops face serve`) and the parts the `gymops face` commands
share: verify and identify over HTTP and gRPC (gymops.face.access) with one FaceMatcher, the active
pair recovered from the persisted gallery states (FaceGalleries.recover), and beside them one loop
that every ``sync_interval_s`` (1) enrols what arrived in the history (gymops.face.enrolments) and
(2) keeps this process's loaded galleries in step with what other processes changed.

Why (2): the pair's state lives in the tier's database and other processes change it: the nightly
batch re-indexes a candidate and flips (its FaceGalleries loads the candidate into ITS matcher and
swaps Triton), `gymops face rollback` flips back, `gymops face delete` and `enrol-sync` change
galleries. This process must hold the gallery of every version Triton may answer with BEFORE Triton
answers with it, so the loop keeps every gallery that is active, previous or ready loaded (a ready
candidate is complete, and every enrolment keeps it so), drops those that left these states, and
applies other processes' changes to a loaded gallery by a diff of (user_id, enrolled_at): only the
changed rows' vectors are read. A probe of a version with no gallery loaded (a candidate marked ready
and flipped between two passes) loads it on the spot through the matcher's loader
(gymops.face.swap.gallery_loader: complete galleries only); any other still answers 503.

Embedding probes (``GYMOPS_FACE_EMBEDDER``): "triton", the public name over gRPC; the served version
changes by Triton's swap (gymops.face.release.TritonServe), made by whoever flips. "local":
onnxruntime in this process from the version folders (no Triton): the "served" version is this
process's own, and the loop follows the active state recorded by whoever flipped, after loading its
gallery. The versions, their folders and thresholds are the face registry's (gymops.face.release);
this process never changes the registry: `gymops face rollback` goes through FaceRelease.rollback.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import sqlalchemy as sa

from gymops.db import as_utc, engine_for, metadata
from gymops.face.gallery import GalleryIndex, GalleryStore, enrolments, from_bytes, gallery
from gymops.face.matching import FaceMatcher, GalleryNotReady, LocalEmbedder
from gymops.face.release import FaceRelease
from gymops.face.swap import FaceGalleries, GalleryState, gallery_loader

log = logging.getLogger(__name__)
LOADED = ("active", "previous", "ready")  # the galleries a probe may need: kept loaded
FULL_RELOAD = 100  # changed rows above which a loaded gallery is read again whole


class LocalServing:
    """The in-process stand-in for Triton's public name: ``serve(version)`` switches which version
    embeds the probes (at once, for the next probe), ``embed`` embeds with it."""

    def __init__(self, embedder_for: Callable[[str], LocalEmbedder]):
        self.embedder_for = embedder_for
        self.version: str | None = None

    def serve(self, version: str) -> None:
        self.embedder_for(version)  # loaded before the switch
        self.version = version

    def embed(self, photos: Sequence[bytes]) -> tuple[np.ndarray, list[str]]:
        version = self.version
        if version is None:
            raise GalleryNotReady("no face version is served yet")
        return self.embedder_for(version).embed(list(photos))


class GallerySync:
    """This process's loaded galleries kept in step with the persisted states and rows (module
    docstring). ``follow(version)``: called when the active version changed elsewhere (local
    serving switches to it; with Triton, whoever flipped has swapped it already)."""

    def __init__(self, pairs: FaceGalleries, follow: Callable[[str], None] | None = None):
        self.pairs, self.follow = pairs, follow
        self.engine = pairs.store.engine
        self._seen: dict[str, dict[str, object]] = {}  # version -> user_id -> enrolled_at, as loaded
        self._following: str | None = None
        self._lock = threading.Lock()

    def once(self) -> dict[str, int]:
        """One pass; returns the loaded galleries' sizes."""
        with self._lock:
            states = self.pairs.states()
            for state in states.values():
                if state.state in LOADED:
                    self._refresh(state)
            for version in list(self._seen):
                if states.get(version) is None or states[version].state not in LOADED:
                    self.pairs.matcher.drop_index(version)
                    del self._seen[version]
        active = next((v for v, s in states.items() if s.state == "active"), None)
        if self.follow is not None and active is not None and active != self._following:
            self.follow(active)
            self._following = active
        return {v: len(self.pairs.matcher.loaded(v) or ()) for v in self._seen}

    def _rows(self, version: str, columns, user_ids: Sequence[str] | None = None):
        query = sa.select(*columns).where(gallery.c.model_version == version)
        with self.engine.connect() as conn:
            if user_ids is None:
                return conn.execute(query.order_by(gallery.c.user_id)).all()
            return [r for i in range(0, len(user_ids), 500)
                    for r in conn.execute(query.where(gallery.c.user_id.in_(user_ids[i:i + 500]))).all()]

    def _load(self, state: GalleryState) -> None:
        rows = self._rows(state.model_version, (gallery.c.user_id, gallery.c.enrolled_at, gallery.c.embedding))
        matrix = np.stack([from_bytes(r.embedding) for r in rows]) if rows else None
        self.pairs.matcher.set_index(GalleryIndex(state.model_version, state.threshold, [r.user_id for r in rows],
                                                  matrix))
        self._seen[state.model_version] = {r.user_id: as_utc(r.enrolled_at) for r in rows}

    def _refresh(self, state: GalleryState) -> None:
        version = state.model_version
        index = self.pairs.matcher.loaded(version)
        if index is None or version not in self._seen:
            return self._load(state)
        now = {r.user_id: as_utc(r.enrolled_at) for r in self._rows(version, (gallery.c.user_id, gallery.c.enrolled_at))}
        before = self._seen[version]
        changed = [u for u, t in now.items() if before.get(u) != t]
        gone = [u for u in before if u not in now]
        if len(changed) + len(gone) > FULL_RELOAD:
            return self._load(state)
        for user_id in gone:
            index.remove(user_id)
        for r in self._rows(version, (gallery.c.user_id, gallery.c.embedding), changed) if changed else ():
            index.upsert(r.user_id, from_bytes(r.embedding))
        self._seen[version] = now
        if len(index) != len(now):  # changed where the diff cannot see (an in-process write since)
            self._load(state)


@dataclass
class FaceParts:
    """What the `gymops face` commands work with, built from the settings alone."""
    settings: object
    release: FaceRelease
    local: LocalServing | None  # the in-process serving (GYMOPS_FACE_EMBEDDER=local, serve only)

    @property
    def pairs(self) -> FaceGalleries:
        return self.release.pairs

    @property
    def matcher(self) -> FaceMatcher:
        return self.release.pairs.matcher


def face_parts(settings, probes: bool = False) -> FaceParts:
    """The release (registry, folders, galleries, serving) of ``settings``. ``probes``: this process
    answers entries (`face serve`): its matcher embeds probes (Triton's public name, or in-process)
    and loads complete galleries on demand. Otherwise, with the local embedder, serving is a no-op
    (the Access service follows the recorded states); with Triton, Triton's swap."""
    from gymops.face.matching import TritonEmbedder
    from gymops.face.release import TritonServe
    from gymops.lifecycle.outbox import Outbox
    from gymops.lifecycle.registry import ModelRegistry

    fs, ss = settings.face, settings.serving
    engine = engine_for(settings)
    registry, store = ModelRegistry(engine, outbox=Outbox(engine)), GalleryStore(engine)
    release: FaceRelease | None = None
    local = None

    def embedder_for(version: str) -> LocalEmbedder:
        return release.embedder(version)

    if fs.embedder == "local":
        local = LocalServing(embedder_for) if probes else None
        serve, embedder = (local.serve, local) if local else ((lambda version: None), None)
    else:
        from gymops.serving.control import ModelControl
        from gymops.settings import ensure_tokens

        serve = TritonServe(ModelControl.for_settings(ensure_tokens(settings).serving), registry, fs.model_name)
        embedder = TritonEmbedder(ss.grpc_url, "grpc", fs.model_name) if probes else None
    # a process that answers no entries keeps FaceRelease's own matcher (it embeds no probes)
    matcher = FaceMatcher(embedder, loader=gallery_loader(store)) if probes else None
    release = FaceRelease(registry, store, ss.repository, serve, matcher, fs.model_name)
    return FaceParts(settings, release, local)


def describe(settings) -> dict:
    """Gallery states and members per version, the registry's active face version, enrolments, the
    follower's mark and ledger (reads the database only)."""
    from gymops.face.enrolments import follower_status
    from gymops.face.release import FACE
    from gymops.face.swap import galleries
    from gymops.lifecycle.registry import ModelRegistry

    engine = engine_for(settings)
    store = GalleryStore(engine)
    counts = store.counts()
    metadata.create_all(engine, tables=[galleries])
    with engine.connect() as conn:
        states = conn.execute(sa.select(galleries).order_by(galleries.c.model_version)).all()
        enrolled = dict(conn.execute(sa.select(enrolments.c.deleted_at.is_(None), sa.func.count())
                                     .group_by(enrolments.c.deleted_at.is_(None))).all())
    active = ModelRegistry(engine).active(FACE)
    return {
        "galleries": [{"version": s.model_version, "state": s.state, "threshold": float(s.threshold),
                       "members": counts.get(s.model_version, 0)} for s in states],
        "registry_active": active.version if active else None,
        "members": {"enrolled": int(enrolled.get(True, 0)), "deleted": int(enrolled.get(False, 0))},
        "enrolments": follower_status(engine),
        "embedder": settings.face.embedder,
    }


class SyncLoop:
    """The service's background duty, every ``interval`` seconds: enrol, then sync. An error is
    logged and the next pass tries again (a store that is down must not stop entry)."""

    def __init__(self, interval: float, follower, sync: GallerySync):
        self.interval, self.follower, self.sync = interval, follower, sync
        self.last: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="face-sync", daemon=True)

    def start(self) -> "SyncLoop":
        self._thread.start()
        return self

    def step(self) -> bool:
        """One pass; True when enrolments are still pending (the next pass comes at once)."""
        pending = False
        if self.follower is not None:
            report = self.follower.run_once()
            self.last["enrolments"] = report.as_dict()
            if report.enrolled or report.rejected:
                log.info("face enrolments: %s", report.as_dict())
            pending = bool(report.pending)
        self.last["galleries"] = self.sync.once()
        self.last["at"] = time.time()
        return pending

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.step():
                    continue
            except Exception:  # noqa: BLE001 - logged; entry goes on with what is loaded
                log.exception("face sync pass failed; the next pass tries again")
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def serve(settings, follow_enrolments: bool = True, ready: Callable[[dict], None] | None = None) -> int:
    """Run the Access service in the foreground until SIGINT/SIGTERM (uvicorn's handlers)."""
    import uvicorn

    from gymops.face.access import create_app, grpc_server
    from gymops.face.enrolments import EnrolmentFollower
    from gymops.settings import ensure_face_token

    parts = face_parts(settings, probes=True)
    sync = GallerySync(parts.pairs, follow=parts.local.serve if parts.local else None)
    active = parts.pairs.recover()
    if active is None:
        raise GalleryNotReady("no active face gallery yet: the nightly face batch establishes the first version "
                              "(gymops.face.nightly.ensure_first)")
    fs = ensure_face_token(settings).face
    follower = EnrolmentFollower(settings, parts.pairs) if follow_enrolments else None
    loop = SyncLoop(fs.sync_interval_s, follower, sync)
    try:  # the galleries and what arrived while it was down, before the first request
        loop.step()
    except Exception:  # noqa: BLE001 - entry starts on the recovered pair; the loop tries again
        log.exception("face sync pass at start failed; serving the recovered pair, the loop tries again")
    loop.start()
    app = create_app(parts.matcher, fs.access_token)

    @app.get("/healthz")
    def healthz():
        state = parts.pairs.active()
        return {"active": state.model_version if state else None, "embedder": fs.embedder,
                "served": parts.local.version if parts.local else None, **loop.last}

    grpc = grpc_server(parts.matcher, f"{fs.access_host}:{fs.access_grpc_port}", fs.access_token)
    info = {"http": f"http://{fs.access_host}:{fs.access_port}", "grpc": f"{fs.access_host}:{fs.access_grpc_port}",
            "active": active.model_version, "embedder": fs.embedder, "galleries": loop.last.get("galleries")}
    if ready:
        ready(info)
    try:
        uvicorn.run(app, host=fs.access_host, port=fs.access_port, log_level="warning", timeout_graceful_shutdown=10)
    finally:
        grpc.stop(5).wait(10)
        loop.stop()
    return 0
