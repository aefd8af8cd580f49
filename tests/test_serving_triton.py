"""The real Triton server (the nvidia-pytriton wheel's binary) serving the laundry model.

Two tiny ONNX models with the real model's interface (input "image" (N,3,224,224) float32, output
"probabilities" (N,2) softmax) are exported here and deployed as versions 1 and 2; version 3 is a
corrupt ONNX file. Skipped (with the reason) only when the binary cannot run on this machine;
under CI=true that is a failure.
"""
from __future__ import annotations

import io
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from fixtures import free_port, require_triton
from gymops.settings import Settings
from gymops.settings import DEPLOY_HEADER, PROJECT_ROOT
from gymops.ml.preprocess import preprocess
from gymops.serving.client import ClassifyError, InvalidPhoto, LaundryClient
from gymops.serving.control import AccessRefused, LoadFailed, ModelControl, template_config, write_version
from gymops.serving.server import TritonServer, pid_alive, process_tree

# Stub processes per loaded version: the template's instance count.
INSTANCES = sum(int(g.get("count", 1)) for g in template_config(PROJECT_ROOT / "triton_models", "laundry")["instance_group"])

pytestmark = pytest.mark.slow
MODEL = "laundry"
VERSIONS = {1: "1.0.0", 2: "1.1.0", 3: "1.2.0"}  # 3 is the broken one
TOKEN = "test-deploy-token-0123456789"


# ------------------------------------------------------------------------------------------------
# Models and photos

def _export_tiny(path: Path, seed: int) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2), nn.Softmax(dim=1)).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(path), input_names=["image"],
                      output_names=["probabilities"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}})
    return path


