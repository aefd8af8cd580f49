"""The model registry: every trained model version, its lineage, metrics and lifecycle status.

One row per (model type, semver version). ``version`` is semver: major = architecture, minor =
retrain, patch = tuning. ``triton_version`` is the numbered folder the version occupies in the
Triton model repository: it only ever grows per model type and is never reused, so a folder
number always means the same weights.

Statuses and the moves between them::

    candidate -> rejected | canary | active
    canary    -> active | rejected | rolled_back
    active    -> retired | rolled_back
    retired   -> active (a rollback target) | archived
    rejected  -> candidate (its artifact registered again: a re-evaluation) | archived
    rolled_back -> archived

Every write runs in a transaction that first takes a per-model-type lock (an advisory
transaction lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so concurrent registrations get
distinct versions and concurrent status changes cannot both act on a stale read. A unique
(model_type, version) / (model_type, triton_version) violation that still slips through is
retried. A partial unique index allows at most one active version per model type.

One version per trained artifact: ``register_candidate`` records the sha256 of the ONNX file and,
when that file is registered already, returns its version instead of numbering a new one. A
finished training re-evaluated (a re-run, other gate settings) therefore keeps its version, and a
Triton folder number never holds the same weights twice. A rejected version registered again is a
re-evaluation: it becomes a candidate again (``rejected -> candidate``) with the new figures.

Events go out through the transactional outbox: give the registry an ``Outbox`` and
``activate``, ``rollback`` and ``reject`` record their event in the same transaction as the
status change, or compose your own with ``transaction()`` and the ``conn=`` parameters.
"""
from __future__ import annotations

import contextlib
import re
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from gymops.db import metadata
from gymops.lifecycle.versions import (  # noqa: F401 (the registry's public names)
    ACTIVE, ARCHIVABLE, ARCHIVED, BUMPS, CANARY, CANDIDATE,
    IllegalTransition, KEEP_LOADABLE, LAUNDRY, MODEL_TYPES, ModelVersion, NEWEST_FIRST,
    REJECTED, RETIRED, ROLLED_BACK, RegistryError, STATUSES, TRANSITIONS,
    VersionNotFound, add_artifact_column, artifact_digest, check_type, model_versions, next_version,
    parse_version, version_of_row,
)



