"""The nightly face batch as Dagster runs it (job face_nightly): real Feast history of simulated
enrolments and entries, the photo store, a tiny fine-tune, the blocking face gate, the registry and
outbox, galleries, and a real Triton serving the public name "face", on both profiles (services: the
history in PostgreSQL's offline store and Redis, photos in an S3 server, registry and galleries in
PostgreSQL).

SYNTHETIC faces (gymops/simulator/faces.py) and a TINY configuration: 44 users, ~260 entries over two
gym nights, 3 epochs, a holdout of 30% of the identities judged at FAR 1e-2 with a 0.5 margin
(settings.face), since a dozen held-out identities cannot resolve the design's 1e-3. Weights or
Triton missing: skipped outside CI, a failure in CI."""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from fixtures import face_serving_settings, require_face_weights, require_triton, services_of_its_own
from gymops.settings import Settings

pytestmark = pytest.mark.slow
ASSETS = Settings().face.assets_dir
FACE_ASSETS = ("face_samples_daily", "face_dataset", "face_checkpoint", "face_candidate", "face_deployed")


def ingest_face_nights(settings, first_night, seed: int = 11) -> None:
    """44 users enrol on the first night's morning; ~260 entries follow until the next night's evening."""
    from gymops.ingest.replicator import Replicator
    from gymops.simulator.traffic import TrafficConfig, generate
    from gymops.storage.photos import photo_store_for

    start = datetime.combine(first_night, time(6, 0), tzinfo=ZoneInfo("Asia/Seoul"))
    cfg = TrafficConfig(seed=seed, tasks=0, members=40, entries=260, branches=2, start=start, span=timedelta(hours=36))
    events = [json.dumps(e) for e in generate(photo_store_for(settings), cfg)]
    report = Replicator(settings).ingest(events, "test")
    assert report.dead_lettered == 0, report.outcomes[:3]


