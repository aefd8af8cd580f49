"""`gymops s3 {start,stop,status}`: the S3-compatible photo server of the services profile (SeaweedFS),
one per GYMOPS_HOME: data in $GYMOPS_HOME/s3, PID file in $GYMOPS_HOME/run."""
from __future__ import annotations

import sys

from gymops.cli import add_group


def _run(action):
    def handler(settings, args) -> int:
        from gymops.storage.s3server import S3ServerError

        try:
            return action(settings)
        except S3ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return handler


def cmd_start(settings) -> int:
    from gymops.storage import s3server

    pid_file, data_dir = s3server.recorded_paths(settings)
    running = s3server.attached(settings)
    if running:
        print(f"already running: pid {running.pid} at {running.endpoint}")
        return 0
    server = s3server.start(settings, data_dir, detach=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{server.pid}\n")
    print(f"started: pid {server.pid} at {server.endpoint}, data {data_dir}, log {server.log_path}")
    return 0


def cmd_stop(settings) -> int:
    from gymops.storage import s3server

    pid_file, _ = s3server.recorded_paths(settings)
    running = s3server.attached(settings)
    if running:
        s3server.stop(running)
        print(f"stopped pid {running.pid}")
    else:
        print("not running")
    pid_file.unlink(missing_ok=True)
    return 0


def cmd_status(settings) -> int:
    from gymops.storage import s3server

    _, data_dir = s3server.recorded_paths(settings)
    running = s3server.attached(settings)
    if not running:
        print("not running")
        return 3
    state = "serving" if s3server.answering(running) else "NOT ANSWERING"
    print(f"running: pid {running.pid} at {running.endpoint} ({state}), data {data_dir}")
    return 0 if state == "serving" else 1


def register(sub) -> None:
    group = add_group(sub, "s3", "the S3-compatible photo server of the services profile (SeaweedFS)")
    group.add_parser("start", help="start it in the background (already running: says so)").set_defaults(
        handler=_run(cmd_start))
    group.add_parser("stop", help="stop it by its PID").set_defaults(handler=_run(cmd_stop))
    group.add_parser("status", help="pid, endpoint, whether it answers (exit 3 when not running)").set_defaults(
        handler=_run(cmd_status))
