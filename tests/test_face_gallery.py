"""The face gallery and matching: per-version galleries in the tier's database, exact in-memory search,
verify/identify that never compare across model versions. Both profiles where the store is involved.

Faces here are the simulator's SYNTHETIC stand-ins (gymops/simulator/faces.py), embedded by the
PRETRAINED dlib model: every similarity figure below is about cartoon faces, not real ones.
"""
from __future__ import annotations

import io
import shutil
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from fixtures import needs
from gymops.db import engine_for
from gymops.face import assets
from gymops.face.gallery import Enrolment, GalleryIndex, GalleryStore
from gymops.face.matching import FaceMatcher, GalleryNotReady, LocalEmbedder
from gymops.settings import PROJECT_ROOT, Settings
from gymops.simulator.faces import face_photo

ASSETS = Settings().face.assets_dir
T0 = datetime(2026, 11, 5, 9, 0, tzinfo=timezone.utc)


def _unit(rng, n=1):
    v = rng.normal(size=(n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture
def store(profile, tmp_path):
    s = GalleryStore(engine_for(profile))
    yield s
    with s.engine.begin() as conn:  # the services database is shared by the session's tests
        from gymops.face.gallery import enrolments, gallery
        conn.execute(gallery.delete())
        conn.execute(enrolments.delete())


def test_enrol_reenrol_delete_on_both_profiles(store):
    rng = np.random.default_rng(0)
    a, b = _unit(rng, 2)
    assert store.enrol(Enrolment("m1", "file:///p/m1.jpg", T0), {"1.0.0": a})
    assert not store.enrol(Enrolment("m1", "file:///p/m1.jpg", T0), {"1.0.0": a})  # the same event again
    ids, m = store.vectors("1.0.0")
    assert ids == ["m1"] and np.allclose(m[0], a)
    # re-enrolment with a newer photo replaces the vector of every version (the old photo's are stale)
    store.put_vectors("2.0.0", [("m1", a, T0)])
    assert store.counts() == {"1.0.0": 1, "2.0.0": 1}
    assert store.enrol(Enrolment("m1", "file:///p/m1-new.jpg", T0 + timedelta(days=1)), {"1.0.0": b})
    assert store.counts() == {"1.0.0": 1} and np.allclose(store.vectors("1.0.0")[1][0], b)
    assert store.enrolment("m1").photo_url == "file:///p/m1-new.jpg"
    # an older event arriving late changes nothing
    assert not store.enrol(Enrolment("m1", "file:///p/m1.jpg", T0), {"1.0.0": a})
    # a re-index row computed from the old photo is refused
    assert store.put_vectors("2.0.0", [("m1", a, T0)]) == 0
    # deletion: gone from every gallery, kept as deleted; an enrolment older than the deletion cannot revive it
    assert store.delete("m1", T0 + timedelta(days=2))
    assert store.counts() == {} and store.active_enrolments() == []
    assert not store.enrol(Enrolment("m1", "file:///p/m1-new.jpg", T0 + timedelta(days=1)), {"1.0.0": b})
    assert store.enrol(Enrolment("m1", "file:///p/m1-back.jpg", T0 + timedelta(days=3)), {"1.0.0": b})
    assert [e.user_id for e in store.active_enrolments()] == ["m1"]


def test_index_is_exact_and_copy_on_write():
    rng = np.random.default_rng(1)
    m = _unit(rng, 50)
    index = GalleryIndex("1.0.0", 0.9, [f"u{i}" for i in range(50)], m)
    assert index.best(m[7]) == ("u7", pytest.approx(1.0, abs=1e-5))
    index.upsert("u7", m[8])
    assert index.similarity(m[8], "u7") == pytest.approx(1.0, abs=1e-5)
    index.remove("u8")
    assert "u8" not in index and len(index) == 49 and index.best(m[8])[0] == "u7"
    index.upsert("new", m[8])
    assert len(index) == 50


def test_search_time_at_ten_thousand_members():
    """Exact search by numpy matmul at 10^4 members (random unit vectors; only timing is measured)."""
    rng = np.random.default_rng(2)
    index = GalleryIndex("1.0.0", 0.9, [f"u{i}" for i in range(10_000)], _unit(rng, 10_000))
    probes = _unit(rng, 200)
    index.best(probes[0])
    t = time.perf_counter()
    for p in probes:
        index.best(p)
    ms = (time.perf_counter() - t) / len(probes) * 1000
    print(f"identify search at 10,000 members: {ms:.3f} ms per probe (numpy matmul)")
    assert ms < 20


class _FakeEmbedder:
    """Returns a given vector and model version: the matcher's version logic without a model."""

    def __init__(self):
        self.vector, self.version = None, None

    def embed(self, photos):
        return self.vector[None], [self.version]


def test_matcher_compares_only_within_the_probes_version():
    rng = np.random.default_rng(3)
    g1, g2 = _unit(rng, 3), _unit(rng, 3)
    emb = _FakeEmbedder()
    matcher = FaceMatcher(emb, {"1.0.0": GalleryIndex("1.0.0", 0.8, ["a", "b", "c"], g1)})
    emb.vector, emb.version = g1[1], "1.0.0"
    v = matcher.verify(b"x", "b")
    assert v.match and v.model_version == "1.0.0" and v.threshold == 0.8
    assert not matcher.verify(b"x", "a").match
    assert matcher.verify(b"x", "nobody").similarity is None
    assert matcher.identify(b"x").user_id == "b"
    emb.version = "2.0.0"  # the served model flipped before its gallery was loaded
    with pytest.raises(GalleryNotReady):
        matcher.verify(b"x", "b")
    matcher.set_index(GalleryIndex("2.0.0", 0.7, ["a", "b", "c"], g2))
    emb.vector = g2[2]
    assert matcher.identify(b"x").user_id == "c" and matcher.identify(b"x").model_version == "2.0.0"
    emb.vector = -g2[2]
    assert matcher.identify(b"x").user_id is None  # nobody above the threshold
    assert matcher.cross_version == 0 and set(matcher.comparisons) == {"1.0.0", "2.0.0"}


@needs((ASSETS / "face-api" / assets.WEIGHTS_FILE).is_file(),
                    reason=f"face weights absent: {assets.BOOTSTRAP_HINT}")
def test_version_folder_verify_and_identify_on_synthetic_faces(tmp_path):
    """The pretrained model, written as a face version folder, run as Triton's model.py would
    (LocalEmbedder: the folder's ONNX and preprocess.py). SYNTHETIC faces: 12 members enrolled,
    a second photo of each verified and identified."""
    from gymops.face.model import load_pretrained
    from gymops.face.serving import write_face_version

    repo = tmp_path / "repo"
    (repo / "face").mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / name, repo / "face" / name)
    folder = write_face_version(repo, 1, load_pretrained(ASSETS), "1.0.0", threshold=0.9)
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.onnx", "model.py", "preprocess.py"]
    emb = LocalEmbedder(folder)
    members = [f"member-{i}" for i in range(12)]
    rng = np.random.default_rng(4)
    enrol_vecs, _ = emb.embed([_jpeg(face_photo(m, rng)) for m in members])
    probe_vecs, versions = emb.embed([_jpeg(face_photo(m, rng)) for m in members])
    assert set(versions) == {"1.0.0"}
    sims = probe_vecs @ enrol_vecs.T
    genuine, impostor = np.diag(sims), sims[~np.eye(len(members), dtype=bool)]
    rank1 = float(np.mean(sims.argmax(axis=1) == np.arange(len(members))))
    print(f"SYNTHETIC faces, pretrained model: genuine cosine {genuine.mean():.3f} (min {genuine.min():.3f}), "
          f"impostor {impostor.mean():.3f} (max {impostor.max():.3f}), rank-1 identification {rank1:.2f}")
    matcher = FaceMatcher(emb, {"1.0.0": GalleryIndex("1.0.0", float(impostor.max()) + 1e-4, members, enrol_vecs)})
    photo = _jpeg(face_photo(members[3], rng))
    v = matcher.verify(photo, members[3])
    assert v.model_version == "1.0.0" and v.similarity is not None
    ident = matcher.identify(photo)
    assert ident.model_version == "1.0.0" and matcher.cross_version == 0
    assert genuine.mean() > impostor.mean()
