"""Recovery: bringing repository and server back to the registry's truth, and checking they agree.

The registry is the truth because every operation orders its writes so that the registry's state
is the safe one after a crash at any point: a deploy flips Triton before the registry activates
(gymops.deploy.steps), a rollback updates the registry before swapping Triton
(gymops.deploy.rollback). reconcile therefore never decides anything: it removes the staging model
and temporary leftovers, finishes interrupted archive moves, makes sure the active version's folder
exists and is sound (restoring it from the archive, or rewriting it from the artifact as a last
resort), and loads it pinned -- or, when the registry has a version in canary, the canary's route
folder (gymops.deploy.canary: a registry canary without a sound route is rolled back, route folders
no canary uses are removed). consistency reports whether registry, repository and server agree.
"""
from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING

from gymops.lifecycle.registry import ARCHIVED, RETIRED
from gymops.serving.control import ROUTE_BASE, ControlError

from .canary import current_canary, reconcile_canary, remove_routes, route_folders, route_of
from .folders import folder_problems, registered_sha
from .reports import Consistency, ReconcileReport

if TYPE_CHECKING:
    from .deployer import Deployer

log = logging.getLogger(__name__)


def reconcile(d: "Deployer", model_type: str) -> ReconcileReport:
    """Bring repository and server back to the registry's truth after a crash or a restart."""
    started = time.monotonic()
    with d.lock():
        found: list[str] = []
        actions: list[str] = []
        served_before = d.control.served_versions(d.model)
        if any(m.get("state") in ("READY", "LOADING", "UNLOADING") for m in d.staging_states()):
            found.append(f"{d.staging} loaded")
        found += [f"leftover {path}" for path in d.folders.leftovers()]
        actions += d.remove_staging()
        for path in d.folders.leftovers():
            shutil.rmtree(path, ignore_errors=True)
            actions.append(f"removed {path}")
        moved = d.folders.move_archived(d.history(model_type))
        if moved:
            found.append(f"archived versions still in the repository: {moved}")
            actions.append(f"moved {moved} to {d.archive_dir / d.model}")
        active = d.registry.active(model_type)
        if active is None:
            if served_before:
                found.append(f"serving {served_before} with no active version in the registry")
                d.control.unload(d.model, wait=True)
                actions.append(f"unloaded {d.model}")
        else:
            if d.folders.ensure(active, actions):
                found.append(f"the active version's folder {d.folder(active.triton_version)} was not sound")
            route = reconcile_canary(d, model_type, found, actions)
            want = route if route is not None else active.triton_version
            if served_before != [want]:
                found.append(f"serving {served_before}, the registry's active version is {active.version} "
                             f"({active.triton_version})" + (f", in canary through route {route}" if route else ""))
                d.control.swap(d.model, want)
                actions.append(f"loaded {d.model} pinned to {want} "
                               + ("(the canary's route)" if route else f"({active.version})"))
            stale = [r for r in route_folders(d) if r != route]
            if stale:
                found.append(f"route folders no canary uses: {stale}")
                actions += [f"removed route {r}" for r in remove_routes(d, keep=route)]
        report = ReconcileReport(model_type, active.version if active else None,
                                 active.triton_version if active else None, served_before,
                                 d.control.served_versions(d.model), found, actions)
    report.consistency = consistency(d, model_type)
    report.seconds = round(time.monotonic() - started, 4)
    log.info("%s reconciled in %.2f s: found %s; did %s", model_type, report.seconds, found or "nothing",
             actions or "nothing")
    return report


def consistency(d: "Deployer", model_type: str, check_server: bool = True) -> Consistency:
    """Whether registry, repository (and, with check_server, the server) agree: the active
    version's folder present and sound (right sha256, its code files as written) and served alone,
    nothing archived still in the repository, no staging or temporary leftovers."""
    problems: list[str] = []
    notes: list[str] = []
    active = d.registry.active(model_type)
    history = d.history(model_type)
    if active is not None:
        _, sha, note = registered_sha(active)
        if note:
            notes.append(f"{note} (folder checked against its own metadata)")
        problems += folder_problems(d.folder(active.triton_version), active.version, sha)
    for mv in history:
        if mv.status == ARCHIVED and d.folder(mv.triton_version).exists():
            problems.append(f"archived {mv.version} still in the repository ({d.folder(mv.triton_version)})")
        if mv.status == RETIRED and not d.folder(mv.triton_version).exists():
            notes.append(f"retired {mv.version} has no folder in the repository (rollback restores it from "
                         "the archive)")
    problems += [f"leftover {p}" for p in d.folders.leftovers()]
    orphans = [v for v in d.folders.orphans({mv.triton_version for mv in history}) if v < ROUTE_BASE]
    if orphans:
        notes.append(f"folders the registry does not know: {orphans}")
    served = None
    if check_server:
        try:
            served = d.control.served_versions(d.model)
            want = [active.triton_version] if active else []
            canary = current_canary(d.registry, model_type) if active else None
            if canary is not None:
                route = route_of(d, canary)
                if route is None:
                    problems.append(f"{canary.version} is in canary but no sound route folder serves it")
                else:
                    want = [route]
            if served != want:
                problems.append(f"the server serves {served}, the registry's active version is "
                                f"{active.version if active else 'none'} ({want})")
            if any(m.get("state") in ("READY", "LOADING") for m in d.staging_states()):
                problems.append(f"{d.staging} is loaded")
        except ControlError as exc:
            problems.append(f"the server cannot be asked: {exc}")
    return Consistency(model_type, not problems, active.version if active else None,
                       active.triton_version if active else None, served, problems, notes)
