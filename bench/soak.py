#!/usr/bin/env python
"""Soak benchmark: many hot swaps in a row; does Triton's memory grow, do swaps slow down?

tritonserver (temporary repository with the two REAL trained versions of bench/models.py) serves
version 1; light traffic (one gRPC and one HTTP client, each ``--rate`` requests/s, no retries)
runs throughout while ``--swaps`` swaps alternate between versions 2 and 1
(gymops.serving.control.ModelControl.swap over gRPC with the deploy token, each waiting until the
old version is unloaded). Every ``--every`` swaps (and after swap ``--warmup``) the resident
memory is sampled: the tritonserver process alone (VmRSS, and RssAnon: its heap), and the whole
tree (server + Python-backend stub processes, RSS summed and PSS). Growth is measured from the
sample after the warm-up swap to the last one; a least-squares slope over the samples after
warm-up says whether it is a trend or noise. Upstream reports growth over repeated reloads
(triton-inference-server/server #4528, #7727).

The alternative compared: the per-swap time of the first swaps after warm-up vs the last ones
(ratio), and the memory after warm-up vs at the end. Target: tritonserver grows <= 50 MiB.

    python -m bench.soak            # 200 swaps; writes bench/results/soak.json
    python -m bench.soak --quick    # 20 swaps (writes only with --out)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.models import (
    MODEL, RESULTS, MachineMeter, PhotoLoad, bench_photos, build_versions, emit, latency_summary, log,
    triton, triton_caller, versions_summary,
)

DEFAULT_OUT = RESULTS / "soak.json"
MIB = 2**20


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def sample(pid: int, swap: int, t0: float) -> dict:
    from gymops.serving.server import tree_memory

    tree = tree_memory(pid)
    server_rss = _status_kib(pid, "VmRSS") * 1024
    return {"swap": swap, "t_s": time.monotonic() - t0,
            "server_rss_mib": server_rss / MIB,
            "server_rss_anon_mib": _status_kib(pid, "RssAnon") * 1024 / MIB,
            "server_hwm_mib": _status_kib(pid, "VmHWM") * 1024 / MIB,
            "server_threads": _status_kib(pid, "Threads"),
            "tree_rss_mib": tree["rss_bytes"] / MIB, "tree_pss_mib": tree["pss_bytes"] / MIB,
            "stubs_rss_mib": (tree["rss_bytes"] - server_rss) / MIB, "processes": tree["processes"]}


def _slope_per_100(samples: list[dict], key: str) -> float | None:
    if len(samples) < 3:
        return None
    xs = [s["swap"] for s in samples]
    ys = [s[key] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: 20 swaps")
    ap.add_argument("--swaps", type=int, help="swaps (default 200, quick 20)")
    ap.add_argument("--every", type=int, help="sample memory every N swaps (default 10, quick 2)")
    ap.add_argument("--warmup", type=int, help="growth is measured from this swap on (default 10, quick 4)")
    ap.add_argument("--rate", type=float, default=5.0, help="requests/s of each of the two light clients")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="stop swapping after this long")
    ap.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)} for a full run)")
    args = ap.parse_args(argv)
    n_swaps = args.swaps or (20 if args.quick else 200)
    every = args.every or (2 if args.quick else 10)
    warmup = args.warmup or (4 if args.quick else 10)
    custom = any(v is not None for v in (args.swaps, args.every, args.warmup)) or args.rate != 5.0
    out = args.out or (None if (args.quick or custom) else DEFAULT_OUT)

    versions = build_versions()
    photos = bench_photos()
    meter = MachineMeter()
    swaps: list[dict] = []
    samples: list[dict] = []
    with triton(versions, load=1) as tb:
        pid = tb.server.pid
        callers = [("grpc", triton_caller(tb.urls["grpc"], "grpc")), ("http", triton_caller(tb.urls["http"], "http"))]
        load = PhotoLoad(callers, photos, interval_s=1.0 / args.rate, max_seconds=args.max_seconds + 60)
        t0 = time.monotonic()
        samples.append(sample(pid, 0, t0))
        with load:
            for i in range(1, n_swaps + 1):
                if time.monotonic() - t0 > args.max_seconds:
                    log(f"time limit of {args.max_seconds} s reached after {i - 1} swaps")
                    break
                target = 2 if i % 2 == 1 else 1
                started = time.monotonic()
                try:
                    r = tb.control.swap(MODEL, target, tb.configs[target])
                    swaps.append({"i": i, "load_s": r.load_seconds, "total_s": r.total_seconds})
                except Exception as exc:  # noqa: BLE001 -- recorded, the soak goes on
                    swaps.append({"i": i, "error": f"{type(exc).__name__}: {exc}"[:300],
                                  "total_s": time.monotonic() - started})
                if i == warmup or i % every == 0 or i == n_swaps:
                    samples.append(sample(pid, i, t0))
                    s = samples[-1]
                    log(f"swap {i}/{n_swaps}: server {s['server_rss_mib']:.1f} MiB, tree {s['tree_rss_mib']:.1f} MiB "
                        f"({s['processes']} processes), swap {swaps[-1]['total_s']:.2f} s")
        t_end = time.monotonic()
        time.sleep(2.0)  # idle: whatever the last unload and the traffic left behind
        samples.append({**sample(pid, swaps[-1]["i"] if swaps else 0, t0), "idle_after_s": 2.0})
        records = list(load.records)

    done = [s for s in swaps if "load_s" in s]
    failed = [r for r in records if r[3].startswith("ERROR")]
    after = [s for s in samples if s["swap"] >= warmup and "idle_after_s" not in s]
    start = after[0] if after else samples[0]
    end = after[-1] if after else samples[-1]
    first = [s["total_s"] for s in done if s["i"] > warmup][:10]
    last = [s["total_s"] for s in done][-10:]
    growth = end["server_rss_mib"] - start["server_rss_mib"]
    figures = {
        "benchmark": "soak", "quick": args.quick, "versions": versions_summary(versions),
        "swaps": len(done), "swaps_attempted": len(swaps), "swap_errors": [s["error"] for s in swaps if "error" in s][:5],
        "warmup_swap": start["swap"], "sample_every": every, "seconds": t_end - t0,
        "rss_start_mib": start["server_rss_mib"], "rss_end_mib": end["server_rss_mib"], "growth_mib": growth,
        "rss_initial_mib": samples[0]["server_rss_mib"],
        "rss_anon_growth_mib": end["server_rss_anon_mib"] - start["server_rss_anon_mib"],
        "tree_rss_start_mib": start["tree_rss_mib"], "tree_rss_end_mib": end["tree_rss_mib"],
        "tree_growth_mib": end["tree_rss_mib"] - start["tree_rss_mib"],
        "tree_pss_growth_mib": end["tree_pss_mib"] - start["tree_pss_mib"],
        "stubs_growth_mib": end["stubs_rss_mib"] - start["stubs_rss_mib"],
        "server_slope_mib_per_100_swaps": _slope_per_100(after, "server_rss_mib"),
        "tree_slope_mib_per_100_swaps": _slope_per_100(after, "tree_rss_mib"),
        "server_hwm_end_mib": end["server_hwm_mib"],
        "swap_s": latency_summary([s["total_s"] for s in done]) if done else None,
        "swap_load_s": latency_summary([s["load_s"] for s in done]) if done else None,
        "swap_s_first10_after_warmup_mean": sum(first) / len(first) if first else None,
        "swap_s_last10_mean": sum(last) / len(last) if last else None,
        "requests": len(records), "failed": len(failed), "failures": [r[3] for r in failed[:5]],
        "samples": samples,
    }
    # latency_summary reports milliseconds: the swap times are in seconds here.
    for key in ("swap_s", "swap_load_s"):
        if figures[key]:
            figures[key] = {k.replace("_ms", "_s"): (v / 1e3 if k.endswith("_ms") else v) for k, v in figures[key].items()}
    if first and last:
        figures["swap_time_ratio_last_vs_first"] = figures["swap_s_last10_mean"] / figures["swap_s_first10_after_warmup_mean"]
    figures["targets"] = {"server_growth_le_50mib": growth <= 50.0, "no_failed_requests": not failed,
                          "swaps_ge_200": len(done) >= 200}
    figures["machine"] = meter.report()
    emit(figures, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
