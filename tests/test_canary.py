"""Progressive delivery on a real Triton: canary and shadow behind the public name, the live signals
counted in the model, the watcher promoting a good candidate and rolling back an erroring, a slow and
a wrong-answers candidate automatically, reconcile after Triton is killed mid-canary.

Same fixtures as tests/test_deploy.py (own repository, SQLite registry with outbox, tritonserver on
free ports; tiny ONNX graphs with the laundry interface). The watcher scrapes Triton's metrics
endpoint directly (the embedded profile's path); the Prometheus path is tests/test_prometheus.py.
Clients of the stable version must see 0 failed requests throughout; the faulty candidate's own
failures name its version and are counted apart.
"""
from __future__ import annotations

import time

import pytest

from bench.canary import tiny_onnx
from fixtures import Clients, Crash, FAST, MODEL, PHOTOS, status, watch_until, watcher_for
from gymops.deploy.canary import route_folders
from gymops.deploy.folders import version_meta
from gymops.lifecycle.outbox import MODEL_ROLLED_BACK
from gymops.serving.client import LaundryClient
from gymops.serving.control import ROUTE_BASE, write_version
from gymops.serving.signals import DirectSource, figures_of
from gymops.serving.watcher import Watcher

pytestmark = pytest.mark.slow


@pytest.fixture
def env(canary_env):
    """conftest's canary_env: a deployment serving version 1."""
    return canary_env
# ------------------------------------------------------------------------------------------------

def test_canary_routes_by_fraction_and_a_good_candidate_is_promoted(env):
    v2 = env.candidate(2)
    report = env.deployer.start_canary("laundry", v2.version, canary_fraction=0.3)
    assert report.route >= ROUTE_BASE and env.control.served_versions(MODEL) == [report.route]
    assert status(env, v2.version) == "canary"
    assert env.deployer.consistency("laundry").ok, env.deployer.consistency("laundry").problems
    watcher = watcher_for(env)
    watcher.look()  # the baseline
    with Clients(env.server.grpc_url) as clients:
        waited = watch_until(watcher, lambda: status(env, v2.version) == "active")
    assert not clients.failures, clients.failures[:3]
    versions = [a[2] for a in clients.answers]
    during = versions[:max(i for i, v in enumerate(versions) if v == env.v1.version) + 1]  # before the flip
    share = during.count(v2.version) / len(during)
    assert 0.1 < share < 0.6 and set(versions) <= {env.v1.version, v2.version}, (share, set(versions))
    assert versions[-1] == v2.version  # served alone after the promotion
    assert status(env, env.v1.version) == "retired"
    assert env.control.served_versions(MODEL) == [v2.triton_version] and not route_folders(env.deployer)
    env.assert_clean()
    promoted = watcher.actions[-1]
    assert promoted.action == "promote" and {s["state"] for s in promoted.signals[:3]} == {"pass"}
    assert waited < 60


@pytest.mark.parametrize("fault", ["errors", "latency"])
def test_a_faulty_candidate_is_rolled_back_and_stable_clients_never_fail(env, tmp_path, fault):
    if fault == "errors":
        bad = env.registry.register_candidate("laundry", "tiny", {}, "DS-nan", "run-nan", str(env.models["nan"]))
    else:
        bad = env.registry.register_candidate("laundry", "tiny", {}, "DS-slow", "run-slow",
                                              str(tiny_onnx(tmp_path / "slow.onnx", 3, slow=True)))
    env.deployer.start_canary("laundry", bad.version, canary_fraction=0.3)
    watcher = watcher_for(env)
    watcher.look()
    with Clients(env.server.grpc_url) as clients:
        watch_until(watcher, lambda: status(env, bad.version) == "rolled_back")
        time.sleep(0.3)
    assert not clients.stable_failures(bad.version), clients.stable_failures(bad.version)[:3]
    if fault == "errors":
        assert clients.failures  # the candidate's own bad answers, counted apart
    assert clients.answers[-1][2] == env.v1.version and env.registry.active("laundry").version == env.v1.version
    env.assert_clean()
    assert not route_folders(env.deployer)
    event = env.events(MODEL_ROLLED_BACK)[-1]
    assert event["fromVersion"] == bad.version and event["toVersion"] == env.v1.version
    assert event["reason"].startswith(fault) and event["seconds"] > 0
    assert watcher.actions[-1].action == "abort" and watcher.actions[-1].reason.startswith(fault)


def test_wrong_answers_are_rolled_back_on_live_verdicts(env, tmp_path):
    """The candidate's labels inverted: the branch managers correct its answers; SPRT (3% vs 20%)
    rejects it within a few verdicts."""
    import onnx as onnx_lib

    graph = onnx_lib.load(str(env.models[1]))  # the stable's weights, another file (one version per artifact)
    graph.doc_string = "labels inverted"
    onnx = tmp_path / "inverted.onnx"
    onnx_lib.save(graph, str(onnx))
    wrong = env.registry.register_candidate("laundry", "tiny", {}, "DS-inv", "run-inv", str(onnx))
    write_version(env.repo, MODEL, wrong.triton_version, onnx,
                  {**version_meta(wrong), "labels": ["defective", "good"]})
    with LaundryClient(env.server.grpc_url) as client:
        truth = {j: v.label for j, v in enumerate(client.classify_batch(PHOTOS))}  # the stable is right
    env.deployer.start_canary("laundry", wrong.version, canary_fraction=0.3)
    clients = Clients(env.server.grpc_url)

    def verdicts(version, since):
        return [label != truth[j] for _, j, v, label in list(clients.answers) if v == version]

    watcher = watcher_for(env, verdicts=verdicts)
    watcher.look()
    with clients:
        watch_until(watcher, lambda: status(env, wrong.version) == "rolled_back")
    assert not clients.failures
    abort = watcher.actions[-1]
    assert abort.action == "abort"
    assert abort.reason.startswith(("accuracy", "mix")), abort.reason
    accuracy = next(s for s in abort.signals if s["name"] == "accuracy")
    if abort.reason.startswith("accuracy"):
        assert accuracy["figures"]["sprt"] == "reject" and accuracy["n"] <= 60
    env.assert_clean()


