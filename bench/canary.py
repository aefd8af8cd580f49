#!/usr/bin/env python
"""Canary benchmark: the watcher against faulty and good candidates on a real Triton, >= 4 clients.

tritonserver (temporary repository, free loopback ports), a SQLite registry with outbox, the stable
version deployed first. Every trial starts a canary (GYMOPS_DELIVERY defaults but the interval and
the fraction given here) while ``--clients`` gRPC threads (no retries) send simulator photos, and
runs the watcher (gymops.serving.watcher, Triton's metrics endpoint scraped directly) until it acts:

  errors   a candidate answering NaN for every real photo: detect_to_flip_s_errors = from the
           candidate's first request to the stable version serving alone again (the abort's flip)
  latency  a candidate ~25 ms slower per photo (a heavy convolution multiplied by 0; ~11 ms was
           within the default bound of 1.5x + 5 ms of a 3 ms stable and got promoted once):
           detect_to_flip_s_latency, same clock
  wrong    the stable's weights with the labels inverted; the branch managers' verdicts are
           simulated from each candidate answer (corrected when it differs from the stable's answer
           on the same photo: the stable is right by construction): labels_to_rollback_wrong = the
           verdicts the watcher had seen when it rolled back
  good     --good-trials candidates with the stable's weights (another file): each must be promoted;
           false_rollbacks counts the ones rolled back
failed_stable: failed requests not naming a candidate version, over all trials (target 0); the
faulty candidates' own failures are counted apart (candidate_failures).

Tiny ONNX graphs with the laundry interface (as in tests/test_deploy.py) keep the trials short; the
figures measure the watcher and the swap, not the model. Targets: detect-to-flip <= 30 s, verdicts
to roll back the wrong candidate <= 60, 0 false rollbacks over >= 10 good trials, 0 failed stable.

    python -m bench.canary                 # 10 good trials; writes bench/results/canary.json
    python -m bench.canary --good-trials 1 --out /tmp/c.json   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_OUT = RESULTS / "canary.json"
MODEL = "laundry"


def tiny_onnx(path: Path, seed: int, nan: bool = False, slow: bool = False, doc: str = "") -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    init = [numpy_helper.from_array(rng.normal(0, 3, (3, 2)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(0, 0.5, (2,)).astype(np.float32), "b")]
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["logits"])]
    out = "logits"
    if nan:  # sqrt(-sum|means|): 0 for the zero warm-up input, NaN for any real photo
        nodes += [helper.make_node("Abs", ["m"], ["a"]), helper.make_node("ReduceSum", ["a"], ["s"], keepdims=1),
                  helper.make_node("Neg", ["s"], ["ns"]), helper.make_node("Sqrt", ["ns"], ["r"]),
                  helper.make_node("Add", ["logits", "r"], ["logits2"])]
        out = "logits2"
    if slow:
        init += [numpy_helper.from_array(rng.normal(0, 0.1, (144, 3, 9, 9)).astype(np.float32), "k"),
                 numpy_helper.from_array(np.zeros((144, 2), np.float32), "zero")]
        nodes += [helper.make_node("Conv", ["image", "k"], ["c"], pads=[4, 4, 4, 4]),
                  helper.make_node("ReduceMean", ["c"], ["cm"], axes=[2, 3], keepdims=0),
                  helper.make_node("MatMul", ["cm", "zero"], ["c0"]),
                  helper.make_node("Add", ["logits", "c0"], ["logits3"])]
        out = "logits3"
    nodes.append(helper.make_node("Softmax", [out], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, f"tiny{seed}", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                    ["n", 3, 224, 224])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2])],
                              initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.doc_string = doc
    onnx.save(model, str(path))
    return path


def photos(n: int = 48, seed: int = 7) -> list[bytes]:
    from gymops.simulator.garments import encode_jpeg, linen_photo

    rng = np.random.default_rng(seed)
    return [encode_jpeg(linen_photo(rng, split="t10k").image) for _ in range(n)]


class Clients:
    """n gRPC client threads (no retries); answers (time, photo, version, label) and failures."""

    def __init__(self, url: str, pics: list[bytes], n: int):
        self.url, self.pics, self.n = url, pics, n
        self.answers: list[tuple[float, int, str, str]] = []
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(n)]

    def _run(self, k: int) -> None:
        from gymops.serving.client import LaundryClient

        with LaundryClient(self.url, retries=0, timeout=30) as client:
            i = k
            while not self._stop.is_set():
                j = i % len(self.pics)
                try:
                    v = client.classify(self.pics[j])
                    self.answers.append((time.monotonic(), j, v.model_version, v.label))
                except Exception as exc:  # noqa: BLE001 -- counted
                    self.failures.append((time.monotonic(), str(exc)))
                i += self.n

    def start(self) -> "Clients":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def stable_failures(self, candidate: str) -> list:
        """Failures not naming the candidate (its own failures name its version)."""
        return [f for f in self.failures if candidate not in f[1]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--good-trials", type=int, default=10)
    ap.add_argument("--fraction", type=float, default=0.10)
    ap.add_argument("--interval", type=float, default=1.0, help="watcher interval, seconds")
    ap.add_argument("--timeout", type=float, default=120.0, help="per trial")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true", help="print every look")
    ap.add_argument("--kinds", default="errors,latency,wrong,good", help="which trials (comma-separated)")
    args = ap.parse_args(argv)
    if args.clients < 4:
        ap.error("--clients: at least 4")
    out = args.out or DEFAULT_OUT

    from bench.models import deploy_stack
    from gymops.deploy.folders import version_meta
    from gymops.serving.client import LaundryClient
    from gymops.serving.control import write_version
    from gymops.serving.signals import DirectSource
    from gymops.serving.watcher import Watcher
    from gymops.settings import DeliverySettings

    ds = DeliverySettings(canary_fraction=args.fraction, watch_interval_s=args.interval,
                          promote_verdicts=0, promote_minutes=0.0, promote_requests=100)
    stack = deploy_stack("gymops-bench-canary-")
    st = stack.__enter__()
    tmp, repo, registry, server, deployer = st.tmp, st.repo, st.registry, st.server, st.deployer
    pics = photos()
    counter = {"k": 0}

    def register(**kw):
        counter["k"] += 1
        k = counter["k"]
        path = tiny_onnx(tmp / f"m{k}.onnx", seed=1, doc=f"bench/canary {k}", **kw)
        return registry.register_candidate("laundry", "tiny", {}, f"DS-{k}", f"run-{k}", str(path)), path

    stable, _ = register()
    deployer.deploy("laundry", stable.version, pics[:6])
    with LaundryClient(server.grpc_url) as c:
        truth = {j: v.label for j, v in enumerate(c.classify_batch(pics))}
    results: dict = {"clients": args.clients, "fraction": args.fraction, "interval_s": args.interval,
                     "trials": []}
    failed_stable = candidate_failures = 0

    def trial(kind: str) -> dict:
        nonlocal failed_stable, candidate_failures, stable
        mv, path = register(nan=kind == "errors", slow=kind == "latency")
        if kind == "wrong":
            write_version(repo, MODEL, mv.triton_version, path, {**version_meta(mv), "labels": ["defective", "good"]})
        clients = Clients(server.grpc_url, pics, args.clients).start()
        time.sleep(0.5)

        def verdicts(version, since):
            return [label != truth[j] for _, j, v, label in list(clients.answers) if v == version]

        errors_seen: list[str] = []
        done = threading.Event()

        def show(look) -> None:
            if look.error and look.error != (errors_seen[-1] if errors_seen else None):
                errors_seen.append(look.error)
            if args.verbose:
                print(f"{time.monotonic() - started:.1f} {look.line()}", flush=True)
                for s in look.signals:
                    print(f"      {s['name']}: {json.dumps(s.get('figures'), default=str)}", flush=True)
            if look.action:
                done.set()

        # the watcher runs beside the deploy, as `gymops serving watch` would
        watcher = Watcher(deployer, ds, DirectSource(server.metrics_url), verdicts, on_look=show)
        started = time.monotonic()
        thread = threading.Thread(target=watcher.run, kwargs={"stop": done.is_set, "max_seconds": args.timeout},
                                  daemon=True)
        thread.start()
        deployer.start_canary("laundry", mv.version, args.fraction)
        done.wait(args.timeout)
        thread.join(args.timeout)
        acted_at = time.monotonic()
        time.sleep(0.3)
        clients.stop()
        status = registry.get("laundry", mv.version).status
        first = next((t for t, _, v, _ in clients.answers if v == mv.version), None)
        first_fail = next((t for t, m in clients.failures if mv.version in m), None)
        first_seen = min(x for x in (first, first_fail) if x is not None) if (first or first_fail) else None
        last_cand = max([t for t, _, v, _ in clients.answers if v == mv.version] +
                        [t for t, m in clients.failures if mv.version in m] or [None], default=None) \
            if (first or first_fail) else None
        stable_fail = clients.stable_failures(mv.version)
        failed_stable += len(stable_fail)
        candidate_failures += len(clients.failures) - len(stable_fail)
        action = watcher.actions[-1] if watcher.actions else None
        entry = {"kind": kind, "version": mv.version, "status": status,
                 "action": action.action if action else None, "reason": action.reason if action else None,
                 "detect_to_flip_s": round(last_cand - first_seen, 3) if (first_seen and last_cand) else None,
                 "watch_s": round(acted_at - started, 3), "verdicts_seen": len(verdicts(mv.version, None)),
                 "stable_failures": len(stable_fail), "look_errors": errors_seen[:5]}
        if action is not None:
            acc = next((s for s in action.signals if s["name"] == "accuracy"), None)
            entry["accuracy_signal"] = acc
        if status == "active":
            stable = registry.get("laundry", mv.version)
        print(json.dumps({k: v for k, v in entry.items() if k != "accuracy_signal"}), flush=True)
        results["trials"].append(entry)
        return entry

    try:
        kinds = args.kinds.split(",")
        if "errors" in kinds:
            e = trial("errors")
            results["detect_to_flip_s_errors"] = e["detect_to_flip_s"] if e["status"] == "rolled_back" else None
        if "latency" in kinds:
            e = trial("latency")
            results["detect_to_flip_s_latency"] = e["detect_to_flip_s"] if e["status"] == "rolled_back" else None
        if "wrong" in kinds:
            e = trial("wrong")
            # the verdicts SPRT needed, in arrival order (the watcher may have read more by its look)
            acc = (e.get("accuracy_signal") or {}).get("figures", {})
            results["labels_to_rollback_wrong"] = acc.get("sprt_verdicts") \
                if e["status"] == "rolled_back" and acc.get("sprt") == "reject" else None
            results["labels_read_at_rollback_wrong"] = acc.get("verdicts")
            results["wrong_rolled_back_by"] = (e["reason"] or "").split(" ")[0] or None
        goods = [trial("good") for _ in range(args.good_trials if "good" in kinds else 0)]
        results["good_trials"] = len(goods)
        results["false_rollbacks"] = sum(g["status"] == "rolled_back" for g in goods)
        results["good_promoted"] = sum(g["status"] == "active" for g in goods)
        results["failed_stable"] = failed_stable
        results["candidate_failures"] = candidate_failures
    finally:
        stack.__exit__(None, None, None)
    summary = {k: v for k, v in results.items() if k != "trials"}
    print(json.dumps(summary, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
