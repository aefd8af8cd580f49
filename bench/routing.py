#!/usr/bin/env python
"""Routing benchmark: what the canary's routing costs, in-process (the route folder) vs BLS.

ONE tritonserver (temporary repository with the shipped config.pbtxt and model.py, a SQLite
registry, free loopback ports) serves, side by side:

1. ``direct``: the laundry model's stable version, called by number (``model_version`` = its
   folder), no canary: the baseline.
2. ``inprocess``: the project's canary route folder, set up as production sets it up
   (``Deployer.deploy`` of the stable version, then ``Deployer.start_canary`` of the candidate at
   ``--fraction``, default 0.10): one stub holding both onnxruntime sessions, picking one per
   request (triton_models/laundry/model.py, README "Progressive delivery").
3. ``bls``: a bench-only Python-backend router model (``laundry_bls``; its model.py and
   config.pbtxt below, written into the TEMPORARY repository only) with the laundry interface and
   the laundry config's batching and instances, that forwards each request with
   ``pb_utils.InferenceRequest(model_name="laundry", model_version=N).async_exec()`` to the laundry
   model's pinned stable version, or with probability ``--fraction`` to the candidate's, and
   returns that version's answer (label, probabilities, and the model_version that produced it).
   All requests of one execute() are sent together (asyncio.gather), so the laundry versions' own
   dynamic batchers can batch them; an error answer is passed back for its own request only.

After start_canary the laundry model serves only the route folder; it is then loaded with the
version policy ``specific [stable, candidate, route]`` so the three paths share one server, one
set of idle stubs and the same cores. Paths 1 and 2 name their version in the request (the
unversioned default would be the highest number, the route); the router is called unversioned.
The clients are LaundryClient (gRPC, no retries) with the version pinned per path.

The paths are measured in ``--rounds`` interleaved rounds (rotating order), as bench/serving.py
does, so drift and other work on the 2 shared cores hit every path alike (the machine's other
load during the run is reported under "machine"): per round each path gets ``--requests``/rounds
sequential requests (latency of a lone request) and ``--seconds``/rounds of ``--concurrency``
client threads (throughput, latency under load, failed requests). CPU time per request (this
process's client threads + the server's process tree) is reported too: it is robust to other work
on the machine and says what the routing costs even when the cores are not saturated.

Models (``--models``): ``tiny`` (default) is a tiny ONNX graph with the laundry interface
(bench/canary.py tiny_onnx; inference is ~free, the request cost is gRPC + Triton + the photo's
decode and preprocessing), so the differences are the routing's own cost; ``real`` is the two
trained EfficientNet-Lite0 versions of bench/models.py (cached in var/bench-models, trained on
first use: several minutes), where inference dominates. Each model kind gets its own server, and
every figure is under the key of its kind.

    python -m bench.routing                       # tiny; writes bench/results/routing.json
    python -m bench.routing --models tiny,real    # both; writes bench/results/routing.json
    python -m bench.routing --quick               # a short smoke run (writes only with --out)
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.models import (  # noqa: E402
    MODEL, RESULTS, bench_photos, deploy_stack, emit, log, wait_for_quiet,
)

DEFAULT_OUT = RESULTS / "routing.json"
ROUTER = "laundry_bls"
PATHS = ("direct", "inprocess", "bls")
MODEL_KINDS = ("tiny", "real")

# The router's model.py, written into the temporary repository (never into triton_models/).
ROUTER_SOURCE = '''\
"""Bench-only BLS router (bench/routing.py): the laundry interface; each request is forwarded to
the target model's pinned stable version, or with probability canary_fraction to the candidate's,
with pb_utils.InferenceRequest(..., model_version=N).async_exec(); that version's answer (label,
probabilities, model_version) is returned as it came. Parameters: target_model, stable_version,
candidate_version, canary_fraction."""
import asyncio
import json
import os
import random
import sys

# As triton_models/laundry/model.py: the stub ignores PYTHONPATH, whose first entry holds numpy 1.x
# (gymops/serving/stubenv.py); pb_utils imports numpy.
for _entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

import triton_python_backend_utils as pb_utils  # noqa: E402

OUTPUTS = ["label", "probabilities", "model_version"]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        param = lambda key: config["parameters"][key]["string_value"]  # noqa: E731
        self.target = param("target_model")
        self.stable = int(param("stable_version"))
        self.candidate = int(param("candidate_version"))
        self.fraction = float(param("canary_fraction"))
        self.rng = random.Random()

    async def execute(self, requests):
        pending = []
        for request in requests:
            version = self.candidate if self.rng.random() < self.fraction else self.stable
            forwarded = pb_utils.InferenceRequest(
                model_name=self.target, model_version=version, requested_output_names=OUTPUTS,
                inputs=[pb_utils.get_input_tensor_by_name(request, "photo")])
            pending.append(forwarded.async_exec())
        answers = await asyncio.gather(*pending, return_exceptions=True)
        responses = []
        for answer in answers:
            if isinstance(answer, BaseException):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"router: {type(answer).__name__}: {answer}")))
            elif answer.has_error():
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=answer.error()))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=answer.output_tensors()))
        return responses
'''


def router_config(laundry_template: dict, stable: int, candidate: int, fraction: float) -> dict:
    """The router's configuration: the laundry template's interface, batching and instances (so the
    router is no narrower than the model it fronts), its own name and routing parameters."""
    import copy

    config = copy.deepcopy(laundry_template)
    config["name"] = ROUTER
    config["version_policy"] = {"specific": {"versions": [1]}}
    config["parameters"] = {k: {"string_value": str(v)} for k, v in {
        "target_model": MODEL, "stable_version": stable, "candidate_version": candidate,
        "canary_fraction": fraction}.items()}
    return config


def write_router(repository: Path, config: dict) -> Path:
    """<repository>/laundry_bls/{config.pbtxt, 1/model.py}."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    folder = Path(repository) / ROUTER
    (folder / "1").mkdir(parents=True, exist_ok=True)
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    (folder / "config.pbtxt").write_text(text_format.MessageToString(message))
    (folder / "1" / "model.py").write_text(ROUTER_SOURCE)
    return folder


