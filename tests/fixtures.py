"""Plain helpers shared by the tests (pytest fixtures are in conftest.py): whether this is CI, the
real services' reachability, free ports, a valid event, and the in-process pipeline runs."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from gymops.db import _engine, metadata
from gymops.deploy.deployer import Deployer
from gymops.lifecycle.outbox import Outbox, outbox as outbox_table
from gymops.lifecycle.registry import ModelRegistry
from gymops.processes import free_port  # noqa: F401 (tests import it from here)
from gymops.serving.client import LaundryClient
from gymops.serving.control import ModelControl
from gymops.serving.server import TritonServer, _stub_shm_regions, pid_alive, process_tree
from gymops.serving.signals import DirectSource
from gymops.serving.watcher import Watcher
from gymops.settings import DEPLOY_HEADER, PROJECT_ROOT, DeliverySettings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVICES = {"PostgreSQL": ("127.0.0.1", 5432), "Redis": ("127.0.0.1", 6379), "RabbitMQ": ("127.0.0.1", 5672)}


def _down() -> list[str]:
    down = []
    for name, addr in SERVICES.items():
        try:
            with socket.create_connection(addr, timeout=1):
                pass
        except OSError as exc:
            down.append(f"{name} at {addr[0]}:{addr[1]} ({exc.strerror or exc})")
    return down


def require_services() -> None:
    down = _down()
    if not down:
        return
    message = "services not reachable: " + ", ".join(down)
    if IN_CI:
        pytest.fail(message + " (CI must run the service tests; .ci/run starts them)")
    pytest.skip(message + "; start them to run the services profile tests")


def drop_services(settings) -> None:
    """Deletes what a services profile of its own left: its queue, Redis keys and database."""
    import pika
    import psycopg

    from gymops.ingest.broker import parameters

    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(parameters(settings))
        channel = conn.channel()
        channel.queue_delete(settings.rabbitmq_queue)
        channel.exchange_delete(settings.rabbitmq_queue)
        conn.close()
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(count=1000):
            if settings.feast_project.encode() in key:
                client.delete(key)
    with contextlib.suppress(Exception):
        _engine(settings.database_url).dispose()
    with contextlib.suppress(Exception):
        with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)')


def services_settings(home: Path, **fields):
    """A services profile on a database, Feast project and queue named by a fresh tag (not applied)."""
    from gymops.settings import Settings

    tag = uuid.uuid4().hex[:8]
    return Settings(profile="services", home=home, pg_database=f"gymops_test_{tag}",
                    feast_project=f"gymops_test_{tag}", rabbitmq_queue=f"gymops.test.{tag}",
                    ingest_token="test-token-" + tag, batch_wait_ms=50,
                    s3_endpoint=f"http://127.0.0.1:{free_port()}", **fields)


@contextlib.contextmanager
def services_of_its_own(home: Path, **fields):
    """An applied services profile on a database, Feast project and queue of its own, with its own S3
    server as the photo store: for a module that reads whole tables (galleries, the registry) and
    stores photos, which the session's shared ``services`` fixture has neither room nor a store for."""
    from gymops.history import feature_store
    from gymops.storage import s3server
    from gymops.storage.photos import photo_store_for

    require_services()
    try:
        s3server.weed_binary()
    except s3server.S3ServerError as exc:
        skip_or_fail(str(exc))
    settings = services_settings(home, **fields)
    home.mkdir(parents=True, exist_ok=True)
    server = s3server.start(settings, home / "s3")
    try:
        photo_store_for(settings).ensure_bucket()
        feature_store.apply(settings)
        yield settings
    finally:
        s3server.stop(server)
        drop_services(settings)


def skip_or_fail(reason: str) -> None:
    """Outside CI a test whose prerequisite is missing skips with the reason; in CI it fails, since
    CI installs everything (.ci/run) and a silent skip would hide a broken bootstrap."""
    if IN_CI:
        pytest.fail(reason + " (CI must run this test)")
    pytest.skip(reason)


def needs(present: bool, reason: str):
    """A skipif marker that never skips in CI (there the test runs and fails loudly instead)."""
    return pytest.mark.skipif(not present and not IN_CI, reason=reason)


def task_event(photo_url, corrected=True, event_id=None, task_id=None, **over):
    event = {
        "eventType": "TaskConfirmedEvent", "eventId": event_id or f"ev-{uuid.uuid4()}",
        "taskId": task_id or f"TASK-{uuid.uuid4().hex[:10]}", "helperId": "HELPER-1", "branchId": "BR-1",
        "photoUrl": photo_url, "aiResult": "good", "aiModelVersion": "none",
        "finalResult": "defective" if corrected else "good", "corrected": corrected,
        "correctionReason": "얼룩" if corrected else None, "timestamp": "2026-11-21T10:00:00Z",
    }
    event.update(over)
    return event


