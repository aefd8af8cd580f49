"""Progressive delivery in the Dagster UI: live accuracy per served version and a candidate's shadow
agreement, as the canary watcher saw them (issue 11, items 2 and 5).

Why an observable source asset fed by the watcher's board and not an asset that recomputes: the
watcher (`gymops serving watch`, a process, not a sensor: see gymops/serving/watcher.py) is the one
that judges and acts; it writes what it saw to $GYMOPS_HOME/run/delivery.json each look
(gymops.serving.live). Reading that board shows the figures that were acted on, costs a file read,
and keeps Dagster out of the rollback path (a Dagster outage never delays a rollback).

- ``live_delivery``: observable source asset; "Observe" in the UI reads the board now.
- ``live_delivery_sensor``: every 30 s, when the board's figures changed (not merely its clock),
  records an observation of ``live_delivery`` straight from the sensor (no run launched: a run
  adds seconds of launch for a file read). The asset's page then plots live accuracy per version
  over time (``live accuracy <version>`` metadata) and shows the latest table and picture.
"""
from __future__ import annotations

import hashlib
import json
import time

import dagster as dg

from assets.pictures import picture
from gymops.serving.live import board_path, board_picture, read_board
from resources.triton import TritonResource

ASSET = "live_delivery"


def _fingerprint(board: dict) -> str:
    """The board's figures without its clocks: a new observation only when something was learnt."""
    versions = {v: {k: x for k, x in e.items() if k != "at"} for v, e in (board.get("versions") or {}).items()}
    text = json.dumps({"versions": versions, "actions": board.get("actions")}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pct(x) -> str:
    return "no data" if x is None else f"{x:.3f}"


def observation(board: dict | None) -> tuple[str, dict]:
    """(data version, metadata) of one look at the board; no board = no watcher has run yet."""
    if not board:
        return "none", {"watcher": dg.MetadataValue.text("no board yet: run `gymops serving watch`")}
    rows = ["| version | role | live accuracy | right/verdicts | 95% interval | SPRT | alert |",
            "|---|---|---|---|---|---|---|"]
    meta: dict = {}
    for version, e in board["versions"].items():
        n = int(e.get("verdicts") or 0)
        right = n - int(e.get("corrected") or 0)
        interval = e.get("interval")
        rows.append(f"| {version} | {e.get('role')} | {_pct(e.get('accuracy'))} | {right}/{n} | "
                    f"{'-' if not interval else f'{interval[0]:.3f}-{interval[1]:.3f}'} | {e.get('sprt') or '-'} | "
                    f"{'ALERT' if e.get('alert') else ''} |")
        if e.get("accuracy") is not None:  # no verdicts = no point on the plot, never 0
            meta[f"live accuracy {version}"] = dg.MetadataValue.float(float(e["accuracy"]))
        meta[f"live verdicts {version}"] = dg.MetadataValue.int(n)
        shadow = e.get("shadow") or {}
        if shadow.get("photos"):
            meta[f"shadow agreement {version}"] = dg.MetadataValue.float(float(shadow["agreement"]))
            flips = ["| active -> candidate | photos |", "|---|---|"] + \
                [f"| {pair} | {count} |" for pair, count in sorted(shadow["flips"].items())]
            meta[f"shadow flips {version}"] = dg.MetadataValue.md("\n".join(flips))
    meta["versions"] = dg.MetadataValue.md("\n".join(rows))
    t = board.get("thresholds") or {}
    meta["thresholds"] = dg.MetadataValue.text(
        f"alert below {t.get('alert_accuracy')}, rollback below {t.get('rollback_accuracy')} (SPRT on corrections)")
    actions = board.get("actions") or []
    if actions:
        meta["actions"] = dg.MetadataValue.md("\n".join(
            ["| when (UTC) | action | candidate | over | reason |", "|---|---|---|---|---|"] +
            [f"| {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(a['at']))} | {a['action']} | {a['candidate']} | "
             f"{a['stable']} | {a['reason']} |" for a in actions[-10:]]))
    look = board.get("look") or {}
    meta["last look"] = dg.MetadataValue.text(
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(look.get('at', 0)))} UTC, "
        f"canary {look.get('candidate') or '(none)'} over {look.get('stable') or '(none)'}")
    meta["picture"] = picture(board_picture(board), "live accuracy per version and shadow agreement")
    return _fingerprint(board), meta


@dg.observable_source_asset(
    name=ASSET, group_name="laundry",
    description="What the canary watcher sees: live accuracy from corrections per served version (k/n, exact "
                "interval, SPRT), a candidate's agreement with the active model (per-class flips), and its "
                "rollbacks/promotions. Written by `gymops serving watch` each look.")
def live_delivery(context, triton: TritonResource) -> dg.ObserveResult:
    version, metadata = observation(read_board(board_path(triton.tree())))
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=metadata)


@dg.sensor(name="live_delivery_sensor", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Records an observation of live_delivery when the watcher's figures changed (no run).")
def live_delivery_sensor(context: dg.SensorEvaluationContext, triton: TritonResource):
    board = read_board(board_path(triton.tree()))
    if not board:
        return dg.SkipReason("no watcher board yet (gymops serving watch writes it)")
    version, metadata = observation(board)
    if version == context.cursor:
        return dg.SkipReason(f"figures unchanged ({version})")
    return dg.SensorResult(cursor=version, asset_events=[dg.AssetObservation(
        asset_key=ASSET, metadata=metadata, tags={"dagster/data_version": version})])