def pinned_caller(url: str, model: str = MODEL, version: int | None = None, timeout: float = 30.0):
    """A factory for bench.serving.ServingPath: a LaundryClient (gRPC, no retries) calling ``model``,
    at ``version`` when given (the request names it; LaundryClient itself never does)."""
    from gymops.serving.client import LaundryClient

    class Pinned(LaundryClient):
        def _client(self):
            client = super()._client()
            if version is not None and not getattr(client, "_bench_pinned", False):
                client.infer = functools.partial(client.infer, model_version=str(version))
                client._bench_pinned = True
            return client

    def factory():
        client = Pinned(url, "grpc", model=model, retries=0, timeout=timeout)
        return (lambda photo: client.classify(photo).model_version), client.close

    def verdicts(photos):
        with Pinned(url, "grpc", model=model, retries=0, timeout=timeout) as client:
            return [client.classify(p) for p in photos]

    return factory, verdicts


def onnx_files(kind: str, tmp: Path) -> tuple[list[Path], dict]:
    """(stable, candidate) ONNX files and a description of the model."""
    if kind == "tiny":
        from bench.canary import tiny_onnx

        files = [tiny_onnx(tmp / f"tiny{seed}.onnx", seed=seed, doc=f"bench/routing {seed}") for seed in (1, 2)]
        return files, {"kind": "tiny", "what": "bench/canary.py tiny_onnx (ReduceMean + MatMul + Softmax), "
                                               "seeds 1 and 2", "onnx_bytes": files[0].stat().st_size}
    from bench.models import build_versions, versions_summary

    versions = build_versions()
    return [v.onnx for v in versions[:2]], {"kind": "real", "what": "bench/models.py trained EfficientNet-Lite0 "
                                            "versions 1.0.0 and 1.1.0", "versions": versions_summary(versions[:2]),
                                            "onnx_bytes": versions[0].onnx.stat().st_size}


