"""The face embedding model: dlib's ResNet ported to PyTorch, from the weights the build installs.

Real faces: the only identity-labelled face photos that install offline are the face_recognition
1.3.0 sdist's tests/test_images (5 of one person, 1 of another; gymops.face.assets puts them beside
the weights). With so few photos this shows the port separates one pair of people, nothing more.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fixtures import needs, skip_or_fail
from gymops.face import assets
from gymops.face import model as fm
from gymops.face.chips import REFERENCE_CHIPS, cut_chip
from gymops.settings import Settings

ASSETS = Settings().face.assets_dir
HAVE_WEIGHTS = (ASSETS / "face-api" / assets.WEIGHTS_FILE).is_file()
needs_weights = needs(HAVE_WEIGHTS, reason=f"face weights absent from {ASSETS}: {assets.BOOTSTRAP_HINT}")


@pytest.fixture(scope="module")
def model():
    return fm.load_pretrained(ASSETS)


def test_missing_weights_name_the_build_step(tmp_path):
    with pytest.raises(assets.AssetsMissing, match="bootstrap"):
        fm.load_pretrained(tmp_path)


@needs_weights
def test_manifest_dequantizes_to_dlibs_117_tensors(model):
    w, m = assets.weights_paths(ASSETS)
    tensors = fm.read_manifest_weights(w, m)
    assert len(tensors) == 117
    assert tensors["fc"].shape == (256, 128) and tensors["conv32_down/conv/filters"].shape == (7, 7, 3, 32)
    n = sum(p.numel() for p in model.parameters())
    assert 5.5e6 < n < 5.7e6  # 5.6 M (the scale layers are folded into the convs)
    out = model(torch.zeros(2, 3, 150, 150))
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def _real_chips():
    photos = assets.photos_dir(ASSETS)
    if not (photos / "obama.jpg").is_file():
        skip_or_fail(f"real face photos absent from {photos}: {assets.BOOTSTRAP_HINT}")
    from PIL import Image

    names = list(REFERENCE_CHIPS)
    chips = [cut_chip(Image.open(photos / n), REFERENCE_CHIPS[n][1]) for n in names]
    people = [REFERENCE_CHIPS[n][0] for n in names]
    return names, people, chips


@needs_weights
def test_real_photos_same_person_is_closer_than_different_person(model):
    """On the 6 real photos: every same-person cosine (10 pairs) is above every different-person
    cosine (5 pairs). Measured: same 0.950-0.987, different 0.801-0.834 (README "Face entry")."""
    _, people, chips = _real_chips()
    e = fm.embed(model, chips)
    sims = e @ e.T
    same = [sims[i, j] for i in range(6) for j in range(i + 1, 6) if people[i] == people[j]]
    diff = [sims[i, j] for i in range(6) for j in range(i + 1, 6) if people[i] != people[j]]
    print(f"real photos: same person {min(same):.3f}-{max(same):.3f} ({len(same)} pairs), "
          f"different {min(diff):.3f}-{max(diff):.3f} ({len(diff)} pairs)")
    assert len(same) == 10 and len(diff) == 5
    assert min(same) > 0.93 and max(diff) < 0.86 and min(same) - max(diff) > 0.08


@needs_weights
def test_port_matches_dlib_itself(model):
    """Only where the optional check files exist (python -m gymops.face.assets --dlib): dlib's own
    descriptor on dlib's own chips against the port on the same chips. Measured: cosine 0.9996-0.9997
    (the rest is face-api's 8-bit quantization)."""
    d = assets.dlib_dir(ASSETS)
    if not (d / assets.DLIB_DESCRIPTOR).is_file() or not (d / "site" / "dlib").is_dir():
        skip_or_fail(f"dlib check files absent from {d}: python -m gymops.face.assets --dlib")
    sys.path.insert(0, str(d / "site"))
    try:
        import dlib
    finally:
        sys.path.remove(str(d / "site"))
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(d / assets.DLIB_LANDMARKS))
    descriptor = dlib.face_recognition_model_v1(str(d / assets.DLIB_DESCRIPTOR))
    dlib_chips, ours, theirs = [], [], []
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        img = np.asarray(Image.open(assets.photos_dir(ASSETS) / name).convert("RGB"))
        chip = dlib.get_face_chip(img, landmarks(img, detector(img, 1)[0]), size=150, padding=0.25)
        dlib_chips.append(chip)
        theirs.append(np.array(descriptor.compute_face_descriptor(chip)))
        ours.append(cut_chip(img, REFERENCE_CHIPS[name][1]))
    cos = (fm.embed(model, dlib_chips) * fm.normalise(np.array(theirs))).sum(1)
    print("port vs dlib cosine on dlib's chips:", cos.round(5))
    assert cos.min() > 0.999
    cos_pinned = (fm.embed(model, ours) * fm.normalise(np.array(theirs))).sum(1)
    assert cos_pinned.min() > 0.99  # the pinned chip boxes cut without dlib: within interpolation


@needs_weights
def test_onnx_export_matches_pytorch(model, tmp_path):
    import onnxruntime as ort

    path = fm.export_onnx(model, tmp_path / "face.onnx")
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 0.5, (3, 3, 150, 150)).astype(np.float32))
    with torch.no_grad():
        want = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["embedding"], {"image": x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    print(f"ONNX vs PyTorch max abs diff: {diff:.2e}")
    assert diff < 1e-4


def test_preprocess_pads_to_a_square_and_normalises_like_dlib():
    chip = np.full((100, 60, 3), 200, np.uint8)
    x = fm.preprocess(chip)
    assert x.shape == (3, 150, 150) and x.dtype == np.float32
    assert np.isclose(x[0, 75, 75], (200 - fm.MEAN_RGB[0]) / 256, atol=1e-5)
    assert np.isclose(x[0, 75, 2], (0 - fm.MEAN_RGB[0]) / 256, atol=1e-5)  # padded border is black
