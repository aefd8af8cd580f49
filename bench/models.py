"""Shared pieces of the serving benchmarks (bench/serving.py, bench/hotswap.py, bench/soak.py).

* Two REAL versions of the laundry model, built once and cached in var/bench-models/
  (GYMOPS_BENCH_MODELS overrides): simulator traffic (``tasks`` confirmed tasks, different seeds)
  -> photos -> frozen holdout -> dataset (split + augmentation) -> gymops.ml.train.train
  (EfficientNet-Lite0 trunk, trained defect head) -> gymops.ml.export.export_onnx. Each cached
  version folder holds model.onnx, model.pt (the LaundryNet state_dict, for the PyTorch-eager
  path) and meta.json (written last: its presence marks a complete version).
* The benchmark photos: real simulator JPEGs (gymops.simulator.garments, Fashion-MNIST test
  garments, 30 % with drawn defects), deterministic.
* A throwaway Triton server (temporary repository holding both versions, free loopback ports, a
  random deploy token), controlled over gRPC with gymops.serving.control.
* PhotoLoad: bench.load.Load (records, summary) over many photos and any backend, bounded
  in requests and time.

    python -m bench.models            # build (or show) the cached versions
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]

for _key, _value in (("ORT_DISABLE_TELEMETRY", "1"), ("NO_ALBUMENTATIONS_UPDATE", "1")):
    os.environ.setdefault(_key, _value)

from bench.load import Load, _summary  # the latency/throughput helpers

MODEL = "laundry"
RESULTS = ROOT / "bench" / "results"
TASKS = 100  # simulated confirmed tasks per version (a small but real training run, ~1 min each)
# Triton version number -> (semver, seed of the simulator traffic and of the training)
VERSIONS: dict[int, tuple[str, int]] = {1: ("1.0.0", 1), 2: ("1.1.0", 2)}
PHOTO_SEED = 20240
FORMAT = 1  # bump to rebuild every cached version


def cache_dir() -> Path:
    return Path(os.environ.get("GYMOPS_BENCH_MODELS", str(ROOT / "var" / "bench-models")))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The two model versions

@dataclass(frozen=True)
class ModelVersion:
    number: int  # Triton version folder
    semver: str  # what the server reports as model_version
    seed: int
    folder: Path
    meta: dict = field(repr=False, default_factory=dict)

    @property
    def onnx(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def torch_state(self) -> Path:
        return self.folder / "model.pt"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build_one(number: int, semver: str, seed: int, tasks: int, folder: Path) -> None:
    import torch

    from bench.stages import records_from_traffic
    from gymops.ml.dataset import build_dataset
    from gymops.ml.holdout import Holdout
    from gymops.ml.records import fetch_photos
    from gymops.ml.evaluate import evaluate_onnx
    from gymops.ml.export import export_onnx
    from gymops.ml.train import TrainConfig, train
    from gymops.storage.photos import LocalPhotoStore

    started = time.perf_counter()
    work = folder / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        store = LocalPhotoStore(work / "photos")
        fetched, dropped = fetch_photos(records_from_traffic(store, tasks, seed), store.get)
        holdout = Holdout.freeze_or_load(work / "holdout", MODEL, fetched, seed=seed)
        manifest = build_dataset(fetched, holdout, work / "dataset", seed=seed)
        cfg = TrainConfig(seed=seed)
        result = train(manifest, cfg, work / "ckpt")
        x_val = manifest.images("val")
        diff = export_onnx(result.model, folder / "model.onnx", manifest.size, samples=x_val)
        torch.save({"state_dict": result.model.state_dict(), "config": result.config}, folder / "model.pt")
        hx, hy = holdout.arrays(manifest.size)
        holdout_metrics = evaluate_onnx(folder / "model.onnx", hx, hy)
        meta = {
            "format": FORMAT, "number": number, "semver": semver, "seed": seed, "tasks": tasks,
            "dropped": len(dropped), "dataset_id": manifest.dataset_id, "counts": manifest.counts,
            "epochs": result.epochs, "best_epoch": result.best_epoch, "threshold": result.threshold,
            "val_accuracy": result.metrics.get("accuracy"), "holdout_accuracy": holdout_metrics.get("accuracy"),
            "holdout_auc": holdout_metrics.get("auc"), "onnx_max_abs_diff": diff,
            "onnx_sha256": _sha256(folder / "model.onnx"), "train_timings": result.timings,
            "build_s": round(time.perf_counter() - started, 1), "train_config": result.config,
        }
        tmp = folder / ".meta.json.part"
        tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        os.replace(tmp, folder / "meta.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_versions(tasks: int = TASKS, cache: Path | None = None) -> list[ModelVersion]:
    """The two trained versions, from the cache or built now (under a lock: concurrent benchmarks
    build once). Version 1 and 2 differ in their training data and seed."""
    cache = Path(cache) if cache else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for number, (semver, seed) in VERSIONS.items():
            folder = cache / f"v{number}-seed{seed}-tasks{tasks}"
            meta_path = folder / "meta.json"
            meta = None
            if meta_path.exists():
                try:
                    meta = json.loads(meta_path.read_text())
                    ok = (meta.get("format") == FORMAT and (folder / "model.onnx").is_file()
                          and (folder / "model.pt").is_file() and meta.get("onnx_sha256") == _sha256(folder / "model.onnx"))
                except (OSError, ValueError):
                    ok = False
                if not ok:
                    meta = None
                    meta_path.unlink(missing_ok=True)
            if meta is None:
                log(f"training laundry v{number} ({semver}, seed {seed}, {tasks} simulated tasks) into {folder}")
                folder.mkdir(parents=True, exist_ok=True)
                _build_one(number, semver, seed, tasks, folder)
                meta = json.loads(meta_path.read_text())
                log(f"v{number}: val accuracy {meta['val_accuracy']}, holdout accuracy {meta['holdout_accuracy']}, "
                    f"{meta['build_s']} s")
            out.append(ModelVersion(number, semver, seed, folder, meta))
    if out[0].meta["onnx_sha256"] == out[1].meta["onnx_sha256"]:
        raise RuntimeError("the two benchmark versions are identical")
    return out


def versions_summary(versions: Sequence[ModelVersion]) -> list[dict]:
    keys = ("semver", "seed", "tasks", "epochs", "val_accuracy", "holdout_accuracy", "holdout_auc", "onnx_sha256")
    return [{"version": v.number, **{k: v.meta.get(k) for k in keys}} for v in versions]


def load_torch(version: ModelVersion):
    """The version's LaundryNet (eval mode) for PyTorch eager inference."""
    import dataclasses

    import torch

    from gymops.ml.model import LaundryNet, TrainConfig, build_model

    saved = torch.load(version.torch_state, map_location="cpu", weights_only=False)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved["config"].items() if k in known})
    trunk, head = build_model(cfg)
    net = LaundryNet(trunk, head)
    net.load_state_dict(saved["state_dict"])
    return net.eval()