@contextlib.contextmanager
def routing_server(kind: str, golden: list[bytes], fraction: float):
    """One server with the three paths ready; yields (server, paths: {name: (factory, verdicts)}, facts)."""
    import tempfile

    from gymops.serving.control import template_config

    with deploy_stack(f"gymops-bench-routing-{kind}-") as st, \
            tempfile.TemporaryDirectory(prefix="gymops-bench-routing-onnx-") as onnx_tmp:
        files, model = onnx_files(kind, Path(onnx_tmp))
        stable, candidate = (st.registry.register_candidate(MODEL, "bench", {}, f"bench-routing-{i}",
                                                            f"bench-routing-{kind}-{i}", str(f))
                             for i, f in enumerate(files, 1))
        t0 = time.monotonic()
        st.deployer.deploy(MODEL, stable.version, golden)
        deploy_s = time.monotonic() - t0
        report = st.deployer.start_canary(MODEL, candidate.version, fraction)
        route = report.route
        # All three folders of the public name at once, so that the paths share the server.
        template = template_config(st.repo, MODEL)
        both = dict(template, name=MODEL,
                    version_policy={"specific": {"versions": [stable.triton_version, candidate.triton_version, route]}})
        t0 = time.monotonic()
        st.control._call(f"load {MODEL} {both['version_policy']}", st.control._client.load_model, MODEL,
                         config=json.dumps(both), client_timeout=st.control.timeout)
        widen_s = time.monotonic() - t0
        served = st.control.served_versions(MODEL)
        expected = sorted([stable.triton_version, candidate.triton_version, route])
        if served != expected:
            raise RuntimeError(f"{MODEL} serves {served}, expected {expected}")
        rconfig = router_config(template, stable.triton_version, candidate.triton_version, fraction)
        write_router(st.repo, rconfig)
        t0 = time.monotonic()
        st.control.load_version(ROUTER, 1)
        router_load_s = time.monotonic() - t0
        url = st.server.grpc_url
        paths = {"direct": pinned_caller(url, MODEL, stable.triton_version),
                 "inprocess": pinned_caller(url, MODEL, route),
                 "bls": pinned_caller(url, ROUTER)}
        facts = {"model": model, "stable_version": stable.version, "candidate_version": candidate.version,
                 "stable_folder": stable.triton_version, "candidate_folder": candidate.triton_version,
                 "route_folder": route, "fraction": fraction,
                 "registry_status_candidate": st.registry.get(MODEL, candidate.version).status,
                 "laundry_versions_served": served, "deploy_s": deploy_s,
                 "start_canary_s": report.total_seconds, "widen_load_s": widen_s, "router_load_s": router_load_s,
                 "laundry_config": {k: template.get(k) for k in ("max_batch_size", "dynamic_batching",
                                                                 "instance_group", "parameters")},
                 "router_config": {k: rconfig.get(k) for k in ("max_batch_size", "dynamic_batching",
                                                               "instance_group", "parameters")}}
        yield st.server, paths, facts


def measure(kind: str, args, photos: list[bytes]) -> dict:
    import numpy as np

    from bench.serving import ServingPath, interleaved_rounds

    with routing_server(kind, photos[:6], args.fraction) as (server, callers, facts):
        # Same answers: a photo answered by the stable version is answered alike on every path.
        reference = callers["direct"][1](photos[:16])
        agree = {}
        for name in ("inprocess", "bls"):
            got = callers[name][1](photos[:16])
            same = [float(np.abs(np.asarray(g.probabilities) - np.asarray(r.probabilities)).max())
                    for g, r in zip(got, reference) if g.model_version == facts["stable_version"]]
            agree[name] = {"stable_answers": len(same), "max_abs_diff_vs_direct": max(same) if same else None}
        facts["answers_vs_direct"] = agree
        measured = {name: ServingPath("grpc", callers[name][0], server_pid=server.pid,
                                      metrics_url=server.metrics_url) for name in args.paths}
        try:
            facts["machine"], facts["seconds"] = interleaved_rounds(measured, photos, args.rounds, args.requests,
                                                                    args.seconds, args.concurrency, warmup=10,
                                                                    label=f"{kind} ")
            mem = server.memory()
            facts["server_processes"] = mem["processes"]
            facts["server_pss_tree_mib"] = mem["pss_bytes"] / 2**20
        finally:
            for p in measured.values():
                p.close()
    out = dict(facts)
    for name, p in measured.items():
        fig = p.figures()
        answered = [rec[3] for rec in p.records if not rec[3].startswith("ERROR")]
        fig["candidate_share"] = (sum(v == facts["candidate_version"] for v in answered) / len(answered)) \
            if answered else None
        out[name] = fig
    out["summary"] = summary(out)
    return out


