"""gymops.deploy (the Deployer: steps, rollback, reconcile) against a real Triton server and a real
registry (SQLite, transactional outbox).

Every test gets its own model repository, registry database and tritonserver on free loopback
ports (the server starts in well under a second). The models are tiny ONNX graphs with the laundry
interface (input "image" (N,3,224,224) float32 -> "probabilities" (N,2) softmax), built with the
onnx helper; one of them answers NaN for any real photo (but passes the zero-input warm-up).
Skipped (with the reason) only when the binary cannot run here; under CI=true that is a failure.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures import GOLDEN, MODEL, Crash, Traffic
from gymops.deploy.deployer import STEPS, CandidateRejected, DeployFailed
from gymops.deploy.steps import Step, StepFailed, run_steps
from gymops.lifecycle.outbox import MODEL_DEPLOYED, MODEL_ROLLED_BACK, MODEL_VERIFICATION_FAILED
from gymops.serving.client import LaundryClient
from gymops.serving.control import write_version

pytestmark = pytest.mark.slow


@pytest.fixture
def env(deploy_env):
    """conftest's deploy_env: a fresh deployment, nothing served yet."""
    return deploy_env


# ------------------------------------------------------------------------------------------------

def test_deploy_v1_then_v2(env):
    v1, v2 = env.candidate(1), env.candidate(2)
    seen = []
    r1 = env.deployer.deploy("laundry", v1.version, GOLDEN, on_step=lambda s, t: seen.append((s, t)))
    assert r1.outcome == "deployed" and r1.previous_version is None and not r1.reused_folder
    assert [s for s, _ in seen] == list(STEPS) and all(t >= 0 for _, t in seen)
    assert r1.golden["staging"]["max_abs_diff"] <= 1e-4 and r1.golden["served"]["versions"] == [v1.version]
    env.assert_clean()

    with Traffic(env.server.grpc_url) as traffic:
        r2 = env.deployer.deploy("laundry", v2.version, GOLDEN)
    assert not traffic.errors, traffic.errors[:3]
    assert traffic.records[-1][2] == v2.version
    assert r2.outcome == "deployed" and r2.previous_version == v1.version
    assert env.registry.get("laundry", v1.version).status == "retired"
    assert env.registry.active("laundry").version == v2.version
    assert env.served() == v2.version and env.control.served_versions(MODEL) == [v2.triton_version]
    assert (env.repo / MODEL / str(v1.triton_version)).is_dir()  # kept for rollback
    deployed = env.events(MODEL_DEPLOYED)
    assert [(e["version"], e["previousVersion"]) for e in deployed] == [(v1.version, None), (v2.version, v1.version)]
    assert all(e["deploySeconds"] > 0 for e in deployed)
    assert deployed[1]["deploySeconds"] == r2.deploy_seconds
    env.assert_clean()
    # no staging model left in the server
    assert not [m for m in env.control.index() if m["name"] == f"{MODEL}_staging" and m.get("state") == "READY"]
    print(f"\ndeploy v1 {r1.seconds:.2f} s {r1.steps}\ndeploy v2 under traffic {r2.seconds:.2f} s "
          f"(flip load call {r2.flip_seconds:.2f} s) {r2.steps}; {len(traffic.records)} requests, 0 failed")


