"""`gymops face {serve,enrol-sync,status,rollback,delete}`: the face Access service and its galleries
(gymops.face.service, gymops.face.enrolments, gymops.face.release).

serve runs verify/identify over HTTP (GYMOPS_FACE_ACCESS_PORT) and gRPC (GYMOPS_FACE_ACCESS_GRPC_PORT)
in the foreground, with the enrolment follower beside it; the other commands act on the tier's
database (rollback also on Triton with GYMOPS_FACE_EMBEDDER=triton) and a running serve follows
them within GYMOPS_FACE_SYNC_INTERVAL_S. Probes are embedded by Triton's public name
(GYMOPS_FACE_EMBEDDER=triton) or in-process from the version folders (local). The first face
version and every later one come from the nightly face batch (gymops.face.nightly, Dagster).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from datetime import datetime

from gymops.cli import add_group


def _face(handler):
    """handler(parts, args), with the face parts built from the settings and one line on failure."""
    @functools.wraps(handler)
    def run(settings, args) -> int:
        from gymops.face.release import ReleaseError
        from gymops.face.service import face_parts
        from gymops.face.swap import SwapError
        from gymops.lifecycle.versions import RegistryError

        try:
            return handler(face_parts(settings), args)
        except (ReleaseError, RegistryError, SwapError, LookupError, ValueError, OSError) as exc:
            print(f"face {args.command} failed: {exc}", file=sys.stderr)
            return 1
    return run


def cmd_serve(settings, args) -> int:
    from gymops.face.matching import GalleryNotReady
    from gymops.face.service import serve

    def ready(info: dict) -> None:
        print(f"face access on {info['http']} and gRPC {info['grpc']}: {info['active']} active, embedder "
              f"{info['embedder']}, galleries {json.dumps(info['galleries'])}", flush=True)

    try:
        return serve(settings, follow_enrolments=not args.no_follow, ready=ready)
    except (GalleryNotReady, LookupError, OSError) as exc:
        print(f"face serve failed: {exc}", file=sys.stderr)
        return 1


@_face
def cmd_enrol_sync(parts, args) -> int:
    from gymops.face.enrolments import EnrolmentFollower

    report = EnrolmentFollower(parts.settings, parts.pairs).catch_up(since=args.since)
    print(json.dumps({**report.as_dict(), "rejected": [{"eventId": e, "reason": r} for e, r in report.rejected]}))
    return 0 if report.waiting is None else 1


STATUS_COLUMNS = ("VERSION", "STATE", "THRESHOLD", "MEMBERS")


def cmd_status(settings, args) -> int:
    from gymops.face.service import describe

    info = describe(settings)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if not info["galleries"]:
        print("no face galleries yet: the nightly face batch establishes the first version")
    else:
        rows = [STATUS_COLUMNS, *[(g["version"], g["state"], f"{g['threshold']:.4f}", str(g["members"]))
                                  for g in info["galleries"]]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(STATUS_COLUMNS))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    e = info["enrolments"]
    print(f"registry: {info['registry_active'] or 'no'} active face version; members: {info['members']['enrolled']} "
          f"enrolled, {info['members']['deleted']} deleted; follower mark {e['watermark'] or '-'}; ledger "
          f"{json.dumps(e['ledger'])}; embedder {info['embedder']}")
    for r in e["rejected"]:
        print(f"  rejected {r['eventId']} ({r['userId']}): {r['reason']}")
    return 0


@_face
def cmd_rollback(parts, args) -> int:
    report = parts.release.rollback(args.reason)
    print(f"face: {report.from_version} -> {report.to_version} active after {report.seconds:.2f} s "
          f"({'; '.join(report.actions) or 'registry and galleries agreed'}); a running `gymops face serve` "
          f"follows{', Triton swapped' if parts.settings.face.embedder == 'triton' else ''}")
    return 0


@_face
def cmd_delete(parts, args) -> int:
    if not parts.pairs.delete(args.user_id):
        print(f"face delete: {args.user_id} is not enrolled (or already deleted)", file=sys.stderr)
        return 1
    print(f"{args.user_id}: deleted from every face gallery; older UserCreatedEvents cannot bring them back")
    return 0


def _since(value: str) -> datetime:
    from datetime import timezone

    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def register(sub) -> None:
    group = add_group(sub, "face", "the face Access service (verify/identify) and its galleries per model version")
    p = group.add_parser("serve", help="the Access service in the foreground: verify/identify over HTTP and gRPC, "
                                       "enrolments followed from the history",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-follow", action="store_true", help="do not enrol from the history (another process does)")
    p.set_defaults(handler=cmd_serve)
    p = group.add_parser("enrol-sync", help="one catch-up: enrol what the history holds beyond the follower's mark")
    p.add_argument("--since", type=_since, default=None,
                   help="read again everything ingested from this ISO time on (the ledger ignored; "
                        "nothing held is embedded again)")
    p.set_defaults(handler=cmd_enrol_sync)
    p = group.add_parser("status", help="gallery states and members per version, the enrolment follower")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)
    p = group.add_parser("rollback", help="serve the previous model-and-gallery pair again (registry first, "
                                          "ModelRolledBackEvent)")
    p.add_argument("--reason", default="operator rollback")
    p.set_defaults(handler=cmd_rollback)
    p = group.add_parser("delete", help="remove a member from every gallery (there is no deletion event)")
    p.add_argument("user_id")
    p.set_defaults(handler=cmd_delete)
