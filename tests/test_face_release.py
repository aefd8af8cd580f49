"""gymops/face/release.py on both profiles (SQLite and PostgreSQL), without Triton: the served model is
a stand-in callable, the re-index embeds with the real version folders (onnxruntime). The crashes a
release can suffer between its records: after the flip before the registry, after the registry's
rollback before the galleries', and records no release step leaves (refused, naming both).

Models: the pretrained descriptor and a copy with a little noise on its last layer; photos are
SYNTHETIC faces (gymops/simulator/faces.py). Weights missing: skipped outside CI, a failure in CI."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from fixtures import require_face_weights
from gymops.db import engine_for
from gymops.face.dataset import synthetic_samples
from gymops.face.gallery import Enrolment, GalleryStore, enrolments, gallery
from gymops.face.release import FACE, FaceRelease, ReleaseError
from gymops.face.swap import galleries
from gymops.lifecycle.outbox import Outbox, outbox
from gymops.lifecycle.registry import ModelRegistry, model_versions
from gymops.settings import PROJECT_ROOT, Settings

ASSETS = Settings().face.assets_dir
T0 = datetime(2026, 11, 5, 9, 0, tzinfo=timezone.utc)


class Crash(BaseException):
    """The releasing process dies here (not an Exception: nothing cleans up)."""


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    import torch

    from gymops.face.model import export_onnx, load_pretrained

    require_face_weights(ASSETS)
    root = tmp_path_factory.mktemp("face-onnx")
    model = load_pretrained(ASSETS)
    first = export_onnx(model, root / "pretrained.onnx")
    with torch.no_grad():
        model.fc.weight.add_(torch.randn(model.fc.weight.shape, generator=torch.Generator().manual_seed(2)) * 0.01)
    return first, export_onnx(model, root / "noisy.onnx")


def _empty(engine) -> None:
    with engine.begin() as conn:
        for table in (gallery, enrolments, galleries, outbox, model_versions):
            conn.execute(table.delete())


@pytest.fixture
def env(profile, tmp_path, onnx_models):
    import shutil

    engine = engine_for(profile)
    _empty(engine)
    repo = tmp_path / "repo"
    (repo / "face").mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / name, repo / "face" / name)
    registry = ModelRegistry(engine, Outbox(engine))
    served: list[str] = []
    photos = {}

    def make() -> FaceRelease:  # a (re)started process
        return FaceRelease(registry, GalleryStore(engine), repo, served.append)

    release = make()
    release.ensure_first(onnx_models[0], 0.95, {"source": "pretrained"})
    for s in synthetic_samples(6, 1, seed=4, prefix="rel-member"):
        photos[f"mem://{s.user_id}"] = s.photo
        release.pairs.enrol(Enrolment(s.user_id, f"mem://{s.user_id}", T0), s.photo)
    candidate = registry.register_candidate(FACE, "dlib-resnet-128", {}, "DS", "run", str(onnx_models[1]))
    yield release, make, registry, served, photos, candidate
    _empty(engine)


def test_deploy_then_rollback_moves_every_record_together(env):
    release, make, registry, served, photos, candidate = env
    report = release.deploy(candidate.version, 0.96, photos.__getitem__)
    assert (report.version, report.previous_version, report.members, report.reindexed) == ("1.1.0", "1.0.0", 6, 6)
    assert served[-1] == "1.1.0" and registry.active(FACE).version == "1.1.0"
    assert release.threshold("1.1.0") == 0.96 and release.folder("1.1.0").name == "2"
    again = release.deploy(candidate.version, 0.96, photos.__getitem__)  # a re-run: nothing to do
    assert again.already_active and served[-1] == "1.1.0"
    back = release.rollback("test")
    assert (back.from_version, back.to_version) == ("1.1.0", "1.0.0") and served[-1] == "1.0.0"
    assert {s.model_version: s.state for s in release.pairs.states().values()} == {"1.0.0": "active", "1.1.0": "previous"}
    assert registry.get(FACE, "1.1.0").status == "rolled_back"


def test_a_crash_after_the_flip_is_finished_by_reconcile(env, monkeypatch):
    release, make, registry, served, photos, candidate = env

    def dies(*args, **kwargs):
        raise Crash("killed after the flip, before the registry")

    monkeypatch.setattr(registry, "activate", dies)
    with pytest.raises(Crash):
        release.deploy(candidate.version, 0.96, photos.__getitem__)
    monkeypatch.undo()
    assert served[-1] == "1.1.0" and registry.active(FACE).version == "1.0.0"  # Triton and galleries flipped
    restarted = make()
    assert restarted.reconcile() == ["registry: activated 1.1.0 (flipped before a crash)"]
    assert registry.active(FACE).version == "1.1.0" and served[-1] == "1.1.0"
    assert restarted.deploy(candidate.version, 0.96, photos.__getitem__).already_active


def test_a_crash_inside_a_rollback_is_finished_by_reconcile(env, monkeypatch):
    release, make, registry, served, photos, candidate = env
    release.deploy(candidate.version, 0.96, photos.__getitem__)

    def dies():
        raise Crash("killed after the registry's rollback, before the galleries'")

    monkeypatch.setattr(release.pairs, "rollback", dies)
    with pytest.raises(Crash):
        release.rollback("test")
    assert registry.active(FACE).version == "1.0.0" and release.pairs.active().model_version == "1.1.0"
    restarted = make()
    assert restarted.reconcile() == ["galleries: rolled back 1.1.0 -> 1.0.0 (the registry had)"]
    assert restarted.pairs.active().model_version == "1.0.0" and served[-1] == "1.0.0"


def test_records_no_step_leaves_are_refused_naming_both(env):
    release, make, registry, served, photos, candidate = env
    with registry.engine.begin() as conn:  # someone flipped the galleries to a version the registry never had
        conn.execute(galleries.update().where(galleries.c.model_version == "1.0.0").values(model_version="9.9.9"))
    with pytest.raises(ReleaseError, match="active gallery pair is 9.9.9 .registry: unknown.*active version is 1.0.0"):
        make().reconcile()


def test_bad_input_is_refused_before_anything_changes(env):
    release, make, registry, served, photos, candidate = env
    with pytest.raises(ValueError, match="threshold: a cosine threshold lies in"):
        release.deploy(candidate.version, 1.5, photos.__getitem__)
    assert registry.active(FACE).version == "1.0.0" and candidate.version not in release.pairs.states()
    registry.reject(FACE, candidate.version, [{"gate": "face_gate", "check": "pairs", "message": "too few"}])
    with pytest.raises(ReleaseError, match="1.1.0 is rejected: only a candidate that passed its gate"):
        release.deploy(candidate.version, 0.96, photos.__getitem__)
