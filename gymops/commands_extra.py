"""CLI commands above the plumbing: the simulator and the demo."""
from __future__ import annotations

import argparse


def cmd_simulate(settings, args) -> int:
    from gymops.simulator.__main__ import main

    return main(args.simulator_args)


def cmd_demo(settings, args) -> int:
    from gymops.demo.replication import run

    return run(settings, args)


def _deployer(settings):
    from gymops.db import engine_for
    from gymops.deploy.deployer import Deployer
    from gymops.lifecycle.outbox import Outbox
    from gymops.lifecycle.registry import ModelRegistry
    from gymops.settings import ensure_tokens

    engine = engine_for(settings)
    return Deployer.for_settings(ModelRegistry(engine, outbox=Outbox(engine)), ensure_tokens(settings).serving)


def cmd_rollback(settings, args) -> int:
    report = _deployer(settings).rollback(args.model_type, args.to or None, args.reason)
    print(f"{args.model_type}: {report.from_version} -> {report.to_version} serving after {report.seconds:.2f} s "
          f"(confirmed by a request after {report.confirmed_seconds or 0:.2f} s)")
    return 0


def cmd_reconcile(settings, args) -> int:
    report = _deployer(settings).reconcile(args.model_type)
    print(f"{args.model_type}: {'; '.join(report.actions) or 'nothing to do'}; "
          f"consistent: {report.consistency.ok}")
    return 0 if report.consistency.ok else 1


def register(sub) -> None:
    p = sub.add_parser("rollback", help="serve the previous (or a named) model version again, with no failed request")
    p.add_argument("--to", default="", help="the version to serve (default: the one the active version replaced)")
    p.add_argument("--reason", default="operator rollback")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_rollback)

    p = sub.add_parser("reconcile", help="make Triton serve the registry's active version (after a crash or restart)")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_reconcile)

    p = sub.add_parser("simulate", add_help=False,
                       help="simulate the Helper and Auth services: photos + events (`gymops simulate --help`)")
    p.add_argument("simulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("demo", help="the main job on the current profile: ingest simulated traffic, show the result")
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(handler=cmd_demo)
