"""THE face preprocessing: a face chip -> the descriptor's input; raw descriptors -> unit vectors.

One module for enrolment, entry, training and the served version: gymops.serving.control.write_version
copies this file into every face version folder, so a version always runs the preprocessing it was
verified with (a rollback included). numpy and PIL only, so the Triton stub can load it by path.
"""
from __future__ import annotations

import io

import numpy as np

INPUT_SIZE = 150
EMBEDDING_DIM = 128
# dlib's input_rgb_image_sized<150>: subtract these per-channel means, divide by 256.
MEAN_RGB = (122.782, 117.001, 104.298)
SCALE = 256.0



def preprocess(photo) -> np.ndarray:
    """A face chip (encoded bytes, PIL image or HxWx3 uint8 RGB) -> (3, 150, 150) float32.

    Not square: padded to a square around its centre (black, as face-api does) so the face is not
    stretched; then resized to 150 px and normalised as dlib's input layer does."""
    from PIL import Image

    if isinstance(photo, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(photo)))
    elif isinstance(photo, np.ndarray):
        img = Image.fromarray(photo)
    else:
        img = photo
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side))
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    if img.size != (INPUT_SIZE, INPUT_SIZE):
        img = img.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    a = np.asarray(img, np.float32)
    a = (a - np.asarray(MEAN_RGB, np.float32)) / SCALE
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
