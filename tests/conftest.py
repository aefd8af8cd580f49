"""Shared pytest fixtures (plain helpers are in fixtures.py). Service tests use the real PostgreSQL, Redis and RabbitMQ: outside CI they skip
with the reason when one is down; in CI (CI=true) a missing service is a failure, not a skip."""
from __future__ import annotations

import dataclasses
import uuid

import pytest

from fixtures import (GOLDEN, DeployEnv, drop_services, free_port, require_services, require_triton, services_settings,
                      tiny_onnx)
from gymops.processes import start, stop, wait_http
from gymops.settings import Settings

@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """An applied embedded profile in a fresh GYMOPS_HOME."""
    from gymops.history import feature_store

    settings = Settings(profile="embedded", home=tmp_path_factory.mktemp("embedded"),
                             ingest_token="test-token-" + uuid.uuid4().hex, batch_wait_ms=50)
    feature_store.apply(settings)
    return settings


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """An applied services profile on its own database, Feast project and queue."""
    require_services()
    from gymops.history import feature_store

    settings = services_settings(tmp_path_factory.mktemp("services"))
    feature_store.apply(settings)
    yield settings
    drop_services(settings)


@pytest.fixture(params=["embedded", "services"])
def profile(request):
    """Runs a test on both profiles: the same behaviour on each."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def endpoint(embedded, tmp_path_factory):
    """The HTTP ingestion endpoint as a process of its own (`gymops ingest serve`) on the embedded
    profile, one per test module: (settings, base URL)."""
    settings = dataclasses.replace(embedded, ingest_port=free_port())
    log = tmp_path_factory.mktemp("http") / "serve.log"
    proc = start(settings, "ingest", "serve", log=log)
    base = f"http://127.0.0.1:{settings.ingest_port}"
    try:
        wait_http(base + "/healthz", proc, log)
        yield settings, base
    finally:
        # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully
        assert stop(proc) in (0, -15), log.read_text()[-2000:]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny ONNX graphs with the laundry interface, seeds 1-15, and one answering NaN for real photos."""
    root = tmp_path_factory.mktemp("models")
    out = {seed: tiny_onnx(root / f"m{seed}.onnx", seed) for seed in range(1, 16)}
    out["nan"] = tiny_onnx(root / "nan.onnx", 99, nan=True)
    return out


@pytest.fixture
def deploy_env(tmp_path, models):
    """A fresh deployment (DeployEnv) with nothing served yet."""
    require_triton()
    e = DeployEnv(tmp_path, models)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def canary_env(tmp_path, models):
    """A deployment (DeployEnv) serving version 1 of the tiny models, for canary tests."""
    require_triton()
    e = DeployEnv(tmp_path, models)
    try:
        v1 = e.candidate(1)
        e.deployer.deploy("laundry", v1.version, GOLDEN)
        e.v1 = v1
        yield e
    finally:
        e.close()


@pytest.fixture(scope="module")
def tiny_classifier_onnx(tmp_path_factory):
    """A tiny conv net exported from torch with the laundry model's input (for the gates' tests)."""
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.head = torch.nn.Linear(32, 2)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
            return torch.softmax(self.head(x), dim=1)

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.manual_seed(0)
    torch.onnx.export(Tiny().eval(), torch.randn(1, 3, 224, 224), str(path), dynamo=False,
                      input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}})
    return path
