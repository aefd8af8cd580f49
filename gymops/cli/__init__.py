"""gymops: the one command line of the MLOps tier, `gymops <group> <command>` (`gymops --help`).

    gymops setup                                   database, history tables, `feast apply`
    gymops ingest {file,send,consume,serve}        events into the history (Feast)
    gymops deadletters {list,replay}               events that failed validation
    gymops history                                 what the history holds
    gymops simulate                                the Helper/Auth simulator: photos + events
    gymops serving {setup,start,stop,status,index,swap,unload}   the Triton server
    gymops models {rollback,reconcile}             which model version Triton serves
    gymops face {serve,enrol-sync,status,rollback,delete}   the face Access service and its galleries
    gymops s3 {start,stop,status}                  the S3-compatible photo server (services)
    gymops demo [--replication-only]               the whole loop, or its replication part

One dispatch style: each group module's ``register(sub)`` adds argparse subparsers whose
``set_defaults(handler=...)`` names a ``handler(settings, args) -> int``. The settings are read once,
here; a configuration error exits 2 with the message.
"""
from __future__ import annotations

import argparse
import logging
import sys

from gymops.settings import ConfigError, load_settings


def build_parser() -> argparse.ArgumentParser:
    from gymops.cli import demo, face, history, ingest, models, s3, serving, simulate

    parser = argparse.ArgumentParser(prog="gymops", description="The command line of the MLOps tier: gymops <group> <command>.",
                                     epilog="`gymops <group> --help` for a group's commands and options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="group", required=True, metavar="<group>")
    for module in (history, ingest, simulate, serving, models, face, s3, demo):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return args.handler(settings, args)


def add_group(sub, name: str, help: str) -> argparse._SubParsersAction:  # noqa: A002 -- argparse's word
    """A command group `gymops NAME <command>` (its commands are required)."""
    group = sub.add_parser(name, help=help, description=help)
    return group.add_subparsers(dest="command", required=True, metavar="<command>")
