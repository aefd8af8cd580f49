"""`gymops models {list,show,rollback,reconcile}`: the registry's model versions, and which one
Triton serves. list/show only read the registry (no Triton, no outbox): an operator can look at
versions, statuses, gate figures and lineage on a machine where nothing else runs. rollback and
reconcile go through the deployer (registry first, then the swap)."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime

from gymops.cli import add_group


def _registry(settings):
    from gymops.db import engine_for
    from gymops.lifecycle.registry import ModelRegistry

    return ModelRegistry(engine_for(settings))


def _figure(metrics: dict, *path: str) -> str:
    """One gate figure, e.g. metrics["holdout"]["per_class_accuracy"]["good"], as 0.933; "-" when
    that evaluation did not record it (registrations differ in what they measured)."""
    value = metrics
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M") if ts else "-"


LIST_COLUMNS = ("VERSION", "TRITON", "STATUS", "VAL", "HOLDOUT", "GOOD", "DEFECTIVE", "DATASET", "RUN", "PARENT",
                "TRAINED", "DEPLOYED")


def list_rows(versions) -> list[tuple[str, ...]]:
    """The table's rows: gate figures are validation accuracy, holdout accuracy and the holdout's
    per-class accuracy, the figures the accuracy gates decide on."""
    return [(mv.version, str(mv.triton_version), mv.status, _figure(mv.metrics, "val", "accuracy"),
             _figure(mv.metrics, "holdout", "accuracy"), _figure(mv.metrics, "holdout", "per_class_accuracy", "good"),
             _figure(mv.metrics, "holdout", "per_class_accuracy", "defective"), mv.dataset_id or "-",
             mv.run_id or "-", mv.parent_version or "-", _when(mv.trained_at), _when(mv.deployed_at))
            for mv in versions]


def cmd_list(settings, args) -> int:
    from gymops.lifecycle.registry import ARCHIVED

    versions = [mv for mv in _registry(settings).history(args.model_type, limit=args.limit)
                if args.all or mv.status != ARCHIVED]
    if not versions:
        print(f"{args.model_type}: no model versions registered" + ("" if args.all else " (that are not archived)"))
        return 0
    rows = [LIST_COLUMNS, *list_rows(versions)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(LIST_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_show(settings, args) -> int:
    from gymops.lifecycle.registry import VersionNotFound

    try:
        mv = _registry(settings).get(args.model_type, args.version)
    except VersionNotFound as exc:
        print(f"gymops models show: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(mv), indent=2, ensure_ascii=False, default=lambda v: v.isoformat()))
    return 0


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


def cmd_canary(settings, args) -> int:
    ds = settings.delivery
    fraction = ds.canary_fraction if args.fraction is None else args.fraction
    shadow = (ds.shadow_fraction if args.shadow_only else 0.0) if args.shadow is None else args.shadow
    report = _deployer(settings).start_canary(args.model_type, args.version, 0.0 if args.shadow_only else fraction,
                                              shadow)
    print(f"{args.model_type} {report.candidate}: {report.mode} {report.canary_fraction:.0%} (shadow "
          f"{report.shadow_fraction:.0%}) over {report.stable}, route folder {report.route}, flipped in "
          f"{report.flip_seconds:.2f} s; `gymops serving watch` judges it")
    return 0


def cmd_promote(settings, args) -> int:
    report = _deployer(settings).promote_canary(args.model_type, args.reason)
    print(f"{args.model_type} {report.candidate} active (was {report.stable}), flipped in {report.flip_seconds:.2f} s")
    return 0


def cmd_abort(settings, args) -> int:
    report = _deployer(settings).abort_canary(args.model_type, args.reason)
    print(f"{args.model_type} {report.candidate} rolled back; {report.stable} serves alone "
          f"(after {report.flip_seconds or 0:.2f} s)")
    return 0


def register(sub) -> None:
    group = add_group(sub, "models", "the registry's model versions and the one Triton serves")
    p = group.add_parser("list", help="the registered versions, newest first: status, gate figures, lineage, times")
    p.add_argument("--model-type", default="laundry")
    p.add_argument("--all", action="store_true", help="archived versions too")
    p.add_argument("--limit", type=int, default=50, help="at most this many versions (default 50)")
    p.set_defaults(handler=cmd_list)

    p = group.add_parser("show", help="one version in full (JSON): metrics, lineage, status and its reason")
    p.add_argument("version", help="the semver version, e.g. 1.2.0")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_show)

    p = group.add_parser("rollback", help="serve the previous (or a named) model version again, with no failed request")
    p.add_argument("--to", default="", help="the version to serve (default: the one the active version replaced)")
    p.add_argument("--reason", default="operator rollback")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_rollback)

    p = group.add_parser("reconcile", help="make Triton serve the registry's active version (after a crash or restart)")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_reconcile)

    p = group.add_parser("canary", help="serve a candidate to a fraction of live requests behind the public name "
                                        "(or shadow it); `gymops serving watch` promotes or rolls back")
    p.add_argument("version", help="the candidate's semver")
    p.add_argument("--fraction", type=float, default=None, help="share of requests (GYMOPS_DELIVERY_CANARY_FRACTION)")
    p.add_argument("--shadow", type=float, default=None, help="share of the active's requests mirrored to it")
    p.add_argument("--shadow-only", action="store_true", help="answer nothing, only mirror (a step before the canary)")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_canary)
    p = group.add_parser("promote", help="the version in canary serves alone and becomes active")
    p.add_argument("--reason", default="operator promotion")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_promote)
    p = group.add_parser("abort", help="roll the version in canary back; the active version serves alone")
    p.add_argument("--reason", default="operator abort")
    p.add_argument("--model-type", default="laundry")
    p.set_defaults(handler=cmd_abort)
