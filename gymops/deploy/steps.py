"""Deploying a registry version: an explicit list of named steps, each with its undo.

deploy(model_type, version, golden_photos), each step timed and reported through on_step:

    check     the version is a candidate (or canary) whose ONNX artifact exists; the server serves the
              registry's active version; the candidate's OFFLINE answers on the golden photos
              (gymops.deploy.checks) are finite
    write     <repository>/<model>/<triton_version>/ via write_version: model.onnx, metadata.json and
              the checkout's model.py and preprocess.py, so the folder holds everything the version
              runs (an existing folder is reused when its ONNX has the same sha256, anything else is
              a failure)
    stage     the same files as <repository>/<model>_staging/<N>/, loaded as "<model>_staging" pinned
              to N with the full configuration (the load runs the model's warm-up)
    golden    the golden photos through the staging model: Triton's probabilities and labels must equal
              the offline answers (tolerance 1e-4) and model_version the candidate's semver
    unstage   staging asked to unload (the unload overlaps the flip; its folder goes once it is gone)
    flip      control.swap(model, N): one load pinned to N; unversioned requests go to N when it returns
    verify    a few golden photos through the public name: served by the new version, same answers
    activate  registry.activate (ModelDeployedEvent with deploySeconds, same transaction)
    archive   registry.archive_beyond(keep) and those versions' folders moved to the archive

Why staging: a load of the public name pinned to N IS the flip (see gymops.serving.control), so
warm-up and the golden check have to happen on another name before it.

Undo. ``run_steps`` runs the list in order; when a step raises, the undos of the steps done run in
reverse order (and the failing step's own when it can fail half-done: a stage that copied its folder
but failed to load, a swap whose load returned but whose version is not ready). Only two steps have
an undo: stage (the staging model unloaded, its folder removed) and flip (the previous version
swapped back in, or the model unloaded if there was none). write has none on purpose: the folder is
immutable and sound (checked), and a retry of the same candidate reuses it. activate is the last
undoable step: once the registry committed the deploy happened. archive runs after the list, its
failure only a warning in DeployReport.warnings (reconcile finishes the moves).

Failures. A model defect (gymops.deploy.checks.Defect) rejects the candidate through
registry.reject with the reasons (ModelVerificationFailedEvent) and raises CandidateRejected; any
other failure leaves it a candidate and raises DeployFailed naming the step and the cause. Either
way the previous version serves and the staging model is gone.

Crash safety: deploy flips Triton BEFORE the registry activates, so a crash between them is resolved
by reconcile back to the registry's active version: the deploy did not happen, the candidate stays a
candidate and can be deployed again (its folder is reused).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from gymops.lifecycle.registry import CANARY, CANDIDATE, ModelVersion
from gymops.serving.control import ControlError, pinned_config, sha256_file, template_config

from .checks import compare, offline_answers, preprocess_golden
from .folders import artifact_path, folder_problems
from .reports import CandidateRejected, Defect, DeployFailed, DeployReport

if TYPE_CHECKING:
    from .deployer import Deployer

log = logging.getLogger(__name__)

STEPS = ("check", "write", "stage", "golden", "unstage", "flip", "verify", "activate", "archive")
DEPLOYABLE = (CANDIDATE, CANARY)
VERIFY_PHOTOS = 3  # golden photos sent through the public name after the flip


# --------------------------------------------------------------------------------------------------
# The runner

@dataclass
class Step:
    name: str
    run: Callable[[], Any]
    undo: Callable[[], None] | None = None
    undo_if_failed: bool = False  # the step can fail half-done: its undo runs when it fails too


class StepFailed(Exception):
    """``step`` raised ``cause`` (an Exception); the undos have run."""

    def __init__(self, step: str, cause: Exception):
        super().__init__(f"{step}: {type(cause).__name__}: {cause}")
        self.step = step
        self.cause = cause


def run_steps(steps: Sequence[Step], timings: dict[str, float],
              on_step: Callable[[str, float], None] | None = None, warnings: list[str] | None = None) -> None:
    """Run ``steps`` in order, each timed into ``timings`` and reported through on_step(name, seconds)
    once done. When one raises an Exception, the undos of the steps done run in reverse order (each
    failing undo a warning), then StepFailed is raised. A BaseException (the process dying, as the
    tests simulate) propagates at once: nothing is undone, reconcile recovers."""
    done: list[Step] = []
    for step in steps:
        try:
            t0 = time.monotonic()
            step.run()
            done.append(step)
            timings[step.name] = round(time.monotonic() - t0, 4)
            if on_step is not None:
                on_step(step.name, timings[step.name])
        except Exception as exc:
            if step.undo_if_failed and step not in done:
                done.append(step)
            for finished in reversed(done):
                if finished.undo is None:
                    continue
                try:
                    finished.undo()
                except Exception as undo_exc:  # noqa: BLE001 -- reported; reconcile repairs the rest
                    message = f"undo of {finished.name}: {type(undo_exc).__name__}: {undo_exc}"
                    log.error(message)
                    if warnings is not None:
                        warnings.append(message)
            raise StepFailed(step.name, exc) from exc


# --------------------------------------------------------------------------------------------------
# The deploy

class _Deploy:
    """One deploy of ``mv``: the steps and what they hand each other."""

    def __init__(self, d: "Deployer", mv: ModelVersion, photos: Sequence[bytes], arrays: np.ndarray,
                 started: float):
        self.d, self.mv, self.photos, self.arrays, self.started = d, mv, list(photos), arrays, started
        self.report = DeployReport(mv.model_type, mv.version, mv.triton_version)
        self.artifact = self.sha = self.expected = None

    def steps(self) -> list[Step]:
        return [
            Step("check", self.check),
            Step("write", self.write),
            Step("stage", self.stage, undo=self.remove_staging, undo_if_failed=True),
            Step("golden", self.golden),
            Step("unstage", self.unstage),  # undone by stage's undo
            Step("flip", self.flip, undo=self.flip_back, undo_if_failed=True),
            Step("verify", self.verify),
            Step("activate", self.activate),
        ]

    def check(self) -> None:
        mv, d = self.mv, self.d
        if mv.status not in DEPLOYABLE:
            raise DeployFailed("check", f"{mv.model_type} {mv.version} is {mv.status}, not a candidate")
        try:
            artifact = artifact_path(mv.artifact_uri)
        except ValueError as exc:
            raise DeployFailed("check", str(exc)) from None
        if not artifact.is_file():
            raise DeployFailed("check", f"{mv.model_type} {mv.version}: artifact {artifact} does not exist")
        active = d.registry.active(mv.model_type)
        served = d.control.served_versions(d.model)
        want = [active.triton_version] if active else []
        if served != want:
            name = f"{active.version} ({active.triton_version})" if active else "none"
            raise DeployFailed("check", f"the server serves {d.model} versions {served} but the registry's active "
                                        f"version is {name}; run reconcile first")
        if active is not None:
            self.report.previous_version, self.report.previous_triton_version = active.version, active.triton_version
        if not d.folders.template().is_file():
            raise DeployFailed("check", f"{d.folders.template()} (the model's configuration template) does not exist")
        self.expected = offline_answers(artifact, self.arrays)
        self.artifact, self.sha = artifact, sha256_file(artifact)

    def write(self) -> None:
        folder = self.d.folder(self.mv.triton_version)
        if folder.exists():
            problems = folder_problems(folder, self.mv.version, self.sha)
            if problems:
                raise DeployFailed("write", f"{folder} already exists and does not hold this artifact: "
                                            + "; ".join(problems))
            self.report.reused_folder = True
            return
        self.d.folders.write(self.mv, self.artifact)
        if (problems := folder_problems(folder, self.mv.version, self.sha)):
            raise DeployFailed("write", "; ".join(problems))

    def stage(self) -> None:
        d, n = self.d, self.mv.triton_version
        d.remove_staging()  # leftovers of an earlier, interrupted deploy
        d.folders.stage(n)
        d.control.load_version(d.staging, n, pinned_config(template_config(d.repository, d.model), d.staging, n))
        if not d.control.ready(d.staging, n):
            raise ControlError(f"{d.staging} v{n}: load returned but the version is not ready")

    def remove_staging(self) -> None:
        self.d.remove_staging_quietly(self.report.warnings)

    def _compare(self, where: str, name: str, n: int) -> None:
        verdicts = self.d.classify(name, self.photos[:n])
        summary, defects, infra = compare(where, verdicts, self.expected[:n], self.mv.version, self.d.tolerance)
        self.report.golden["staging" if where == "golden" else where] = summary
        if infra:
            raise DeployFailed("golden" if where == "golden" else "verify", "; ".join(infra))
        if defects:
            raise Defect(defects)

    def golden(self) -> None:
        self._compare("golden", self.d.staging, len(self.photos))

    def unstage(self) -> None:
        """Ask Triton to unload the staging model without waiting: the unload (about a second for a
        Python-backend stub) overlaps the flip, which waits for it and removes the folder."""
        self.d.control.unload(self.d.staging, wait=False)

    def flip(self) -> None:
        swap = self.d.control.swap(self.d.model, self.mv.triton_version)
        self.report.flip_seconds = round(swap.load_seconds, 4)
        self.remove_staging()  # the flip happened: a cleanup problem is only a warning

    def flip_back(self) -> None:
        report, d = self.report, self.d
        try:
            if report.previous_triton_version is not None:
                d.control.swap(d.model, report.previous_triton_version)
            else:
                d.control.unload(d.model, wait=True)
            report.warnings.append(f"flipped back to {report.previous_version or 'nothing'}")
        except Exception as exc:  # noqa: BLE001
            message = (f"flipping back to {report.previous_version} failed: {type(exc).__name__}: {exc}; "
                       "run reconcile (it serves the registry's active version)")
            report.warnings.append(message)
            log.error(message)

    def verify(self) -> None:
        self._compare("served", self.d.model, min(VERIFY_PHOTOS, len(self.photos)))

    def activate(self) -> None:
        mv = self.mv
        self.report.deploy_seconds = round(time.monotonic() - self.started, 3)
        try:
            self.d.registry.activate(mv.model_type, mv.version, deploy_seconds=self.report.deploy_seconds)
        except Exception:
            # The commit may have happened before the error reached us: the registry decides.
            try:
                active = self.d.registry.active(mv.model_type)
            except Exception:  # noqa: BLE001
                active = None
            if active is None or active.version != mv.version:
                raise

    def archive(self) -> None:
        self.report.archived = self.d.registry.archive_beyond(self.mv.model_type, self.d.keep)
        moved = self.d.folders.move_archived(self.d.history(self.mv.model_type))
        if moved:
            log.info("%s: archived folders %s to %s", self.mv.model_type, moved, self.d.archive_dir)

    def failed(self, step: str, cause: Exception) -> DeployFailed:
        """The exception deploy raises for ``cause`` in ``step`` (the undos have run); a defect
        rejects the candidate in the registry first."""
        report, mv = self.report, self.mv
        report.failed_step = step
        if isinstance(cause, Defect):
            report.outcome, report.reasons, report.error = "rejected", cause.reasons, str(cause)
            try:
                self.d.registry.reject(mv.model_type, mv.version, cause.reasons)
            except Exception as exc:  # noqa: BLE001
                report.warnings.append(f"registry.reject failed: {type(exc).__name__}: {exc}")
                return DeployFailed(step, f"{cause}; and rejecting it failed: {exc}", report)
            log.warning("%s %s rejected at %s: %s", mv.model_type, mv.version, step, cause)
            return CandidateRejected(step, cause.reasons, report)
        report.outcome, report.error = "failed", f"{type(cause).__name__}: {cause}"
        log.warning("%s %s: deploy failed at %s: %s", mv.model_type, mv.version, step, report.error)
        if isinstance(cause, DeployFailed):
            cause.report = report
            return cause
        return DeployFailed(step, report.error, report)


def deploy(d: "Deployer", model_type: str, version: str, golden_photos: list[bytes],
           on_step: Callable[[str, float], None] | None = None) -> DeployReport:
    """Deploy registry version ``version`` of ``model_type``; see the module docstring.
    Returns the DeployReport of a deploy that happened; raises CandidateRejected or DeployFailed
    (each carrying .report) otherwise. on_step(step, seconds) is called after every step."""
    started = time.monotonic()
    arrays = preprocess_golden(golden_photos)
    run = _Deploy(d, d.registry.get(model_type, version), golden_photos, arrays, started)
    report = run.report
    with d.lock():
        try:
            run_steps(run.steps(), report.steps, on_step, report.warnings)
        except StepFailed as failed:
            report.seconds = round(time.monotonic() - started, 3)
            raise run.failed(failed.step, failed.cause) from failed.cause
        report.outcome = "deployed"
        try:
            run_steps([Step("archive", run.archive)], report.steps, on_step)
        except StepFailed as failed:  # the deploy happened; reconcile finishes the moves
            report.warnings.append(f"archive: {type(failed.cause).__name__}: {failed.cause}")
            log.warning("%s %s deployed, archiving failed: %s", model_type, version, failed.cause)
    report.seconds = round(time.monotonic() - started, 3)
    log.info("%s %s deployed (Triton version %d) in %.2f s: %s", model_type, version, run.mv.triton_version,
             report.seconds, report.steps)
    return report
