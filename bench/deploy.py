#!/usr/bin/env python
"""Deploy and rollback benchmark: gymops.deploy.deployer.Deployer against a real Triton, compared with a cold restart.

tritonserver (temporary repository: config.pbtxt and model.py copied from triton_models/laundry, free
loopback ports, a random deploy token) and a registry with a transactional outbox on a temporary
SQLite database. The two REAL trained laundry versions of bench/models.py are registered as
candidates; the first is deployed (untimed) before the load starts. Then one gRPC client thread
(LaundryClient, NO retries) sends simulator photos back to back for the whole run, and every round:

  (a) deploy    the other ONNX file is registered as a NEW candidate (a new registry version and
                Triton folder, so every deploy is real: check, write, stage + warm-up, golden, flip,
                verify, activate) and Deployer.deploy() is timed: report.deploy_seconds (call to the
                flip verified) and the call's wall time;
  (b) rollback  Deployer.rollback(): report.seconds (call to the old version serving) and
                report.confirmed_seconds (call to a request answered by it);
  (c) restart   the named alternative: stop tritonserver (SIGTERM, by PID), start it again on the same
                ports, ModelControl.load_version pinned to the version deployed in (a), until the
                first successful classify answered by that version; then (untimed) swapped back to
                the registry's active version so registry and server agree again.

Failed requests of the client thread are counted per phase (requests whose [sent, answered] window
overlaps the phase); after a failure the thread waits 50 ms before the next request, so during the
restart the count is ~20 per second of outage. Targets: deploy_s <= 10 and rollback_s <= 10 (medians).

    python -m bench.deploy            # 5 rounds; writes bench/results/deploy.json
    python -m bench.deploy --quick    # 1 round (writes only with --out)
"""
from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.models import (
    MODEL, RESULTS, MachineMeter, bench_photos, build_versions, emit, free_port, log, versions_summary,
)

DEFAULT_OUT = RESULTS / "deploy.json"
FAIL_PAUSE_S = 0.05


class Traffic:
    """One gRPC client thread (no retries) sending photos back to back; every outcome recorded as
    (sent, answered, model_version or 'ERROR ...')."""

    def __init__(self, url: str, photos: list[bytes]):
        self.url, self.photos = url, photos
        self.records: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from gymops.serving.client import LaundryClient

        client = LaundryClient(self.url, "grpc", retries=0, timeout=30)
        i = 0
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    outcome = str(client.classify(self.photos[i % len(self.photos)]).model_version)
                except Exception as exc:  # noqa: BLE001 -- counted as a failed request
                    outcome = f"ERROR {type(exc).__name__}: {exc}"[:300]
                self.records.append((sent, time.monotonic(), outcome))
                i += 1
                if outcome.startswith("ERROR"):
                    self._stop.wait(FAIL_PAUSE_S)
        finally:
            client.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def failures(self, lo: float, hi: float) -> list[tuple]:
        return [r for r in list(self.records) if r[2].startswith("ERROR") and r[0] <= hi and r[1] >= lo]

    def wait_success_after(self, t: float, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r[0] >= t and not r[2].startswith("ERROR") for r in self.records[-50:]):
                return True
            time.sleep(0.05)
        return False