# Tiny trainings on a busy 2-core machine: the pipeline's behaviour is under test here, not the
# design's thresholds (bench/pipeline.py measures those on the real workload).
LENIENT_GATES = {"val_accuracy": 0.6, "holdout_accuracy": 0.6, "class_accuracy": 0.4, "throughput_rps": 5.0,
                 "latency_ms": 1000.0, "perf_requests": 200}


# The pipeline helpers import the Dagster code location lazily: most tests never need it.
def tiny_run_config(epochs: int = 15, lr: float = 1e-3, max_retries: int = 3, **training) -> dict:
    from assets.jobs import training_run_config

    return training_run_config(copies=3, max_epochs=epochs, lr=lr, max_retries=max_retries, holdout_min_per_class=5,
                               patience=epochs, **training)


def run_training(settings, instance, first: str, last: str, run_config: dict, raise_on_error: bool = False):
    from assets.jobs import run_laundry_training

    return run_laundry_training(settings, instance, first, last, run_config, raise_on_error)


def materialised(result, asset: str) -> list:
    from assets.jobs import materialisations

    return materialisations(result, asset)


def check_results(result) -> dict[str, bool]:
    from assets import jobs

    return {name: evaluation.passed for name, evaluation in jobs.check_results(result).items()}


# -- a Triton deployment (tests/test_deploy.py, test_canary.py, test_prometheus.py, test_serving_triton.py)
def require_triton() -> None:
    """tritonserver from the nvidia-pytriton wheel and the numpy-1 stub site, or skip_or_fail."""
    from gymops.serving.server import TritonUnavailable, check_runnable
    from gymops.serving.stubenv import ensure_stub_site

    try:
        check_runnable()
        ensure_stub_site()
    except (TritonUnavailable, RuntimeError) as exc:
        skip_or_fail(f"tritonserver cannot run on this machine: {exc}")


MODEL = "laundry"
DEPLOY_TOKEN = "test-deploy-token-deploy-0123456789"


# ------------------------------------------------------------------------------------------------
# Models, photos

