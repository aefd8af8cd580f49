"""CLI commands above the plumbing: the simulator and the demo."""
from __future__ import annotations

import argparse


def cmd_simulate(settings, args) -> int:
    from gymops.simulator.__main__ import main

    return main(args.simulator_args)


def cmd_demo(settings, args) -> int:
    from gymops.demo import run

    return run(settings, args)


def register(sub) -> None:
    p = sub.add_parser("simulate", add_help=False,
                       help="simulate the Helper and Auth services: photos + events (`gymops simulate --help`)")
    p.add_argument("simulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("demo", help="the main job on the current profile: ingest simulated traffic, show the result")
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(handler=cmd_demo)
