"""Rolling back: serving a version that served before, instead of the active one.

Steps (the same runner as the deploy, gymops.deploy.steps.run_steps; none has an undo, see below),
each reported through on_step(step, seconds):

    check       the target chosen by THE registry rule (ModelRegistry.rollback_target: the version
                the active one replaced, else the newest retired one, or the one asked for, which
                must be retired); its folder sound, or restored from the archive
    registry    registry.rollback: the active version rolled_back, the target active, and a
                ModelRolledBackEvent, in one transaction
    swap        control.swap(model, target): one load pinned to the target; the event's ``seconds``
                (command to the old version serving) is filled in once measured
    confirm     a request answered by the target
    unload_old  the bad version's requests finish on it, then it is gone

Why the registry goes first and nothing is undone: a crash (or a failing swap) between the registry
and the swap is resolved by reconcile towards the rollback target, the safe direction; undoing the
registry change would put the version being rolled back, presumably bad, back in charge.

Why the event's seconds are amended: the event has to commit in the same transaction as the registry
change (the outbox's promise: never lost for a change that committed), and the registry change has
to precede the swap (above), but the seconds are only measured after the swap. Recording the event
after the swap instead would lose it on a crash between the two (reconcile completes the rollback,
nobody would announce it). So the event is recorded pending with ``seconds`` null under an eventId
chosen here, and amended by that id while still pending (Outbox.amend_pending). Should the relay
have published it in between, it went out without the seconds: null means "not measured", which
consumers must accept anyway (a crash after the registry step leaves it null too).
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Callable

from gymops.lifecycle.registry import RegistryError

from .checks import probe_photo
from .reports import ReconcileFailed, RollbackFailed, RollbackReport
from .steps import Step, StepFailed, run_steps

if TYPE_CHECKING:
    from .deployer import Deployer

log = logging.getLogger(__name__)


def rollback(d: "Deployer", model_type: str, to_version: str | None = None, reason: str = "rollback",
             on_step: Callable[[str, float], None] | None = None) -> RollbackReport:
    """Serve ``to_version`` (default: the version the active one replaced) again; see the module
    docstring. Raises RollbackFailed naming the step."""
    started = time.monotonic()
    with d.lock():
        try:
            current, target = d.registry.rollback_target(model_type, to_version)
        except RegistryError as exc:
            raise RollbackFailed("check", str(exc)) from None
        report = RollbackReport(model_type, current.version, target.version, target.triton_version, reason)
        event_id = str(uuid.uuid4())
        swap = {}

        def check() -> None:
            actions: list[str] = []
            try:
                report.restored_from_archive = d.folders.ensure(target, actions)
            except ReconcileFailed as exc:
                raise RollbackFailed("check", str(exc)) from None

        def registry() -> None:
            try:  # nothing changed if this fails: the registry and Triton still agree
                d.registry.rollback(model_type, target.version, reason=reason, event_id=event_id)
            except Exception as exc:
                raise RollbackFailed("registry", f"{type(exc).__name__}: {exc}") from exc
            report.registry_seconds = round(time.monotonic() - started, 4)

        def swap_() -> None:
            try:
                swap["result"] = d.control.swap(d.model, target.triton_version, wait_old=False)
            except Exception as exc:
                raise RollbackFailed("swap", f"the registry serves {target.version} but the swap failed "
                                             f"({type(exc).__name__}: {exc}); run reconcile") from exc
            report.seconds = round(swap["result"].flipped_at - started, 4)
            _record_seconds(d, event_id, report)

        def confirm() -> None:
            verdict = d.classify(d.model, [probe_photo()])[0]
            if verdict.model_version != target.version:
                raise RollbackFailed("confirm", f"served by {verdict.model_version}, expected {target.version}")
            report.confirmed_seconds = round(time.monotonic() - started, 4)

        def unload_old() -> None:
            old = [v for v in swap["result"].previous if v != target.triton_version]
            if old:
                d.control.wait_until_unloaded(d.model, old)

        steps = [Step("check", check), Step("registry", registry), Step("swap", swap_), Step("confirm", confirm),
                 Step("unload_old", unload_old)]
        try:
            run_steps(steps, report.steps, on_step, report.warnings)
        except StepFailed as failed:
            cause = failed.cause
            if isinstance(cause, RollbackFailed):
                cause.report = report
                raise cause from cause.__cause__
            raise RollbackFailed(failed.step, f"{type(cause).__name__}: {cause}", report) from cause
    report.total_seconds = round(time.monotonic() - started, 4)
    log.info("%s rolled back %s -> %s: serving after %.2f s", model_type, current.version, target.version,
             report.seconds)
    return report


def _record_seconds(d: "Deployer", event_id: str, report: RollbackReport) -> None:
    outbox = getattr(d.registry, "outbox", None)
    if outbox is None:
        return
    try:
        if not outbox.amend_pending(event_id, {"seconds": round(float(report.seconds), 3)}):
            report.warnings.append(f"rollback event {event_id} was published before its seconds were known")
    except Exception as exc:  # noqa: BLE001 -- the event itself is recorded; only its timing is missing
        report.warnings.append(f"could not record the rollback's seconds in its event: {exc}")
        log.warning(report.warnings[-1])
