"""Canary and shadow behind the public name: start, promote, abort, all through the swap primitive.

A ROUTE folder ``<repository>/<model>/<R>/`` (R >= gymops.serving.control.ROUTE_BASE, never a
registry version number) holds two complete version folders side by side::

    <R>/stable/     the active version's folder (its model.onnx, metadata.json, preprocess.py)
    <R>/candidate/  the candidate's folder
    <R>/model.py    the checkout's model.py (the router: triton_models/laundry/model.py)
    <R>/metadata.json  {"role": "canary", "version": <candidate semver>, "canary_fraction": f,
                        "shadow_fraction": s, "stable_version", "candidate_version", ...}

and the served model.py answers each request from one of them (canary_fraction), mirroring a share
of the stable's requests to the candidate (shadow_fraction: recorded, never returned). Clients call
"laundry" as ever and read the answering version from model_version.

Why a folder and not Triton-side routing: KServe's canaryTrafficPercent splits between two
deployments but has no metric-driven promotion (kserve #3085); inside one Triton the alternatives
are BLS to a pinned version (another stub round trip per request, server #7622) or two sessions in
the served stub (measured in BENCHMARKS.md "Progressive delivery"). The route being a folder makes
every move one ``ModelControl.swap`` (load new, flip, unload old: 0 failed requests, BENCHMARKS.md
"Hot swap"):

    start    active A  ->  route R(A, C)     then registry: C candidate -> canary
    promote  route R   ->  C's own folder    then registry: C canary -> active (A retired,
                                              ModelDeployedEvent)
    abort    registry FIRST: C canary -> rolled_back + ModelRolledBackEvent (signal and figures)
             then route R -> A's folder

Crash safety (the watcher or Triton killed mid-flip), resolved by ``reconcile``: the registry is the
truth. start flips before the registry marks the canary: a crash between leaves no canary in the
registry, reconcile serves the active version and removes R. promote flips before activating: a
crash between leaves the registry's canary, reconcile serves R again (the watcher decides anew).
abort writes the registry first: a crash before the swap leaves a rolled-back candidate served by R,
reconcile serves the active version. A registry canary whose route folder is gone is rolled back by
reconcile (reason "interrupted").
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from gymops.fsutil import fsync_path, fsync_tree_files
from gymops.lifecycle.registry import CANARY, CANDIDATE, ROLLED_BACK, ModelVersion
from gymops.serving.control import CODE_FILE, METADATA_FILE, ROUTE_BASE, is_route

from .folders import TMP_PREFIX, artifact_path, folder_problems, registered_sha
from .reports import DeployFailed

if TYPE_CHECKING:
    from .deployer import Deployer

log = logging.getLogger(__name__)

STABLE_DIR, CANDIDATE_DIR = "stable", "candidate"
CANARY_MODE, SHADOW_MODE = "canary", "shadow"


class CanaryFailed(DeployFailed):
    pass


@dataclass
class CanaryReport:
    model_type: str
    action: str  # start | promote | abort
    candidate: str
    stable: str | None
    route: int | None = None
    mode: str | None = None
    canary_fraction: float | None = None
    shadow_fraction: float | None = None
    reason: str | None = None
    flip_seconds: float | None = None  # command to the new folder serving
    total_seconds: float | None = None
    steps: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Route folders

def route_folders(d: "Deployer") -> list[int]:
    model_dir = d.repository / d.model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and is_route(int(p.name)))


def route_meta(d: "Deployer", route: int) -> dict | None:
    try:
        return json.loads((d.folder(route) / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None


def route_of(d: "Deployer", candidate: ModelVersion) -> int | None:
    """The newest sound route folder of ``candidate`` (None when there is none)."""
    for route in reversed(route_folders(d)):
        meta = route_meta(d, route)
        if meta and meta.get("candidate_version") == candidate.version and not route_problems(d, route):
            return route
    return None


def route_problems(d: "Deployer", route: int) -> list[str]:
    folder = d.folder(route)
    meta = route_meta(d, route)
    if meta is None:
        return [f"{folder}: {METADATA_FILE} missing or unreadable"]
    if not (folder / CODE_FILE).is_file():
        return [f"{folder}: {CODE_FILE} missing"]
    return folder_problems(folder / STABLE_DIR, meta.get("stable_version")) + \
        folder_problems(folder / CANDIDATE_DIR, meta.get("candidate_version"))


def _next_route(d: "Deployer", candidate: ModelVersion) -> int:
    base = ROUTE_BASE + candidate.triton_version * 1000
    used = [r for r in route_folders(d) if base <= r < base + 1000]
    return (max(used) + 1) if used else base + 1


def write_route(d: "Deployer", stable: ModelVersion, candidate: ModelVersion, canary_fraction: float,
                shadow_fraction: float) -> int:
    """A new route folder for (stable, candidate), written in a dot-named folder and renamed."""
    if not 0.0 <= canary_fraction <= 1.0 or not 0.0 <= shadow_fraction <= 1.0:
        raise ValueError(f"fractions must lie in [0, 1], got canary {canary_fraction}, shadow {shadow_fraction}")
    route = _next_route(d, candidate)
    model_dir = d.repository / d.model
    tmp = model_dir / f"{TMP_PREFIX}route-{route}-{uuid.uuid4().hex[:8]}"
    try:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(d.folder(stable.triton_version), tmp / STABLE_DIR, ignore=ignore)
        shutil.copytree(d.folder(candidate.triton_version), tmp / CANDIDATE_DIR, ignore=ignore)
        shutil.copyfile(model_dir / CODE_FILE, tmp / CODE_FILE)
        meta = {"role": CANARY, "version": candidate.version, "stable_dir": STABLE_DIR,
                "candidate_dir": CANDIDATE_DIR, "stable_version": stable.version,
                "candidate_version": candidate.version, "stable_triton_version": stable.triton_version,
                "candidate_triton_version": candidate.triton_version, "canary_fraction": canary_fraction,
                "shadow_fraction": shadow_fraction, "mode": SHADOW_MODE if canary_fraction == 0 else CANARY_MODE,
                "written_at": time.time()}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        fsync_tree_files(tmp)
        os.rename(tmp, d.folder(route))
        fsync_path(model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return route


def remove_routes(d: "Deployer", keep: int | None = None) -> list[int]:
    """Remove route folders (but ``keep``) that the server does not serve."""
    served = set(d.control.served_versions(d.model))
    removed = []
    for route in route_folders(d):
        if route != keep and route not in served:
            shutil.rmtree(d.folder(route), ignore_errors=True)
            removed.append(route)
    return removed


def current_canary(registry, model_type: str) -> ModelVersion | None:
    """The version in canary (or shadow) now, if any (at most one is started at a time)."""
    for mv in registry.history(model_type, limit=1_000_000):
        if mv.status == CANARY:
            return mv
    return None


def _in_canary(d: "Deployer", model_type: str) -> tuple[ModelVersion, ModelVersion | None]:
    mv = current_canary(d.registry, model_type)
    if mv is None:
        raise CanaryFailed("check", f"{model_type}: no version in canary")
    return mv, d.registry.active(model_type)


def _roll_back(d: "Deployer", mv: ModelVersion, stable: ModelVersion | None, reason: str,
               event_id: str | None = None) -> None:
    """In one transaction: the canary rolled_back and its ModelRolledBackEvent (the outbox's promise)."""
    with d.registry.transaction(mv.model_type) as tx:
        d.registry.set_status(mv.model_type, mv.version, ROLLED_BACK, reason=reason, conn=tx)
        if d.registry.outbox is not None and stable is not None:
            from gymops.lifecycle.outbox import model_rolled_back

            d.registry.outbox.record_event(model_rolled_back(mv.model_type, mv.version, stable.version, reason,
                                                             event_id=event_id), conn=tx)


# --------------------------------------------------------------------------------------------------
# The three moves

def start(d: "Deployer", model_type: str, version: str, canary_fraction: float,
          shadow_fraction: float = 0.0) -> CanaryReport:
    """Serve ``version`` (a candidate) to canary_fraction of the requests (0: shadow only), mirroring
    shadow_fraction of the stable's. Registry status becomes canary. Raises CanaryFailed (the active
    version keeps serving alone)."""
    started = time.monotonic()
    with d.lock():
        mv = d.registry.get(model_type, version)
        stable = d.registry.active(model_type)
        report = CanaryReport(model_type, "start", mv.version, stable.version if stable else None,
                              canary_fraction=canary_fraction, shadow_fraction=shadow_fraction,
                              mode=SHADOW_MODE if canary_fraction == 0 else CANARY_MODE)
        if stable is None:
            raise CanaryFailed("check", f"{model_type}: no active version to compare {version} with")
        if mv.status not in (CANDIDATE, CANARY):
            raise CanaryFailed("check", f"{model_type} {version} is {mv.status}, not a candidate")
        other = current_canary(d.registry, model_type)
        if other is not None and other.version != mv.version:
            raise CanaryFailed("check", f"{model_type} {other.version} is already in canary")
        served = d.control.served_versions(d.model)
        if mv.status == CANDIDATE and served != [stable.triton_version]:
            raise CanaryFailed("check", f"the server serves {served}, not the active version "
                                        f"{stable.version} ({stable.triton_version}): run reconcile")
        t0 = time.monotonic()
        artifact, sha, note = registered_sha(mv)
        folder = d.folder(mv.triton_version)
        if not folder.exists():
            if sha is None:
                raise CanaryFailed("write", note or f"{mv.version}: no artifact")
            d.folders.write(mv, artifact_path(mv.artifact_uri))
        problems = folder_problems(folder, mv.version, sha)
        if problems:
            raise CanaryFailed("write", "; ".join(problems))
        d.folders.ensure(stable, report.warnings)
        route = write_route(d, stable, mv, canary_fraction, shadow_fraction)
        report.route = route
        report.steps["write"] = round(time.monotonic() - t0, 4)
        t0 = time.monotonic()
        try:
            result = d.control.swap(d.model, route, wait_old=False)  # the watcher may judge while it unloads
        except Exception as exc:
            shutil.rmtree(d.folder(route), ignore_errors=True)
            raise CanaryFailed("flip", f"{type(exc).__name__}: {exc} (the active version keeps serving)") from exc
        report.flip_seconds = round(result.flipped_at - t0, 4)
        report.steps["flip"] = round(time.monotonic() - t0, 4)
        t0 = time.monotonic()
        reason = f"{report.mode} {canary_fraction:.0%} (shadow {shadow_fraction:.0%}) over {stable.version}"
        try:
            if mv.status == CANDIDATE:
                d.registry.set_status(model_type, mv.version, CANARY, reason=reason)
        except Exception as exc:  # undo the flip: the registry did not record the canary
            d.control.swap(d.model, stable.triton_version)
            shutil.rmtree(d.folder(route), ignore_errors=True)
            raise CanaryFailed("registry", f"{type(exc).__name__}: {exc}") from exc
        report.steps["registry"] = round(time.monotonic() - t0, 4)
        old = [v for v in result.previous if v != route]
        if old:
            d.control.wait_until_unloaded(d.model, old)
        report.warnings += [f"removed stale route {r}" for r in remove_routes(d, keep=route)]
    report.total_seconds = round(time.monotonic() - started, 4)
    log.info("%s %s: %s", model_type, mv.version, reason)
    return report


def promote(d: "Deployer", model_type: str, reason: str = "canary analysis passed") -> CanaryReport:
    """The canary's candidate serves alone and becomes active (the old active retired)."""
    started = time.monotonic()
    with d.lock():
        mv, stable = _in_canary(d, model_type)
        report = CanaryReport(model_type, "promote", mv.version, stable.version if stable else None, reason=reason)
        t0 = time.monotonic()
        try:
            result = d.control.swap(d.model, mv.triton_version, wait_old=True)
        except Exception as exc:
            raise CanaryFailed("flip", f"{type(exc).__name__}: {exc} (the canary keeps serving)") from exc
        report.flip_seconds = round(result.flipped_at - t0, 4)
        d.registry.activate(model_type, mv.version, deploy_seconds=report.flip_seconds, reason=reason)
        remove_routes(d)
        try:
            archived = d.registry.archive_beyond(model_type, d.keep)
            if archived:
                d.folders.move_archived(d.history(model_type))
        except Exception as exc:  # noqa: BLE001 -- reconcile finishes the moves
            report.warnings.append(f"archive: {exc}")
    report.total_seconds = round(time.monotonic() - started, 4)
    log.info("%s %s promoted (%s) in %.2f s", model_type, mv.version, reason, report.total_seconds)
    return report


def abort(d: "Deployer", model_type: str, reason: str, signal: str | None = None,
          figures: dict | None = None) -> CanaryReport:
    """Registry first (the candidate rolled_back, ModelRolledBackEvent carrying the signal and its
    figures), then the active version's folder serves alone again."""
    started = time.monotonic()
    with d.lock():
        mv, stable = _in_canary(d, model_type)
        text = reason if signal is None else f"{signal}: {reason}"
        if figures:
            text += " " + json.dumps(figures, sort_keys=True, default=str)
        report = CanaryReport(model_type, "abort", mv.version, stable.version if stable else None, reason=text)
        event_id = str(uuid.uuid4())
        _roll_back(d, mv, stable, text, event_id)
        report.steps["registry"] = round(time.monotonic() - started, 4)
        if stable is not None:
            t0 = time.monotonic()
            d.folders.ensure(stable, report.warnings)
            result = d.control.swap(d.model, stable.triton_version, wait_old=True)
            report.flip_seconds = round(result.flipped_at - started, 4)
            report.steps["flip"] = round(time.monotonic() - t0, 4)
            outbox = d.registry.outbox
            if outbox is not None:
                try:
                    outbox.amend_pending(event_id, {"seconds": report.flip_seconds})
                except Exception as exc:  # noqa: BLE001
                    report.warnings.append(f"event seconds: {exc}")
        remove_routes(d)
    report.total_seconds = round(time.monotonic() - started, 4)
    log.warning("%s %s rolled back from canary: %s", model_type, mv.version, text)
    return report


def reconcile_canary(d: "Deployer", model_type: str, found: list[str], actions: list[str]) -> int | None:
    """Part of reconcile: the folder the server must serve when the registry has a canary (its route),
    None when it has none (serve the active version). A registry canary whose route is gone is rolled
    back (reason "interrupted")."""
    mv = current_canary(d.registry, model_type)
    if mv is None:
        return None
    route = route_of(d, mv)
    if route is not None:
        return route
    found.append(f"{mv.version} is in canary but no sound route folder serves it")
    _roll_back(d, mv, d.registry.active(model_type), "interrupted: route folder lost")
    actions.append(f"rolled back {mv.version} (canary without a route folder)")
    return None


__all__ = ["CanaryFailed", "CanaryReport", "start", "promote", "abort", "current_canary", "route_of",
           "route_folders", "reconcile_canary"]