# --------------------------------------------------------------------------------------------------
# Photos

def bench_photos(n: int = 128, seed: int = PHOTO_SEED) -> list[bytes]:
    """n distinct simulator JPEGs (test-split garments, ~30 % defective), the same for every path."""
    import numpy as np

    from gymops.simulator.garments import encode_jpeg, linen_photo

    rng = np.random.default_rng(seed)
    return [encode_jpeg(linen_photo(rng, split="t10k").image) for _ in range(n)]


# --------------------------------------------------------------------------------------------------
# Load

class PhotoLoad(Load):
    """bench.load.Load over many photos and any backend: one thread per entry of
    ``callers`` (name, factory); factory() -> (call(photo) -> model version, close()). Each thread
    cycles through the photos from its own offset, optionally paced (``interval_s`` between request
    starts), and stops at the stop event, after ``max_requests`` or at ``max_seconds``. Every
    outcome is recorded (no retries): (sent, answered, name, model_version or 'ERROR ...')."""

    def __init__(self, callers: Sequence[tuple[str, Callable]], photos: Sequence[bytes],
                 max_requests: int = 1_000_000, max_seconds: float = 900.0, interval_s: float = 0.0):
        self._factories = dict(enumerate(f for _, f in callers))
        self.photos_list = list(photos)
        self.max_requests, self.max_seconds, self.interval_s = max_requests, max_seconds, interval_s
        self._index = itertools.count()
        self._names = [name for name, _ in callers]
        super().__init__({}, self.photos_list[0], tuple(self._names))

    def _run(self, name: str) -> None:  # noqa: D401 -- replaces Load._run
        k = next(self._index)
        call, close = self._factories[k]()
        n = len(self.photos_list)
        offset = (k * n) // max(1, len(self._names))
        deadline = time.monotonic() + self.max_seconds
        try:
            for i in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                sent = time.monotonic()
                try:
                    outcome = str(call(self.photos_list[(offset + i) % n]))
                except Exception as exc:  # noqa: BLE001 -- counted as a failed request
                    outcome = f"ERROR {type(exc).__name__}: {exc}"[:500]
                answered = time.monotonic()
                with self._lock:
                    self.records.append((sent, answered, name, outcome))
                if self.interval_s:
                    self._stop.wait(max(0.0, sent + self.interval_s - time.monotonic()))
        finally:
            close()

    def summary_of(self, records) -> dict:
        """Load.summary over a subset of the records."""
        saved, self.records = self.records, list(records)
        try:
            return self.summary()
        finally:
            self.records = saved


