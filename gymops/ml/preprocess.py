"""THE preprocessing of the laundry model, shared by training and serving (Triton's model.py).

photo bytes (JPEG/PNG/anything PIL decodes) -> RGB -> bilinear resize to size x size ->
float32 in [0, 1] -> ImageNet mean/std normalisation -> CHW float32.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_PIXELS = 40_000_000  # refuse decompression bombs with a clear error rather than PIL's warning


def decode_rgb(photo_bytes: bytes) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an encoded photo; ValueError with the reason if it cannot be decoded."""
    if not isinstance(photo_bytes, (bytes, bytearray, memoryview)):
        raise ValueError(f"photo must be bytes, got {type(photo_bytes).__name__}")
    if len(photo_bytes) == 0:
        raise ValueError("photo is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(bytes(photo_bytes))) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"photo is too large ({im.width}x{im.height} pixels)")
            im.load()
            rgb = im.convert("RGB")
    except ValueError:
        raise
    except UnidentifiedImageError:
        head = bytes(photo_bytes[:8]).hex()
        raise ValueError(f"undecodable photo ({len(photo_bytes)} bytes, starts {head}): not an image format PIL reads") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"undecodable photo ({len(photo_bytes)} bytes): {type(exc).__name__}: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8)


def resize_rgb(rgb_uint8_hwc: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 (size, size, 3): the bilinear resize step of preprocessing (a no-op at that size)."""
    a = np.asarray(rgb_uint8_hwc)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {a.dtype} {a.shape}")
    if a.shape[0] != size or a.shape[1] != size:
        a = np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return a


def normalise(rgb_uint8: np.ndarray) -> np.ndarray:
    """float32 (..., 3, H, W) from uint8 (..., H, W, 3): [0, 1] scaling, ImageNet mean/std, HWC->CHW.

    Works on one image or a batch (N, H, W, 3)."""
    a = np.asarray(rgb_uint8)
    if a.dtype != np.uint8 or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 (..., H, W, 3) RGB, got {a.dtype} {a.shape}")
    x = (a.astype(np.float32) * np.float32(1 / 255.0) - MEAN) / STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess_array(rgb_uint8_hwc: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """float32 (3, size, size), normalised, from a uint8 (H, W, 3) RGB image."""
    return normalise(resize_rgb(rgb_uint8_hwc, size))


def preprocess(photo_bytes: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """float32 (3, size, size): the model's input for one encoded photo. ValueError if undecodable."""
    return preprocess_array(decode_rgb(photo_bytes), size)


def preprocess_batch(photos: list[bytes], size: int = IMAGE_SIZE) -> np.ndarray:
    """float32 (N, 3, size, size) for a list of encoded photos."""
    out = np.empty((len(photos), 3, size, size), dtype=np.float32)
    for i, data in enumerate(photos):
        out[i] = preprocess(data, size)
    return out
