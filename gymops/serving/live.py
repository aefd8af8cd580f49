"""What the watcher saw, per served version: the board that the tier's metrics endpoint and the
Dagster UI show.

Why a board fed by the watcher's looks and not a second reader: the watcher is the one process that
judges the canary (gymops.serving.watcher); if Prometheus or Dagster recomputed live accuracy or
shadow agreement from the stores, the UI could show figures the watcher never acted on (another
baseline, another window). So every look updates, in the watcher's process:

- the ``TierCollector`` (gymops.serving.prometheus) served on ``delivery.metrics_port``:
  ``gymops_live_accuracy`` / ``gymops_live_verdicts`` per model_version and
  ``gymops_shadow_agreement`` / ``gymops_shadow_photos`` for a candidate in shadow or canary --
  Prometheus scrapes them beside Triton;
- a JSON file, ``$GYMOPS_HOME/run/delivery.json`` (``board_path``), written atomically, that the
  Dagster observable asset ``live_delivery`` (assets/delivery.py) reads: per version its role,
  live accuracy k/n with the exact interval, the SPRT state, the alert flag; the candidate's
  signals and shadow flips; the last actions (abort/promote) with their reason and time.

Live accuracy per version: the candidate's comes from the look itself (its verdicts since the
canary started, the same list the SPRT judged); the active version's from all verdicts on its
answers (its aiModelVersion is its own), re-read at most every ``refresh_s`` (the history table is
read whole; once a second would be waste). A version with no verdicts is "no data": no accuracy
sample is exported at all, never 0.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from .signals import judge_accuracy

BOARD_FILE = "delivery.json"
KEEP_ACTIONS = 20


def board_path(settings) -> Path:
    return Path(settings.serving.run_dir) / BOARD_FILE


def read_board(path: Path) -> dict | None:
    """The board last written, or None when no watcher has written one (or it is being replaced)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _accuracy_entry(signal: dict) -> dict:
    f = signal["figures"]
    return {"accuracy": f.get("accuracy"), "verdicts": f.get("verdicts", 0), "corrected": f.get("corrected", 0),
            "interval": f.get("interval"), "sprt": f.get("sprt"), "state": signal["state"],
            "alert": bool(signal.get("alert"))}


class LiveBoard:
    """A Watcher ``on_look`` callback. ``delivery``: DeliverySettings (thresholds of the SPRT and
    the alert); ``verdicts(version, since)``: the same reader the watcher uses; ``collector``: a
    TierCollector or None; ``path``: where the JSON board goes, or None."""

    def __init__(self, delivery, verdicts: Callable | None = None, collector=None, path: Path | None = None,
                 refresh_s: float = 30.0, clock: Callable[[], float] = time.time):
        self.ds = delivery
        self.verdicts = verdicts
        self.collector = collector
        self.path = Path(path) if path is not None else None
        self.refresh_s = refresh_s
        self.clock = clock
        self.versions: dict[str, dict] = {}
        self.actions: list[dict] = []
        self.last_look: dict | None = None
        self._stable_read: dict[str, float] = {}

    def __call__(self, look) -> None:
        self.last_look = look.as_dict()
        if look.stable:
            self._stable(look.stable, look.at)
        if look.candidate:
            self._candidate(look)
        if look.action:
            self.actions.append({"at": look.at, "candidate": look.candidate, "stable": look.stable,
                                 "action": look.action, "reason": look.reason, "signals": look.signals})
            del self.actions[:-KEEP_ACTIONS]
            if look.action == "abort":
                self.versions[look.candidate]["role"] = "rolled_back"
            elif look.action == "promote":
                self.versions[look.candidate]["role"] = "active"
                if look.stable in self.versions:
                    self.versions[look.stable]["role"] = "retired"
        for version, entry in self.versions.items():
            if entry["role"] == "active" and version not in (look.stable, look.candidate) and not look.action:
                entry["role"] = "retired"
        self.write()

    def _stable(self, version: str, at: float) -> None:
        entry = self.versions.setdefault(version, {"version": version})
        entry["role"] = "active"
        if self.verdicts is None:
            return
        now = self.clock()
        if now - self._stable_read.get(version, -1e18) < self.refresh_s:
            return
        self._stable_read[version] = now
        try:
            outcomes = list(self.verdicts(version, None))
        except Exception as exc:  # noqa: BLE001 -- a store that is down keeps the last figures
            entry["error"] = f"verdicts: {type(exc).__name__}: {exc}"
            return
        entry.pop("error", None)
        entry.update(_accuracy_entry(judge_accuracy(outcomes, self.ds).as_dict()), at=at)
        self._export(version, entry)

    def _candidate(self, look) -> None:
        entry = self.versions.setdefault(look.candidate, {"version": look.candidate})
        entry.update(role=look.mode or "canary", at=look.at)
        by = {s["name"]: s for s in look.signals}
        if "accuracy" in by:
            entry.update(_accuracy_entry(by["accuracy"]))
            entry["signals"] = {s["name"]: {"state": s["state"], "n": s["n"]} for s in look.signals}
            self._export(look.candidate, entry)
        if look.shadow is not None:
            entry["shadow"] = look.shadow
            if self.collector is not None and hasattr(self.collector, "set_shadow"):
                self.collector.set_shadow(look.candidate, look.shadow.get("agreement"), look.shadow.get("photos", 0))

    def _export(self, version: str, entry: dict) -> None:
        if self.collector is not None:
            self.collector.set_live(version, entry.get("accuracy"), int(entry.get("verdicts") or 0))

    def as_dict(self) -> dict:
        return {"updated": self.clock(), "look": self.last_look, "versions": self.versions, "actions": self.actions,
                "thresholds": {"alert_accuracy": self.ds.alert_accuracy,
                               "rollback_accuracy": self.ds.rollback_accuracy}}

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.as_dict(), default=str))
        os.replace(tmp, self.path)  # a reader sees the old board or the new one, never half