def test_failed_deploys_leave_v1_serving(env, tmp_path):
    v1 = env.candidate(1)
    env.deployer.deploy("laundry", v1.version, GOLDEN)
    with Traffic(env.server.grpc_url) as traffic:
        # 1. a model answering NaN for real photos: rejected by the offline check, nothing written
        bad = env.registry.register_candidate("laundry", "tiny", {}, "DS-nan", "run-nan", f"file://{env.models['nan']}")
        with pytest.raises(CandidateRejected) as info:
            env.deployer.deploy("laundry", bad.version, GOLDEN)
        assert info.value.step == "check" and info.value.reasons[0]["check"] == "offline_finite"
        assert env.registry.get("laundry", bad.version).status == "rejected"
        assert not (env.repo / MODEL / str(bad.triton_version)).exists()

        # 2. serving code that does not answer like the checked artifact (a version folder written
        #    with a model.py that swaps the classes): Triton's answers differ -> rejected at golden
        odd = env.candidate(3)
        code = (env.repo / MODEL / "model.py").read_text()
        assert "probabilities = self._run(np.stack(images))" in code
        tampered = tmp_path / "model.py"
        tampered.write_text(code.replace("probabilities = self._run(np.stack(images))",
                                         "probabilities = self._run(np.stack(images))[:, ::-1].copy()"))
        write_version(env.repo, MODEL, odd.triton_version, env.models[3], {"version": odd.version}, code=tampered)
        with pytest.raises(CandidateRejected) as info:
            env.deployer.deploy("laundry", odd.version, GOLDEN)
        report = info.value.report
        assert info.value.step == "golden" and report.reused_folder and report.outcome == "rejected"
        assert {r["check"] for r in info.value.reasons} >= {"golden_probabilities", "golden_labels"}
        mv = env.registry.get("laundry", odd.version)
        assert mv.status == "rejected" and "golden" in mv.status_reason
        assert "flip" not in report.steps

        # 3. a version folder already holding other weights: infrastructure failure, stays candidate
        clash = env.candidate(4)
        write_version(env.repo, MODEL, clash.triton_version, env.models[5], {"version": clash.version})
        with pytest.raises(DeployFailed, match="already exists") as info:
            env.deployer.deploy("laundry", clash.version, GOLDEN)
        assert info.value.step == "write" and not isinstance(info.value, CandidateRejected)
        assert env.registry.get("laundry", clash.version).status == "candidate"

        # 4. a missing artifact: infrastructure failure at check
        gone = env.registry.register_candidate("laundry", "tiny", {}, "DS-x", "run-x", str(tmp_path / "missing.onnx"))
        with pytest.raises(DeployFailed, match="does not exist") as info:
            env.deployer.deploy("laundry", gone.version, GOLDEN)
        assert info.value.step == "check" and env.registry.get("laundry", gone.version).status == "candidate"
    assert not traffic.errors, traffic.errors[:3]
    assert {r[2] for r in traffic.records} == {v1.version}
    failed = env.events(MODEL_VERIFICATION_FAILED)
    assert [e["version"] for e in failed] == [bad.version, odd.version]
    assert len(env.events(MODEL_DEPLOYED)) == 1
    assert env.registry.active("laundry").version == v1.version
    env.assert_clean()


def test_rollback_under_live_traffic(env):
    v1, v2 = env.candidate(1), env.candidate(2)
    env.deployer.deploy("laundry", v1.version, GOLDEN)
    env.deployer.deploy("laundry", v2.version, GOLDEN)
    with Traffic(env.server.grpc_url) as traffic:
        time.sleep(0.3)
        report = env.deployer.rollback("laundry", reason="defect rate doubled")
    assert not traffic.errors, traffic.errors[:3]
    assert (report.from_version, report.to_version) == (v2.version, v1.version)
    assert 0 < report.registry_seconds <= report.seconds <= report.confirmed_seconds <= report.total_seconds
    flipped_before = [r for r in traffic.records if r[2] == v2.version]
    assert flipped_before, "traffic before the rollback was served by v2"
    assert traffic.records[-1][2] == v1.version
    assert env.registry.active("laundry").version == v1.version
    assert env.registry.get("laundry", v2.version).status == "rolled_back"
    [event] = env.events(MODEL_ROLLED_BACK)
    assert (event["fromVersion"], event["toVersion"], event["reason"]) == (v2.version, v1.version, "defect rate doubled")
    assert event["seconds"] == pytest.approx(report.seconds, abs=1e-3)
    env.assert_clean()

    # crash (Triton SIGKILLed, the deployer gone) after the registry committed a rollback of v3:
    # reconcile goes towards the rollback target
    v3 = env.candidate(3)
    env.deployer.deploy("laundry", v3.version, GOLDEN)

    def crash_after_registry(step, seconds):
        if step == "registry":
            env.kill()
            raise Crash(step)

    with pytest.raises(Crash):
        env.deployer.rollback("laundry", reason="crash test", on_step=crash_after_registry)
    env.restart()
    rec = env.deployer.reconcile("laundry")
    assert rec.active_version == v1.version and rec.served_after == [v1.triton_version], rec
    assert env.registry.get("laundry", v3.version).status == "rolled_back"
    assert [e["toVersion"] for e in env.events(MODEL_ROLLED_BACK)] == [v1.version, v1.version]
    env.assert_clean()
    print(f"\nrollback: old version serving {report.seconds:.2f} s after the command (registry "
          f"{report.registry_seconds:.3f} s), answered {report.confirmed_seconds:.2f} s, "
          f"total {report.total_seconds:.2f} s; {len(traffic.records)} requests, 0 failed")