def median(xs):
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round (prints only unless --out)")
    ap.add_argument("--rounds", type=int, help="rounds (default 5, quick 1)")
    ap.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)} for a full run)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    out = args.out or (None if (args.quick or args.rounds) else DEFAULT_OUT)

    from gymops.db import _engine, metadata
    from gymops.deploy.deployer import Deployer
    from gymops.lifecycle.outbox import Outbox
    from gymops.lifecycle.registry import ModelRegistry
    from gymops.serving.client import LaundryClient
    from gymops.serving.control import LoadFailed, ModelControl
    from gymops.serving.server import TritonServer
    from gymops.settings import DEPLOY_HEADER

    versions = build_versions()
    photos = bench_photos()
    golden = photos[:6]
    onnx = [v.onnx for v in versions]
    meter = MachineMeter()

    tmp = Path(tempfile.mkdtemp(prefix="gymops-bench-deploy-"))
    repo, archive = tmp / "repo", tmp / "archive"
    (repo / MODEL).mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copyfile(ROOT / "triton_models" / MODEL / name, repo / MODEL / name)
    engine = _engine(f"sqlite:///{tmp / 'registry.db'}")
    metadata.create_all(engine)
    registry = ModelRegistry(engine, Outbox(engine))
    token = secrets.token_urlsafe(24)
    ports = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())

    def start_server():
        srv = TritonServer(repo, home=tmp / "triton", deploy_token=token, deploy_header=DEPLOY_HEADER, **ports).start()
        ctl = ModelControl.for_server(srv)
        return srv, ctl, Deployer(registry, ctl, repo, MODEL, archive_dir=archive)

    def candidate(k: int):
        # One registry version per artifact (register_candidate returns the version a file already
        # has), so each round deploys its own copy: the same weights, a doc string naming the round.
        import onnx as onnx_lib

        model = onnx_lib.load(str(onnx[k % 2]))
        model.doc_string = f"bench/deploy round {k}"
        path = tmp / f"round-{k}.onnx"
        onnx_lib.save(model, str(path))
        return registry.register_candidate("laundry", "efficientnet_lite0", {"bench": True}, f"DS-bench-{k}",
                                           f"bench-{k}", str(path))

    server = control = traffic = None
    results: list[dict] = []
    try:
        server, control, deployer = start_server()
        first = candidate(0)
        r0 = deployer.deploy("laundry", first.version, golden)
        log(f"initial deploy {first.version} (Triton {first.triton_version}): {r0.seconds:.2f} s")
        traffic = Traffic(server.grpc_url, photos)
        traffic.start()
        time.sleep(1.0)
        for r in range(rounds):
            entry: dict = {"round": r + 1}
            # (a) deploy a new candidate
            mv = candidate(r + 1)
            t0 = time.monotonic()
            rep = deployer.deploy("laundry", mv.version, golden)
            t1 = time.monotonic()
            entry["deploy"] = {"version": mv.version, "triton_version": mv.triton_version,
                               "onnx": onnx[(r + 1) % 2].parent.name, "deploy_s": rep.deploy_seconds,
                               "call_s": t1 - t0, "flip_s": rep.flip_seconds, "steps": rep.steps,
                               "failed_requests": len(traffic.failures(t0, t1))}
            log(f"round {r + 1}: deploy {mv.version} {rep.deploy_seconds:.2f} s (call {t1 - t0:.2f} s)")
            time.sleep(0.5)
            # (b) rollback to the previous version
            t0 = time.monotonic()
            rb = deployer.rollback("laundry", reason="benchmark")
            t1 = time.monotonic()
            entry["rollback"] = {"from": rb.from_version, "to": rb.to_version, "seconds": rb.seconds,
                                 "confirmed_s": rb.confirmed_seconds, "total_s": rb.total_seconds,
                                 "call_s": t1 - t0, "steps": rb.steps,
                                 "failed_requests": len(traffic.failures(t0, t1))}
            log(f"round {r + 1}: rollback -> {rb.to_version} {rb.seconds:.2f} s (confirmed {rb.confirmed_seconds:.2f} s)")
            time.sleep(0.5)
            # (c) cold restart onto the version deployed in (a)
            t0 = time.monotonic()
            control.close()
            server.stop()
            t_stop = time.monotonic()
            server, control, deployer = start_server()
            t_start = time.monotonic()
            load_s, grpc_wait = None, 0.0
            while load_s is None:  # the gRPC endpoint may come up after HTTP liveness
                try:
                    load_s = control.load_version(MODEL, mv.triton_version)
                except LoadFailed as exc:
                    if "UNAVAILABLE" not in str(exc) or time.monotonic() - t_start > 60:
                        log(server.log_tail())
                        raise
                    time.sleep(0.05)
                    grpc_wait = time.monotonic() - t_start
            t_start += grpc_wait
            answered = None
            with LaundryClient(server.grpc_url, "grpc", retries=0, timeout=30) as client:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        answered = client.classify(golden[0]).model_version
                        break
                    except Exception:  # noqa: BLE001
                        time.sleep(0.02)
            t1 = time.monotonic()
            traffic.wait_success_after(t1)
            t2 = time.monotonic()
            entry["restart"] = {"seconds": t1 - t0, "stop_s": t_stop - t0, "start_s": t_start - grpc_wait - t_stop,
                                "grpc_wait_s": grpc_wait, "load_s": load_s, "first_classify_s": t1 - t_start - load_s,
                                "served": answered, "expected": mv.version,
                                "client_thread_back_s": t2 - t0,
                                "failed_requests": len(traffic.failures(t0, t2))}
            log(f"round {r + 1}: restart {t1 - t0:.2f} s (stop {t_stop - t0:.2f}, start {t_start - t_stop:.2f}, "
                f"load {load_s:.2f}); {entry['restart']['failed_requests']} failed requests")
            # untimed: back to the registry's active version
            control.swap(MODEL, registry.active("laundry").triton_version)
            results.append(entry)
            time.sleep(0.5)
        time.sleep(0.5)
        traffic.stop()
        consistency = deployer.consistency("laundry")
    finally:
        if traffic is not None:
            traffic.stop()
        if control is not None:
            control.close()
        if server is not None:
            server.stop()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)

    dep = [e["deploy"]["deploy_s"] for e in results]
    rbs = [e["rollback"]["seconds"] for e in results]
    rst = [e["restart"]["seconds"] for e in results]
    records = traffic.records
    figures = {
        "benchmark": "deploy", "quick": args.quick, "rounds": len(results),
        "versions": versions_summary(versions),
        "deploy_s": median(dep), "deploy_s_max": max(dep),
        "deploy_call_s": median([e["deploy"]["call_s"] for e in results]),
        "rollback_s": median(rbs), "rollback_s_max": max(rbs),
        "rollback_confirmed_s": median([e["rollback"]["confirmed_s"] for e in results]),
        "restart_s": median(rst), "restart_s_max": max(rst),
        "ratio_deploy_vs_restart": median(dep) / median(rst),
        "ratio_rollback_vs_restart": median(rbs) / median(rst),
        "failed_requests_during_deploys": sum(e["deploy"]["failed_requests"] for e in results),
        "failed_requests_during_rollbacks": sum(e["rollback"]["failed_requests"] for e in results),
        "failed_requests_during_restarts": sum(e["restart"]["failed_requests"] for e in results),
        "requests": len(records), "failed": sum(1 for r in records if r[2].startswith("ERROR")),
        "restart_served_expected": all(e["restart"]["served"] == e["restart"]["expected"] for e in results),
        "consistent_at_end": consistency.ok,
        "details": results,
    }
    figures["targets"] = {"deploy_s_le_10": figures["deploy_s"] <= 10, "rollback_s_le_10": figures["rollback_s"] <= 10}
    figures["machine"] = meter.report()
    emit(figures, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
