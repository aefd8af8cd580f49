"""The face candidate gate (gymops/face/gates.py): thresholds re-derived per model from its own
impostor scores, TAR with exact intervals, McNemar on the genuine pairs with a non-inferiority
margin, refusal when the pairs cannot resolve FAR 1e-3, and the sandbox cost figures.
Model cases run on SYNTHETIC faces (gymops.simulator.faces)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fixtures import skip_or_fail
from gymops.face import assets
from gymops.face.gates import (FaceGateLimits, NotEnoughPairs, check_pairs, compare_scores, face_gate,
                               pair_counts)
from gymops.settings import Settings

ASSETS = Settings().face.assets_dir


def _scores(seed: int = 0, genuine: int = 400, impostor: int = 20_000):
    rng = np.random.default_rng(seed)
    return rng.normal(0.8, 0.1, genuine), rng.normal(0.3, 0.1, impostor)


def test_identical_candidate_passes_with_no_discordant_pairs():
    g, i = _scores()
    r = compare_scores((g, i), (g.copy(), i.copy()))
    assert r.passed and r.reasons == []
    assert r.comparison.challenger_only == r.comparison.champion_only == 0 and r.p_value == 1.0
    assert r.candidate.threshold == r.active.threshold
    assert r.candidate.achieved_far <= 1e-3 and r.impostor_pairs == 20_000 and r.min_impostor_pairs == 3000
    d = r.as_dict()
    assert d["candidate"]["tar"]["n"] == 400 and d["candidate"]["tar"]["ci_low"] <= d["candidate"]["tar"]["estimate"]
    assert d["candidate_only"] == 0 and "impostor scores" in d["notes"][0]


def test_threshold_is_derived_per_model_never_carried_over():
    """A candidate whose cosines are the active's halved ranks every pair the same way: same TAR,
    and it passes, because its threshold comes from its own impostors (about half the active's).
    With the active threshold carried over it would accept almost no genuine pair."""
    g, i = _scores()
    r = compare_scores((g / 2, i / 2), (g, i))
    assert r.passed
    assert r.candidate.threshold == pytest.approx(r.active.threshold / 2, abs=1e-6)
    assert r.candidate.tar.k == r.active.tar.k
    assert np.mean(g / 2 >= r.active.threshold) < 0.01


def test_clearly_worse_candidate_fails_naming_the_tar_difference():
    g, i = _scores()
    worse = g - np.random.default_rng(1).uniform(0, 0.3, len(g))
    r = compare_scores((worse, i), (g, i), FaceGateLimits(margin=0.02))
    assert not r.passed and len(r.reasons) == 1
    assert r.reasons[0].startswith("TAR: candidate") and "lower bound" in r.reasons[0] and "McNemar" in r.reasons[0]
    assert r.comparison.champion_only > 0 and r.comparison.challenger_only == 0 and r.p_value < 1e-6
    assert r.comparison.ci_low < -0.02


def test_slightly_worse_within_the_margin_passes_non_inferiority():
    g, i = _scores()
    t = compare_scores((g, i), (g, i)).active.threshold
    worse = g.copy()
    worse[np.flatnonzero(g >= t)[:2]] = 0.0  # 2 of ~400 genuine pairs lost
    assert compare_scores((worse, i), (g, i), FaceGateLimits(margin=0.05)).passed
    assert not compare_scores((worse, i), (g, i), FaceGateLimits(margin=0.0)).passed


def test_too_few_impostor_pairs_are_refused_naming_the_reason():
    g, i = _scores(impostor=2_999)
    with pytest.raises(NotEnoughPairs, match=r"impostor pairs: 2,999 < 3,000 \(3 / FAR 0.001\)"):
        compare_scores((g, i), (g, i))
    # before any model runs: objects that are not models are never touched
    ids = [f"m{k}" for k in range(19) for _ in range(4)]  # 76 photos: 2,850 pairs, 114 genuine
    assert pair_counts(ids) == (114, 2850 - 114)
    with pytest.raises(NotEnoughPairs, match="2,736 < 3,000 .* on 76 photos of 19 identities; the holdout needs more"):
        face_gate(object(), object(), photos=[b""] * 76, user_ids=ids)
    with pytest.raises(NotEnoughPairs, match="genuine pairs: 0 < min_genuine_pairs 30"):
        check_pairs([f"m{k}" for k in range(100)], FaceGateLimits())
    assert check_pairs(ids, FaceGateLimits(far=1e-2)) == (114, 2736)


def test_bad_input_names_the_field():
    g, i = _scores()
    with pytest.raises(ValueError, match="different pairs"):
        compare_scores((g[:-1], i), (g, i))
    with pytest.raises(ValueError, match="far"):
        FaceGateLimits(far=0)
    with pytest.raises(ValueError, match="margin"):
        FaceGateLimits(margin=-0.1)
    with pytest.raises(ValueError, match="user_ids: one per photo"):
        face_gate(object(), object(), photos=[b""] * 3, user_ids=["a"])
    with pytest.raises(ValueError, match="holdout"):
        face_gate(object(), object())


def test_performance_limits_fail_the_candidate_only():
    g, i = _scores()
    fast = {"mean_latency_ms": 5.0, "peak_memory_mb": 150.0, "size_mb": 21.4}
    slow = {**fast, "mean_latency_ms": 80.0}
    limits = FaceGateLimits(max_latency_ms=50, max_peak_memory_mb=200, max_size_mb=25)
    assert compare_scores((g, i), (g, i), limits, performance=(fast, slow)).passed
    r = compare_scores((g, i), (g, i), limits, performance=(slow, fast))
    assert not r.passed and r.reasons == ["performance: candidate 80 ms per photo exceeds the limit 50"]
    r = compare_scores((g, i), (g, i), limits, performance=({"error": "load: bad model", "size_mb": 1.0}, fast))
    assert not r.passed and "could not be measured: load: bad model" in r.reasons[0]
    assert compare_scores((g, i), (g, i), performance=(slow, fast)).passed  # no limits: reported only


# -- real models on synthetic faces ----------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained():
    from gymops.face.model import load_pretrained

    try:
        return load_pretrained(ASSETS)
    except assets.AssetsMissing as exc:
        skip_or_fail(str(exc))


@pytest.fixture(scope="module")
def holdout_photos():
    """SYNTHETIC faces: 30 identities x 4 photos (180 genuine, 6,960 impostor pairs)."""
    from gymops.face.dataset import synthetic_samples

    samples = synthetic_samples(30, 4, seed=3, prefix="gate-member")
    return [s.photo for s in samples], [s.user_id for s in samples]


def test_identical_model_passes_with_cost_figures(pretrained, holdout_photos):
    photos, ids = holdout_photos
    r = face_gate(copy.deepcopy(pretrained), pretrained, photos=photos, user_ids=ids,
                  limits=FaceGateLimits(perf_requests=20, max_latency_ms=1000, max_size_mb=50))
    print(r.as_dict())
    assert r.passed, r.reasons
    assert (r.genuine_pairs, r.impostor_pairs, r.identities, r.photos) == (180, 6960, 30, 120)
    assert r.candidate.threshold == r.active.threshold and r.candidate.tar.k == r.active.tar.k
    perf = r.candidate.performance
    assert perf["mean_latency_ms"] > 0 and 20 < perf["size_mb"] < 23 and perf["parameters"] > 5_000_000
    assert r.active.performance["size_mb"] == perf["size_mb"]


def test_active_as_a_served_version_folder(pretrained, holdout_photos, tmp_path):
    """The active model as Triton serves it (its version folder: ONNX + its own preprocess.py)
    against the same weights in torch: the same decisions, to within float rounding."""
    import shutil

    from gymops.face.serving import write_face_version
    from gymops.settings import PROJECT_ROOT

    (tmp_path / "face").mkdir()
    shutil.copyfile(PROJECT_ROOT / "triton_models" / "face" / "model.py", tmp_path / "face" / "model.py")
    folder = write_face_version(tmp_path, 1, pretrained, "1.0.0", threshold=0.98)
    photos, ids = holdout_photos
    r = face_gate(pretrained, folder, photos=photos, user_ids=ids, limits=FaceGateLimits(perf_requests=10))
    assert r.passed, r.reasons
    assert r.candidate.threshold == pytest.approx(r.active.threshold, abs=1e-4)
    assert abs(r.candidate.tar.k - r.active.tar.k) <= 1
    assert r.active.performance["parameters"] is None and r.active.performance["size_mb"] > 20


@pytest.mark.parametrize("damage", ["random weights", "last layer reads 16 of 256 features"])
def test_clearly_worse_model_fails(pretrained, holdout_photos, damage):
    """Measured: the pretrained model accepts 60 of 180 genuine pairs; random weights 8, the damaged
    last layer 17. (Noise of 3 x its std added to fc does NOT hurt: 62 vs 60, a random projection
    keeps the distances; the gate still fails it, since 180 pairs cannot show it is within 0.03.)"""
    from gymops.face.model import FaceDescriptor

    photos, ids = holdout_photos
    torch.manual_seed(0)
    worse = FaceDescriptor().eval() if damage == "random weights" else copy.deepcopy(pretrained)
    if damage != "random weights":
        with torch.no_grad():
            worse.fc.weight[:, 16:] = 0
    r = face_gate(worse, pretrained, photos=photos, user_ids=ids, performance=False)
    print(damage, r.as_dict())
    assert not r.passed and len(r.reasons) == 1 and r.reasons[0].startswith("TAR: candidate")
    assert r.candidate.tar.k < r.active.tar.k / 2 and r.comparison.ci_low < -0.1
    assert r.candidate.threshold != r.active.threshold and r.candidate.performance is None