@pytest.fixture(scope="module", params=["embedded", "services"])
def face_env(request, tmp_path_factory):
    require_face_weights(ASSETS)
    require_triton()
    root = tmp_path_factory.mktemp(f"face-pipeline-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "services":
            base = stack.enter_context(services_of_its_own(root / "home"))
        else:
            base = Settings(profile="embedded", home=root / "home", ingest_token="t")
        yield from _face_env(base, root, tmp_path_factory)


def _face_env(base, root, tmp_path_factory):
    from gymops.history import feature_store
    from gymops.serving.control import ModelControl
    from gymops.serving.server import TritonServer

    settings = face_serving_settings(base, root).replace(face={"gate_far": 1e-2, "gate_margin": 0.5})
    settings.home.mkdir(parents=True, exist_ok=True)
    # the step rebuilds its settings without secrets (Settings.from_dict): the token comes from the file
    (settings.home / "deploy.token").write_text(settings.serving.deploy_token + "\n")
    feature_store.apply(settings)
    today = datetime.now(ZoneInfo("Asia/Seoul")).date()
    nights = (today - timedelta(days=3), today - timedelta(days=2))
    ingest_face_nights(settings, nights[0])
    server = TritonServer.from_settings(settings.serving).start()
    control = ModelControl.for_server(server)
    try:
        with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster"))) as instance:
            yield settings, instance, [n.isoformat() for n in nights], control
    finally:
        control.close()
        server.stop()


def tiny_config(max_epochs: int = 3):
    from assets.jobs import face_run_config

    return face_run_config({"holdout_fraction": 0.3}, {"max_epochs": max_epochs, "batch_size": 16, "patience": 3})


def release_state(settings):
    from gymops.db import engine_for
    from gymops.face.gallery import GalleryStore
    from gymops.face.swap import galleries
    from gymops.lifecycle.registry import ModelRegistry
    import sqlalchemy as sa

    engine = engine_for(settings)
    registry = ModelRegistry(engine)
    with engine.connect() as conn:
        pairs = {r.model_version: r.state for r in conn.execute(sa.select(galleries))}
    return {v.version: v.status for v in registry.history("face")}, pairs, GalleryStore(engine)


def meta_of(result, asset):
    from assets.jobs import metadata

    return metadata(result, asset)


def test_a_failed_gate_blocks_the_deploy_and_rejects_the_candidate(face_env):
    """The first night under a latency limit no model meets: the pretrained model becomes 1.0.0 (the
    first version), the fine-tuned 1.1.0 fails the blocking gate, is rejected with its event, and
    face_deployed never runs: 1.0.0 keeps serving."""
    from assets.jobs import check_results, materialisations, run_face_nightly
    from gymops.db import engine_for
    from gymops.lifecycle.outbox import Outbox

    settings, instance, nights, control = face_env
    strict = settings.replace(face={"gate_latency_ms": 1e-6})
    result = run_face_nightly(strict, instance, nights[1], run_config=tiny_config())
    assert not result.success
    gate = check_results(result)["face_gate"]
    assert not gate.passed and "performance: 1.1.0" in gate.metadata["reasons"].value
    assert not materialisations(result, "face_deployed")
    versions, pairs, _ = release_state(settings)
    assert versions == {"1.0.0": "active", "1.1.0": "rejected"} and pairs == {"1.0.0": "active"}
    assert control.served_versions("face") == [1]
    failed = [r.payload for r in Outbox(engine_for(settings)).pending()
              if r.event_type == "ModelVerificationFailedEvent"]
    assert failed[-1]["version"] == "1.1.0" and failed[-1]["reasons"][0]["check"] == "performance"


def test_one_night_runs_every_stage_gates_and_swaps(face_env):
    """The same night with the settings' limits: the finished training is reused, the same artifact is
    registered again (its version, rejected -> candidate), passes and is swapped in."""
    from assets.jobs import check_results, materialisations, run_face_nightly, step_seconds

    settings, instance, nights, control = face_env
    result = run_face_nightly(settings, instance, nights[1], run_config=tiny_config())
    print(f"SYNTHETIC faces, tiny face_nightly of one night: seconds per step {step_seconds(instance, result.run_id)}")
    assert result.success
    for asset in FACE_ASSETS:
        assert materialisations(result, asset), asset
    checks = check_results(result)
    assert set(checks) == {"face_gate"} and checks["face_gate"].passed
    gate = {k: v.value for k, v in checks["face_gate"].metadata.items()}
    assert gate["against"] == "1.0.0" and gate["far"] == 0.01 and gate["impostor_pairs"] >= 300
    assert 0 <= gate["tar_candidate"] <= 1 and gate["threshold_candidate"] != gate["threshold_active"]
    assert "only the candidate" in gate["discordant"] and "data:image/png;base64," in gate["gate_plot"]
    [samples] = materialisations(result, "face_samples_daily")
    assert samples.event_specific_data.materialization.partition == nights[1]
    dataset = meta_of(result, "face_dataset")
    assert dataset["nights"] == f"{nights[1]} .. {nights[1]} (1)" and dataset["holdout_version"] == 1
    checkpoint = meta_of(result, "face_checkpoint")
    assert checkpoint["epochs"] == 3 and checkpoint["reused"] is True and checkpoint["feature_cache_misses"] == 0
    candidate = meta_of(result, "face_candidate")
    assert candidate["version"] == "1.1.0" and candidate["status"] == "candidate"
    assert candidate["first_version_now"] is False and candidate["active_version"] == "1.0.0"
    deployed = meta_of(result, "face_deployed")
    assert deployed["version"] == "1.1.0" and deployed["previous_version"] == "1.0.0"
    versions, pairs, _ = release_state(settings)
    assert versions == {"1.0.0": "retired", "1.1.0": "active"}
    assert pairs == {"1.0.0": "previous", "1.1.0": "active"}
    assert control.served_versions("face") == [2]


def test_a_backfill_of_past_nights_is_one_training_over_the_window(face_env):
    from assets.jobs import check_results, materialisations, run_face_nightly, step_seconds

    settings, instance, nights, control = face_env
    result = run_face_nightly(settings, instance, nights[0], nights[1], run_config=tiny_config())
    print(f"SYNTHETIC faces, tiny face_nightly backfill of two nights: seconds per step "
          f"{step_seconds(instance, result.run_id)}")
    assert result.success
    per_night = {e.event_specific_data.materialization.partition: e.event_specific_data.materialization.metadata
                 for e in materialisations(result, "face_samples_daily")}
    assert set(per_night) == set(nights)
    assert per_night[nights[0]]["enrolments"].value == 44 and per_night[nights[1]]["enrolments"].value == 0
    assert len(materialisations(result, "face_checkpoint")) == 1  # one training for the range
    dataset = meta_of(result, "face_dataset")
    assert dataset["nights"] == f"{nights[0]} .. {nights[1]} (2)" and dataset["holdout_version"] == 2
    assert check_results(result)["face_gate"].passed
    assert {k: v.value for k, v in check_results(result)["face_gate"].metadata.items()}["against"] == "1.1.0"
    versions, pairs, _ = release_state(settings)
    assert versions == {"1.0.0": "retired", "1.1.0": "retired", "1.2.0": "active"}
    assert pairs == {"1.0.0": "archived", "1.1.0": "previous", "1.2.0": "active"}
    assert control.served_versions("face") == [3]


def test_the_rollback_job_restores_the_previous_pair(face_env):
    from assets.jobs import reconstructable_job

    settings, instance, _, control = face_env
    result = dg.execute_job(reconstructable_job("face_rollback", settings), instance=instance,
                            run_config={"ops": {"rollback_face": {"config": {"reason": "test"}}}})
    assert result.success
    versions, pairs, _ = release_state(settings)
    assert versions["1.1.0"] == "active" and versions["1.2.0"] == "rolled_back"
    assert pairs["1.1.0"] == "active" and pairs["1.2.0"] == "previous"
    assert control.served_versions("face") == [2]


def test_a_backfill_from_the_command_line_trains_gates_and_swaps(face_env, tmp_path):
    """README's command: `dagster asset materialize -m definitions --select 'face_samples_daily*'
    --partition-range A...B`, in a process of its own that reads its settings from GYMOPS_*: one run
    over both nights through training, the blocking gate and the release (another training config
    than the earlier backfill, so a new artifact and version)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from gymops.settings import PROJECT_ROOT

    settings, _, nights, control = face_env
    before, _, _ = release_state(settings)
    config = tiny_config(max_epochs=2)
    (tmp_path / "dagster").mkdir()
    env = {**os.environ, **settings.environment(), "DAGSTER_HOME": str(tmp_path / "dagster")}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(dagster), "asset", "materialize", "-m", "definitions", "--select", "face_samples_daily*",
                           "--partition-range", f"{nights[0]}...{nights[1]}", "--config-json", json.dumps(config)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "RUN_SUCCESS" in proc.stdout + proc.stderr
    versions, pairs, _ = release_state(settings)
    assert len(set(versions) - set(before)) == 1, (versions, (proc.stdout + proc.stderr)[-3000:])
    [new] = set(versions) - set(before)
    assert versions[new] == "active" and pairs[new] == "active"
    assert [v for v, s in versions.items() if s == "retired" and before.get(v) == "active"]
    from gymops.db import engine_for
    from gymops.lifecycle.registry import ModelRegistry

    assert control.served_versions("face") == [ModelRegistry(engine_for(settings)).get("face", new).triton_version]

