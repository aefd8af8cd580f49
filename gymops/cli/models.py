"""`gymops models {rollback,reconcile}`: which model version Triton serves, through the deployer
(registry first, then the swap). `models list|show` belong here too."""
from __future__ import annotations

from gymops.cli import add_group


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
    print(f"{args.model_type}: {'; '.join(report.actions) or 'nothing to do'}; consistent: {report.consistency.ok}")
    return 0 if report.consistency.ok else 1


def register(sub) -> None:
    group = add_group(sub, "models", "the registry's model versions and the one Triton serves")
    p = group.add_parser("rollback", help="serve the previous (or a named) model version again, with no failed request")
    p.add_argument("--to", default="", help="the version to serve (default: the one the active version replaced)")
    p.add_argument("--reason", default="operator rollback")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_rollback)

    p = group.add_parser("reconcile", help="make Triton serve the registry's active version (after a crash or restart)")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_reconcile)
