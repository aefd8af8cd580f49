"""Serving pieces that need no running server: deploy token, version folders, configurations,
the server's command line, client-side validation."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest


from gymops.settings import DEPLOY_HEADER, PROJECT_ROOT, Settings, ensure_tokens
from gymops.serving import control
from gymops.serving.client import InvalidPhoto, LaundryClient
from gymops.serving.server import TritonServer, server_env

TEMPLATE = PROJECT_ROOT / "triton_models" / "laundry"


@pytest.fixture
def repo(tmp_path) -> Path:
    model_dir = tmp_path / "repo" / "laundry"
    model_dir.mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        (model_dir / name).write_bytes((TEMPLATE / name).read_bytes())
    return tmp_path / "repo"


def test_deploy_token_generated_once_0600_and_only_when_asked(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.serving.deploy_token == "" and not (tmp_path / "deploy.token").exists()  # reading creates nothing
    first = ensure_tokens(settings).serving.deploy_token
    path = tmp_path / "deploy.token"
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_tokens(settings).serving.deploy_token == first
    assert Settings.from_env({"GYMOPS_HOME": str(tmp_path)}).serving.deploy_token == first
    explicit = Settings.from_env({"GYMOPS_HOME": str(tmp_path), "GYMOPS_DEPLOY_TOKEN": "explicit-token"})
    assert ensure_tokens(explicit).serving.deploy_token == "explicit-token"


def test_serving_settings_from_environment(tmp_path):
    ss = Settings.from_env({"GYMOPS_HOME": str(tmp_path), "GYMOPS_TRITON_HTTP_PORT": "18100",
                            "GYMOPS_DEPLOY_TOKEN": "t0ken"}).serving
    assert (ss.http_port, ss.grpc_port, ss.host) == (18100, 8001, "127.0.0.1")
    assert ss.repository == PROJECT_ROOT / "triton_models"
    assert ss.deploy_token == "t0ken" and "t0ken" not in repr(ss)


def test_write_version_is_atomic_and_immutable(repo, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really onnx, the writer does not care")
    final = control.write_version(repo, "laundry", 1, onnx, {"version": "1.0.0", "accuracy": 0.93})
    assert final == repo / "laundry" / "1"
    assert sorted(p.name for p in final.iterdir()) == ["metadata.json", "model.onnx", "model.py", "preprocess.py"]
    meta = json.loads((final / "metadata.json").read_text())
    assert meta["version"] == "1.0.0" and meta["triton_version"] == 1 and meta["accuracy"] == 0.93
    assert meta["labels"] == ["good", "defective"] and len(meta["onnx_sha256"]) == 64
    assert (final / "model.py").read_bytes() == (TEMPLATE / "model.py").read_bytes()
    # the version's own copy of THE preprocessing: the folder holds everything the version runs
    assert (final / "preprocess.py").read_bytes() == (PROJECT_ROOT / "gymops" / "ml" / "preprocess.py").read_bytes()
    assert set(meta["code_files"]) == {"model.py", "preprocess.py"}
    with pytest.raises(control.VersionExists):
        control.write_version(repo, "laundry", 1, onnx, {"version": "1.0.1"})
    with pytest.raises(ValueError, match="semver"):
        control.write_version(repo, "laundry", 2, onnx, {"version": "v2"})
    with pytest.raises(FileNotFoundError):
        control.write_version(repo, "laundry", 2, tmp_path / "missing.onnx", {"version": "1.1.0"})
    # nothing half-written is left behind, and temporary folders never count as versions
    assert [p.name for p in (repo / "laundry").iterdir() if p.name.startswith(".")] == []
    (repo / "laundry" / ".tmp-7-deadbeef").mkdir()
    assert control.list_versions(repo, "laundry") == [1]
    assert control.next_version(repo, "laundry") == 2
    assert control.read_metadata(repo, "laundry", 1)["version"] == "1.0.0"


def test_write_version_failure_leaves_nothing(repo, tmp_path, monkeypatch):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")

    def broken_fsync(path):
        raise OSError("disk full")

    monkeypatch.setattr(control, "fsync_path", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        control.write_version(repo, "laundry", 1, onnx, {"version": "1.0.0"})
    assert sorted(p.name for p in (repo / "laundry").iterdir()) == ["config.pbtxt", "model.py"]


def test_template_and_pinned_config(repo):
    base = control.template_config(repo, "laundry")
    assert base["name"] == "laundry" and base["backend"] == "python" and base["max_batch_size"] == 8
    assert [i["name"] for i in base["input"]] == ["photo"] and base["input"][0]["data_type"] == "TYPE_STRING"
    assert [o["name"] for o in base["output"]] == ["label", "probabilities", "model_version"]
    assert base["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    pinned = control.pinned_config(base, "laundry", 7, {"intra_op_threads": 1})
    assert pinned["version_policy"] == {"specific": {"versions": [7]}}
    assert "project_root" not in pinned["parameters"]  # a version folder needs nothing from the checkout
    assert pinned["parameters"]["intra_op_threads"]["string_value"] == "1"
    assert "specific" not in json.dumps(base["version_policy"])  # the template itself is not modified


def test_server_command_restricts_model_control(tmp_path):
    server = TritonServer(tmp_path, home=tmp_path / "t", deploy_token="s3cret", deploy_header=DEPLOY_HEADER,
                          http_port=1, grpc_port=2, metrics_port=3)
    cmd = server.command()
    expected = f"model-repository,shared-memory,trace,logging:{DEPLOY_HEADER}=s3cret"
    assert f"--http-restricted-api={expected}" in cmd
    assert f"--grpc-restricted-protocol={expected}" in cmd
    for flag in ("--model-control-mode=explicit", "--strict-readiness=false", "--disable-auto-complete-config",
                 "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in cmd
    assert not any("s3cret" in a for a in server.redacted_command())
    with pytest.raises(ValueError):
        TritonServer(tmp_path, home=tmp_path, deploy_token="a,b", deploy_header=DEPLOY_HEADER)


def test_server_env_puts_venv_and_stub_site_first(tmp_path):
    import sys

    env = server_env({"PATH": "/usr/bin", "PYTHONPATH": "/elsewhere"}, stub_site=tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.prefix) / "bin")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), str(PROJECT_ROOT), "/elsewhere"]
    assert Path(env["LD_LIBRARY_PATH"].split(os.pathsep)[0], "libpython3.11.so").exists() or \
        any(Path(env["LD_LIBRARY_PATH"].split(os.pathsep)[0]).glob("libpython3*"))


def test_client_validates_before_sending():
    client = LaundryClient("127.0.0.1:1", "http", retries=0)
    with pytest.raises(InvalidPhoto):
        client.classify(b"")
    with pytest.raises(ValueError):
        LaundryClient("127.0.0.1:1", "websocket")
