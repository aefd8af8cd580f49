"""Training-time augmentation (albumentations): rotation +-15 deg, horizontal flip, brightness/contrast.

Augmented images are uint8 RGB of the input's size; they then go through the same resize and
normalisation as serving (``gymops.ml.preprocess``). Every call is deterministic in its seed, so a
dataset is reproducible image by image whatever order or thread it is built in.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no update check over the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

ROTATE_LIMIT = 15
BRIGHTNESS_LIMIT = 0.2
CONTRAST_LIMIT = 0.2
# Recorded in dataset manifests (and so in dataset ids): change it when the pipeline changes.
DESCRIPTION = (
    f"Rotate(+-{ROTATE_LIMIT}, reflect-101, p=1) + HorizontalFlip(p=0.5) + "
    f"RandomBrightnessContrast({BRIGHTNESS_LIMIT}, {CONTRAST_LIMIT}, p=0.75); albumentations {A.__version__}"
)


def build_pipeline(seed: int | None = None) -> A.Compose:
    return A.Compose(
        [
            # Reflecting the border keeps the fabric background instead of black corners.
            A.Rotate(limit=ROTATE_LIMIT, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.HorizontalFlip(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=BRIGHTNESS_LIMIT, contrast_limit=CONTRAST_LIMIT, p=0.75),
        ],
        seed=seed,
    )


@lru_cache(maxsize=1)
def _pipeline() -> A.Compose:
    return build_pipeline(0)


def image_seed(seed: int, key: str, copy: int) -> int:
    """A 32-bit seed for one augmented copy of one photo, independent of build order."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{copy}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def augment(rgb_uint8: np.ndarray, seed: int | np.random.Generator) -> np.ndarray:
    """One augmented copy (uint8, same shape) of a uint8 (H, W, 3) RGB image; same seed, same pixels.

    ``seed`` is an int or a numpy Generator (one int is drawn from it). Not thread-safe: call it
    from one thread at a time (it reuses one pipeline object and reseeds it).
    """
    a = np.asarray(rgb_uint8)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {a.dtype} {a.shape}")
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(1 << 31))
    pipeline = _pipeline()
    pipeline.set_random_seed(int(seed))
    return np.ascontiguousarray(pipeline(image=a)["image"])
