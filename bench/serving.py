#!/usr/bin/env python
"""Serving benchmark: the laundry model behind Triton vs bare onnxruntime vs FastAPI + PyTorch eager.

The model is a REAL trained version (bench/models.py: EfficientNet-Lite0 trunk + trained head,
cached in var/bench-models/). The same 128 distinct simulator JPEGs, the same concurrency and the
same duration per path:

1. ``triton``: tritonserver (the nvidia-pytriton wheel, Python backend, triton_models/laundry's
   config.pbtxt and model.py), clients LaundryClient over gRPC and over HTTP (no retries). Throughput
   with ``--concurrency`` client threads of one protocol, then of the other; the headline triton_rps
   is gRPC (LaundryClient's default protocol), HTTP is reported beside it.
2. ``ort``: bare onnxruntime in this process, the ceiling: gymops.ml.preprocess.preprocess +
   session.run of one photo per call, one session shared by the client threads, with the SAME
   session options as the Triton model (intra/inter-op threads, spinning, from the config).
3. ``canary``: the same Triton build with a canary active, set up as production sets it up: a
   SQLite registry, ``Deployer.deploy`` of version 1 (the active one), then
   ``Deployer.start_canary`` of version 2 (the other REAL trained version) at
   ``--canary-fraction`` (default: DeliverySettings' 0.10). The served model.py then holds both
   sessions in the route folder and picks one per request, counting the per-version signals the
   watcher reads (pb_utils.MetricFamily). gRPC clients; headline ``triton_canary_rps``, which must
   stay >= 0.8 x ``ort_rps`` (issue 11). The share of answers naming the candidate is reported
   (``canary.candidate_share``) so a routing that silently sends nothing to the candidate shows.
   Only with the shipped config (no exploring changes): the deployer writes the repository's
   config.pbtxt.
4. ``eager``: a plain FastAPI app (below) started as a child process with uvicorn: POST the JPEG
   to /classify; it decodes + preprocesses with gymops.ml.preprocess and runs the LaundryNet in
   PyTorch eager mode (torch threads = Triton's intra-op threads x instances), one photo per request.

All three are started first, then measured in ``--rounds`` interleaved rounds (rotating order),
each path getting ``--seconds``/rounds of load and ``--requests``/rounds sequential requests per
round, so that background load on the 2 shared cores falls on every path alike (the machine's
other load during the run is reported under "machine"). Latency: one client, one photo per request,
back to back, cycling through the photos. Throughput: requests / (first sent -> last answered),
summed over the rounds, ``--concurrency`` client threads in this process. The answers are checked
to be the same model's (max |p - p_ort| over 16 photos). Every loop is bounded in count and time;
servers are stopped by PID.

Targets: Triton >= 0.8 x the bare onnxruntime throughput and >= 2 x the FastAPI path; p50 <= 25 ms;
with a canary active, Triton still >= 0.8 x bare onnxruntime.

    python -m bench.serving            # the full run; writes bench/results/serving.json
    python -m bench.serving --quick    # a short smoke run (writes only with --out)
    python -m bench.serving --quick --paths ort,canary --requests 10   # smoke of the canary run
Exploring (figures go to stdout only unless --out): --instances N, --queue-delay-us N,
--intra-op-threads N, --concurrency N, --paths triton,ort.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.models import (
    RESULTS, MachineMeter, PhotoLoad, base_config, bench_photos, build_versions, cpu_seconds, emit, free_port,
    latency_summary, log, metrics_delta, other_cpu_busy, triton, triton_caller, triton_metrics, versions_summary,
    wait_for_quiet,
)

DEFAULT_OUT = RESULTS / "serving.json"
PATHS = ("ort", "triton", "canary", "eager")


# --------------------------------------------------------------------------------------------------
# The FastAPI + PyTorch eager server (runs in the uvicorn child process)

def eager_app():
    """uvicorn --factory bench.serving:eager_app, configured by GYMOPS_EAGER_* variables."""
    import numpy as np
    import torch
    from fastapi import FastAPI, HTTPException, Request
    from starlette.concurrency import run_in_threadpool

    from bench.models import ModelVersion, load_torch
    from gymops.ml.preprocess import preprocess

    torch.set_num_threads(int(os.environ.get("GYMOPS_EAGER_THREADS", "2")))
    folder = Path(os.environ["GYMOPS_EAGER_MODEL"])
    semver = os.environ.get("GYMOPS_EAGER_SEMVER", "0.0.0")
    net = load_torch(ModelVersion(0, semver, 0, folder))
    labels = ("good", "defective")
    with torch.inference_mode():
        net(torch.zeros(1, 3, 224, 224))

    def infer(photo: bytes) -> dict:
        try:
            x = preprocess(photo)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        with torch.inference_mode():
            p = net(torch.from_numpy(np.ascontiguousarray(x[None])))[0].numpy()
        return {"label": labels[int(p.argmax())], "probabilities": [float(p[0]), float(p[1])],
                "model_version": semver}

    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/classify")
    async def classify(request: Request) -> dict:
        return await run_in_threadpool(infer, await request.body())

    return app


class EagerServer:
    """The FastAPI app in a uvicorn child process on a free loopback port; stopped by PID."""

    def __init__(self, folder: Path, semver: str, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, GYMOPS_EAGER_MODEL=str(folder), GYMOPS_EAGER_SEMVER=semver,
                   GYMOPS_EAGER_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "bench.serving:eager_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> float:
        import requests

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the FastAPI server exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the FastAPI server was not ready after {timeout} s")

    def caller(self):
        import requests

        url = self.url + "/classify"

        def factory():
            session = requests.Session()

            def call(photo: bytes) -> str:
                r = session.post(url, data=photo, headers={"content-type": "image/jpeg"}, timeout=60)
                r.raise_for_status()
                return r.json()["model_version"]

            return call, session.close

        return factory

    def probabilities(self, photo: bytes) -> list[float]:
        import requests

        r = requests.post(self.url + "/classify", data=photo, headers={"content-type": "image/jpeg"}, timeout=60)
        r.raise_for_status()
        return r.json()["probabilities"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# --------------------------------------------------------------------------------------------------
# Paths

def _params(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def ort_session(onnx: Path, params: dict[str, str]):
    """An onnxruntime session with the options the Triton model uses (model.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(params.get("intra_op_threads") or 2)
    options.inter_op_num_threads = int(params.get("inter_op_threads") or 1)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning") or "0")
    return ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])