def latency_summary(latencies_s: Sequence[float]) -> dict:
    return _summary(list(latencies_s)) if latencies_s else {"n": 0}


def sequential(call: Callable[[bytes], object], photos: Sequence[bytes], n: int, warmup: int = 10) -> dict:
    """One caller, one photo per request, back to back (cycling through the photos)."""
    for i in range(warmup):
        call(photos[i % len(photos)])
    times = []
    for i in range(n):
        started = time.perf_counter()
        call(photos[i % len(photos)])
        times.append(time.perf_counter() - started)
    return latency_summary(times)


def triton_caller(url: str, protocol: str, timeout: float = 30.0) -> Callable:
    """A factory for PhotoLoad: a LaundryClient without retries."""
    from gymops.serving.client import LaundryClient

    def factory():
        client = LaundryClient(url, protocol, retries=0, timeout=timeout)
        return (lambda photo: client.classify(photo).model_version), client.close

    return factory


# --------------------------------------------------------------------------------------------------
# A throwaway Triton server with both versions

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TritonBench:
    server: object
    control: object
    repository: Path
    configs: dict[int, dict]
    versions: list[ModelVersion]

    @property
    def urls(self) -> dict[str, str]:
        return {"http": self.server.http_url, "grpc": self.server.grpc_url}


def base_config(repository: Path, instances: int | None = None, queue_delay_us: int | None = None,
                preferred: Sequence[int] | None = None, parameters: dict[str, str] | None = None,
                dynamic_batching: bool = True) -> dict:
    """The repository's config.pbtxt as a load override, with optional changes for exploring."""
    from gymops.serving.control import template_config

    config = template_config(repository, MODEL)
    if instances is not None:
        config["instance_group"] = [{"count": int(instances), "kind": "KIND_CPU"}]
    if queue_delay_us is not None or preferred is not None:
        batching = config.setdefault("dynamic_batching", {})
        if queue_delay_us is not None:
            batching["max_queue_delay_microseconds"] = str(int(queue_delay_us))
        if preferred is not None:
            batching["preferred_batch_size"] = [int(p) for p in preferred]
    if not dynamic_batching:
        config.pop("dynamic_batching", None)
    for key, value in (parameters or {}).items():
        config.setdefault("parameters", {})[key] = {"string_value": str(value)}
    return config


