"""`gymops serving {setup,start,stop,status,index,swap,unload,watch,prometheus}`: the Triton server, the canary
watcher and the services profile's Prometheus.

start runs the server in the background (its own session) and records it under $GYMOPS_HOME/run
(triton.pid, triton.json); stop and status find it there. Ports: GYMOPS_TRITON_HTTP_PORT,
GYMOPS_TRITON_GRPC_PORT, GYMOPS_TRITON_METRICS_PORT (8000/8001/8002); repository:
GYMOPS_TRITON_REPOSITORY (triton_models/); deploy token: GYMOPS_DEPLOY_TOKEN or $GYMOPS_HOME/deploy.token.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys

from gymops.cli import add_group


def _serving(handler):
    """handler(serving_settings, args), with the deploy token made sure of and one line on failure."""
    @functools.wraps(handler)
    def run(settings, args) -> int:
        from gymops.settings import ensure_tokens

        try:
            return handler(ensure_tokens(settings).serving, args)
        except Exception as exc:  # noqa: BLE001 -- one line for the operator, not a traceback
            print(f"serving {args.command} failed: {exc}", file=sys.stderr)
            return 1
    return run


def _server(ss):
    from gymops.serving.server import TritonServer

    return TritonServer.from_pid_file(ss)


@_serving
def cmd_setup(ss, args) -> int:
    from gymops.serving.server import check_runnable, prepare_backend_dir, prepare_cache_dir, wheel_layout
    from gymops.serving.stubenv import ensure_stub_site, stub_site_dir

    layout = wheel_layout()
    check_runnable(layout)
    site = ensure_stub_site(stub_site_dir(ss.stub_site), quiet=False)
    prepare_backend_dir(ss.triton_home / "backends", layout)
    prepare_cache_dir(ss.triton_home / "caches", layout)
    print(f"tritonserver {layout.binary} runs; stub site {site}; backends under {ss.triton_home}")
    return 0


@_serving
def cmd_start(ss, args) -> int:
    from gymops.serving.server import TritonServer

    running = _server(ss)
    if running is not None:
        print(json.dumps({"already_running": True, **running.health()}))
        return 0
    server = TritonServer.from_settings(ss).start(timeout=args.timeout)
    server.write_pid_file(ss.run_dir)
    print(json.dumps({**server.state(), "start_seconds": round(server.start_seconds, 3)}))
    return 0


@_serving
def cmd_stop(ss, args) -> int:
    from gymops.serving.server import TritonServer

    server = _server(ss)
    if server is None:
        TritonServer.clear_pid_file(ss.run_dir)
        print("tritonserver: not running")
        return 0
    pid = server.pid
    server.stop(timeout=args.timeout)
    TritonServer.clear_pid_file(ss.run_dir)
    print(f"tritonserver (pid {pid}) stopped")
    return 0


@_serving
def cmd_status(ss, args) -> int:
    server = _server(ss)
    if server is None:
        print(json.dumps({"running": False}))
        return 3
    health = server.health()
    try:
        from gymops.serving.control import ModelControl

        with ModelControl.for_settings(ss, timeout=10) as control:
            health["models"] = control.index()
    except Exception as exc:  # noqa: BLE001 -- status reports, it does not fail on a side question
        health["models_error"] = str(exc)
    print(json.dumps(health, indent=2))
    return 0 if health.get("live") else 1


@_serving
def cmd_index(ss, args) -> int:
    from gymops.serving.control import ModelControl

    with ModelControl.for_settings(ss) as control:
        print(json.dumps(control.index(), indent=2))
    return 0


@_serving
def cmd_swap(ss, args) -> int:
    from gymops.serving.control import ModelControl

    with ModelControl.for_settings(ss) as control:
        result = control.swap(args.model, args.version)
    print(json.dumps({"model": result.model, "version": result.version, "previous": result.previous,
                      "load_seconds": round(result.load_seconds, 3), "total_seconds": round(result.total_seconds, 3)}))
    return 0


@_serving
def cmd_unload(ss, args) -> int:
    from gymops.serving.control import ModelControl

    with ModelControl.for_settings(ss) as control:
        seconds = control.unload(args.model)
    print(f"{args.model} unloaded in {seconds:.2f} s")
    return 0


def cmd_watch(settings, args) -> int:
    """The canary watcher (gymops.serving.watcher): one line per look with a verdict or a change.

    It also serves the tier's metrics (TierCollector) on delivery.metrics_port (--metrics-port; 0 =
    none) with live accuracy and shadow agreement per version from each look, and writes the board
    the Dagster UI shows ($GYMOPS_HOME/run/delivery.json, gymops.serving.live). A port in use is a
    warning, not a stop: the watcher's job is the rollback, the endpoint is for the eyes."""
    from gymops.cli.models import _deployer
    from gymops.serving.live import LiveBoard, board_path
    from gymops.serving.prometheus import TierCollector, serve_tier_metrics
    from gymops.serving.signals import HistoryVerdicts
    from gymops.serving.watcher import Watcher, source_for

    ds = settings.delivery if args.interval is None else settings.delivery.replace(watch_interval_s=args.interval)
    last = {"line": None}
    deployer = _deployer(settings)
    verdicts = HistoryVerdicts(settings, args.model_type)
    collector = TierCollector(settings, deployer.registry.engine, args.model_type)
    port = ds.metrics_port if args.metrics_port is None else args.metrics_port
    server = None
    if port and not args.once:
        try:
            server = serve_tier_metrics(collector, port, settings.serving.host)
            print(f"tier metrics on http://{settings.serving.host}:{port}/metrics", flush=True)
        except OSError as exc:
            print(f"warning: tier metrics not served on port {port}: {exc}", file=sys.stderr, flush=True)
    board = LiveBoard(ds, verdicts, collector, board_path(settings))

    def show(look) -> None:
        board(look)
        line = look.line()
        if look.action or line != last["line"] or args.verbose:
            print(f"{look.at:.3f} {line}", flush=True)
            last["line"] = line

    watcher = Watcher(deployer, ds, source_for(settings), verdicts, args.model_type, on_look=show)
    try:
        if args.once:
            watcher.look()
        else:
            watcher.run(max_seconds=args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server[0].shutdown()
    return 0


def cmd_prometheus(settings, args) -> int:
    """The services profile's Prometheus (gymops.serving.prometheus.PrometheusServer, the Debian
    package's binary with a config written here): scrapes Triton's metrics endpoint (the model's
    per-version counters) and the tier's (`gymops serving watch`, delivery.metrics_port) every
    --scrape-interval, on delivery.prometheus_port, TSDB under $GYMOPS_HOME/prometheus. Runs in the
    foreground until SIGINT/SIGTERM (or --seconds) and then stops its child by PID: the child has
    its own session, so a signal to this process group alone would leave it running. The watcher
    reads it when GYMOPS_DELIVERY_PROMETHEUS_URL points at it."""
    import signal
    import threading
    import time

    from gymops.serving.prometheus import PrometheusServer

    ss, ds = settings.serving, settings.delivery
    targets = {"triton": f"{ss.host}:{ss.metrics_port}", "gymops": f"{ss.host}:{ds.metrics_port}"}
    server = PrometheusServer(settings.home / "prometheus", ds.prometheus_port, targets, args.scrape_interval,
                              host=ss.host)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        server.start()
        print(f"prometheus on {server.url} (pid {server.proc.pid}) scraping {json.dumps(targets)} "
              f"every {args.scrape_interval}", flush=True)
        while server.proc.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
        if server.proc.poll() is not None:
            print(f"prometheus exited with {server.proc.returncode}", file=sys.stderr)
            return 1
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"serving prometheus failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def register(sub) -> None:
    group = add_group(sub, "serving", "the Triton server (explicit model control, PID file under $GYMOPS_HOME/run)")
    p = group.add_parser("setup", help="check the binary, install the stubs' numpy 1.x, prepare the backend directory")
    p.set_defaults(handler=cmd_setup)
    p = group.add_parser("start", help="start tritonserver in the background",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(handler=cmd_start)
    p = group.add_parser("stop", help="stop it (SIGTERM, SIGKILL after --timeout)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(handler=cmd_stop)
    p = group.add_parser("status", help="pid, health, memory, models (exit 3 when not running)")
    p.set_defaults(handler=cmd_status)
    p = group.add_parser("index", help="the repository index (needs the deploy token)")
    p.set_defaults(handler=cmd_index)
    p = group.add_parser("swap", help="serve VERSION of MODEL instead of the current one")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.set_defaults(handler=cmd_swap)
    p = group.add_parser("unload", help="unload every version of MODEL")
    p.add_argument("model")
    p.set_defaults(handler=cmd_unload)
    p = group.add_parser("watch", help="the canary watcher: reads the live signals every interval, rolls back "
                                       "on a failing one, promotes when the analysis passes")
    p.add_argument("--interval", type=float, default=None, help="seconds between looks (GYMOPS_DELIVERY_WATCH_INTERVAL_S)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until interrupted)")
    p.add_argument("--once", action="store_true", help="one look")
    p.add_argument("--verbose", action="store_true", help="print every look")
    p.add_argument("--model-type", default="laundry")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="the tier's metrics endpoint (GYMOPS_DELIVERY_METRICS_PORT; 0: none)")
    p.set_defaults(handler=cmd_watch)
    p = group.add_parser("prometheus", help="the services profile's Prometheus: scrapes Triton and the tier "
                                            "(foreground; stops its child on SIGINT/SIGTERM)")
    p.add_argument("--scrape-interval", default="1s")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until interrupted)")
    p.set_defaults(handler=cmd_prometheus)
