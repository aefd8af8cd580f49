#!/usr/bin/env python
"""Hot-swap benchmark: swap the served laundry version under load and count what clients see.

tritonserver (temporary repository with the two REAL trained versions of bench/models.py) serves
version 1; 2 HTTP + 2 gRPC client threads (LaundryClient, NO retries) send the 128 simulator photos
back to back for the whole run. After a steady period without swaps, ``--swaps`` swaps alternate
between versions 2 and 1 (gymops.serving.control.ModelControl.swap over gRPC with the deploy
token: one load pinned to the new version, then the wait until the old one is unloaded), with
``--gap`` seconds between them; the load keeps running until at least ``--seconds`` in total.

Every request is counted (failures included: no client retries). Steady p99: requests of the
steady period (its first second skipped). p99 while swapping: requests whose [sent, answered]
window overlaps a swap (from the swap call to the old version gone) widened by 1 s on each side.
The alternative compared is the same load without swaps (the steady period of the same run).
Targets: 0 failed requests; p99 while swapping <= 2 x steady p99.

    python -m bench.hotswap            # >= 60 s, 20 swaps; writes bench/results/hotswap.json
    python -m bench.hotswap --quick    # a short smoke run (writes only with --out)
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.models import (
    MODEL, RESULTS, MachineMeter, PhotoLoad, bench_photos, build_versions, emit, latency_summary, log,
    other_cpu_busy, triton, triton_caller, versions_summary, wait_for_quiet,
)

DEFAULT_OUT = RESULTS / "hotswap.json"
MARGIN_S = 1.0  # a request overlapping a swap widened by this much counts as "during a swap"


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: 4 swaps, >= 12 s")
    ap.add_argument("--seconds", type=float, help="minimum duration of the load (default 60, quick 12)")
    ap.add_argument("--swaps", type=int, help="swaps (default 20, quick 4)")
    ap.add_argument("--steady", type=float, help="steady period before the first swap (default 15 s, quick 4 s)")
    ap.add_argument("--gap", type=float, help="seconds between swaps (default 1.0, quick 0.5)")
    ap.add_argument("--http-clients", type=int, default=2)
    ap.add_argument("--grpc-clients", type=int, default=2)
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="wait up to this many seconds for other work on the machine to stop first")
    ap.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)} for a full run)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (12.0 if args.quick else 60.0)
    n_swaps = args.swaps if args.swaps is not None else (4 if args.quick else 20)
    steady = args.steady or (4.0 if args.quick else 15.0)
    gap = args.gap if args.gap is not None else (0.5 if args.quick else 1.0)
    custom = any(v is not None for v in (args.seconds, args.swaps, args.steady, args.gap)) or \
        (args.http_clients, args.grpc_clients) != (2, 2)
    out = args.out or (None if (args.quick or custom) else DEFAULT_OUT)
    hard_limit = max(seconds, steady + n_swaps * (gap + 30)) + 60  # every loop is bounded in time

    versions = build_versions()
    photos = bench_photos()
    semver = {v.number: v.semver for v in versions}
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    other_before = other_cpu_busy(1.0)
    meter = MachineMeter()
    swaps: list[dict] = []
    with triton(versions, load=1) as tb:
        callers = ([("http", triton_caller(tb.urls["http"], "http"))] * args.http_clients
                   + [("grpc", triton_caller(tb.urls["grpc"], "grpc"))] * args.grpc_clients)
        load = PhotoLoad(callers, photos, max_seconds=hard_limit)
        log(f"{len(callers)} clients; steady {steady} s, then {n_swaps} swaps {gap} s apart; >= {seconds} s in all")
        with load:
            t0 = time.monotonic()
            time.sleep(steady)
            for i in range(n_swaps):
                if time.monotonic() - t0 > hard_limit - 30:
                    log("time limit reached: no more swaps")
                    break
                target = 2 if i % 2 == 0 else 1
                started = time.monotonic()
                entry = {"to": target, "start": started}
                try:
                    result = tb.control.swap(MODEL, target, tb.configs[target])
                    entry.update(load_s=result.load_seconds, total_s=result.total_seconds,
                                 unload_wait_s=result.unload_seconds, flipped_at=result.flipped_at)
                except Exception as exc:  # noqa: BLE001 -- a failed swap is a finding, not a crash
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
                entry["end"] = time.monotonic()
                swaps.append(entry)
                log(f"swap {i + 1}/{n_swaps} -> v{target}: "
                    + (f"load {entry['load_s']:.2f} s, total {entry['total_s']:.2f} s" if "load_s" in entry
                       else entry["error"]))
                time.sleep(gap)
            time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
            t_end = time.monotonic()
        records = list(load.records)
        memory = tb.server.memory()

    # ---- analysis ----------------------------------------------------------------------------------
    windows = [(s["start"] - MARGIN_S, s["end"] + MARGIN_S) for s in swaps]
    overlaps = lambda r: any(r[0] <= hi and r[1] >= lo for lo, hi in windows)  # noqa: E731
    first_swap = swaps[0]["start"] if swaps else t_end
    steady_recs = [r for r in records if r[0] >= t0 + 1.0 and r[1] <= first_swap - MARGIN_S]
    swapping_recs = [r for r in records if overlaps(r)]
    outside_recs = [r for r in records if not overlaps(r)]
    ok = lambda recs: [r[1] - r[0] for r in recs if not r[3].startswith("ERROR")]  # noqa: E731
    failed = [r for r in records if r[3].startswith("ERROR")]

    # Requests SENT after a swap's load call returned should be answered by the new version.
    stale = 0
    for k, s in enumerate(swaps):
        if "flipped_at" not in s:
            continue
        until = swaps[k + 1]["start"] if k + 1 < len(swaps) else t_end
        stale += sum(1 for r in records if s["flipped_at"] < r[0] < until and not r[3].startswith("ERROR")
                     and r[3] != semver[s["to"]])

    steady_lat = latency_summary(ok(steady_recs))
    swapping_lat = latency_summary(ok(swapping_recs))
    done = [s for s in swaps if "load_s" in s]
    figures = {
        "benchmark": "hotswap", "quick": args.quick, "versions": versions_summary(versions),
        "clients": {"http": args.http_clients, "grpc": args.grpc_clients}, "retries": 0,
        "seconds": t_end - t0, "steady_period_s": steady, "gap_s": gap,
        "requests": len(records), "failed": len(failed),
        "failures": [r[3] for r in failed[:5]],
        "requests_per_s": len(records) / (t_end - t0) if t_end > t0 else None,
        "by_protocol": {p: {"requests": sum(1 for r in records if r[2] == p),
                            "failed": sum(1 for r in failed if r[2] == p)} for p in ("http", "grpc")},
        "served_by_version": dict(Counter(r[3] for r in records if not r[3].startswith("ERROR"))),
        "stale_after_flip": stale,
        "swaps": len(done), "swaps_attempted": len(swaps),
        "swap_errors": [s["error"] for s in swaps if "error" in s],
        "swap_load_ms": latency_summary([s["load_s"] for s in done]) if done else None,
        "swap_total_ms": latency_summary([s["total_s"] for s in done]) if done else None,
        "p99_ms_steady": steady_lat.get("p99_ms"),
        "p99_ms_swapping": swapping_lat.get("p99_ms"),
        "p99_ratio": (swapping_lat["p99_ms"] / steady_lat["p99_ms"])
        if steady_lat.get("p99_ms") and swapping_lat.get("p99_ms") else None,
        "steady": steady_lat, "swapping": swapping_lat,
        "outside_swaps": latency_summary(ok(outside_recs)),
        "rps_steady": len(steady_recs) / max(1e-9, (first_swap - MARGIN_S) - (t0 + 1.0)),
        "rps_swapping_windows": len(swapping_recs) / max(1e-9, _union_length(windows)) if windows else None,
        "server_tree_rss_mib_end": memory["rss_bytes"] / 2**20,
    }
    figures["targets"] = {
        "no_failed_requests": figures["failed"] == 0,
        "p99_swapping_le_2x_steady": None if figures["p99_ratio"] is None else figures["p99_ratio"] <= 2.0,
        "swaps_ge_20": figures["swaps"] >= 20, "seconds_ge_60": figures["seconds"] >= 60,
    }
    figures["machine"] = {**meter.report(), "busy_cores_other_before": other_before}
    emit(figures, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