@contextlib.contextmanager
def triton(versions: Sequence[ModelVersion], load: int | None = 1, **config_changes) -> Iterator[TritonBench]:
    """Start tritonserver on a temporary repository holding the versions (config.pbtxt and model.py
    copied from triton_models/laundry), with version ``load`` served; stop it (by PID) afterwards."""
    from gymops.serving.control import ModelControl, pinned_config, write_version
    from gymops.serving.server import TritonServer
    from gymops.settings import DEPLOY_HEADER

    tmp = Path(tempfile.mkdtemp(prefix="gymops-bench-triton-"))
    server = control = None
    try:
        repo = tmp / "repo"
        (repo / MODEL).mkdir(parents=True)
        for name in ("config.pbtxt", "model.py"):
            shutil.copyfile(ROOT / "triton_models" / MODEL / name, repo / MODEL / name)
        for v in versions:
            write_version(repo, MODEL, v.number, v.onnx, {"version": v.semver, "seed": v.seed})
        base = base_config(repo, **config_changes)
        configs = {v.number: pinned_config(base, MODEL, v.number) for v in versions}
        server = TritonServer(repo, home=tmp / "triton", deploy_token=secrets.token_urlsafe(24),
                              deploy_header=DEPLOY_HEADER, http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port()).start()
        control = ModelControl.for_server(server)
        if load is not None:
            control.load_version(MODEL, load, configs[load])
        yield TritonBench(server, control, repo, configs, list(versions))
    finally:
        if control is not None:
            control.close()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class DeployStack:
    tmp: Path
    repo: Path
    engine: object
    registry: object
    server: object
    control: object
    deployer: object


@contextlib.contextmanager
def deploy_stack(prefix: str = "gymops-bench-deploy-") -> Iterator[DeployStack]:
    """The production deploy path on throwaway state: a temporary repository with the shipped
    config.pbtxt and model.py (no version yet), a SQLite registry with its outbox, tritonserver on
    free loopback ports and the Deployer over them -- so a benchmark measures the calls `gymops
    deploy` and `gymops models canary` make. Stopped (by PID) and removed afterwards."""
    from gymops.db import _engine, metadata
    from gymops.deploy.deployer import Deployer
    from gymops.lifecycle.outbox import Outbox
    from gymops.lifecycle.registry import ModelRegistry
    from gymops.serving.control import ModelControl
    from gymops.serving.server import TritonServer
    from gymops.settings import DEPLOY_HEADER

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = control = engine = None
    try:
        repo = tmp / "repo"
        (repo / MODEL).mkdir(parents=True)
        for name in ("config.pbtxt", "model.py"):
            shutil.copyfile(ROOT / "triton_models" / MODEL / name, repo / MODEL / name)
        engine = _engine(f"sqlite:///{tmp / 'registry.db'}")
        metadata.create_all(engine)
        registry = ModelRegistry(engine, Outbox(engine))
        server = TritonServer(repo, home=tmp / "triton", deploy_token=secrets.token_urlsafe(24),
                              deploy_header=DEPLOY_HEADER, http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port()).start()
        control = ModelControl.for_server(server)
        deployer = Deployer(registry, control, repo, MODEL, archive_dir=tmp / "archive")
        yield DeployStack(tmp, repo, engine, registry, server, control, deployer)
    finally:
        if control is not None:
            control.close()
        if server is not None:
            server.stop()
        if engine is not None:
            engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