def test_shadow_records_agreement_and_returns_only_the_active_answer(env):
    v2 = env.candidate(2)
    env.deployer.start_canary("laundry", v2.version, canary_fraction=0.0, shadow_fraction=1.0)
    source = DirectSource(env.server.metrics_url)
    watcher = Watcher(env.deployer, FAST.replace(promote_requests=1), source)
    watcher.look()
    with Clients(env.server.grpc_url, n=2) as clients:
        time.sleep(3)
    look = watcher.look()
    assert {a[2] for a in clients.answers} == {env.v1.version} and not clients.failures
    assert look.shadow["photos"] > 0 and 0.0 <= look.shadow["agreement"] <= 1.0
    assert look.action is None  # a shadow is never promoted automatically
    assert status(env, v2.version) == "canary"


def test_no_traffic_is_no_data_never_a_verdict(env):
    v2 = env.candidate(2)
    env.deployer.start_canary("laundry", v2.version, canary_fraction=0.3)
    watcher = watcher_for(env)
    for _ in range(3):
        look = watcher.look()
    assert {s["state"] for s in look.signals} == {"no data"} and look.action is None
    assert status(env, v2.version) == "canary"


def test_triton_killed_mid_canary_then_reconcile(env):
    v2 = env.candidate(2)
    report = env.deployer.start_canary("laundry", v2.version, canary_fraction=0.3)
    env.restart()  # SIGKILL, fresh server with nothing loaded
    fixed = env.deployer.reconcile("laundry")
    assert fixed.consistency.ok, fixed.consistency.problems
    assert env.control.served_versions(MODEL) == [report.route]
    # the route folder lost while the server is down: reconcile rolls the canary back
    import shutil

    env.restart()
    shutil.rmtree(env.repo / MODEL / str(report.route))
    fixed = env.deployer.reconcile("laundry")
    assert fixed.consistency.ok and status(env, v2.version) == "rolled_back"
    env.assert_clean()


@pytest.mark.parametrize("move", ["abort", "promote"])
def test_watcher_killed_mid_flip_then_reconcile(env, monkeypatch, move):
    """The watcher dies inside its flip: abort after the registry recorded the rollback but before
    the stable version serves alone; promote after the candidate serves alone but before the
    registry recorded it. reconcile finishes from the registry's truth; clients never fail."""
    v2 = env.candidate(2)
    env.deployer.start_canary("laundry", v2.version, canary_fraction=0.3)
    real_swap = env.control.swap

    def dies(model, version, *args, **kwargs):
        if move == "promote":
            real_swap(model, version, *args, **kwargs)  # served, then the process is gone
        raise Crash(f"watcher killed during {move}")

    monkeypatch.setattr(env.control, "swap", dies)
    with Clients(env.server.grpc_url) as clients:
        with pytest.raises(Crash):
            if move == "abort":
                env.deployer.abort_canary("laundry", reason="errors failed", signal="errors")
            else:
                env.deployer.promote_canary("laundry", reason="signals pass")
        monkeypatch.setattr(env.control, "swap", real_swap)
        fixed = env.deployer.reconcile("laundry")
        time.sleep(0.5)
    assert fixed.consistency.ok, fixed.consistency.problems
    assert not clients.failures, clients.failures[:3]
    if move == "abort":  # the registry's rollback stands: the stable version serves alone
        assert status(env, v2.version) == "rolled_back" and env.registry.active("laundry").version == env.v1.version
        assert len(env.events(MODEL_ROLLED_BACK)) == 1
        env.assert_clean()
    else:  # the registry still says canary: its route serves again, for the next watcher to judge
        assert status(env, v2.version) == "canary"
        assert env.control.served_versions(MODEL) == route_folders(env.deployer)


def test_signals_count_errors_that_triton_counts_as_success(env):
    """server #7713: Triton's nv_inference_request_success counts the Python backend's error
    responses; the model's own counter labels them error, per model_version."""
    bad = env.registry.register_candidate("laundry", "tiny", {}, "DS-nan", "run-nan", str(env.models["nan"]))
    env.deployer.start_canary("laundry", bad.version, canary_fraction=1.0)
    with LaundryClient(env.server.grpc_url, retries=0) as client:
        for j in range(5):
            with pytest.raises(Exception):
                client.classify(PHOTOS[j])
    raw = DirectSource(env.server.metrics_url).sample()
    f = figures_of(raw, bad.version)
    assert f.errors == 5 and f.ok == 0
