"""The gallery: one vector per enrolled member per model version, kept by the tier's database.

Why vectors per VERSION: an embedding is only comparable with embeddings from the same model, so a
gallery belongs to one model version (what AWS Rekognition and Azure Face call a collection pinned to
a model). The nightly swap (issue 12, item 5) fills the candidate's gallery before the flip and keeps
the previous one for rollback; entry compares a probe only with the gallery of the version that
embedded it (gymops.face.matching).

Storage (both profiles, one code path through SQLAlchemy): the tier's database (SQLite file in the
embedded profile, PostgreSQL in services) holds two tables:
  face_enrolments  one row per member: the enrolment photo's URL (the re-index re-embeds from it),
                   the enrolment time, and deleted_at for a member who left (kept, so a late or
                   replayed UserCreatedEvent older than the deletion cannot bring them back).
  face_gallery     (model_version, user_id) -> the L2-normalised float32 vector as 512 raw bytes.
Vectors are stored as bytes and searched in memory (GalleryIndex): pgvector is not packaged for this
Debian, and at gym sizes an exact numpy matmul over every vector is ~0.1 ms per probe at 10^4 members
(tests/test_face_gallery.py measures it) - no approximate index is needed.

Re-enrolment: a UserCreatedEvent for a member already enrolled replaces the photo and every vector,
when it is newer than what is stored (events may arrive late or twice: an older one is ignored).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import sqlalchemy as sa

from gymops.db import as_utc, metadata
from gymops.face.preprocess import EMBEDDING_DIM

enrolments = sa.Table(
    "face_enrolments", metadata,
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("photo_url", sa.Text, nullable=False),
    sa.Column("role", sa.String(40), nullable=False, server_default=""),
    sa.Column("branch_id", sa.String(200), nullable=False, server_default=""),
    sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
)
gallery = sa.Table(
    "face_gallery", metadata,
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(200), primary_key=True),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Enrolment:
    user_id: str
    photo_url: str
    enrolled_at: datetime
    role: str = ""
    branch_id: str = ""
    deleted_at: datetime | None = None


def to_bytes(vector: np.ndarray) -> bytes:
    v = np.asarray(vector, dtype="<f4").reshape(-1)
    if v.shape != (EMBEDDING_DIM,) or not np.isfinite(v).all():
        raise ValueError(f"a gallery vector is {EMBEDDING_DIM} finite floats, got shape {v.shape}")
    return v.tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class GalleryStore:
    """The two tables behind an engine (gymops.db.engine_for(settings) creates them)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        metadata.create_all(engine, tables=[enrolments, gallery])

    # -- enrolments ------------------------------------------------------------------------------
    def enrol(self, enrolment: Enrolment, vectors: dict[str, np.ndarray]) -> bool:
        """Record ``enrolment`` and its vector for each model version in ``vectors``, in one
        transaction. False (nothing written) when a newer enrolment or deletion is already stored."""
        at = _utc(enrolment.enrolled_at)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(enrolments).where(enrolments.c.user_id == enrolment.user_id)).first()
            if row is not None:
                last = max(as_utc(row.enrolled_at), as_utc(row.deleted_at) or as_utc(row.enrolled_at))
                if at <= last:  # the same event again, or one older than what is stored
                    return False
                conn.execute(sa.delete(enrolments).where(enrolments.c.user_id == enrolment.user_id))
                # a re-enrolment: every version's old vector came from the old photo
                conn.execute(sa.delete(gallery).where(gallery.c.user_id == enrolment.user_id))
            conn.execute(sa.insert(enrolments).values(
                user_id=enrolment.user_id, photo_url=enrolment.photo_url, role=enrolment.role,
                branch_id=enrolment.branch_id, enrolled_at=at, deleted_at=None))
            for version, vector in vectors.items():
                conn.execute(sa.insert(gallery).values(model_version=version, user_id=enrolment.user_id,
                                                       embedding=to_bytes(vector), enrolled_at=at))
        return True

    def delete(self, user_id: str, at: datetime | None = None) -> bool:
        """A member who left: their vectors go from every version's gallery; the enrolment row stays,
        marked deleted. False when they were not enrolled."""
        at = _utc(at or datetime.now(timezone.utc))
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(enrolments).where(enrolments.c.user_id == user_id,
                                                            enrolments.c.deleted_at.is_(None))
                                .values(deleted_at=at)).rowcount
            conn.execute(sa.delete(gallery).where(gallery.c.user_id == user_id))
        return bool(done)

    def enrolment(self, user_id: str) -> Enrolment | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(enrolments).where(enrolments.c.user_id == user_id)).first()
        return None if row is None else Enrolment(row.user_id, row.photo_url, as_utc(row.enrolled_at), row.role,
                                                  row.branch_id, as_utc(row.deleted_at))

    def active_enrolments(self) -> list[Enrolment]:
        """Every member enrolled and not deleted (what a re-index must cover), by user id."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(enrolments).where(enrolments.c.deleted_at.is_(None))
                                .order_by(enrolments.c.user_id)).all()
        return [Enrolment(r.user_id, r.photo_url, as_utc(r.enrolled_at), r.role, r.branch_id) for r in rows]

    # -- vectors per version ---------------------------------------------------------------------
    def put_vectors(self, version: str, items: list[tuple[str, np.ndarray, datetime]]) -> int:
        """Write (user_id, vector, enrolled_at) rows into ``version``'s gallery (the re-index). A row
        whose member has since been deleted or re-enrolled with a newer photo is skipped, in the same
        transaction, so a re-index racing an enrolment never stores a stale vector."""
        written = 0
        with self.engine.begin() as conn:
            for user_id, vector, at in items:
                row = conn.execute(sa.select(enrolments.c.enrolled_at, enrolments.c.deleted_at)
                                   .where(enrolments.c.user_id == user_id)).first()
                if row is None or row.deleted_at is not None or as_utc(row.enrolled_at) != _utc(at):
                    continue
                conn.execute(sa.delete(gallery).where(gallery.c.model_version == version, gallery.c.user_id == user_id))
                conn.execute(sa.insert(gallery).values(model_version=version, user_id=user_id,
                                                       embedding=to_bytes(vector), enrolled_at=_utc(at)))
                written += 1
        return written

    def vectors(self, version: str) -> tuple[list[str], np.ndarray]:
        """(user ids, (N, 128) matrix) of ``version``'s gallery, by user id."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(gallery.c.user_id, gallery.c.embedding)
                                .where(gallery.c.model_version == version).order_by(gallery.c.user_id)).all()
        ids = [r.user_id for r in rows]
        matrix = np.stack([from_bytes(r.embedding) for r in rows]) if rows else np.zeros((0, EMBEDDING_DIM), np.float32)
        return ids, matrix

    def counts(self) -> dict[str, int]:
        """Members per model version's gallery."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(gallery.c.model_version, sa.func.count())
                                .group_by(gallery.c.model_version)).all()
        return {r[0]: int(r[1]) for r in rows}

    def drop_version(self, version: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(gallery).where(gallery.c.model_version == version)).rowcount


class GalleryIndex:
    """One version's gallery in memory: exact cosine search by one matmul (vectors are unit length).

    Copy-on-write: a writer builds new arrays under a lock and publishes them as one tuple, so a
    reader (any number of entry threads, no lock) always searches a consistent snapshot."""

    def __init__(self, version: str, threshold: float, ids: list[str] | None = None, matrix: np.ndarray | None = None):
        self.version = version
        self.threshold = float(threshold)
        ids = list(ids or [])
        matrix = np.zeros((0, EMBEDDING_DIM), np.float32) if matrix is None else np.asarray(matrix, np.float32)
        if len(ids) != len(matrix):
            raise ValueError("ids and matrix differ in length")
        self._snap = (tuple(ids), {u: i for i, u in enumerate(ids)}, np.ascontiguousarray(matrix))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, store: GalleryStore, version: str, threshold: float) -> "GalleryIndex":
        ids, matrix = store.vectors(version)
        return cls(version, threshold, ids, matrix)

    def __len__(self) -> int:
        return len(self._snap[0])

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._snap[1]

    def upsert(self, user_id: str, vector: np.ndarray) -> None:
        v = np.asarray(vector, np.float32).reshape(1, EMBEDDING_DIM)
        with self._lock:
            ids, pos, m = self._snap
            if user_id in pos:
                m = m.copy()
                m[pos[user_id]] = v
                self._snap = (ids, pos, m)
            else:
                self._snap = (ids + (user_id,), {**pos, user_id: len(ids)}, np.concatenate([m, v]))

    def remove(self, user_id: str) -> None:
        with self._lock:
            ids, pos, m = self._snap
            if user_id not in pos:
                return
            keep = [i for i in range(len(ids)) if ids[i] != user_id]
            new_ids = tuple(ids[i] for i in keep)
            self._snap = (new_ids, {u: i for i, u in enumerate(new_ids)}, m[keep])

    def similarity(self, probe: np.ndarray, user_id: str) -> float | None:
        ids, pos, m = self._snap
        i = pos.get(user_id)
        return None if i is None else float(m[i] @ np.asarray(probe, np.float32).reshape(-1))

    def best(self, probe: np.ndarray) -> tuple[str | None, float]:
        ids, _, m = self._snap
        if not ids:
            return None, -1.0
        scores = m @ np.asarray(probe, np.float32).reshape(-1)
        i = int(np.argmax(scores))
        return ids[i], float(scores[i])