def triton_metrics(url: str, model: str = MODEL) -> dict[str, float]:
    """The model's counters from Triton's Prometheus endpoint (summed over versions), e.g.
    nv_inference_count (photos), nv_inference_exec_count (batches run), nv_inference_request_success,
    nv_inference_queue_duration_us, nv_inference_compute_infer_duration_us."""
    import requests

    out: dict[str, float] = {}
    for line in requests.get(url, timeout=5).text.splitlines():
        if not line.startswith("nv_inference_") or f'model="{model}"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        key = name.split("{", 1)[0]
        try:
            out[key] = out.get(key, 0.0) + float(value)
        except ValueError:
            pass
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """Per-request view of two triton_metrics snapshots: average batch size, queue and compute time."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests_ = d.get("nv_inference_request_success", 0.0)
    execs = d.get("nv_inference_exec_count", 0.0)
    if not requests_:
        return {}
    return {"requests": requests_, "executions": execs,
            "avg_batch": d.get("nv_inference_count", 0.0) / execs if execs else None,
            "queue_ms_per_request": d.get("nv_inference_queue_duration_us", 0.0) / requests_ / 1e3,
            "compute_input_ms_per_request": d.get("nv_inference_compute_input_duration_us", 0.0) / requests_ / 1e3,
            "compute_infer_ms_per_request": d.get("nv_inference_compute_infer_duration_us", 0.0) / requests_ / 1e3,
            "compute_output_ms_per_request": d.get("nv_inference_compute_output_duration_us", 0.0) / requests_ / 1e3,
            "server_ms_per_request": d.get("nv_inference_request_duration_us", 0.0) / requests_ / 1e3}


# --------------------------------------------------------------------------------------------------
# Machine state and output

def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_jiffies() -> int:
    """CPU jiffies of this process and its descendants (the servers and stubs it started),
    waited-for children included."""
    from gymops.serving.server import process_tree

    total = 0
    for pid in process_tree(os.getpid()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2:].split()
        total += sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    return total


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """CPU seconds used so far by ``pid`` (all its threads) and, with tree=True, its descendants
    (waited-for children included)."""
    from gymops.serving.server import process_tree

    total = 0
    for p in (process_tree(pid) if tree else [pid]):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2:].split()
        total += sum(int(x) for x in f[11:13]) + (sum(int(x) for x in f[13:15]) if tree else 0)
    return total / os.sysconf("SC_CLK_TCK")


class MachineMeter:
    """How busy the machine was with OTHER work during a benchmark (2 shared cores: a concurrent
    job skews every figure, so the figures say so)."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start_wall = time.monotonic()
        self.start_busy, _ = _cpu_jiffies()
        self.start_own = _own_jiffies()
        self.start_load = os.getloadavg()[0]

    def report(self) -> dict:
        wall = time.monotonic() - self.start_wall
        busy, _ = _cpu_jiffies()
        own = _own_jiffies()
        busy_cores = (busy - self.start_busy) / self.tick / wall
        own_cores = (own - self.start_own) / self.tick / wall
        return {"cores": os.cpu_count(), "loadavg_1m_start": round(self.start_load, 2),
                "loadavg_1m_end": round(os.getloadavg()[0], 2), "busy_cores": round(busy_cores, 2),
                "busy_cores_this_benchmark": round(own_cores, 2),
                "busy_cores_other": round(max(0.0, busy_cores - own_cores), 2)}


def other_cpu_busy(seconds: float = 2.0) -> float:
    """Cores busy with other work right now (sampled over ``seconds``)."""
    meter = MachineMeter()
    time.sleep(seconds)
    return meter.report()["busy_cores_other"]


def wait_for_quiet(max_wait_s: float, threshold: float = 0.3) -> float:
    """Wait (at most max_wait_s) until other work uses < threshold cores; returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    reading = other_cpu_busy()
    while reading >= threshold and time.monotonic() < deadline:
        log(f"machine busy with other work ({reading:.2f} cores); waiting")
        time.sleep(5)
        reading = other_cpu_busy()
    return reading


def rounded(obj, digits: int = 2):
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return None
        return round(obj, digits) if abs(obj) >= 0.1 or obj == 0 else float(f"{obj:.3g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def emit(figures: dict, out: Path | None) -> None:
    """Print the figures as one JSON object; write them to ``out`` (atomically) when given."""
    text = json.dumps(rounded(figures), indent=2, default=str)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
        log(f"wrote {out}")
    print(text, flush=True)


def main() -> int:
    versions = build_versions()
    print(json.dumps(versions_summary(versions), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