class ServingPath:
    """One way of serving the model: a caller factory per client thread, a sequential caller, and
    everything measured so far (accumulated over the interleaved rounds)."""

    def __init__(self, name: str, factory, closers=(), server_pid: int | None = None, metrics_url: str | None = None):
        self.name, self.factory, self.server_pid, self.metrics_url = name, factory, server_pid, metrics_url
        self.metrics: dict[str, float] = {}
        self.cpu_client_s = self.cpu_server_s = 0.0
        self.latencies: list[float] = []
        self.records: list = []
        self.seconds = 0.0
        self.call, close = factory()
        self._closers = [close, *closers]

    def close(self) -> None:
        for close in self._closers:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass

    def latency_round(self, photos, start: int, n: int) -> None:
        for i in range(start, start + n):
            photo = photos[i % len(photos)]
            t = time.perf_counter()
            self.call(photo)
            self.latencies.append(time.perf_counter() - t)

    def load_round(self, photos, concurrency: int, seconds: float) -> None:
        load = PhotoLoad([(self.name, self.factory)] * concurrency, photos, max_seconds=seconds + 30)
        client0 = cpu_seconds(os.getpid(), tree=False)
        server0 = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        metrics0 = triton_metrics(self.metrics_url) if self.metrics_url else {}
        with load:
            time.sleep(seconds)
        if self.metrics_url:
            for key, value in triton_metrics(self.metrics_url).items():
                self.metrics[key] = self.metrics.get(key, 0.0) + value - metrics0.get(key, 0.0)
        self.cpu_client_s += cpu_seconds(os.getpid(), tree=False) - client0
        if self.server_pid:
            self.cpu_server_s += cpu_seconds(self.server_pid) - server0
        recs = list(load.records)
        if recs:
            self.seconds += max(r[1] for r in recs) - min(r[0] for r in recs)
            self.records.extend(recs)

    def figures(self) -> dict:
        failed = [r for r in self.records if r[3].startswith("ERROR")]
        throughput = {"requests": len(self.records), "seconds": self.seconds,
                      "requests_per_s": len(self.records) / self.seconds if self.seconds else None,
                      "failed": len(failed), "failures": [r[3] for r in failed[:5]],
                      **latency_summary([r[1] - r[0] for r in self.records])}
        n = max(1, len(self.records))
        # CPU time per request under load: robust to background load on the shared cores, and says
        # where the time goes (the client threads run in this process; ort runs entirely here).
        cpu = {"client_ms": 1e3 * self.cpu_client_s / n, "server_ms": 1e3 * self.cpu_server_s / n,
               "total_ms": 1e3 * (self.cpu_client_s + self.cpu_server_s) / n,
               "cores_busy": (self.cpu_client_s + self.cpu_server_s) / self.seconds if self.seconds else None}
        figures = {"latency": latency_summary(self.latencies), "throughput": throughput, "cpu_per_request": cpu}
        if self.metrics_url:  # Triton's own view of the load rounds: batch sizes, queue vs compute time
            figures["server_metrics"] = metrics_delta({}, self.metrics)
        return figures


