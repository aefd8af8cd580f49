"""Threshold at a target FAR and TAR at it (gymops/face/evaluate.py), and the PRETRAINED model's
figures on the simulator's SYNTHETIC faces before any fine-tuning (issue 12, item 6)."""
from __future__ import annotations

import numpy as np

from fixtures import needs
from gymops.face import assets
from gymops.face.evaluate import pair_scores, threshold_at_far, verification_at_far
from gymops.settings import Settings

ASSETS = Settings().face.assets_dir


def test_threshold_keeps_the_impostor_accept_rate_at_or_under_far():
    rng = np.random.default_rng(0)
    impostor = rng.normal(0.3, 0.1, 10_000)
    genuine = rng.normal(0.8, 0.1, 1_000)
    for far in (1e-3, 1e-2, 0.1):
        v = verification_at_far(genuine, impostor, far)
        assert v.achieved_far <= far and v.far_resolved
    t = threshold_at_far(np.array([0.1, 0.2, 0.9]), 0.0)
    assert t > 0.9  # FAR 0: above every impostor
    assert not verification_at_far(genuine, impostor[:500], 1e-3).far_resolved


def test_pair_scores_split_genuine_from_impostor():
    e = np.eye(4, dtype=np.float32)[:, :4]
    e = np.pad(e, ((0, 0), (0, 124)))
    genuine, impostor = pair_scores(e, ["a", "a", "b", "c"])
    assert len(genuine) == 1 and len(impostor) == 5


@needs((ASSETS / "face-api" / assets.WEIGHTS_FILE).is_file(),
                    reason=f"face weights absent: {assets.BOOTSTRAP_HINT}")
def test_pretrained_model_on_synthetic_faces_before_fine_tuning():
    """SYNTHETIC faces, pretrained model, no fine-tuning: 60 identities x 3 photos (180 genuine pairs,
    15,930 impostor pairs). The figure printed here is the 'before' of the nightly batch."""
    from gymops.face.model import embed, load_pretrained
    from gymops.simulator.faces import face_photo

    rng = np.random.default_rng(7)
    ids = [f"synthetic-{i}" for i in range(60) for _ in range(3)]
    photos = [face_photo(u, rng) for u in ids]
    e = embed(load_pretrained(ASSETS), photos)
    genuine, impostor = pair_scores(e, ids)
    v = verification_at_far(genuine, impostor, 1e-3)
    print(f"SYNTHETIC faces, pretrained model: TAR {v.tar:.3f} at FAR {v.achieved_far:.4f} (target 1e-3), "
          f"threshold {v.threshold:.4f}; genuine mean {genuine.mean():.3f}, impostor mean {impostor.mean():.3f} "
          f"({v.genuine_pairs} genuine / {v.impostor_pairs} impostor pairs)")
    assert v.genuine_pairs == 180 and v.impostor_pairs == 15_930 and v.far_resolved
    assert v.achieved_far <= 1e-3
    assert genuine.mean() > impostor.mean()