def summary(fig: dict) -> dict:
    """The headline figures of one model kind, and the ratios vs direct."""
    def get(name, *keys):
        d = fig.get(name) or {}
        for k in keys:
            d = (d or {}).get(k)
        return d

    s: dict = {}
    for name in PATHS:
        if name not in fig:
            continue
        s[name] = {"requests_per_s": get(name, "throughput", "requests_per_s"),
                   "p50_ms_under_load": get(name, "throughput", "p50_ms"),
                   "p99_ms_under_load": get(name, "throughput", "p99_ms"),
                   "p50_ms_alone": get(name, "latency", "p50_ms"),
                   "p99_ms_alone": get(name, "latency", "p99_ms"),
                   "cpu_ms_per_request": get(name, "cpu_per_request", "total_ms"),
                   "requests": get(name, "throughput", "requests"),
                   "failed": get(name, "throughput", "failed"),
                   "candidate_share": get(name, "candidate_share")}
    ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
    base = s.get("direct", {})
    for name, key in (("inprocess", "inprocess_vs_direct"), ("bls", "bls_vs_direct")):
        if name in s:
            s[key] = {
                "throughput": ratio(s[name]["requests_per_s"], base.get("requests_per_s")),
                "p50_under_load": ratio(s[name]["p50_ms_under_load"], base.get("p50_ms_under_load")),
                "p99_under_load": ratio(s[name]["p99_ms_under_load"], base.get("p99_ms_under_load")),
                "p50_alone": ratio(s[name]["p50_ms_alone"], base.get("p50_ms_alone")),
                "cpu_per_request": ratio(s[name]["cpu_ms_per_request"], base.get("cpu_ms_per_request")),
                "p50_ms_added_alone": (s[name]["p50_ms_alone"] - base["p50_ms_alone"])
                if s[name]["p50_ms_alone"] is not None and base.get("p50_ms_alone") is not None else None,
            }
    s["failed"] = sum((s[name]["failed"] or 0) for name in PATHS if name in s)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: 3 s per path, 20 latency requests, 1 round")
    ap.add_argument("--models", default="tiny", help="comma-separated: tiny, real (default tiny)")
    ap.add_argument("--seconds", type=float, help="throughput duration per path (default 20, quick 3)")
    ap.add_argument("--requests", type=int, help="sequential latency requests per path (default 200, quick 20)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 4, quick 1)")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads per path (at least 4)")
    ap.add_argument("--fraction", type=float, default=0.10, help="the candidate's share of requests")
    ap.add_argument("--photos", type=int, default=128)
    ap.add_argument("--paths", default=",".join(PATHS), help="subset of direct,inprocess,bls")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="before each model kind, wait up to this many seconds for other work on the machine to stop")
    ap.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT.relative_to(ROOT)} for a full run)")
    args = ap.parse_args(argv)
    if args.concurrency < 4:
        ap.error("--concurrency: at least 4")
    kinds = [k for k in args.models.split(",") if k]
    if set(kinds) - set(MODEL_KINDS) or not kinds:
        ap.error(f"--models: from {MODEL_KINDS}")
    args.paths = [p for p in args.paths.split(",") if p]
    if set(args.paths) - set(PATHS) or "direct" not in args.paths:
        ap.error(f"--paths: a subset of {PATHS} holding direct (the baseline)")
    exploring = args.quick or args.seconds or args.requests or args.rounds or args.concurrency != 4 \
        or args.fraction != 0.10 or set(args.paths) != set(PATHS)
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.requests = args.requests or (20 if args.quick else 200)
    args.rounds = args.rounds or (1 if args.quick else 4)
    out = args.out or (None if exploring else DEFAULT_OUT)

    photos = bench_photos(args.photos)
    figures: dict = {
        "benchmark": "routing", "quick": args.quick,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.routing" + ("" if kinds == ["tiny"] else f" --models {','.join(kinds)}"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "models": kinds, "paths": args.paths, "concurrency": args.concurrency,
        "seconds_per_path": args.seconds, "latency_requests_per_path": args.requests, "rounds": args.rounds,
        "fraction": args.fraction, "photos": len(photos), "photo_bytes_mean": sum(map(len, photos)) / len(photos),
        "notes": "One server per model kind, the three paths on it measured in interleaved rounds. "
                 "direct = laundry stable folder by number; inprocess = the route folder "
                 "(Deployer.start_canary); bls = bench-only Python router forwarding with "
                 "InferenceRequest(model_version=N).async_exec(). *_under_load: latency of the "
                 "--concurrency client threads; *_alone: one client, back to back.",
    }
    for kind in kinds:
        quiet = wait_for_quiet(args.wait_quiet) if args.wait_quiet else None
        log(f"{kind}: starting the server")
        figures[kind] = measure(kind, args, photos)
        figures[kind]["other_busy_cores_at_start"] = quiet
    figures["headline"] = {kind: {k: v for k, v in figures[kind]["summary"].items()} for kind in kinds}
    figures["failed"] = sum(figures[kind]["summary"]["failed"] for kind in kinds)
    emit(figures, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
