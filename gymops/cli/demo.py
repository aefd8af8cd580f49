"""`gymops demo`: the whole loop on the current profile (what `make demo` runs), or with
--replication-only its first part (simulated traffic through the ingestion endpoint into Feast)."""
from __future__ import annotations

import argparse


def cmd_demo(settings, args) -> int:
    if args.replication_only:
        from gymops.demo.replication import run

        tasks = 300 if args.tasks is None else args.tasks
        return run(settings, argparse.Namespace(tasks=tasks, seed=7 if args.seed is None else args.seed))
    from gymops.demo.loop import main

    argv = []
    for option, value in (("--tasks", args.tasks), ("--live-tasks", args.live_tasks), ("--seed", args.seed),
                          ("--result", args.result)):
        if value is not None:
            argv += [option, str(value)]
    if args.no_face:
        argv.append("--no-face")
    return main(argv)


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole loop on the current profile, leaving nothing running (`make demo`)",
                       description=__doc__)
    p.add_argument("--replication-only", action="store_true",
                   help="only the replication part: simulated traffic through the ingestion endpoint into Feast")
    p.add_argument("--tasks", type=int, default=None,
                   help="laundry tasks in the first week of history (default 800; 300 with --replication-only)")
    p.add_argument("--live-tasks", type=int, default=None,
                   help="tasks per batch of live traffic while the first model serves (default 500; not with --replication-only)")
    p.add_argument("--seed", type=int, default=None, help="(default 7)")
    p.add_argument("--result", default=None, help="write the outcome as JSON to this file (bench/demo_swaps.py)")
    p.add_argument("--no-face", action="store_true", help="leave out the face act (not with --replication-only)")
    p.set_defaults(handler=cmd_demo)
