"""Deploying a registered model version into Triton, rolling back, and recovering after a crash.

Plain Python (no Dagster): the deployed_model asset and the CLI are thin wiring over ``Deployer``.

deploy(model_type, version, golden_photos), each step timed and reported through on_step:

    check     the version is a candidate (or canary) whose ONNX artifact exists; the server serves the
              registry's active version; the candidate's OFFLINE answers on the golden photos
              (onnxruntime in-process on gymops.ml.preprocess of the same bytes) are finite
    write     <repository>/<model>/<triton_version>/ via write_version (an existing folder is reused
              when its ONNX has the same sha256, anything else is a failure)
    stage     the same files as <repository>/<model>_staging/<N>/, loaded as "<model>_staging" pinned
              to N with the full configuration (the load runs the model's warm-up)
    golden    the golden photos through the staging model: Triton's probabilities and labels must equal
              the offline answers (tolerance 1e-4) and model_version the candidate's semver
    unstage   staging asked to unload (the unload overlaps the flip; its folder goes once it is gone)
    flip      control.swap(model, N): one load pinned to N; unversioned requests go to N when it returns
    verify    a few golden photos through the public name: served by the new version, same answers;
              otherwise straight back to the previous version
    activate  registry.activate (ModelDeployedEvent with deploySeconds, same transaction)
    archive   registry.archive_beyond(keep) and those versions' folders moved to archive_dir

Why staging: a load of the public name pinned to N IS the flip (see gymops.serving.control), so
warm-up and the golden check have to happen on another name before it.

Failures. Anything that goes wrong leaves the previous version serving (nothing flipped yet, or
flipped straight back) and the staging model gone. A model defect (non-finite or differing answers
on the golden photos, an artifact onnxruntime cannot run) rejects the candidate through
registry.reject with the reasons (ModelVerificationFailedEvent) and raises CandidateRejected; an
infrastructure failure leaves it a candidate and raises DeployFailed naming the step and the cause.
A failure while archiving, after the deploy happened, is reported in DeployReport.warnings
(reconcile finishes the move).

Crash safety (the deploying process or Triton killed at any point). The registry is the truth:
- deploy flips Triton BEFORE the registry activates: a crash between them is resolved by reconcile
  back to the registry's active version, i.e. the deploy did not happen (the candidate stays a
  candidate and can be deployed again: its folder is reused);
- rollback updates the registry BEFORE swapping Triton: a crash between them is resolved by reconcile
  towards the rollback target, the safe direction.
reconcile(model_type) removes staging and temporary leftovers, finishes interrupted archive moves,
makes sure the active version's folder exists with the right sha256 (restoring it from the archive,
or rewriting it from the artifact), and loads it pinned. consistency(model_type) reports whether
registry, repository and server agree.

deploy, rollback and reconcile hold an exclusive lock (flock on <repository>/.<model>.deploy.lock),
so two deployers never interleave; the lock dies with its process.
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from gymops.lifecycle.registry import ACTIVE, ARCHIVED, CANARY, CANDIDATE, KEEP_LOADABLE, RETIRED, ModelVersion
from gymops.serving.control import (CODE_FILE, METADATA_FILE, ONNX_FILE, ControlError, pinned_config, sha256_file,
                                    template_config, write_version)

log = logging.getLogger(__name__)

STEPS = ("check", "write", "stage", "golden", "unstage", "flip", "verify", "activate", "archive")
DEPLOYABLE = (CANDIDATE, CANARY)
TOLERANCE = 1e-4
VERIFY_PHOTOS = 3  # golden photos sent through the public name after the flip
STAGING_SUFFIX = "_staging"
TMP_PREFIX = ".tmp-"  # write_version's temporary folders, and ours


# --------------------------------------------------------------------------------------------------
# Errors and reports

class DeployFailed(RuntimeError):
    """A deploy (or rollback) step failed; the previous version keeps serving. ``step`` names the
    step, ``cause`` says why, ``report`` holds what was done and timed up to then."""

    def __init__(self, step: str, cause: str, report=None):
        super().__init__(f"{step}: {cause}")
        self.step = step
        self.cause = cause
        self.report = report


class CandidateRejected(DeployFailed):
    """The candidate answered the golden photos wrongly: it is rejected in the registry
    (``reasons`` as recorded in its ModelVerificationFailedEvent) and the previous version serves."""

    def __init__(self, step: str, reasons: list[dict], report=None):
        super().__init__(step, "; ".join(r["message"] for r in reasons), report)
        self.reasons = reasons


class RollbackFailed(DeployFailed):
    pass


class ReconcileFailed(RuntimeError):
    pass


class _Defect(Exception):
    """Internal: a model defect found during a step (becomes a rejection)."""

    def __init__(self, reasons: list[dict]):
        super().__init__("; ".join(r["message"] for r in reasons))
        self.reasons = reasons


@dataclass
class DeployReport:
    model_type: str
    version: str
    triton_version: int
    outcome: str = "running"  # deployed | rejected | failed
    previous_version: str | None = None  # the registry's active version before the deploy
    previous_triton_version: int | None = None
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds, in order
    seconds: float = 0.0  # deploy() call to return
    deploy_seconds: float | None = None  # deploy() call to the flip verified (the event's deploySeconds)
    flip_seconds: float | None = None  # the swap's load call (new version loaded, requests flipped)
    reused_folder: bool = False
    golden: dict = field(default_factory=dict)  # photos, max_abs_diff (staging and after the flip)
    archived: list[str] = field(default_factory=list)
    reasons: list[dict] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RollbackReport:
    model_type: str
    from_version: str
    to_version: str
    triton_version: int
    reason: str
    seconds: float = 0.0  # command to the old version serving (the swap's load call returned)
    confirmed_seconds: float | None = None  # command to a request answered by the old version
    total_seconds: float = 0.0  # rollback() call to return (bad version unloaded)
    registry_seconds: float = 0.0  # command to the registry committed
    restored_from_archive: bool = False
    steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Consistency:
    model_type: str
    ok: bool
    active_version: str | None
    triton_version: int | None
    served: list[int] | None  # None when the server was not asked or could not be reached
    problems: list[str] = field(default_factory=list)  # each makes ok False
    notes: list[str] = field(default_factory=list)  # informational

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReconcileReport:
    model_type: str
    active_version: str | None
    triton_version: int | None
    served_before: list[int]
    served_after: list[int]
    found: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    consistency: Consistency | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Files

def artifact_path(uri: str) -> Path:
    """The local path of a registry artifact_uri (a plain path or a file:// URI)."""
    parsed = urlparse(str(uri))
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise ValueError(f"artifact {uri}: only local paths and file:// URIs are supported")
    return Path(uri)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_folder(src: Path, dst: Path) -> Path:
    """Copy the files of src to dst atomically (a dot-named temporary folder beside dst, renamed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f"{TMP_PREFIX}{dst.name}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        for p in tmp.iterdir():
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        os.rename(tmp, dst)
        _fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _move_folder(src: Path, dst: Path) -> None:
    """Move a version folder: a rename on one file system, else copy (atomically) then delete."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another file system
            raise
        _copy_folder(src, dst)
        shutil.rmtree(src)
    _fsync_dir(dst.parent)
    if src.parent.exists():
        _fsync_dir(src.parent)


def folder_problems(folder: Path, semver: str | None = None, sha: str | None = None) -> list[str]:
    """What is wrong with a version folder: missing files, a model.onnx whose sha256 differs from its
    metadata.json (or from `sha`), a metadata version other than `semver`. Empty when sound."""
    if not folder.is_dir():
        return [f"{folder} is missing"]
    missing = [n for n in (ONNX_FILE, METADATA_FILE, CODE_FILE) if not (folder / n).is_file()]
    if missing:
        return [f"{folder}: {', '.join(missing)} missing"]
    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        return [f"{folder}/{METADATA_FILE} unreadable: {exc}"]
    problems = []
    actual = sha256_file(folder / meta.get("onnx_file", ONNX_FILE))
    if meta.get("onnx_sha256") != actual:
        problems.append(f"{folder}: model.onnx sha256 {actual[:12]} differs from metadata {str(meta.get('onnx_sha256'))[:12]}")
    if sha is not None and actual != sha:
        problems.append(f"{folder}: model.onnx sha256 {actual[:12]} differs from the registered artifact's {sha[:12]}")
    if semver is not None and str(meta.get("version")) != semver:
        problems.append(f"{folder}: metadata version {meta.get('version')} is not {semver}")
    return problems


def _photo_png(seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------

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
        self.repository = Path(repository).resolve()
        self.model = model
        self.staging = model + STAGING_SUFFIX
        self.archive_dir = Path(archive_dir).resolve() if archive_dir else \
            self.repository.parent / f"{self.repository.name}-archive"
        if self.archive_dir == self.repository or self.repository in self.archive_dir.parents:
            raise ValueError(f"archive_dir {self.archive_dir} must lie outside the repository")
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

    # -- paths -------------------------------------------------------------------------------------
    def folder(self, triton_version: int) -> Path:
        return self.repository / self.model / str(int(triton_version))

    def archived_folder(self, triton_version: int) -> Path:
        return self.archive_dir / self.model / str(int(triton_version))

    def staging_folder(self) -> Path:
        return self.repository / self.staging

    @contextmanager
    def _lock(self) -> Iterator[None]:
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

    # -- offline answers -----------------------------------------------------------------------------
    def _offline(self, artifact: Path, arrays: np.ndarray) -> np.ndarray:
        from gymops.ml.evaluate import onnx_session, predict_onnx

        try:
            session = onnx_session(artifact)
            probs = predict_onnx(artifact, arrays, session=session)
        except Exception as exc:  # noqa: BLE001 -- an artifact onnxruntime cannot run is a defect
            raise _Defect([_reason("offline_inference", None, None,
                                   f"onnxruntime cannot run {artifact.name}: {type(exc).__name__}: {exc}")]) from None
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape != (len(arrays), 2):
            raise _Defect([_reason("offline_shape", list(probs.shape), [len(arrays), 2],
                                   f"offline output has shape {probs.shape}, expected ({len(arrays)}, 2)")])
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():
            raise _Defect([_reason("offline_finite", int(bad.sum()), 0,
                                   f"{int(bad.sum())} of {len(probs)} golden photos get non-finite probabilities "
                                   "offline (NaN/inf)")])
        return probs

    def _compare(self, where: str, verdicts, expected: np.ndarray, labels: Sequence[str],
                 semver: str) -> tuple[dict, list[dict], list[str]]:
        """(summary, defects, infrastructure problems) of served verdicts against offline answers."""
        served = np.array([v.probabilities for v in verdicts], dtype=np.float64)
        diff = np.abs(served - expected.astype(np.float64))
        off = ~(diff <= self.tolerance)  # NaN counts as off
        max_diff = float(np.nanmax(diff)) if np.isfinite(diff).any() else float("nan")
        if np.isnan(diff).any():
            max_diff = float("nan")
        want_labels = [labels[int(k)] for k in expected.argmax(axis=1)]
        wrong_labels = [i for i, v in enumerate(verdicts) if v.label != want_labels[i]]
        versions = sorted({v.model_version for v in verdicts})
        summary = {"photos": len(verdicts), "max_abs_diff": max_diff, "versions": versions}
        defects, infra = [], []
        if versions != [semver]:
            infra.append(f"{where} answered as model_version {versions}, expected {semver}")
        rows = np.flatnonzero(off.any(axis=1))
        if len(rows):
            i = int(rows[0])
            defects.append(_reason(f"{where}_probabilities", max_diff, self.tolerance,
                                   f"{where}: {len(rows)} of {len(verdicts)} golden photos differ from the offline "
                                   f"answers by more than {self.tolerance:g} (max {max_diff:.3g}; photo {i}: "
                                   f"served {np.round(served[i], 6).tolist()}, offline {np.round(expected[i], 6).tolist()})"))
        if wrong_labels:
            i = wrong_labels[0]
            defects.append(_reason(f"{where}_labels", len(wrong_labels), 0,
                                   f"{where}: {len(wrong_labels)} of {len(verdicts)} golden photos get another label "
                                   f"than offline (photo {i}: served {verdicts[i].label}, offline {want_labels[i]})"))
        return summary, defects, infra

    def _classify(self, name: str, photos: Sequence[bytes]):
        client = self.client_factory(name)
        try:
            return client.classify_batch(list(photos))
        finally:
            close = getattr(client, "close", None)
            if close:
                close()

    # -- staging -------------------------------------------------------------------------------------
    def _index(self) -> list[dict]:
        return self.control.index()

    def _remove_staging(self) -> list[str]:
        """Unload the staging model if it is loaded (or wait for its unload to end) and remove its
        folder; what was done."""
        done = []
        index = [m for m in self._index() if m.get("name") == self.staging]
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

    def _unstage(self) -> None:
        """Ask Triton to unload the staging model without waiting: the unload (about a second for a
        Python-backend stub) overlaps the flip; _flip waits for it and removes the folder."""
        self.control.unload(self.staging, wait=False)

    def _flip(self, mv: ModelVersion, report: DeployReport):
        swap = self.control.swap(self.model, mv.triton_version)
        self._remove_staging_quietly(report)  # the flip happened: a cleanup problem is only a warning
        return swap

    def _remove_staging_quietly(self, report: DeployReport | None = None) -> None:
        try:
            self._remove_staging()
        except Exception as exc:  # noqa: BLE001 -- the server may be gone; reconcile finishes it
            shutil.rmtree(self.staging_folder(), ignore_errors=True)
            message = f"staging cleanup: {type(exc).__name__}: {exc} (reconcile unloads it)"
            log.warning(message)
            if report is not None:
                report.warnings.append(message)

    # -- deploy --------------------------------------------------------------------------------------
    def deploy(self, model_type: str, version: str, golden_photos: list[bytes],
               on_step: Callable[[str, float], None] | None = None) -> DeployReport:
        """Deploy registry version ``version`` of ``model_type``; see the module docstring.
        Returns the DeployReport of a deploy that happened; raises CandidateRejected or DeployFailed
        (each carrying .report) otherwise. on_step(step, seconds) is called after every step."""
        started = time.monotonic()
        if not golden_photos:
            raise ValueError("golden_photos: at least one photo is needed for the golden check")
        from gymops.ml.preprocess import preprocess

        rows = []
        for i, photo in enumerate(golden_photos):
            try:
                rows.append(preprocess(photo))
            except ValueError as exc:
                raise ValueError(f"golden photo {i}: {exc}") from None
        arrays = np.stack(rows)
        mv = self.registry.get(model_type, version)
        report = DeployReport(model_type, mv.version, mv.triton_version)
        state = {"flipped": False, "activated": False}
        current = {"step": "check"}

        def step(name: str, fn):
            current["step"] = name
            t0 = time.monotonic()
            result = fn()
            report.steps[name] = round(time.monotonic() - t0, 4)
            if on_step is not None:
                on_step(name, report.steps[name])
            return result

        with self._lock():
            try:
                artifact, sha, active, expected, labels = step("check", lambda: self._check(mv, arrays, report))
                step("write", lambda: self._write(mv, artifact, sha, report))
                step("stage", lambda: self._stage(mv))
                step("golden", lambda: self._golden_staging(mv, golden_photos, expected, labels, report))
                step("unstage", self._unstage)
                state["flipped"] = True  # from here on the public name may serve the candidate
                swap = step("flip", lambda: self._flip(mv, report))
                report.flip_seconds = round(swap.load_seconds, 4)
                step("verify", lambda: self._verify(mv, golden_photos, expected, labels, report))
                report.deploy_seconds = round(time.monotonic() - started, 3)
                step("activate", lambda: self._activate(mv, report, state))
            except _Defect as defect:
                self._undo(report, state)
                report.outcome, report.failed_step, report.reasons = "rejected", current["step"], defect.reasons
                report.error = str(defect)
                try:
                    self.registry.reject(model_type, mv.version, defect.reasons)
                except Exception as exc:  # noqa: BLE001
                    report.warnings.append(f"registry.reject failed: {type(exc).__name__}: {exc}")
                    report.seconds = round(time.monotonic() - started, 3)
                    raise DeployFailed(current["step"], f"{defect}; and rejecting it failed: {exc}", report) from exc
                report.seconds = round(time.monotonic() - started, 3)
                log.warning("%s %s rejected at %s: %s", model_type, mv.version, current["step"], defect)
                raise CandidateRejected(current["step"], defect.reasons, report) from None
            except Exception as exc:
                self._undo(report, state)
                report.outcome, report.failed_step = "failed", current["step"]
                report.error = f"{type(exc).__name__}: {exc}"
                report.seconds = round(time.monotonic() - started, 3)
                log.warning("%s %s: deploy failed at %s: %s", model_type, mv.version, current["step"], report.error)
                if isinstance(exc, DeployFailed):
                    exc.report = report
                    raise
                raise DeployFailed(current["step"], report.error, report) from exc
            report.outcome = "deployed"
            try:
                step("archive", lambda: self._archive(model_type, report))
            except Exception as exc:  # noqa: BLE001 -- the deploy happened; reconcile finishes the moves
                report.warnings.append(f"archive: {type(exc).__name__}: {exc}")
                log.warning("%s %s deployed, archiving failed: %s", model_type, mv.version, exc)
        report.seconds = round(time.monotonic() - started, 3)
        log.info("%s %s deployed (Triton version %d) in %.2f s: %s", model_type, mv.version, mv.triton_version,
                 report.seconds, report.steps)
        return report

    def _check(self, mv: ModelVersion, arrays: np.ndarray, report: DeployReport):
        if mv.status not in DEPLOYABLE:
            raise DeployFailed("check", f"{mv.model_type} {mv.version} is {mv.status}, not a candidate")
        try:
            artifact = artifact_path(mv.artifact_uri)
        except ValueError as exc:
            raise DeployFailed("check", str(exc)) from None
        if not artifact.is_file():
            raise DeployFailed("check", f"{mv.model_type} {mv.version}: artifact {artifact} does not exist")
        active = self.registry.active(mv.model_type)
        served = self.control.served_versions(self.model)
        want = [active.triton_version] if active else []
        if served != want:
            raise DeployFailed("check", f"the server serves {self.model} versions {served} but the registry's active "
                                        f"version is {active.version + ' (' + str(active.triton_version) + ')' if active else 'none'}"
                                        "; run reconcile first")
        if active is not None:
            report.previous_version, report.previous_triton_version = active.version, active.triton_version
        template = self.repository / self.model / "config.pbtxt"
        if not template.is_file():
            raise DeployFailed("check", f"{template} (the model's configuration template) does not exist")
        expected = self._offline(artifact, arrays)
        return artifact, sha256_file(artifact), active, expected, ("good", "defective")

    def _write(self, mv: ModelVersion, artifact: Path, sha: str, report: DeployReport) -> None:
        folder = self.folder(mv.triton_version)
        if folder.exists():
            problems = folder_problems(folder, mv.version, sha)
            if problems:
                raise DeployFailed("write", f"{folder} already exists and does not hold this artifact: "
                                            + "; ".join(problems))
            report.reused_folder = True
            return
        meta = {"version": mv.version, "model_type": mv.model_type, "dataset_id": mv.dataset_id,
                "architecture": mv.architecture, "run_id": mv.run_id, "parent_version": mv.parent_version,
                "artifact_uri": mv.artifact_uri}
        write_version(self.repository, self.model, mv.triton_version, artifact, meta)
        if (problems := folder_problems(folder, mv.version, sha)):
            raise DeployFailed("write", "; ".join(problems))

    def _stage(self, mv: ModelVersion) -> None:
        self._remove_staging()  # leftovers of an earlier, interrupted deploy
        _copy_folder(self.folder(mv.triton_version), self.staging_folder() / str(mv.triton_version))
        config = pinned_config(template_config(self.repository, self.model), self.staging, mv.triton_version)
        self.control.load_version(self.staging, mv.triton_version, config)
        if not self.control.ready(self.staging, mv.triton_version):
            raise ControlError(f"{self.staging} v{mv.triton_version}: load returned but the version is not ready")

    def _golden_staging(self, mv, photos, expected, labels, report) -> None:
        verdicts = self._classify(self.staging, photos)
        summary, defects, infra = self._compare("golden", verdicts, expected, labels, mv.version)
        report.golden["staging"] = summary
        if infra:
            raise DeployFailed("golden", "; ".join(infra))
        if defects:
            raise _Defect(defects)

    def _verify(self, mv, photos, expected, labels, report) -> None:
        n = min(VERIFY_PHOTOS, len(photos))
        verdicts = self._classify(self.model, photos[:n])
        summary, defects, infra = self._compare("served", verdicts, expected[:n], labels, mv.version)
        report.golden["served"] = summary
        if infra:
            raise DeployFailed("verify", "; ".join(infra))
        if defects:
            raise _Defect(defects)

    def _activate(self, mv: ModelVersion, report: DeployReport, state: dict) -> None:
        try:
            self.registry.activate(mv.model_type, mv.version, deploy_seconds=report.deploy_seconds)
        except Exception:
            # The commit may have happened before the error reached us: the registry decides.
            try:
                active = self.registry.active(mv.model_type)
            except Exception:  # noqa: BLE001
                active = None
            if active is None or active.version != mv.version:
                raise
        state["activated"] = True

    def _undo(self, report: DeployReport, state: dict) -> None:
        """After a failure: staging gone, and the previous version serving again if we flipped."""
        self._remove_staging_quietly(report)
        if not state["flipped"] or state["activated"]:
            return
        try:
            if report.previous_triton_version is not None:
                self.control.swap(self.model, report.previous_triton_version)
            else:
                self.control.unload(self.model, wait=True)
            report.warnings.append(f"flipped back to {report.previous_version or 'nothing'}")
        except Exception as exc:  # noqa: BLE001
            message = (f"flipping back to {report.previous_version} failed: {type(exc).__name__}: {exc}; "
                       "run reconcile (it serves the registry's active version)")
            report.warnings.append(message)
            log.error(message)

    def _archive(self, model_type: str, report: DeployReport) -> None:
        report.archived = self.registry.archive_beyond(model_type, self.keep)
        moved = self._move_archived(model_type)
        if moved:
            log.info("%s: archived folders %s to %s", model_type, moved, self.archive_dir)

    def _move_archived(self, model_type: str) -> list[int]:
        """Move the folders of every archived version still in the repository to archive_dir."""
        moved = []
        for mv in self.registry.history(model_type, limit=1_000_000):
            src = self.folder(mv.triton_version)
            if mv.status != ARCHIVED or not src.exists():
                continue
            dst = self.archived_folder(mv.triton_version)
            if dst.exists():
                if folder_problems(dst) or json.loads((dst / METADATA_FILE).read_text()).get("onnx_sha256") != \
                        json.loads((src / METADATA_FILE).read_text()).get("onnx_sha256"):
                    aside = dst.with_name(f".replaced-{dst.name}-{uuid.uuid4().hex[:8]}")
                    os.rename(dst, aside)
                    _move_folder(src, dst)
                else:  # an interrupted copy across file systems: the archive copy is complete
                    shutil.rmtree(src)
            else:
                _move_folder(src, dst)
            moved.append(mv.triton_version)
        return moved

    # -- rollback ------------------------------------------------------------------------------------
    def _rollback_target(self, model_type: str, current: ModelVersion, to_version: str | None) -> ModelVersion:
        """The version registry.rollback would choose (checked again by it)."""
        if to_version is not None:
            target = self.registry.get(model_type, to_version)
        else:
            target = None
            if current.previous_version:
                prev = self.registry.get(model_type, current.previous_version)
                target = prev if prev.status == RETIRED else None
            if target is None:
                retired = [mv for mv in self.registry.history(model_type, limit=1_000_000) if mv.status == RETIRED]
                if not retired:
                    raise RollbackFailed("check", f"{model_type}: no retired version to roll back to from {current.version}")
                target = retired[0]
        if target.version == current.version:
            raise RollbackFailed("check", f"{model_type}: cannot roll back {current.version} to itself")
        if target.status not in (RETIRED,):
            raise RollbackFailed("check", f"{model_type} {target.version} is {target.status}; only a retired version "
                                          "can be rolled back to")
        return target

    def _ensure_folder(self, mv: ModelVersion, actions: list[str]) -> bool:
        """Make sure mv's version folder is in the repository and sound: restored from the archive,
        or rewritten from the artifact. Returns True when it had to be restored."""
        folder = self.folder(mv.triton_version)
        sha = None
        try:
            artifact = artifact_path(mv.artifact_uri)
            sha = sha256_file(artifact) if artifact.is_file() else None
        except ValueError:
            artifact = None
        problems = folder_problems(folder, mv.version, sha)
        if not problems:
            return False
        if folder.exists():
            aside = self.archive_dir / self.model / f".corrupt-{mv.triton_version}-{uuid.uuid4().hex[:8]}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            _move_folder(folder, aside)
            actions.append(f"moved the unsound folder {folder} aside to {aside}: {'; '.join(problems)}")
        archived = self.archived_folder(mv.triton_version)
        if archived.exists() and not folder_problems(archived, mv.version, sha):
            _copy_folder(archived, folder)
            shutil.rmtree(archived)
            actions.append(f"restored {folder} from {archived}")
            return True
        if artifact is not None and sha is not None:
            meta = {"version": mv.version, "model_type": mv.model_type, "dataset_id": mv.dataset_id,
                    "architecture": mv.architecture, "run_id": mv.run_id, "parent_version": mv.parent_version,
                    "artifact_uri": mv.artifact_uri}
            write_version(self.repository, self.model, mv.triton_version, artifact, meta)
            actions.append(f"rewrote {folder} from the artifact {artifact}")
            return True
        raise ReconcileFailed(f"{mv.model_type} {mv.version}: folder {folder} is not sound ({'; '.join(problems)}), "
                              f"not in the archive and its artifact {mv.artifact_uri} is gone")

    def rollback(self, model_type: str, to_version: str | None = None, reason: str = "rollback",
                 on_step: Callable[[str, float], None] | None = None) -> RollbackReport:
        """Serve ``to_version`` (default: the version the active one replaced) again. The registry is
        updated FIRST (registry.rollback, ModelRolledBackEvent), then Triton swapped; the event's
        ``seconds`` (command to the old version serving) is filled into its still-pending outbox row
        once measured. Steps, reported through on_step(step, seconds): check (target chosen, its
        folder sound or restored from the archive), registry, swap, confirm (a request answered by
        the target), unload_old."""
        started = time.monotonic()
        steps: dict[str, float] = {}

        def step(name: str, t0: float) -> None:
            steps[name] = round(time.monotonic() - t0, 4)
            if on_step is not None:
                on_step(name, steps[name])

        with self._lock():
            t0 = time.monotonic()
            current = self.registry.active(model_type)
            if current is None:
                raise RollbackFailed("check", f"{model_type}: no active version to roll back")
            target = self._rollback_target(model_type, current, to_version)
            actions: list[str] = []
            try:
                restored = self._ensure_folder(target, actions)
            except ReconcileFailed as exc:
                raise RollbackFailed("check", str(exc)) from None
            report = RollbackReport(model_type, current.version, target.version, target.triton_version, reason,
                                    restored_from_archive=restored, steps=steps)
            step("check", t0)
            t0 = time.monotonic()
            try:
                self.registry.rollback(model_type, target.version, reason=reason)
            except Exception as exc:  # nothing changed: the registry and Triton still agree
                raise RollbackFailed("registry", f"{type(exc).__name__}: {exc}", report) from exc
            report.registry_seconds = round(time.monotonic() - started, 4)
            step("registry", t0)
            t0 = time.monotonic()
            try:
                swap = self.control.swap(self.model, target.triton_version, wait_old=False)
            except Exception as exc:
                raise RollbackFailed("swap", f"the registry serves {target.version} but the swap failed "
                                             f"({type(exc).__name__}: {exc}); run reconcile", report) from exc
            report.seconds = round(swap.flipped_at - started, 4)
            self._fill_rollback_seconds(model_type, current.version, target.version, report.seconds)
            step("swap", t0)
            t0 = time.monotonic()
            try:
                verdict = self._classify(self.model, [_photo_png()])[0]
                if verdict.model_version != target.version:
                    raise RollbackFailed("confirm", f"served by {verdict.model_version}, expected {target.version}",
                                         report)
                report.confirmed_seconds = round(time.monotonic() - started, 4)
            except RollbackFailed:
                raise
            except Exception as exc:  # noqa: BLE001
                raise RollbackFailed("confirm", f"{type(exc).__name__}: {exc}", report) from exc
            step("confirm", t0)
            t0 = time.monotonic()
            old = [v for v in swap.previous if v != target.triton_version]
            if old:  # the bad version's requests finish on it; then it is gone
                self.control.wait_until_unloaded(self.model, old)
            step("unload_old", t0)
        report.total_seconds = round(time.monotonic() - started, 4)
        log.info("%s rolled back %s -> %s: serving after %.2f s", model_type, current.version, target.version,
                 report.seconds)
        return report

    def _fill_rollback_seconds(self, model_type: str, from_version: str, to_version: str, seconds: float) -> None:
        outbox_ = getattr(self.registry, "outbox", None)
        if outbox_ is None:
            return
        import sqlalchemy as sa

        from gymops.lifecycle.outbox import MODEL_ROLLED_BACK, outbox as table

        try:
            with outbox_.engine.begin() as conn:
                rows = conn.execute(sa.select(table.c.id, table.c.payload).where(
                    table.c.event_type == MODEL_ROLLED_BACK, table.c.published_at.is_(None))
                    .order_by(table.c.id.desc()).limit(20)).all()
                for row in rows:
                    p = dict(row.payload)
                    if (p.get("modelType"), p.get("fromVersion"), p.get("toVersion")) == \
                            (model_type, from_version, to_version) and p.get("seconds") is None:
                        p["seconds"] = round(float(seconds), 3)
                        conn.execute(table.update().where(table.c.id == row.id, table.c.published_at.is_(None))
                                     .values(payload=p))
                        break
        except Exception as exc:  # noqa: BLE001 -- the event itself is recorded; only its timing is missing
            log.warning("could not record the rollback's seconds in its event: %s", exc)

    # -- recovery ------------------------------------------------------------------------------------
    def _leftovers(self) -> list[Path]:
        out = []
        if self.staging_folder().exists():
            out.append(self.staging_folder())
        for parent in (self.repository / self.model, self.archive_dir / self.model):
            if parent.is_dir():
                out += sorted(p for p in parent.iterdir() if p.name.startswith(TMP_PREFIX))
        return out

    def reconcile(self, model_type: str) -> ReconcileReport:
        """Bring repository and server back to the registry's truth after a crash or a restart."""
        started = time.monotonic()
        with self._lock():
            found: list[str] = []
            actions: list[str] = []
            served_before = self.control.served_versions(self.model)
            staging_loaded = [m for m in self._index() if m.get("name") == self.staging
                              and m.get("state") in ("READY", "LOADING", "UNLOADING")]
            if staging_loaded:
                found.append(f"{self.staging} loaded")
            for path in self._leftovers():
                found.append(f"leftover {path}")
            actions += self._remove_staging()
            for path in self._leftovers():
                shutil.rmtree(path, ignore_errors=True)
                actions.append(f"removed {path}")
            moved = self._move_archived(model_type)
            if moved:
                found.append(f"archived versions still in the repository: {moved}")
                actions.append(f"moved {moved} to {self.archive_dir / self.model}")
            active = self.registry.active(model_type)
            if active is None:
                if served_before:
                    found.append(f"serving {served_before} with no active version in the registry")
                    self.control.unload(self.model, wait=True)
                    actions.append(f"unloaded {self.model}")
            else:
                try:
                    if self._ensure_folder(active, actions):
                        found.append(f"the active version's folder {self.folder(active.triton_version)} was not sound")
                except ReconcileFailed:
                    raise
                if served_before != [active.triton_version]:
                    found.append(f"serving {served_before}, the registry's active version is {active.version} "
                                 f"({active.triton_version})")
                    self.control.swap(self.model, active.triton_version)
                    actions.append(f"loaded {self.model} pinned to {active.triton_version} ({active.version})")
            served_after = self.control.served_versions(self.model)
            report = ReconcileReport(model_type, active.version if active else None,
                                     active.triton_version if active else None, served_before, served_after,
                                     found, actions)
        report.consistency = self.consistency(model_type)
        report.seconds = round(time.monotonic() - started, 4)
        log.info("%s reconciled in %.2f s: found %s; did %s", model_type, report.seconds, found or "nothing",
                 actions or "nothing")
        return report

    def consistency(self, model_type: str, check_server: bool = True) -> Consistency:
        """Whether registry, repository (and, with check_server, the server) agree: the active
        version's folder present with the right sha256 and served alone, nothing archived still in
        the repository, no staging or temporary leftovers."""
        problems: list[str] = []
        notes: list[str] = []
        active = self.registry.active(model_type)
        history = self.registry.history(model_type, limit=1_000_000)
        if active is not None:
            sha = None
            try:
                artifact = artifact_path(active.artifact_uri)
                if artifact.is_file():
                    sha = sha256_file(artifact)
                else:
                    notes.append(f"the active version's artifact {artifact} is gone (folder checked against "
                                 "its own metadata)")
            except ValueError as exc:
                notes.append(str(exc))
            problems += folder_problems(self.folder(active.triton_version), active.version, sha)
        for mv in history:
            if mv.status == ARCHIVED and self.folder(mv.triton_version).exists():
                problems.append(f"archived {mv.version} still in the repository ({self.folder(mv.triton_version)})")
            if mv.status == RETIRED and not self.folder(mv.triton_version).exists():
                notes.append(f"retired {mv.version} has no folder in the repository (rollback restores it from "
                             "the archive)")
        problems += [f"leftover {p}" for p in self._leftovers()]
        known = {mv.triton_version for mv in history}
        model_dir = self.repository / self.model
        if model_dir.is_dir():
            orphans = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and int(p.name) not in known)
            if orphans:
                notes.append(f"folders the registry does not know: {orphans}")
        served = None
        if check_server:
            try:
                index = self._index()
                served = sorted(int(m["version"]) for m in index if m.get("name") == self.model
                                and m.get("version") and m.get("state") == "READY")
                want = [active.triton_version] if active else []
                if served != want:
                    problems.append(f"the server serves {served}, the registry's active version is "
                                    f"{active.version if active else 'none'} ({want})")
                if any(m.get("name") == self.staging and m.get("state") in ("READY", "LOADING") for m in index):
                    problems.append(f"{self.staging} is loaded")
            except ControlError as exc:
                problems.append(f"the server cannot be asked: {exc}")
        return Consistency(model_type, not problems, active.version if active else None,
                           active.triton_version if active else None, served, problems, notes)


def _reason(check: str, value, threshold, message: str) -> dict:
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    return {"gate": "deploy", "check": check, "value": value, "threshold": threshold, "message": message}
