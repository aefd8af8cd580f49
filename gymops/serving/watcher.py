"""The canary watcher: reads the live signals every interval and promotes or rolls back.

Why a dedicated process (``gymops serving watch``) and not a Dagster sensor: detection time is the
watcher's interval times the looks needed (Flagger/Argo: interval x threshold, 1 min default). A
Dagster sensor ticks at best every ``minimum_interval_seconds`` (30 s default), has a 60 s
evaluation timeout, and acting through a run adds its launch latency (3-17 s reported upstream);
this loop looks every ``delivery.watch_interval_s`` (1 s default) and acts in-process through the
same Deployer (gymops.deploy.canary), so detect-to-flip is one interval plus one swap (measured by
bench/canary.py, BENCHMARKS.md "Progressive delivery"). It holds no state that matters: killed at
any point, the registry, the route folder and ``reconcile`` say what is served; restarted, it takes
a new baseline (the figures count from its first look) and judges anew.

Each look (``Watcher.look``): the version in canary (registry status canary) and the active one;
per-version figures since the canary was first seen (gymops.serving.signals: Triton's metrics
endpoint or Prometheus); the live verdicts on the candidate's answers since the canary started;
``judge``. Any signal "fail" -> abort (the candidate rolled_back, ModelRolledBackEvent with the
signal and all figures, the active version served alone). Promotion (canary only; a shadow is never
promoted automatically) needs errors, latency and mix "pass", promote_requests canary requests, and
per ``promote_rule``: "and" = promote_verdicts live verdicts (accuracy not failed) AND
promote_minutes elapsed; "or" = either. A version with no traffic is "no data": it is never promoted
and never rolled back on it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from .signals import FAIL, PASS, Deltas, figures_of, judge, shadow_agreement

log = logging.getLogger(__name__)


@dataclass
class Look:
    at: float  # time.time()
    candidate: str | None
    stable: str | None
    mode: str | None = None
    signals: list = field(default_factory=list)  # Signal.as_dict()
    shadow: dict | None = None
    action: str | None = None  # "abort" | "promote" | None
    reason: str | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        parts = [f"{s['name']}={s['state']}(n={s['n']})" + ("!alert" if s.get("alert") else "") for s in self.signals]
        head = f"canary {self.candidate} over {self.stable}" if self.candidate else "no canary"
        tail = f" -> {self.action}: {self.reason}" if self.action else ""
        return f"{head}: {' '.join(parts)}{tail}" + (f" [error {self.error}]" if self.error else "")


class Watcher:
    """deployer: gymops.deploy.deployer.Deployer; delivery: settings.DeliverySettings; source: a
    signals source (DirectSource / PrometheusSource); verdicts(version, since) -> [corrected, ...]."""

    def __init__(self, deployer, delivery, source, verdicts: Callable | None = None, model_type: str = "laundry",
                 on_look: Callable[[Look], None] | None = None):
        self.d = deployer
        self.ds = delivery
        self.source = source
        self.verdicts = verdicts or (lambda version, since: [])
        self.model_type = model_type
        self.on_look = on_look
        self._canary: str | None = None
        self._deltas: Deltas | None = None
        self._seen_at: float | None = None
        self.looks: list[Look] = []
        self.actions: list[Look] = []

    def look(self) -> Look:
        from gymops.deploy.canary import current_canary, route_meta, route_of

        registry = self.d.registry
        mv = current_canary(registry, self.model_type)
        stable = registry.active(self.model_type)
        look = Look(time.time(), mv.version if mv else None, stable.version if stable else None)
        if mv is None or stable is None:
            self._canary = self._deltas = None
            return self._done(look)
        if self._canary != mv.version:
            self._canary, self._deltas, self._seen_at = mv.version, Deltas(), time.time()
        route = route_of(self.d, mv)
        meta = route_meta(self.d, route) if route is not None else {}
        look.mode = (meta or {}).get("mode")
        try:
            raw = self.source.sample()
        except Exception as exc:  # noqa: BLE001 -- unreachable metrics are no data, not a verdict
            look.error = f"metrics: {type(exc).__name__}: {exc}"
            return self._done(look)
        self._deltas.update(raw)
        totals = self._deltas.total
        cand, stab = figures_of(totals, mv.version), figures_of(totals, stable.version)
        since = mv.updated_at if mv.updated_at.tzinfo else mv.updated_at.replace(tzinfo=timezone.utc)
        try:
            outcomes = list(self.verdicts(mv.version, since))
        except Exception as exc:  # noqa: BLE001
            outcomes = []
            look.error = f"verdicts: {type(exc).__name__}: {exc}"
        signals = judge(cand, stab, outcomes, self.ds)
        look.signals = [s.as_dict() for s in signals]
        look.shadow = shadow_agreement(totals, mv.version)
        failed = [s for s in signals if s.state == FAIL]
        if failed:
            s = failed[0]
            look.action, look.reason = "abort", f"{s.name} failed on n={s.n}"
            figures = {"signal": s.name, "n": s.n, **{x.name: x.figures for x in signals},
                       "candidate": cand.as_dict(), "active": stab.as_dict()}
            self.d.abort_canary(self.model_type, look.reason, signal=s.name,
                                figures={k: figures[k] for k in ("signal", "n", s.name)})
            self._record(look)
            return self._done(look)
        if look.mode != "shadow" and self._ready_to_promote(signals, cand, outcomes):
            look.action = "promote"
            look.reason = (f"errors/latency/mix pass on {cand.requests} requests, {len(outcomes)} verdicts, "
                           f"{(time.time() - self._started(mv)) / 60:.1f} min")
            self.d.promote_canary(self.model_type, reason=look.reason)
            self._record(look)
        return self._done(look)

    def _started(self, mv) -> float:
        at = mv.updated_at if mv.updated_at.tzinfo else mv.updated_at.replace(tzinfo=timezone.utc)
        return at.timestamp()

    def _ready_to_promote(self, signals, cand, outcomes) -> bool:
        by = {s.name: s for s in signals}
        if not all(by[n].state == PASS for n in ("errors", "latency", "mix")):
            return False
        if cand.requests < self.ds.promote_requests:
            return False
        verdicts_ok = by["accuracy"].state != FAIL and (
            self.ds.promote_verdicts == 0 or len(outcomes) >= self.ds.promote_verdicts)
        minutes_ok = self.ds.promote_minutes == 0 or \
            (time.time() - self._seen_at) / 60 >= self.ds.promote_minutes
        return (verdicts_ok and minutes_ok) if self.ds.promote_rule == "and" else (verdicts_ok or minutes_ok)

    def _record(self, look: Look) -> None:
        self.actions.append(look)
        log.warning("watcher: %s", look.line())

    def _done(self, look: Look) -> Look:
        self.looks.append(look)
        if len(self.looks) > 1000:
            del self.looks[:500]
        if self.on_look is not None:
            self.on_look(look)
        return look

    def run(self, stop: Callable[[], bool] | None = None, max_seconds: float | None = None) -> None:
        """Look every watch_interval_s until stop() or max_seconds; a failing look is logged and the
        loop goes on (the next look retries)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not (stop and stop()) and (deadline is None or time.monotonic() < deadline):
            t0 = time.monotonic()
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001
                log.error("watcher look failed: %s: %s", type(exc).__name__, exc)
            time.sleep(max(0.0, self.ds.watch_interval_s - (time.monotonic() - t0)))


def source_for(settings):
    """The signals source of a profile: Prometheus's API when delivery.prometheus_url is set (the
    services profile's Prometheus), else Triton's metrics endpoint directly."""
    from .signals import DirectSource, PrometheusSource

    if settings.delivery.prometheus_url:
        return PrometheusSource(settings.delivery.prometheus_url)
    ss = settings.serving
    return DirectSource(f"{ss.host}:{ss.metrics_port}")


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