def tiny_onnx(path: Path, seed: int, nan: bool = False) -> Path:
    """Channel means -> linear -> softmax. nan=True adds sqrt(-sum|means|): 0 for the all-zero
    warm-up input of model.py, NaN for any real photo."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 3, (3, 2)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.5, (2,)).astype(np.float32), "b")
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["logits"])]
    if nan:
        nodes += [helper.make_node("Abs", ["m"], ["a"]),
                  helper.make_node("ReduceSum", ["a"], ["s"], keepdims=1),
                  helper.make_node("Neg", ["s"], ["ns"]),
                  helper.make_node("Sqrt", ["ns"], ["r"]),
                  helper.make_node("Add", ["logits", "r"], ["logits2"])]
    nodes.append(helper.make_node("Softmax", ["logits2" if nan else "logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, f"tiny{seed}", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 2])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def photo(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    tint = rng.integers(0, 256, 3)
    base = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], axis=-1) * 0.4 + tint * 0.6
    img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


GOLDEN = [photo(i, "JPEG" if i % 2 else "PNG") for i in range(6)]


# ------------------------------------------------------------------------------------------------
# A deployment: repository, registry, server

class DeployEnv:
    """A deployment for the deploy and canary tests: its own model repository, SQLite registry with
    outbox, and tritonserver on free loopback ports."""

    def __init__(self, root: Path, models: dict):
        self.root, self.models = root, models
        self.repo = root / "repo"
        (self.repo / MODEL).mkdir(parents=True)
        for name in ("config.pbtxt", "model.py"):
            shutil.copyfile(PROJECT_ROOT / "triton_models" / MODEL / name, self.repo / MODEL / name)
        self.archive = root / "archive"
        self.engine = _engine(f"sqlite:///{root / 'registry.db'}")
        metadata.create_all(self.engine)
        self.outbox = Outbox(self.engine)
        self.registry = ModelRegistry(self.engine, self.outbox)
        self.server = self.control = self.deployer = None
        self.start()

    def start(self) -> None:
        self.server = TritonServer(self.repo, home=self.root / "home", deploy_token=DEPLOY_TOKEN, deploy_header=DEPLOY_HEADER,
                                   http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()).start()
        self.control = ModelControl.for_server(self.server)
        self.deployer = Deployer(self.registry, self.control, self.repo, MODEL, archive_dir=self.archive)

    def kill(self) -> None:
        """SIGKILL the server (its stubs exit when their parent is gone); clean its shared memory."""
        pid = self.server.pid
        tree = process_tree(pid)
        regions = _stub_shm_regions(tree)
        os.kill(pid, signal.SIGKILL)
        self.server.proc.wait(10)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in tree[1:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in tree[1:]:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)
        for name in regions:
            Path("/dev/shm", name).unlink(missing_ok=True)

    def restart(self) -> None:
        if self.server.running():
            self.kill()
        self.control.close()
        self.start()

    def close(self) -> None:
        self.control.close()
        self.server.stop()
        self.engine.dispose()

    # -- helpers --------------------------------------------------------------------------------
    def candidate(self, seed, **kw):
        return self.registry.register_candidate("laundry", "tiny", {"val": {"accuracy": 0.95}}, f"DS-{seed}",
                                                f"run-{seed}", str(self.models[seed]), **kw)

    def served(self, photos=GOLDEN[:1]) -> str:
        with LaundryClient(self.server.grpc_url, retries=0) as client:
            return client.classify_batch(photos)[0].model_version

    def events(self, event_type: str) -> list[dict]:
        with self.engine.connect() as conn:
            return [r.payload for r in conn.execute(sa.select(outbox_table.c.payload)
                                                    .where(outbox_table.c.event_type == event_type)
                                                    .order_by(outbox_table.c.id))]

    def assert_clean(self) -> None:
        report = self.deployer.consistency("laundry")
        assert report.ok, report.problems
        active = self.registry.active("laundry")
        assert self.control.served_versions(MODEL) == [active.triton_version]
        assert self.served() == active.version
        assert not (self.repo / f"{MODEL}_staging").exists()


class Traffic:
    """A client thread (gRPC, no retries) sending golden photos back to back."""

    def __init__(self, url: str):
        self.url = url
        self.records: list[tuple[float, float, str]] = []  # (sent, answered, version or ERROR ...)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with LaundryClient(self.url, retries=0, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    outcome = client.classify(GOLDEN[i % len(GOLDEN)]).model_version
                except Exception as exc:  # noqa: BLE001 -- every failure is counted and fails the test
                    outcome = f"ERROR {exc}"
                self.records.append((sent, time.monotonic(), outcome))
                i += 1

    def __enter__(self) -> "Traffic":
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)
        self._stop.set()
        self._thread.join(30)

    @property
    def errors(self) -> list:
        return [r for r in self.records if r[2].startswith("ERROR")]


class Crash(BaseException):
    """The deploying process dies (not an Exception: no cleanup runs, like a SIGKILL)."""


# -- progressive delivery (tests/test_canary.py, test_prometheus.py, test_demo_canary.py)
PHOTOS = [photo(100 + i, "JPEG" if i % 2 else "PNG") for i in range(24)]
FAST = DeliverySettings(min_requests=10, promote_requests=40, promote_verdicts=0, promote_minutes=0.0,
                        watch_interval_s=0.25, canary_fraction=0.3)


def Clients(url: str, n: int = 4):
    """bench.canary's client threads over PHOTOS (answers by version, failures by the version named)."""
    from bench.canary import Clients as BenchClients

    return BenchClients(url, PHOTOS, n)


def watch_until(watcher: Watcher, done, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        watcher.look()
        if done():
            return time.monotonic() - started
        time.sleep(watcher.ds.watch_interval_s)
    raise AssertionError(f"watcher did not act in {timeout} s: {[l.line() for l in watcher.looks[-3:]]}")


def watcher_for(env, ds=FAST, verdicts=None) -> Watcher:
    return Watcher(env.deployer, ds, DirectSource(env.server.metrics_url), verdicts)


def status(env, version: str) -> str:
    return env.registry.get("laundry", version).status


# -- the face model served by Triton (tests/test_face_nightly.py, test_face_pipeline.py)
def require_face_weights(assets_dir: Path) -> None:
    """The pretrained face descriptor's weights (installed by scripts/bootstrap.sh), or skip_or_fail."""
    from gymops.face import assets

    if not (Path(assets_dir) / "face-api" / assets.WEIGHTS_FILE).is_file():
        skip_or_fail(f"face weights absent from {assets_dir}: {assets.BOOTSTRAP_HINT}")


def face_serving_settings(settings, root: Path, token: str = "test-deploy-token-face-0123456789"):
    """``settings`` serving a model repository of its own under ``root`` (the face model's
    config.pbtxt and model.py, no version yet) on free loopback ports, with a deploy token."""
    repo = Path(root) / "repo"
    (repo / "face").mkdir(parents=True, exist_ok=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / name, repo / "face" / name)
    return settings.replace(serving={"repository": repo, "deploy_token": token, "http_port": free_port(),
                                     "grpc_port": free_port(), "metrics_port": free_port()})