def test_keep_10_archiving_and_restore(env):
    """12 versions made active one after another in the registry (folders written), the server
    reconciled to the 12th, then a real deploy of a 13th: the 3 oldest are archived and their folders
    moved out; rollback and reconcile restore folders from the archive when they are missing."""
    versions = [env.candidate(seed) for seed in range(1, 13)]
    for mv in versions:
        write_version(env.repo, MODEL, mv.triton_version, env.models[int(mv.dataset_id[3:])], {"version": mv.version})
        env.registry.activate("laundry", mv.version)
    rec = env.deployer.reconcile("laundry")
    assert rec.served_before == [] and rec.served_after == [versions[-1].triton_version]
    v13 = env.candidate(13)
    report = env.deployer.deploy("laundry", v13.version, GOLDEN)
    assert report.archived == [v.version for v in versions[:3]]
    assert sorted(int(p.name) for p in (env.repo / MODEL).iterdir() if p.name.isdigit()) == list(range(4, 14))
    assert sorted(int(p.name) for p in (env.archive / MODEL).iterdir()) == [1, 2, 3]
    assert all(env.registry.get("laundry", v.version).status == "archived" for v in versions[:3])
    env.assert_clean()

    # rollback to v12 whose folder was (by hand) moved to the archive: restored, then served
    shutil.move(env.repo / MODEL / "12", env.archive / MODEL / "12")
    back = env.deployer.rollback("laundry", reason="test")
    assert back.to_version == versions[-1].version and back.restored_from_archive
    env.assert_clean()

    # the active version's folder gone while the server is down: reconcile restores it
    env.kill()
    shutil.move(env.repo / MODEL / "12", env.archive / MODEL / "12")
    env.restart()
    rec = env.deployer.reconcile("laundry")
    assert any("restored" in a for a in rec.actions) and rec.consistency.ok, rec
    env.assert_clean()


def test_recovery_after_sigkill_at_every_step(env):
    """For each deploy step: SIGKILL Triton when the step ends, the deployer dies too (or, for two
    steps, carries on against the dead server); restart Triton, reconcile: it serves the registry's
    active version and consistency() is clean."""
    v1 = env.candidate(1)
    env.deployer.deploy("laundry", v1.version, GOLDEN)
    cases = [(step, True) for step in STEPS] + [("golden", False), ("flip", False)]
    seed, candidate, timings = 2, None, []
    for step, deployer_dies in cases:
        if candidate is None or env.registry.get("laundry", candidate.version).status != "candidate":
            candidate, seed = env.candidate(seed), seed + 1
        before = env.registry.active("laundry")

        def on_step(name, seconds, step=step, deployer_dies=deployer_dies):
            if name == step:
                env.kill()
                if step == "write":  # as if write_version had been interrupted too
                    (env.repo / MODEL / ".tmp-99-deadbeef").mkdir()
                if deployer_dies:
                    raise Crash(step)

        if deployer_dies:
            with pytest.raises(Crash):
                env.deployer.deploy("laundry", candidate.version, GOLDEN, on_step=on_step)
        else:
            with pytest.raises(DeployFailed) as info:
                env.deployer.deploy("laundry", candidate.version, GOLDEN, on_step=on_step)
            assert not isinstance(info.value, CandidateRejected)
        env.restart()
        started = time.monotonic()
        rec = env.deployer.reconcile("laundry")
        timings.append(time.monotonic() - started)
        active = env.registry.active("laundry")
        expected = candidate.version if STEPS.index(step) >= STEPS.index("activate") else before.version
        assert active.version == expected, (step, deployer_dies)
        assert rec.consistency.ok, (step, rec)
        assert rec.served_after == [active.triton_version]
        env.assert_clean()
        if step == "write":
            assert any(".tmp-99-deadbeef" in a for a in rec.actions)
        if step in ("stage", "golden") and deployer_dies:
            assert any(f"{MODEL}_staging" in f for f in rec.found), rec.found
        if expected == before.version:
            assert env.registry.get("laundry", candidate.version).status == "candidate"
    # the candidate that survived the last crashes deploys normally, reusing its folder
    if env.registry.get("laundry", candidate.version).status == "candidate":
        report = env.deployer.deploy("laundry", candidate.version, GOLDEN)
        assert report.reused_folder
        env.assert_clean()
    print(f"\nreconcile after restart: {min(timings):.2f}-{max(timings):.2f} s over {len(timings)} crashes")