def interleaved_rounds(measured: dict[str, ServingPath], photos, rounds: int, n: int, seconds: float,
                       concurrency: int, warmup: int = 5, label: str = "") -> tuple[dict, float]:
    """Warm every path up (``warmup`` requests), then measure the paths in ``rounds`` interleaved
    rounds (rotating order): per round n/rounds sequential requests per path, then seconds/rounds of
    ``concurrency`` client threads per path, so that background load on the shared cores falls on
    every path alike. Returns (the machine's load during the rounds, their seconds)."""
    for p in measured.values():  # warm-up: connections, first runs
        p.latency_round(photos, 0, warmup)
        p.latencies.clear()
    other_before = other_cpu_busy(1.0)
    meter = MachineMeter()
    started = time.monotonic()
    names = list(measured)
    per_round_n = max(1, n // rounds)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        log(f"{label}round {r + 1}/{rounds}: sequential latency ({per_round_n} requests per path)")
        for name in order:
            measured[name].latency_round(photos, r * per_round_n, per_round_n)
        for name in order:
            log(f"{label}round {r + 1}/{rounds}: {name}, {concurrency} threads for {seconds / rounds:.1f} s")
            measured[name].load_round(photos, concurrency, seconds / rounds)
    return {**meter.report(), "busy_cores_other_before": other_before}, time.monotonic() - started


def ort_factory(version, params):
    from gymops.ml.preprocess import preprocess

    session = ort_session(version.onnx, params)

    def call(photo: bytes) -> str:
        session.run(["probabilities"], {"image": preprocess(photo)[None]})
        return version.semver

    def probabilities(photo: bytes):
        return session.run(["probabilities"], {"image": preprocess(photo)[None]})[0][0]

    return (lambda: (call, lambda: None)), probabilities


@contextlib.contextmanager
def canary_triton(versions, golden: list[bytes], fraction: float):
    """tritonserver on a temporary repository (the shipped config.pbtxt and model.py) where the
    deployer serves versions[0] and then starts versions[1] in canary at ``fraction``: the very
    calls `gymops deploy` and `gymops models canary` make. Yields (server, facts); stops it by PID."""
    from bench.models import MODEL, deploy_stack

    with deploy_stack("gymops-bench-canary-serving-") as st:
        stable, candidate = (st.registry.register_candidate(MODEL, "bench", {}, f"bench-v{v.number}",
                                                            f"bench-{v.semver}", str(v.onnx)) for v in versions[:2])
        st.deployer.deploy(MODEL, stable.version, golden)
        report = st.deployer.start_canary(MODEL, candidate.version, fraction)
        yield st.server, {"stable_version": stable.version, "candidate_version": candidate.version,
                          "fraction": fraction, "route_folder": report.route,
                          "start_s": round(sum(report.steps.values()), 3),
                          "registry_status": st.registry.get(MODEL, candidate.version).status}


# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: 3 s per path, 30 latency requests")
    ap.add_argument("--seconds", type=float, help="throughput duration per path (default 20, quick 3)")
    ap.add_argument("--requests", type=int, help="sequential latency requests per path (default 200, quick 30)")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads per throughput run")
    ap.add_argument("--photos", type=int, default=128)
    ap.add_argument("--rounds", type=int, help="interleaved rounds the time is split into (default 4, quick 1)")
    ap.add_argument("--paths", default=",".join(PATHS), help="subset of ort,triton,canary,eager")
    ap.add_argument("--canary-fraction", type=float, default=None,
                    help="the canary's share of requests (default GYMOPS_DELIVERY_CANARY_FRACTION's default, 0.10)")
    ap.add_argument("--instances", type=int, help="override the instance count (exploring)")
    ap.add_argument("--queue-delay-us", type=int, help="override max_queue_delay_microseconds (exploring)")
    ap.add_argument("--intra-op-threads", type=int, help="override intra_op_threads (exploring)")
    ap.add_argument("--no-dynamic-batching", action="store_true", help="remove dynamic_batching (exploring)")
    ap.add_argument("--variant", help="exploring: a second Triton server with these config changes, measured "
                                      "in the same rounds, e.g. '{\"instances\": 2, \"queue_delay_us\": 0}' "
                                      "(keys of bench.models.base_config)")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="wait up to this many seconds for other work on the machine to stop first")
    ap.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)} for a full run)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 20.0)
    n = args.requests or (30 if args.quick else 200)
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        ap.error(f"unknown paths {sorted(unknown)}")
    changes = {"instances": args.instances, "queue_delay_us": args.queue_delay_us,
               "parameters": {"intra_op_threads": args.intra_op_threads} if args.intra_op_threads else None}
    if args.no_dynamic_batching:
        changes["dynamic_batching"] = False
    changes = {k: v for k, v in changes.items() if v is not None}
    if "canary" in paths and changes:
        ap.error("the canary path runs the shipped config only (the deployer writes config.pbtxt): "
                 "drop canary from --paths to explore config changes")
    if args.canary_fraction is None:
        from gymops.settings import DeliverySettings

        args.canary_fraction = DeliverySettings().canary_fraction
    exploring = bool(changes) or bool(args.variant) or args.concurrency != 4 or set(paths) != set(PATHS) \
        or args.canary_fraction != 0.10
    out = args.out or (None if (args.quick or exploring or args.seconds or args.requests) else DEFAULT_OUT)

    versions = build_versions()
    photos = bench_photos(args.photos)
    version = versions[0]
    config = base_config(ROOT / "triton_models", **changes)
    params = _params(config)
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [{}]))
    # Eager gets as many threads as Triton's instances use together: one process, all of them.
    threads = int(params.get("intra_op_threads") or 2) * max(1, instances)
    rounds = args.rounds or (1 if args.quick else 4)
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)

    figures: dict = {"benchmark": "serving", "quick": args.quick, "model": versions_summary(versions[:1])[0],
                     "photos": len(photos), "photo_bytes_mean": sum(map(len, photos)) / len(photos),
                     "concurrency": args.concurrency, "seconds_per_path": seconds, "latency_requests": n,
                     "rounds": rounds,
                     "triton_config": {"instance_group": config.get("instance_group"),
                                       "dynamic_batching": config.get("dynamic_batching"),
                                       "max_batch_size": config.get("max_batch_size"), "parameters": params},
                     "config_changes": changes}
    with contextlib.ExitStack() as stack:
        # Every backend is up before anything is measured; the paths are then measured in
        # interleaved rounds (rotating order), so background load on the shared cores hits all alike.
        measured: dict[str, ServingPath] = {}
        probes: dict[str, object] = {}
        if "ort" in paths:
            factory, probes["ort"] = ort_factory(version, params)
            measured["ort"] = ServingPath("ort", factory)
        if "triton" in paths:
            tb = stack.enter_context(triton(versions[:1], load=1, **changes))
            figures["triton_start_s"] = tb.server.start_seconds
            for protocol in ("grpc", "http"):
                measured[f"triton_{protocol}"] = ServingPath(protocol, triton_caller(tb.urls[protocol], protocol),
                                                             server_pid=tb.server.pid,
                                                             metrics_url=tb.server.metrics_url)
        if args.variant:
            import json

            variant = json.loads(args.variant)
            figures["variant_changes"] = variant
            tv = stack.enter_context(triton(versions[:1], load=1, **variant))
            for protocol in ("grpc", "http"):
                measured[f"variant_{protocol}"] = ServingPath(protocol, triton_caller(tv.urls[protocol], protocol),
                                                              server_pid=tv.server.pid,
                                                              metrics_url=tv.server.metrics_url)
        if "canary" in paths:
            tc, figures["canary"] = stack.enter_context(canary_triton(versions, photos[:6], args.canary_fraction))
            measured["triton_canary"] = ServingPath("grpc", triton_caller(tc.grpc_url, "grpc"), server_pid=tc.pid,
                                                    metrics_url=tc.metrics_url)
        if "eager" in paths:
            eager = EagerServer(version.folder, version.semver, threads)
            stack.callback(eager.stop)
            figures["eager_start_s"] = eager.wait_ready()
            measured["eager"] = ServingPath("eager", eager.caller(), server_pid=eager.proc.pid)
        for p in measured.values():
            stack.callback(p.close)

        # Same model, same answers: the probabilities of 16 photos on every path vs bare onnxruntime.
        if "ort" in probes:
            import numpy as np

            from gymops.serving.client import LaundryClient

            reference = [probes["ort"](p) for p in photos[:16]]
            diffs = {}
            if "triton" in paths:
                for protocol in ("grpc", "http"):
                    with LaundryClient(tb.urls[protocol], protocol, retries=0) as client:
                        got = [v.probabilities for v in client.classify_batch(photos[:16])]
                    diffs[f"triton_{protocol}"] = float(max(np.abs(np.asarray(g) - r).max() for g, r in zip(got, reference)))
            if "eager" in paths:
                diffs["eager"] = float(max(np.abs(np.asarray(eager.probabilities(p)) - r).max()
                                           for p, r in zip(photos[:16], reference)))
            figures["max_abs_diff_vs_ort"] = diffs

        figures["machine"], figures["seconds"] = interleaved_rounds(measured, photos, rounds, n, seconds,
                                                                    args.concurrency)
        if "triton" in paths:
            mem = tb.server.memory()
            figures["triton_rss_tree_mib"] = mem["rss_bytes"] / 2**20
            figures["triton_pss_tree_mib"] = mem["pss_bytes"] / 2**20
        for name, p in measured.items():
            figures[name] = p.figures()
        if "triton_canary" in measured:  # who answered under load: the route's split, as served
            answered = [r[3] for r in measured["triton_canary"].records if not r[3].startswith("ERROR")]
            cand = figures["canary"]["candidate_version"]
            figures["canary"]["answers"] = len(answered)
            figures["canary"]["candidate_share"] = (sum(v == cand for v in answered) / len(answered)) if answered else None

    t = {"latency_grpc": figures.get("triton_grpc", {}).get("latency", {}),
         "latency_http": figures.get("triton_http", {}).get("latency", {}),
         "throughput_grpc": figures.get("triton_grpc", {}).get("throughput", {}),
         "throughput_http": figures.get("triton_http", {}).get("throughput", {})}
    # Headline figures and ratios (same run, same photos, same concurrency).
    rps = lambda d: d.get("requests_per_s") if d else None  # noqa: E731
    figures["triton_rps"] = rps(t.get("throughput_grpc"))
    figures["triton_http_rps"] = rps(t.get("throughput_http"))
    figures["ort_rps"] = rps(figures.get("ort", {}).get("throughput"))
    figures["eager_rps"] = rps(figures.get("eager", {}).get("throughput"))
    figures["triton_canary_rps"] = rps(figures.get("triton_canary", {}).get("throughput"))
    figures["triton_canary_p50_ms"] = figures.get("triton_canary", {}).get("latency", {}).get("p50_ms")
    figures["p50_ms"] = t.get("latency_grpc", {}).get("p50_ms")
    figures["p50_ms_http"] = t.get("latency_http", {}).get("p50_ms")
    figures["p99_ms"] = t.get("latency_grpc", {}).get("p99_ms")
    figures["p99_ms_http"] = t.get("latency_http", {}).get("p99_ms")
    figures["ort_p50_ms"] = figures.get("ort", {}).get("latency", {}).get("p50_ms")
    figures["eager_p50_ms"] = figures.get("eager", {}).get("latency", {}).get("p50_ms")
    figures["p99_ms_under_load"] = {
        "triton_grpc": t.get("throughput_grpc", {}).get("p99_ms"), "triton_http": t.get("throughput_http", {}).get("p99_ms"),
        "ort": figures.get("ort", {}).get("throughput", {}).get("p99_ms"),
        "triton_canary": figures.get("triton_canary", {}).get("throughput", {}).get("p99_ms"),
        "eager": figures.get("eager", {}).get("throughput", {}).get("p99_ms")}
    names = ("ort", "triton_grpc", "triton_http", "triton_canary", "variant_grpc", "variant_http", "eager")
    figures["cpu_ms_per_request"] = {name: figures[name]["cpu_per_request"]["total_ms"] for name in names if name in figures}
    if args.variant:
        figures["variant"] = {name: {"rps": figures[name]["throughput"]["requests_per_s"],
                                     "vs_ort": rps(figures[name]["throughput"]) / figures["ort_rps"] if figures.get("ort_rps") else None,
                                     "p50_ms": figures[name]["latency"].get("p50_ms")}
                              for name in ("variant_grpc", "variant_http")}
    ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
    figures["ratios"] = {
        "triton_vs_ort": ratio(figures["triton_rps"], figures["ort_rps"]),
        "triton_http_vs_ort": ratio(figures["triton_http_rps"], figures["ort_rps"]),
        "triton_vs_eager": ratio(figures["triton_rps"], figures["eager_rps"]),
        "triton_http_vs_eager": ratio(figures["triton_http_rps"], figures["eager_rps"]),
        "triton_canary_vs_ort": ratio(figures["triton_canary_rps"], figures["ort_rps"]),
        "triton_canary_vs_triton": ratio(figures["triton_canary_rps"], figures["triton_rps"]),
    }
    failed = sum((d or {}).get("failed", 0) for d in (t.get("throughput_grpc"), t.get("throughput_http"),
                                                       figures.get("ort", {}).get("throughput"),
                                                       figures.get("triton_canary", {}).get("throughput"),
                                                       figures.get("eager", {}).get("throughput")))
    figures["failed"] = failed
    r = figures["ratios"]
    figures["targets"] = {
        "triton_vs_ort_ge_0.8": None if r["triton_vs_ort"] is None else r["triton_vs_ort"] >= 0.8,
        "triton_vs_eager_ge_2": None if r["triton_vs_eager"] is None else r["triton_vs_eager"] >= 2.0,
        "triton_canary_vs_ort_ge_0.8": None if r["triton_canary_vs_ort"] is None else r["triton_canary_vs_ort"] >= 0.8,
        "p50_le_25ms": None if figures["p50_ms"] is None else figures["p50_ms"] <= 25.0,
        "no_failed_requests": failed == 0,
    }
    emit(figures, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
