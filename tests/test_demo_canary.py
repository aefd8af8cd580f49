"""`make demo`'s canary act (gymops.demo.canary) on a real Triton: the served model's faulty copy
goes to canary under live traffic and the watcher rolls it back on its own, with the profile's
settings (the demo's path), the stable version's clients seeing 0 failures. Same fixtures as
tests/test_canary.py; tiny ONNX graphs with the laundry interface."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures import PHOTOS
from gymops.demo.canary import faulty_copy, run
from gymops.serving.live import board_path, read_board
from gymops.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def env(canary_env):
    """conftest's canary_env: a deployment serving version 1."""
    return canary_env


def test_faulty_copy_is_finite_on_zeros_and_nan_on_a_photo(env, tmp_path):
    import onnxruntime as ort

    from gymops.deploy.folders import artifact_path
    from gymops.ml.preprocess import preprocess

    path = faulty_copy(artifact_path(env.v1.artifact_uri), tmp_path / "faulty.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    zeros = session.run(None, {"image": np.zeros((1, 3, 224, 224), np.float32)})[0]
    assert np.all(np.isfinite(zeros))
    assert np.all(np.isnan(session.run(None, {"image": preprocess(PHOTOS[0])[None]})[0]))


def test_the_demo_rolls_the_faulty_candidate_back_and_says_when(env, tmp_path):
    s = env.server
    settings = Settings(home=tmp_path / "home").replace(
        serving={"http_port": s.http_port, "grpc_port": s.grpc_port, "metrics_port": s.metrics_port},
        delivery={"watch_interval_s": 0.5, "canary_fraction": 0.3})
    lines: list[str] = []
    result = run(settings, env.deployer, env.registry.active("laundry"), PHOTOS, timeout_s=90, say=lines.append)
    text = "\n".join(lines)
    print(text)
    assert result["status"] == "rolled_back" and result["action"] == "abort", text
    assert result["reason"].startswith("errors failed on n="), text
    assert result["stable_failed"] == 0 and result["candidate_failed"] > 0, text
    assert result["active"] == env.v1.version and result["detect_to_flip_s"] < 30, text
    assert "the watcher acted: abort" in text and "ModelRolledBackEvent recorded" in text
    board = read_board(board_path(settings))
    assert board["versions"][result["candidate"]]["role"] == "rolled_back"
