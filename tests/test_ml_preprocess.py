"""The one preprocessing function (training == serving) and the augmentation pipeline."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gymops.ml.augment import augment, image_seed
from gymops.ml.preprocess import (
    IMAGE_SIZE, MEAN, STD, decode_rgb, normalise, preprocess, preprocess_array, preprocess_batch, resize_rgb,
)
from gymops.simulator.garments import encode_jpeg, linen_photo


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode_jpeg(linen_photo(np.random.default_rng(11)).image)


def test_same_bytes_same_tensor(photo):
    a, b = preprocess(photo), preprocess(bytes(photo))
    assert a.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.isfinite(a).all()


def test_known_pixel_normalises_as_expected():
    colour = (255, 128, 0)
    img = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    img[...] = colour
    img[0, 0] = (10, 20, 30)  # PNG is lossless and at the model size there is no resampling
    x = preprocess(_png(img))
    expected = (np.array(colour, np.float32) / 255 - MEAN) / STD
    np.testing.assert_allclose(x[:, 100, 100], expected, atol=1e-6)
    np.testing.assert_allclose(x[:, 0, 0], (np.array([10, 20, 30]) / 255 - MEAN) / STD, atol=1e-6)
    np.testing.assert_allclose(x[:, 100, 100], [2.2489083, 0.2051821, -1.8044444], atol=1e-5)


def test_resizes_any_size_and_mode_to_rgb_square():
    grey = np.full((30, 50), 200, np.uint8)
    x = preprocess(_png(grey), size=64)
    assert x.shape == (3, 64, 64)
    np.testing.assert_allclose(x[:, 10, 10], (200 / 255 - MEAN) / STD, atol=1e-5)
    rgba = np.zeros((20, 20, 4), np.uint8)
    assert preprocess(_png(rgba, "RGBA"), size=32).shape == (3, 32, 32)


def test_preprocess_is_decode_resize_normalise(photo):
    rgb = decode_rgb(photo)
    assert np.array_equal(preprocess(photo), normalise(resize_rgb(rgb)))
    assert np.array_equal(preprocess(photo), preprocess_array(rgb))
    batch = preprocess_batch([photo, photo])
    assert batch.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and np.array_equal(batch[1], preprocess(photo))


@pytest.mark.parametrize("bad", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_bad_bytes_raise_value_error(bad):
    with pytest.raises(ValueError, match="photo"):
        preprocess(bad)


def test_truncated_jpeg_raises_value_error(photo):
    with pytest.raises(ValueError, match="undecodable"):
        preprocess(photo[: len(photo) // 2])


def test_not_bytes_raises_value_error():
    with pytest.raises(ValueError):
        preprocess("photo.jpg")  # type: ignore[arg-type]


def test_augment_is_deterministic_in_its_seed():
    img = linen_photo(np.random.default_rng(3)).image
    a, b = augment(img, 123), augment(img, 123)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    others = [augment(img, s) for s in range(1, 6)]
    assert any(not np.array_equal(a, o) for o in others)
    assert np.array_equal(augment(img, np.random.default_rng(9)), augment(img, np.random.default_rng(9)))
    assert image_seed(0, "t-1", 1) == image_seed(0, "t-1", 1) != image_seed(0, "t-1", 2)


def test_augment_rotates_hue_but_keeps_the_garment_visible():
    # A saturated red patch on a grey background: its hue moves between copies, the background stays grey.
    img = np.full((64, 64, 3), 128, np.uint8)
    img[16:48, 16:48] = (200, 30, 30)
    hues = set()
    for s in range(30):
        out = augment(img, s).astype(int)
        centre = out[28:36, 28:36].reshape(-1, 3).mean(axis=0)
        hues.add(int(np.argmax(centre)))  # the dominant channel: red, green or blue
        corner = out[:6, :6].reshape(-1, 3).mean(axis=0)
        assert corner.max() - corner.min() < 12  # hue rotation leaves grey grey
        assert centre.max() - centre.min() > 60  # still a strongly coloured patch
    assert hues == {0, 1, 2}


def test_augment_rejects_non_rgb_uint8():
    with pytest.raises(ValueError):
        augment(np.zeros((8, 8), np.uint8), 0)
    with pytest.raises(ValueError):
        augment(np.zeros((8, 8, 3), np.float32), 0)