def _photo(seed: int, fmt: str = "JPEG", size=(160, 120), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], axis=-1)
    img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A model repository with versions 1, 2 (tiny ONNX) and 3 (corrupt), and a running server."""
    require_triton()
    root = tmp_path_factory.mktemp("serving")
    repo = root / "repo"
    (repo / MODEL).mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        (repo / MODEL / name).write_bytes((PROJECT_ROOT / "triton_models" / MODEL / name).read_bytes())
    onnx = {v: _export_tiny(root / f"m{v}.onnx", seed=v) for v in (1, 2)}
    onnx[3] = root / "m3.onnx"
    onnx[3].write_bytes(onnx[1].read_bytes()[:200] + b"\x00garbage" * 50)
    for v, semver in VERSIONS.items():
        write_version(repo, MODEL, v, onnx[v], {"version": semver})
    settings = Settings(home=root / "home")
    ss = settings.serving.replace(repository=repo, deploy_token=TOKEN, http_port=free_port(),
                          grpc_port=free_port(), metrics_port=free_port())
    server = TritonServer.from_settings(ss).start()
    control = ModelControl.for_server(server)
    try:
        yield {"server": server, "control": control, "onnx": onnx, "repo": repo, "ss": ss}
    finally:
        control.close()
        server.stop()


@pytest.fixture
def serving_v1(deployment):
    """The deployment with exactly version 1 served."""
    control = deployment["control"]
    if control.served_versions(MODEL) != [1]:
        control.swap(MODEL, 1)
    return deployment


def _session(onnx_path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------

@pytest.fixture
def stop_afterwards():
    """Servers a test starts itself, stopped at teardown if the test failed before stopping them."""
    started = []
    yield started.append
    for server in started:
        if server.running():
            server.stop(timeout=5)


def test_start_stop_by_pid_leaves_nothing(deployment, tmp_path, stop_afterwards):
    """A server of its own: live in well under a second, each model instance's stub is a child
    process, SIGTERM stops the whole tree, and no shared-memory region is left behind."""
    ss = deployment["ss"]
    shm = lambda: set(Path("/dev/shm").glob("triton_python_backend_shm_region*"))  # noqa: E731
    before = shm()
    server = TritonServer.from_settings(ss, home=tmp_path / "t", http_port=free_port(), grpc_port=free_port(),
                                        metrics_port=free_port()).start()
    stop_afterwards(server)
    assert server.start_seconds < 10
    health = server.health()
    assert health["live"] and health["ready"] and health["processes"] == 1
    with ModelControl.for_server(server) as control:
        control.load_version(MODEL, 1)
        assert control.served_versions(MODEL) == [1]
    tree = process_tree(server.pid)
    assert len(tree) == 1 + INSTANCES and server.memory()["rss_bytes"] > 20 * 2**20
    mine = shm() - before
    assert mine  # the stubs' shared-memory regions
    started = time.monotonic()
    assert server.stop(timeout=30) == 0
    print(f"\nstop with a model loaded: {time.monotonic() - started:.2f} s")
    assert not any(pid_alive(p) for p in tree)
    assert not server.running() and not server.health()["live"]
    assert not (mine & shm()), "shared-memory regions left behind"


def test_stop_kills_the_tree_after_the_timeout(deployment, tmp_path, stop_afterwards):
    """No grace left (timeout 0): SIGKILL to the server and its stubs, their shared memory removed."""
    shm = lambda: set(Path("/dev/shm").glob("triton_python_backend_shm_region*"))  # noqa: E731
    before = shm()
    server = TritonServer.from_settings(deployment["ss"], home=tmp_path / "t", http_port=free_port(),
                                        grpc_port=free_port(), metrics_port=free_port()).start()
    stop_afterwards(server)
    with ModelControl.for_server(server) as control:
        control.load_version(MODEL, 1)
    tree, mine = process_tree(server.pid), shm() - before
    assert len(tree) == 1 + INSTANCES and mine
    assert server.stop(timeout=0) == -9
    assert not any(pid_alive(p) for p in tree)
    assert not (mine & shm())


def test_classify_over_http_and_grpc(serving_v1):
    server = serving_v1["server"]
    jpeg, png = _photo(1), _photo(2, "PNG", (300, 200))
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with LaundryClient(url, protocol) as client:
            label, probabilities, version = client.classify(jpeg)
            assert label in ("good", "defective") and version == "1.0.0"
            assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-5
            assert label == ("good", "defective")[int(np.argmax(probabilities))]
            batch = client.classify_batch([jpeg, png] * 5)  # 10 photos: two requests (max batch 8)
            assert len(batch) == 10 and batch[0] == client.classify(jpeg)
            assert client.ai_verdict(png) == (batch[1].label, "1.0.0")


def test_served_preprocessing_equals_shared_preprocess(serving_v1):
    """The server decodes and preprocesses with gymops.ml.preprocess: its probabilities equal
    onnxruntime run here on preprocess(bytes) for JPEG/PNG, odd sizes, grayscale and RGBA."""
    server, session = serving_v1["server"], _session(serving_v1["onnx"][1])
    photos = [_photo(3), _photo(4, "PNG"), _photo(5, "JPEG", (224, 224)), _photo(6, "PNG", (31, 517)),
              _photo(7, "JPEG", (640, 480), "L"), _photo(8, "PNG", (100, 90), "RGBA")]
    expected = session.run(["probabilities"], {"image": np.stack([preprocess(p) for p in photos])})[0]
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with LaundryClient(url, protocol) as client:
            served = np.array([v.probabilities for v in client.classify_batch(photos)], dtype=np.float32)
            single = np.array(client.classify(photos[3]).probabilities, dtype=np.float32)
        np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(single, expected[3], atol=1e-5, rtol=0)


def test_undecodable_photo_fails_only_its_request(serving_v1):
    server = serving_v1["server"]
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with LaundryClient(url, protocol, retries=0) as client:
            with pytest.raises(InvalidPhoto, match="undecodable"):
                client.classify(b"this is not a photo")
            with pytest.raises(InvalidPhoto):
                client.classify_batch([_photo(9), b"\xff\xd8\xff truncated jpeg"])
            assert client.classify(_photo(9)).model_version == "1.0.0"


def test_model_control_needs_the_deploy_token(serving_v1):
    server, ss = serving_v1["server"], serving_v1["ss"]
    base = f"http://{server.http_url}/v2/repository"
    config = '{"parameters": {"config": "{}"}}'
    for headers in ({}, {DEPLOY_HEADER: "wrong"}, {"Authorization": f"Bearer {TOKEN}"}):
        assert requests.post(f"{base}/index", headers=headers, timeout=10).status_code == 403
        assert requests.post(f"{base}/models/{MODEL}/unload", headers=headers, timeout=10).status_code == 403
        assert requests.post(f"{base}/models/{MODEL}/load", data=config, headers=headers, timeout=10).status_code == 403
    assert requests.post(f"{base}/index", headers={DEPLOY_HEADER: TOKEN}, timeout=10).status_code == 200
    for token in ("wrong", ""):
        with ModelControl(server.grpc_url, token) as intruder:
            with pytest.raises(AccessRefused):
                intruder.index()
            with pytest.raises(AccessRefused):
                intruder.load_version(MODEL, 2, serving_v1["control"].config_for(MODEL, 2))
            with pytest.raises(AccessRefused):
                intruder.unload(MODEL, wait=False)
    # nothing an intruder tried changed what is served; inference and health need no token
    with ModelControl.for_settings(ss) as control:
        assert control.served_versions(MODEL) == [1]
    assert LaundryClient(server.http_url, "http").classify(_photo(10)).model_version == "1.0.0"
    assert requests.get(f"http://{server.http_url}/v2/health/ready", timeout=5).status_code == 200


def test_hot_swap_under_load(serving_v1):
    """In the spirit of Triton's qa/L0_lifecycle: 4 client threads (2 HTTP, 2 gRPC, no retries)
    send requests back to back while the version is swapped 1 -> 2 -> 1 -> 2 -> 1 -> 2. No request
    fails, and every request sent after a swap's load call returned is served by the new version."""
    server, control = serving_v1["server"], serving_v1["control"]
    photo = _photo(11)
    stop = threading.Event()
    records: list[tuple[float, float, str, str]] = []  # (sent, answered, protocol, version or error)
    lock = threading.Lock()

    def worker(protocol: str) -> None:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        with LaundryClient(url, protocol, retries=0, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    outcome = client.classify(photo).model_version
                except Exception as exc:  # noqa: BLE001 -- every failure is recorded and fails the test
                    outcome = f"ERROR {exc}"
                with lock:
                    records.append((sent, time.monotonic(), protocol, outcome))

    threads = [threading.Thread(target=worker, args=(p,), daemon=True) for p in ("http", "grpc") * 2]
    for t in threads:
        t.start()
    swaps = []
    try:
        time.sleep(0.5)
        for version in (2, 1, 2, 1, 2):
            result = control.swap(MODEL, version)
            swaps.append(result)
            time.sleep(0.4)  # let every thread get answers from the new version
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    errors = [r for r in records if r[3].startswith("ERROR")]
    assert not errors, errors[:5]
    for i, swap in enumerate(swaps):
        until = swaps[i + 1].flipped_at - swaps[i + 1].load_seconds if i + 1 < len(swaps) else float("inf")
        after = [r for r in records if swap.flipped_at <= r[0] < until]
        assert after, f"no request after swap {i}"
        wrong = [r for r in after if r[3] != VERSIONS[swap.version]]
        assert not wrong, (swap, wrong[:5])
    latencies = sorted(r[1] - r[0] for r in records)
    span = records[-1][1] - records[0][0]
    print(f"\nhot swap: {len(records)} requests in {span:.1f} s ({len(records) / span:.0f}/s), 0 failed; "
          f"latency p50 {statistics.median(latencies) * 1e3:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.1f} ms, max {latencies[-1] * 1e3:.0f} ms; "
          f"load calls {[round(s.load_seconds, 2) for s in swaps]} s, "
          f"swaps incl. old unloaded {[round(s.total_seconds, 2) for s in swaps]} s")
    assert control.served_versions(MODEL) == [2]


def test_broken_version_fails_to_load_and_previous_keeps_serving(serving_v1):
    server, control = serving_v1["server"], serving_v1["control"]
    with pytest.raises(LoadFailed, match="version 3"):
        control.swap(MODEL, 3)
    with pytest.raises(LoadFailed):
        control.load_version(MODEL, 42)  # no such version folder
    assert control.served_versions(MODEL) == [1]
    assert control.ready(MODEL, 1) and not control.ready(MODEL, 3)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        assert LaundryClient(url, protocol).classify(_photo(12)).model_version == "1.0.0"
    # and the model can still be swapped afterwards
    assert control.swap(MODEL, 2).version == 2
    assert LaundryClient(server.grpc_url).classify(_photo(12)).model_version == "1.1.0"


def test_unload_leaves_nothing_serving(serving_v1):
    server, control = serving_v1["server"], serving_v1["control"]
    assert server.memory()["processes"] == 1 + INSTANCES
    control.unload(MODEL)  # waits until the unload has really ended
    assert control.served_versions(MODEL) == [] and not control.ready(MODEL)
    assert server.memory()["processes"] == 1  # the stub processes are gone
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        with pytest.raises(ClassifyError):
            LaundryClient(url, protocol, retries=0).classify(_photo(13))
    assert server.health()["live"]


def test_cli_start_status_stop(deployment, tmp_path):
    env_settings = {"GYMOPS_HOME": str(tmp_path / "home"), "GYMOPS_DEPLOY_TOKEN": TOKEN,
                    "GYMOPS_TRITON_REPOSITORY": str(deployment["repo"]),
                    "GYMOPS_TRITON_HTTP_PORT": str(free_port()), "GYMOPS_TRITON_GRPC_PORT": str(free_port()),
                    "GYMOPS_TRITON_METRICS_PORT": str(free_port()), "PYTHONPATH": str(PROJECT_ROOT)}
    import os

    env = {**os.environ, **env_settings}

    def cli(*args, check=True):
        out = subprocess.run([sys.executable, "-m", "gymops", "serving", *args], env=env, capture_output=True,
                             text=True, timeout=120)
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out

    assert cli("status", check=False).returncode == 3
    cli("start")
    pid = int((tmp_path / "home" / "run" / "triton.pid").read_text())
    try:
        assert pid_alive(pid)
        assert "already_running" in cli("start").stdout
        cli("swap", MODEL, "2")
        status = cli("status").stdout
        assert '"live": true' in status and '"state": "READY"' in status
    finally:
        cli("stop")
    assert not pid_alive(pid)
    assert not (tmp_path / "home" / "run" / "triton.pid").exists()
