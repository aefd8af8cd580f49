"""The model-and-gallery pair (gymops/face/swap.py): enrolment into every live gallery, re-index,
flip under concurrent entry traffic, rollback, a killed re-index. The embedders here are stand-ins
(a vector derived from the photo's bytes and the model version), so these tests are about
consistency - which gallery a probe meets - and carry no accuracy figure."""
from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from gymops.db import engine_for
from gymops.face.gallery import Enrolment, GalleryStore, enrolments, gallery
from gymops.face.matching import FaceMatcher, GalleryNotReady
from gymops.face.swap import FaceGalleries, SwapError, galleries

T0 = datetime(2026, 11, 5, 9, 0, tzinfo=timezone.utc)


class Served:
    """The served public name: which version answers (Triton's swap in production)."""

    def __init__(self):
        self.version = None
        self.swaps = []

    def __call__(self, version: str) -> None:
        self.version = version
        self.swaps.append(version)


def _vec(photo: bytes, version: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(version.encode() + b"|" + photo).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return v / np.linalg.norm(v)


class VersionEmbedder:
    def __init__(self, version: str, fail_after: int | None = None):
        self.version, self.fail_after, self.seen = version, fail_after, 0

    def embed(self, photos):
        self.seen += len(photos)
        if self.fail_after is not None and self.seen > self.fail_after:
            raise KeyboardInterrupt("killed mid re-index")  # not an Exception: nothing may swallow it
        return np.stack([_vec(p, self.version) for p in photos]), [self.version] * len(photos)


class ServedEmbedder:
    """Probes: embedded by whichever version is served at that instant (as Triton answers)."""

    def __init__(self, served: Served):
        self.served = served

    def embed(self, photos):
        version = self.served.version
        return np.stack([_vec(p, version) for p in photos]), [version] * len(photos)


def photo_of(url: str) -> bytes:
    return url.encode()


@pytest.fixture
def setup(request, tmp_path):
    settings = request.getfixturevalue(getattr(request, "param", "embedded"))
    store = GalleryStore(engine_for(settings))
    served = Served()
    embedders = {}

    def embedder_for(version):
        return embedders.setdefault(version, VersionEmbedder(version))

    matcher = FaceMatcher(ServedEmbedder(served))
    pairs = FaceGalleries(store, matcher, embedder_for, served)
    pairs.initialise("1.0.0", threshold=0.99)
    yield pairs, matcher, served, embedders
    with store.engine.begin() as conn:
        for table in (gallery, enrolments, galleries):
            conn.execute(table.delete())


def _enrol(pairs, user, day=0, photo=None):
    url = photo or f"file:///photos/{user}-{day}.jpg"
    return pairs.enrol(Enrolment(user, url, T0 + timedelta(days=day)), photo_of(url))


@pytest.mark.parametrize("setup", ["embedded", "services"], indirect=True)
def test_enrol_reindex_flip_rollback(setup):
    pairs, matcher, served, _ = setup
    for i in range(20):
        assert _enrol(pairs, f"m{i}")
    assert matcher.verify(photo_of("file:///photos/m3-0.jpg"), "m3").match
    pairs.begin("1.1.0", threshold=0.98)
    assert _enrol(pairs, "late")  # arrives during the re-index: embedded by both versions
    assert pairs.store.counts() == {"1.0.0": 21, "1.1.0": 1}
    assert pairs.reindex("1.1.0", photo_of) == 20
    pairs.complete("1.1.0", photo_of)
    pairs.flip("1.1.0", photo_of)
    assert served.version == "1.1.0" and pairs.active().model_version == "1.1.0"
    for i in list(range(20)) + ["late"]:
        user = f"m{i}" if i != "late" else "late"
        v = matcher.verify(photo_of(f"file:///photos/{user}-0.jpg"), user)
        assert v.match and v.model_version == "1.1.0" and v.threshold == 0.98
    assert _enrol(pairs, "after-flip")  # kept in the previous gallery too, for rollback
    assert pairs.rollback() == "1.0.0" and served.version == "1.0.0"
    v = matcher.verify(photo_of("file:///photos/after-flip-0.jpg"), "after-flip")
    assert v.match and v.model_version == "1.0.0" and v.threshold == 0.99
    assert matcher.cross_version == 0


def test_a_killed_reindex_leaves_the_active_pair_serving_and_resumes(setup):
    pairs, matcher, served, embedders = setup
    for i in range(40):
        _enrol(pairs, f"m{i}")
    pairs.begin("2.0.0", threshold=0.97)
    embedders["2.0.0"] = VersionEmbedder("2.0.0", fail_after=16)
    with pytest.raises(KeyboardInterrupt):
        pairs.reindex("2.0.0", photo_of, batch_size=8)
    # the process "restarts": a fresh matcher from the persisted state
    fresh = FaceMatcher(ServedEmbedder(served))
    restarted = FaceGalleries(pairs.store, fresh, pairs.embedder_for, served)
    assert restarted.recover().model_version == "1.0.0"
    assert {s.model_version: s.state for s in restarted.states().values()} == {"1.0.0": "active", "2.0.0": "indexing"}
    assert fresh.verify(photo_of("file:///photos/m5-0.jpg"), "m5").model_version == "1.0.0"
    assert 0 < pairs.store.counts()["2.0.0"] < 40
    with pytest.raises(SwapError):
        restarted.flip("2.0.0", photo_of)  # not ready: the flip refuses
    embedders["2.0.0"] = VersionEmbedder("2.0.0")
    restarted.complete("2.0.0", photo_of)  # resumes: only the members not yet stored
    assert embedders["2.0.0"].seen == 40 - 16
    restarted.flip("2.0.0", photo_of)
    assert fresh.verify(photo_of("file:///photos/m5-0.jpg"), "m5").match


def test_abort_drops_the_candidate(setup):
    pairs, matcher, served, _ = setup
    _enrol(pairs, "a")
    pairs.begin("3.0.0", 0.9)
    pairs.reindex("3.0.0", photo_of)
    pairs.abort("3.0.0")
    assert pairs.store.counts() == {"1.0.0": 1} and pairs.live_versions() == ["1.0.0"]
    with pytest.raises(SwapError):
        pairs.begin("3.0.0", 0.9)  # a version number is never reused


def test_reenrol_and_delete_during_reindex(setup):
    pairs, matcher, served, _ = setup
    for u in ("a", "b", "c"):
        _enrol(pairs, u)
    pairs.begin("1.1.0", 0.98)
    assert _enrol(pairs, "a", day=1)  # re-enrolled: new photo, both versions
    assert pairs.delete("b")
    pairs.complete("1.1.0", photo_of)
    ids, _ = pairs.store.vectors("1.1.0")
    assert ids == ["a", "c"]
    pairs.flip("1.1.0", photo_of)
    assert matcher.verify(photo_of("file:///photos/a-1.jpg"), "a").match
    assert not matcher.verify(photo_of("file:///photos/a-0.jpg"), "a").match  # the old photo's vector is gone
    assert matcher.verify(photo_of("file:///photos/b-0.jpg"), "b").similarity is None
    assert matcher.identify(photo_of("file:///photos/b-0.jpg")).user_id is None


def test_flip_under_concurrent_entry_traffic(setup):
    """4 entry clients verify and identify in a loop while the pair flips and rolls back 3 times:
    no request fails, none meets another version's gallery, and every answer is a match."""
    pairs, matcher, served, _ = setup
    users = [f"m{i}" for i in range(30)]
    for u in users:
        _enrol(pairs, u)
    stop = threading.Event()
    failures, answers = [], []

    def client(k):
        rng = np.random.default_rng(k)
        while not stop.is_set():
            u = users[int(rng.integers(len(users)))]
            try:
                if rng.random() < 0.5:
                    r = matcher.verify(photo_of(f"file:///photos/{u}-0.jpg"), u)
                    ok = r.match
                else:
                    r = matcher.identify(photo_of(f"file:///photos/{u}-0.jpg"))
                    ok = r.user_id == u
                answers.append((r.model_version, ok))
            except (GalleryNotReady, AssertionError) as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for n, version in enumerate(("1.1.0", "1.2.0")):
            pairs.begin(version, 0.98)
            pairs.complete(version, photo_of)
            pairs.flip(version, photo_of)
        pairs.rollback()
    finally:
        stop.set()
        for t in threads:
            t.join()
    versions = {v for v, _ in answers}
    print(f"flip under traffic (stand-in embeddings): {len(answers)} answers over {sorted(versions)}, "
          f"failed {len(failures)}, cross-version {matcher.cross_version}")
    assert failures == [] and matcher.cross_version == 0
    assert all(ok for _, ok in answers) and len(versions) >= 2
