"""`gymops simulate --tasks N --members M --entries K --seed S --out events.jsonl`: the simulator of
the Helper and Auth services. Writes the events as JSONL and their photos into the profile's photo store."""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import datetime, timedelta


def _timestamp(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a time zone, e.g. 2026-11-01T00:00:00Z")
    return ts


def cmd_simulate(settings, args) -> int:
    from gymops.simulator.garments import DatasetMissing
    from gymops.simulator.traffic import TrafficConfig, generate, write_jsonl
    from gymops.storage.photos import S3PhotoStore, photo_store_for

    try:
        cfg = TrafficConfig(
            seed=args.seed, tasks=args.tasks, members=args.members, helpers=args.helpers, entries=args.entries,
            branches=args.branches, defective_fraction=args.defective_fraction, ai_error_rate=args.ai_error_rate,
            start=args.start, span=timedelta(days=args.span_days),
        )
        cfg.window()
    except ValueError as exc:
        print(f"gymops simulate: error: {exc}", file=sys.stderr)
        return 2
    store = photo_store_for(settings)
    if isinstance(store, S3PhotoStore):
        store.ensure_bucket()
    counts: Counter = Counter()

    def counted(events):
        for event in events:
            counts[event["eventType"]] += 1
            counts["corrected"] += bool(event.get("corrected"))
            yield event

    began = time.perf_counter()
    try:
        n = write_jsonl(counted(generate(store, cfg)), args.out)
    except DatasetMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} events to {args.out} in {time.perf_counter() - began:.1f}s; photos in {store!r}")
    print(", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


def register(sub) -> None:
    p = sub.add_parser("simulate", help="the Helper/Auth simulator: photos into the photo store, events into JSONL",
                       description=__doc__)
    p.add_argument("--tasks", type=int, default=100, help="laundry tasks (TaskConfirmedEvent)")
    p.add_argument("--members", type=int, default=20, help="members enrolled (UserCreatedEvent)")
    p.add_argument("--helpers", type=int, default=None, help="helpers enrolled (default: 2 per branch)")
    p.add_argument("--entries", type=int, default=100, help="face entries (FaceAuthenticatedEvent)")
    p.add_argument("--branches", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defective-fraction", type=float, default=0.3)
    p.add_argument("--ai-error-rate", type=float, default=0.3, help="how often the stand-in AI is wrong")
    p.add_argument("--start", type=_timestamp, default=None,
                   help="first timestamp (ISO-8601); default: today 00:00 UTC minus the span")
    p.add_argument("--span-days", type=float, default=7.0)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.set_defaults(handler=cmd_simulate)
