"""Face chips: the aligned square crop dlib's descriptor was trained on, cut from a photo.

Why here: the descriptor expects dlib's get_face_chip output (150 px, padding 0.25, eyes level). A
camera at the gym door would send its own detector's crop; for the real photos used to check the
model (gymops.face.assets "photos") the chip geometry was found once with dlib's frontal detector and
5-point landmarks and is pinned as numbers (REFERENCE_CHIPS), so the check needs no dlib at test time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ChipBox:
    """dlib's chip_details: a square rectangle in the photo (left, top, right, bottom) and the
    rotation (radians) that levels the eyes."""
    left: float
    top: float
    right: float
    bottom: float
    angle: float


def cut_chip(photo: Image.Image | np.ndarray, box: ChipBox, size: int = 150) -> np.ndarray:
    """The size x size RGB chip of ``box``: each chip pixel maps through the box's rotation about its
    centre to a photo point, sampled bilinearly (dlib's extract_image_chip, to within interpolation)."""
    img = Image.fromarray(photo) if isinstance(photo, np.ndarray) else photo
    img = img.convert("RGB")
    cx, cy = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    s = (box.right - box.left) / (size - 1)
    c, si = math.cos(box.angle), math.sin(box.angle)
    # photo point = centre + R(angle) @ (s * (u - (size-1)/2), s * (v - (size-1)/2)) for chip pixel (u, v)
    h = (size - 1) / 2
    a, b, d, e = s * c, -s * si, s * si, s * c
    coeffs = (a, b, cx - a * h - b * h + 0.5 * (a + b) - 0.5, d, e, cy - d * h - e * h + 0.5 * (d + e) - 0.5)
    return np.asarray(img.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR))


# face_recognition 1.3.0 sdist, tests/test_images: photo -> (person, chip box found by dlib 20.0.1's
# frontal face detector + shape_predictor_5_face_landmarks, get_face_chip_details(shape, 150, 0.25)).
REFERENCE_CHIPS = {
    "obama.jpg": ("obama", ChipBox(350.596, 123.067, 646.072, 418.543, -0.004441)),
    "obama2.jpg": ("obama", ChipBox(134.236, 272.295, 474.983, 613.042, 0.134490)),
    "obama3.jpg": ("obama", ChipBox(635.120, 291.758, 958.736, 615.374, 0.065927)),
    "obama_partial_face.jpg": ("obama", ChipBox(-65.717, 124.755, 223.703, 414.175, 0.045165)),
    "obama_partial_face2.jpg": ("obama", ChipBox(360.490, 133.013, 628.698, 401.221, -0.091048)),
    "biden.jpg": ("biden", ChipBox(415.779, 232.671, 751.030, 567.922, 0.185964)),
}