class ModelRegistry:
    def __init__(self, engine: sa.Engine, outbox=None, retries: int = 5):
        """outbox: a gymops.lifecycle.outbox.Outbox; when given, activate/rollback/reject record their event
        in the same transaction as the status change."""
        self.engine = engine
        self.outbox = outbox
        self.retries = retries
        metadata.create_all(engine, tables=[model_versions])
        add_artifact_column(engine)

    # -- transactions -----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, model_type: str) -> Iterator[sa.Connection]:
        """A write transaction holding this model type's registry lock; commits on success.

        Pass the connection as ``conn=`` to the registry's methods and to ``Outbox.record`` to
        commit several changes (and their events) together."""
        check_type(model_type)
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, not at the first write
            elif conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": zlib.crc32(f"gymops.model_versions:{model_type}".encode())})
            else:
                conn.execute(sa.select(model_versions.c.id).where(model_versions.c.model_type == model_type)
                             .with_for_update())
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @contextlib.contextmanager
    def _tx(self, model_type: str, conn: sa.Connection | None) -> Iterator[sa.Connection]:
        if conn is not None:
            yield conn
        else:
            with self.transaction(model_type) as own:
                yield own

    def _load(self, conn, model_type: str, version: str) -> ModelVersion:
        row = conn.execute(sa.select(model_versions).where(
            model_versions.c.model_type == model_type, model_versions.c.version == version)).first()
        if row is None:
            raise VersionNotFound(model_type, version)
        return version_of_row(row)

    def _active(self, conn, model_type: str) -> ModelVersion | None:
        row = conn.execute(sa.select(model_versions).where(
            model_versions.c.model_type == model_type, model_versions.c.status == ACTIVE)).first()
        return version_of_row(row) if row is not None else None

    def _update(self, conn, mv: ModelVersion, to_status: str, reason: str | None, **values) -> ModelVersion:
        if to_status not in STATUSES:
            raise ValueError(f"unknown status {to_status!r} (expected one of {', '.join(STATUSES)})")
        if to_status not in TRANSITIONS[mv.status]:
            raise IllegalTransition(mv.model_type, mv.version, mv.status, to_status)
        result = conn.execute(
            model_versions.update()
            .where(model_versions.c.model_type == mv.model_type, model_versions.c.version == mv.version,
                   model_versions.c.status == mv.status)
            .values(status=to_status, status_reason=reason, updated_at=datetime.now(timezone.utc), **values))
        if result.rowcount != 1:
            raise RegistryError(f"{mv.model_type} {mv.version} changed status concurrently (was {mv.status})")
        return self._load(conn, mv.model_type, mv.version)

    # -- writes ---------------------------------------------------------------------------------
    def register_candidate(self, model_type: str, architecture: str, metrics: dict, dataset_id: str | None,
                           run_id: str | None, artifact_uri: str, parent_version: str | None = None,
                           bump: str = "minor", trained_at: datetime | None = None,
                           conn: sa.Connection | None = None, artifact_sha256: str | None = None) -> ModelVersion:
        """Register a trained model as a candidate with the next version and Triton folder number,
        ONCE per artifact: when an ONNX file with the same sha256 (``artifact_sha256``, by default
        read from the local file) is registered already, that version is returned instead. Its
        lineage stays; if it has not served (candidate, or rejected: it becomes a candidate again)
        the new ``metrics`` replace the old, as they are the figures of the newer evaluation. The
        caller tells a reused version by its status, or by ``find_artifact`` beforehand."""
        check_type(model_type)
        if not architecture or not isinstance(architecture, str):
            raise ValueError("architecture must be a non-empty string")
        if not artifact_uri:
            raise ValueError("artifact_uri must name the ONNX file")
        if not isinstance(metrics, dict):
            raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}")
        if parent_version is not None:
            parse_version(parent_version)
        if artifact_sha256 is None:
            artifact_sha256 = artifact_digest(artifact_uri)
        elif not re.fullmatch(r"[0-9a-f]{64}", artifact_sha256):
            raise ValueError(f"artifact_sha256 must be 64 lowercase hex digits, got {artifact_sha256!r}")
        row = dict(model_type=model_type, architecture=architecture, metrics=metrics, dataset_id=dataset_id,
                   run_id=run_id, parent_version=parent_version, artifact_uri=str(artifact_uri),
                   trained_at=trained_at or datetime.now(timezone.utc), artifact_sha256=artifact_sha256)
        if conn is not None:  # the caller's transaction (from transaction(), which holds the lock)
            return self._insert_candidate(conn, row, bump)
        for attempt in range(self.retries + 1):
            try:
                with self.transaction(model_type) as tx:
                    return self._insert_candidate(tx, row, bump)
            except sa.exc.IntegrityError:  # a concurrent writer took the number: read again
                if attempt >= self.retries:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _insert_candidate(self, tx, row: dict, bump: str) -> ModelVersion:
        model_type, parent_version = row["model_type"], row["parent_version"]
        known = self._find_artifact(tx, model_type, row["artifact_sha256"])
        if known is not None:
            return self._registered_again(tx, known, row)
        if parent_version is not None:
            self._load(tx, model_type, parent_version)
        existing = [tuple(r) for r in tx.execute(sa.select(
            model_versions.c.architecture, model_versions.c.major, model_versions.c.minor,
            model_versions.c.patch).where(model_versions.c.model_type == model_type))]
        major, minor, patch = next_version(existing, row["architecture"], bump, parent_version)
        triton = (tx.execute(sa.select(sa.func.max(model_versions.c.triton_version))
                             .where(model_versions.c.model_type == model_type)).scalar() or 0) + 1
        version = f"{major}.{minor}.{patch}"
        tx.execute(model_versions.insert().values(
            **row, version=version, major=major, minor=minor, patch=patch, triton_version=triton,
            status=CANDIDATE, updated_at=datetime.now(timezone.utc)))
        return self._load(tx, model_type, version)

    def _registered_again(self, tx, known: ModelVersion, row: dict) -> ModelVersion:
        """The version an artifact already has, after a new evaluation of it (see register_candidate)."""
        note = f"registered again (run {row['run_id']}): re-evaluated"
        if known.status == REJECTED:
            return self._update(tx, known, CANDIDATE, note, metrics=row["metrics"])
        if known.status == CANDIDATE:
            tx.execute(model_versions.update().where(
                model_versions.c.model_type == known.model_type, model_versions.c.version == known.version,
                model_versions.c.status == CANDIDATE).values(
                metrics=row["metrics"], status_reason=note, updated_at=datetime.now(timezone.utc)))
            return self._load(tx, known.model_type, known.version)
        return known

    def _find_artifact(self, conn, model_type: str, sha256: str | None) -> ModelVersion | None:
        if sha256 is None:
            return None
        found = conn.execute(sa.select(model_versions).where(
            model_versions.c.model_type == model_type, model_versions.c.artifact_sha256 == sha256)).first()
        return version_of_row(found) if found is not None else None

    def set_status(self, model_type: str, version: str, status: str, reason: str | None = None,
                   conn: sa.Connection | None = None) -> ModelVersion:
        """Move one version to ``status``; raises IllegalTransition naming from and to otherwise.

        Making a version active goes through ``activate`` (which also retires the old one)."""
        if status == ACTIVE:
            return self.activate(model_type, version, reason=reason, conn=conn)
        with self._tx(model_type, conn) as tx:
            return self._update(tx, self._load(tx, model_type, version), status, reason)

    def activate(self, model_type: str, version: str, deploy_seconds: float | None = None,
                 reason: str | None = None, conn: sa.Connection | None = None) -> ModelVersion:
        """In one transaction: ``version`` becomes active (deployed_at now, previous_version = the
        old active), the old active becomes retired, and (with an outbox) a ModelDeployedEvent is
        recorded. Activating the version that is already active changes nothing."""
        with self._tx(model_type, conn) as tx:
            target = self._load(tx, model_type, version)
            if target.status == ACTIVE:
                return target
            if ACTIVE not in TRANSITIONS[target.status]:
                raise IllegalTransition(model_type, version, target.status, ACTIVE)
            old = self._active(tx, model_type)
            if old is not None:
                self._update(tx, old, RETIRED, f"replaced by {version}")
            now = datetime.now(timezone.utc)
            new = self._update(tx, target, ACTIVE, reason, deployed_at=now,
                               previous_version=old.version if old else None)
            if self.outbox is not None:
                from gymops.lifecycle.outbox import model_deployed

                self.outbox.record_event(model_deployed(
                    model_type, new.version, new.triton_version, new.previous_version, now, deploy_seconds), conn=tx)
            return new

    def rollback_target(self, model_type: str, to_version: str | None = None,
                        conn: sa.Connection | None = None) -> tuple[ModelVersion, ModelVersion]:
        """(the active version, the version a rollback would serve instead): THE choice, used by
        ``rollback`` and by the deployer (which restores the target's folder before calling it).

        ``to_version``, or by default the version the active one replaced if that is retired, else
        the newest retired one. Only a retired version (one that served before) can be a target:
        RegistryError otherwise, IllegalTransition for a status that can never become active."""
        if conn is None:
            with self.engine.connect() as own:
                return self._rollback_target(own, model_type, to_version)
        return self._rollback_target(conn, model_type, to_version)

    def _rollback_target(self, conn, model_type: str, to_version: str | None) -> tuple[ModelVersion, ModelVersion]:
        current = self._active(conn, model_type)
        if current is None:
            raise RegistryError(f"{model_type}: no active version to roll back")
        if to_version is None:
            prev = self._load(conn, model_type, current.previous_version) if current.previous_version else None
            if prev is not None and prev.status == RETIRED:
                return current, prev
            row = conn.execute(sa.select(model_versions).where(
                model_versions.c.model_type == model_type, model_versions.c.status == RETIRED)
                .order_by(model_versions.c.triton_version.desc()).limit(1)).first()
            if row is None:
                raise RegistryError(f"{model_type}: no retired version to roll back to from {current.version}")
            return current, version_of_row(row)
        target = self._load(conn, model_type, to_version)
        if target.version == current.version:
            raise RegistryError(f"{model_type}: cannot roll back {current.version} to itself")
        if ACTIVE not in TRANSITIONS[target.status]:
            raise IllegalTransition(model_type, to_version, target.status, ACTIVE)
        if target.status != RETIRED:
            raise RegistryError(f"{model_type} {to_version} is {target.status}; only a retired version can be "
                                "rolled back to")
        return current, target

    def rollback(self, model_type: str, to_version: str | None = None, reason: str = "rollback",
                 seconds: float | None = None, conn: sa.Connection | None = None,
                 event_id: str | None = None) -> ModelVersion:
        """The active version becomes rolled_back and the ``rollback_target`` active again, in one
        transaction, with a ModelRolledBackEvent (its eventId ``event_id`` when given, so the caller
        can amend the pending event later) when an outbox is configured. Returns the newly active
        version."""
        with self._tx(model_type, conn) as tx:
            current, target = self._rollback_target(tx, model_type, to_version)
            self._update(tx, current, ROLLED_BACK, reason)
            new = self._update(tx, target, ACTIVE, f"rollback from {current.version}: {reason}",
                               deployed_at=datetime.now(timezone.utc), previous_version=current.version)
            if self.outbox is not None:
                from gymops.lifecycle.outbox import model_rolled_back

                self.outbox.record_event(model_rolled_back(model_type, current.version, new.version, reason, seconds,
                                                           event_id=event_id), conn=tx)
            return new

    def reject(self, model_type: str, version: str, reasons: list[dict], run_id: str | None = None,
               conn: sa.Connection | None = None) -> ModelVersion:
        """A candidate (or canary) that failed verification becomes rejected, its reasons kept in
        status_reason, with a ModelVerificationFailedEvent when an outbox is configured. The active
        version is untouched."""
        summary = "; ".join(f"{r.get('gate')}/{r.get('check')}: {r.get('message')}" for r in reasons) or "rejected"
        with self._tx(model_type, conn) as tx:
            mv = self._update(tx, self._load(tx, model_type, version), REJECTED, summary)
            if self.outbox is not None:
                from gymops.lifecycle.outbox import model_verification_failed

                self.outbox.record_event(model_verification_failed(model_type, version, reasons,
                                                                   run_id or mv.run_id), conn=tx)
            return mv

    def archive_beyond(self, model_type: str, keep: int = KEEP_LOADABLE,
                       conn: sa.Connection | None = None) -> list[str]:
        """Archive the retired/rejected/rolled_back versions older than the newest ``keep``
        non-archived ones (by Triton version). The active, canary and candidate versions are never
        archived. Returns the archived versions, oldest first (their Triton folders may go)."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        with self._tx(model_type, conn) as tx:
            rows = [version_of_row(r) for r in tx.execute(sa.select(model_versions).where(
                model_versions.c.model_type == model_type, model_versions.c.status != ARCHIVED)
                .order_by(model_versions.c.triton_version.desc()))]
            archived = []
            for mv in reversed(rows[keep:]):
                if mv.status in ARCHIVABLE:
                    self._update(tx, mv, ARCHIVED, f"beyond the newest {keep}")
                    archived.append(mv.version)
            return archived

    # -- reads ----------------------------------------------------------------------------------
    def get(self, model_type: str, version: str) -> ModelVersion:
        with self.engine.connect() as conn:
            return self._load(conn, model_type, version)

    def active(self, model_type: str) -> ModelVersion | None:
        with self.engine.connect() as conn:
            return self._active(conn, model_type)

    def find_artifact(self, model_type: str, artifact: str | Path) -> ModelVersion | None:
        """The version an ONNX file (a local path or file:// URI, or its sha256) is registered
        as, or None."""
        text = str(artifact)
        sha = text if re.fullmatch(r"[0-9a-f]{64}", text) else artifact_digest(text)
        with self.engine.connect() as conn:
            return self._find_artifact(conn, model_type, sha)

    def history(self, model_type: str, limit: int = 50) -> list[ModelVersion]:
        """Newest first (by Triton version), archived ones included."""
        with self.engine.connect() as conn:
            return [version_of_row(r) for r in conn.execute(sa.select(model_versions).where(
                model_versions.c.model_type == model_type)
                .order_by(model_versions.c.triton_version.desc()).limit(limit))]

    def loadable(self, model_type: str, keep: int = KEEP_LOADABLE) -> list[ModelVersion]:
        """The newest ``keep`` versions not archived (newest first), plus the active one should it
        be older: what the Triton repository must keep on disk."""
        with self.engine.connect() as conn:
            rows = [version_of_row(r) for r in conn.execute(sa.select(model_versions).where(
                model_versions.c.model_type == model_type, model_versions.c.status != ARCHIVED)
                .order_by(model_versions.c.triton_version.desc()))]
        out = rows[:keep]
        out += [mv for mv in rows[keep:] if mv.status == ACTIVE]
        return out

    def newest(self, model_type: str, architecture: str | None = None) -> ModelVersion | None:
        """The highest semver registered (optionally of one architecture)."""
        query = sa.select(model_versions).where(model_versions.c.model_type == model_type)
        if architecture is not None:
            query = query.where(model_versions.c.architecture == architecture)
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(*NEWEST_FIRST).limit(1)).first()
        return version_of_row(row) if row is not None else None
