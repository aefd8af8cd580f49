"""``Deployer``: deploying registry versions of one Triton model, rolling back, recovering.

Plain Python (no Dagster): the deployed_model asset, the CLI and bench/deploy.py are thin wiring
over ``Deployer.for_settings(registry, serving_settings)`` and its four entry points:

    deploy(model_type, version, golden_photos)  gymops.deploy.steps (an explicit list of named
                                                steps, each with its undo)
    rollback(model_type, to_version, reason)    gymops.deploy.rollback
    reconcile(model_type)                       gymops.deploy.reconcile (after a crash or restart)
    consistency(model_type)                     gymops.deploy.reconcile (do registry, repository
                                                and server agree?)

The Deployer itself only holds what they share: the registry, the server's ModelControl, the
version folders (gymops.deploy.folders), the client used for golden photos, the lock, and the
staging model's removal.

Crash safety (the deploying process or Triton killed at any point): the registry is the truth.
deploy flips Triton BEFORE the registry activates, rollback updates the registry BEFORE swapping
Triton, and reconcile serves the registry's active version; see the modules for why each order is
the safe one.

deploy, rollback and reconcile hold an exclusive lock (flock on <repository>/.<model>.deploy.lock),
so two deployers never interleave; the lock dies with its process.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from gymops.lifecycle.registry import KEEP_LOADABLE

from .checks import TOLERANCE
from .folders import STAGING_SUFFIX, TMP_PREFIX, VersionFolders, artifact_path, folder_problems  # noqa: F401
from .reports import (CandidateRejected, Consistency, DeployFailed, DeployReport, ReconcileFailed,  # noqa: F401
                      ReconcileReport, RollbackFailed, RollbackReport)
from .steps import STEPS, VERIFY_PHOTOS  # noqa: F401

log = logging.getLogger(__name__)


class Deployer:
    """Deploys registry versions of one Triton model (the public name ``model``).

    registry: gymops.lifecycle.registry.ModelRegistry (give it an Outbox for the events);
    control: gymops.serving.control.ModelControl of the server; repository: its model repository;
    client_factory(name) -> a LaundryClient-like object for the model ``name`` (classify_batch,
    close); archive_dir: where archived version folders go (outside the repository); keep: how many
    versions stay loadable.
    """

    def __init__(self, registry, control, repository: Path, model: str = "laundry",
                 client_factory: Callable[[str], Any] | None = None, archive_dir: Path | None = None,
                 keep: int = KEEP_LOADABLE, tolerance: float = TOLERANCE, lock_timeout: float = 600.0):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.registry = registry
        self.control = control
        self.folders = VersionFolders(repository, model, archive_dir)
        self.repository, self.archive_dir = self.folders.repository, self.folders.archive_dir
        self.model, self.staging = model, self.folders.staging
        self.keep = keep
        self.tolerance = tolerance
        self.lock_timeout = lock_timeout
        if client_factory is None:
            def client_factory(name: str, _url=control.url):
                from gymops.serving.client import LaundryClient

                return LaundryClient(_url, "grpc", model=name, timeout=30, retries=2)
        self.client_factory = client_factory

    @classmethod
    def for_settings(cls, registry, ss, **kwargs) -> "Deployer":
        """A deployer of the server described by ServingSettings (archive under its triton home)."""
        from gymops.serving.control import ModelControl

        kwargs.setdefault("archive_dir", ss.triton_home / "archive")
        return cls(registry, ModelControl.for_settings(ss), ss.repository, **kwargs)

    # -- the entry points --------------------------------------------------------------------------
    def deploy(self, model_type: str, version: str, golden_photos: list[bytes],
               on_step: Callable[[str, float], None] | None = None) -> DeployReport:
        """See gymops.deploy.steps.deploy."""
        from .steps import deploy

        return deploy(self, model_type, version, golden_photos, on_step)

    def rollback(self, model_type: str, to_version: str | None = None, reason: str = "rollback",
                 on_step: Callable[[str, float], None] | None = None) -> RollbackReport:
        """See gymops.deploy.rollback.rollback."""
        from .rollback import rollback

        return rollback(self, model_type, to_version, reason, on_step)

    def reconcile(self, model_type: str) -> ReconcileReport:
        """See gymops.deploy.reconcile.reconcile."""
        from .reconcile import reconcile

        return reconcile(self, model_type)

    def start_canary(self, model_type: str, version: str, canary_fraction: float = 0.10,
                     shadow_fraction: float = 0.0):
        """See gymops.deploy.canary.start (canary_fraction 0: shadow only)."""
        from .canary import start

        return start(self, model_type, version, canary_fraction, shadow_fraction)

    def promote_canary(self, model_type: str, reason: str = "canary analysis passed"):
        """See gymops.deploy.canary.promote."""
        from .canary import promote

        return promote(self, model_type, reason)

    def abort_canary(self, model_type: str, reason: str, signal: str | None = None, figures: dict | None = None):
        """See gymops.deploy.canary.abort."""
        from .canary import abort

        return abort(self, model_type, reason, signal, figures)

    def consistency(self, model_type: str, check_server: bool = True) -> Consistency:
        """See gymops.deploy.reconcile.consistency."""
        from .reconcile import consistency

        return consistency(self, model_type, check_server)

    # -- paths (kept for callers of the earlier single-module deployer) ------------------------------
    def folder(self, triton_version: int) -> Path:
        return self.folders.folder(triton_version)

    def archived_folder(self, triton_version: int) -> Path:
        return self.folders.archived(triton_version)

    def staging_folder(self) -> Path:
        return self.folders.staging_folder()

    # -- shared by the steps -----------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        path = self.repository / f".{self.model}.deploy.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DeployFailed("lock", f"another deployer holds {path} for over {self.lock_timeout} s")
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # releases the lock

    def classify(self, name: str, photos: Sequence[bytes]):
        client = self.client_factory(name)
        try:
            return client.classify_batch(list(photos))
        finally:
            close = getattr(client, "close", None)
            if close:
                close()

    def history(self, model_type: str):
        return self.registry.history(model_type, limit=1_000_000)

    def staging_states(self) -> list[dict]:
        """The server's index entries of the staging model."""
        return [m for m in self.control.index() if m.get("name") == self.staging]

    def remove_staging(self) -> list[str]:
        """Unload the staging model if it is loaded (or wait for its unload to end) and remove its
        folder; what was done."""
        done = []
        index = self.staging_states()
        busy = [m for m in index if m.get("state") in ("READY", "LOADING")]
        if busy:
            self.control.unload(self.staging, wait=True)
            done.append(f"unloaded {self.staging} {[m.get('version') for m in busy]}")
        elif any(m.get("state") == "UNLOADING" for m in index):
            self.control.wait_until_unloaded(self.staging)
        if self.staging_folder().exists():
            shutil.rmtree(self.staging_folder())
            done.append(f"removed {self.staging_folder()}")
        return done

    def remove_staging_quietly(self, warnings: list[str] | None = None) -> None:
        """remove_staging where a failure is only a warning (the server may be gone; reconcile
        finishes it)."""
        try:
            self.remove_staging()
        except Exception as exc:  # noqa: BLE001
            shutil.rmtree(self.staging_folder(), ignore_errors=True)
            message = f"staging cleanup: {type(exc).__name__}: {exc} (reconcile unloads it)"
            log.warning(message)
            if warnings is not None:
                warnings.append(message)