def board_picture(board: dict) -> bytes:
    """Live accuracy per version (estimate and exact 95% interval against the alert and rollback
    lines) and, for a candidate with mirrored or canary photos, its agreement with the active model
    per (active -> candidate) answer pair. PNG bytes (gymops.ml.plots helpers)."""
    from gymops.ml.plots import _figure, _png

    thresholds = board.get("thresholds") or {}
    rows = [(v, e) for v, e in (board.get("versions") or {}).items()]
    shadows = [(v, e["shadow"]) for v, e in rows if (e.get("shadow") or {}).get("photos")]
    fig = _figure(8, 0.5 * max(len(rows), 1) + 1.4 + (2.2 if shadows else 0))
    axes = fig.subplots(2 if shadows else 1, 1, squeeze=False)
    ax = axes[0][0]
    for i, (version, e) in enumerate(rows):
        y = len(rows) - 1 - i
        label = f"{version} ({e.get('role', '?')})"
        if e.get("accuracy") is None:
            ax.annotate(f"{label}: no verdicts yet (no data)", (0.01, y), xycoords=("axes fraction", "data"),
                        va="center", fontsize=8, color="grey")
            continue
        low, high = e["interval"]
        est = e["accuracy"]
        colour = "tab:red" if e.get("state") == "fail" else "tab:orange" if e.get("alert") else "tab:green"
        ax.errorbar(est, y, xerr=[[est - low], [high - est]], fmt="o", color=colour, capsize=4)
        right = e["verdicts"] - e["corrected"]
        ax.annotate(f"{right}/{e['verdicts']} SPRT {e.get('sprt')}", (1.01, y), xycoords=("axes fraction", "data"),
                    va="center", fontsize=8)
    for name, colour in (("alert_accuracy", "tab:orange"), ("rollback_accuracy", "tab:red")):
        if name in thresholds:
            ax.axvline(thresholds[name], color=colour, linewidth=1.5)
    ax.set_yticks(range(len(rows)), [f"{v} ({e.get('role', '?')})" for v, e in reversed(rows)])
    ax.set_xlim(0.5, 1.0)
    ax.set_title("live accuracy from corrections: estimate, 95% exact interval; alert (orange), rollback (red)",
                 fontsize=9)
    if shadows:
        bx = axes[1][0]
        version, shadow = shadows[-1]
        pairs = sorted(shadow["flips"].items())
        bx.bar(range(len(pairs)), [n for _, n in pairs],
               color=["tab:green" if p.split("->")[0] == p.split("->")[1] else "tab:red" for p, _ in pairs])
        bx.set_xticks(range(len(pairs)), [p for p, _ in pairs], fontsize=8)
        bx.set_ylabel("photos")
        bx.set_title(f"{version} vs active on {shadow['photos']} mirrored/served photos: agreement "
                     f"{shadow['agreement']:.3f} (active -> candidate)", fontsize=9)
    return _png(fig)