def test_rollback_runs_the_preprocessing_the_version_was_verified_with(env, tmp_path, monkeypatch):
    """A version folder holds its own preprocess.py. v1 is deployed and its answers recorded; then the
    checkout's preprocessing changes (other normalisation constants) and v2 is deployed with it (the
    golden check compares against the changed offline answers, so it passes); rolled back, v1 answers
    bit for bit as when it was verified, although today's preprocessing would change its answers."""
    import importlib.util

    import onnxruntime as ort

    from gymops.ml import preprocess as shared
    from gymops.serving import control

    def answers():
        with LaundryClient(env.server.grpc_url, retries=0) as client:
            verdicts = client.classify_batch(GOLDEN)
        return {v.model_version for v in verdicts}, np.array([v.probabilities for v in verdicts], dtype=np.float32)

    v1, v2 = env.candidate(1), env.candidate(2)
    env.deployer.deploy("laundry", v1.version, GOLDEN)
    versions, verified = answers()
    assert versions == {v1.version}
    folder1 = env.repo / MODEL / str(v1.triton_version)
    assert (folder1 / "preprocess.py").read_bytes() == Path(shared.__file__).read_bytes()

    source = Path(shared.__file__).read_text()
    old_mean = "MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)"
    assert old_mean in source
    changed = tmp_path / "preprocess.py"
    changed.write_text(source.replace(old_mean, "MEAN = np.array([0.2, 0.7, 0.1], dtype=np.float32)"))
    spec = importlib.util.spec_from_file_location("changed_preprocess", changed)
    today = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(today)
    monkeypatch.setattr(control, "PREPROCESS_SOURCE", changed)  # what write_version copies
    monkeypatch.setattr(shared, "preprocess", today.preprocess)  # what the golden check computes with

    report = env.deployer.deploy("laundry", v2.version, GOLDEN)
    assert report.golden["staging"]["max_abs_diff"] <= 1e-4
    assert (env.repo / MODEL / str(v2.triton_version) / "preprocess.py").read_text() == changed.read_text()
    assert answers()[0] == {v2.version}

    back = env.deployer.rollback("laundry", reason="preprocessing changed")
    assert back.to_version == v1.version
    versions, again = answers()
    assert versions == {v1.version}
    assert np.array_equal(again, verified), np.abs(again - verified).max()
    # the test has teeth: v1's weights on today's preprocessing answer differently
    session = ort.InferenceSession(str(env.models[1]), providers=["CPUExecutionProvider"])
    with_today = session.run(["probabilities"], {"image": np.stack([today.preprocess(p) for p in GOLDEN])})[0]
    assert np.abs(with_today - verified).max() > 1e-3
    env.assert_clean()


def test_run_steps_undoes_completed_steps_in_reverse():
    log = []

    def fail():
        raise RuntimeError("boom")

    def broken_undo():
        raise OSError("undo failed")

    steps = [Step("a", lambda: log.append("a"), undo=lambda: log.append("undo a")),
             Step("b", lambda: log.append("b")),
             Step("c", lambda: log.append("c"), undo=broken_undo),
             Step("d", fail, undo=lambda: log.append("undo d"), undo_if_failed=True),
             Step("e", lambda: log.append("e"), undo=lambda: log.append("undo e"))]
    timings, warnings, seen = {}, [], []
    with pytest.raises(StepFailed) as info:
        run_steps(steps, timings, lambda name, seconds: seen.append(name), warnings)
    assert info.value.step == "d" and isinstance(info.value.cause, RuntimeError)
    assert log == ["a", "b", "c", "undo d", "undo a"]
    assert seen == list(timings) == ["a", "b", "c"]
    assert warnings == ["undo of c: OSError: undo failed"]

    # a BaseException (the process dying) undoes nothing: reconcile recovers
    log.clear()
    with pytest.raises(Crash):
        run_steps([Step("a", lambda: log.append("a"), undo=lambda: log.append("undo a")),
                   Step("b", lambda: (_ for _ in ()).throw(Crash("b")))], {})
    assert log == ["a"]
