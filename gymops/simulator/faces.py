"""Synthetic face stand-ins, one identity per user id.

STAND-INS, NOT FACES: no identity-labelled face dataset installs offline, so each user gets a
cartoon face whose geometry and colours (face shape, skin tone, eye spacing and size, brows, nose,
mouth, hair style and colour) derive from a hash of the user id, and each photo adds pose,
scale, lighting and noise jitter from the caller's Generator. They exercise the face pipeline's
plumbing (enrolment, entries, storage, batches) until the face issue brings real face data; an
embedding model trained on them says nothing about real faces.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 112  # the usual input size of face embedders
_CANVAS = 2 * SIZE  # drawn at twice the size, then downsampled (anti-aliasing)
_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 125], [198, 134, 90], [141, 85, 54], [92, 58, 40]], float)
_HAIR = np.array([[20, 17, 15], [60, 40, 28], [110, 75, 45], [180, 140, 90], [225, 200, 150], [150, 150, 150], [160, 60, 30]], float)
_IRIS = np.array([[60, 40, 25], [40, 80, 130], [70, 110, 70], [30, 25, 20]], float)
HAIR_STYLES = ("short", "long", "bald", "fringe", "bun")


@dataclass(frozen=True)
class Identity:
    face_w: float
    face_h: float
    skin: tuple
    eye_dx: float
    eye_y: float
    eye_r: float
    iris: tuple
    brow_tilt: float
    nose_len: float
    mouth_w: float
    mouth_y: float
    hair: tuple
    hair_style: str
    glasses: bool


def identity(user_id: str) -> Identity:
    """The fixed look of ``user_id`` (the same on every machine and run)."""
    seed = int.from_bytes(hashlib.sha256(user_id.encode("utf-8")).digest()[:8], "little")
    r = np.random.default_rng(seed)

    def pick(palette: np.ndarray) -> tuple:
        i = r.uniform(0, len(palette) - 1)  # between two palette entries, so tones vary continuously
        lo = int(i)
        return tuple((palette[lo] + (palette[lo + 1] - palette[lo]) * (i - lo)).round().astype(int).tolist())

    return Identity(
        face_w=r.uniform(0.30, 0.40), face_h=r.uniform(0.40, 0.50), skin=pick(_SKIN),
        eye_dx=r.uniform(0.09, 0.15), eye_y=r.uniform(-0.08, 0.0), eye_r=r.uniform(0.022, 0.038),
        iris=pick(_IRIS), brow_tilt=r.uniform(-0.03, 0.03), nose_len=r.uniform(0.07, 0.14),
        mouth_w=r.uniform(0.07, 0.15), mouth_y=r.uniform(0.17, 0.25), hair=pick(_HAIR),
        hair_style=HAIR_STYLES[int(r.integers(len(HAIR_STYLES)))], glasses=bool(r.random() < 0.2),
    )


def face_photo(user_id: str, rng: np.random.Generator) -> np.ndarray:
    """One photo (uint8 RGB, SIZE x SIZE) of ``user_id``'s stand-in face, with per-photo jitter."""
    ident = identity(user_id)
    c = _CANVAS
    bg = tuple(int(x) for x in rng.integers(150, 235, 3))
    img = Image.new("RGB", (c, c), bg)
    d = ImageDraw.Draw(img)
    cx, cy = c * (0.5 + rng.normal(0, 0.02)), c * (0.52 + rng.normal(0, 0.02))
    s = c * rng.uniform(0.92, 1.08)
    fw, fh = ident.face_w * s, ident.face_h * s
    hair = ident.hair
    if ident.hair_style == "long":
        d.rounded_rectangle((cx - fw * 1.15, cy - fh * 1.1, cx + fw * 1.15, cy + fh * 0.9), radius=fw * 0.6, fill=hair)
    if ident.hair_style == "bun":
        d.ellipse((cx - fw * 0.4, cy - fh * 1.45, cx + fw * 0.4, cy - fh * 0.75), fill=hair)
    d.rectangle((cx - fw * 0.35, cy + fh * 0.7, cx + fw * 0.35, cy + fh * 1.3), fill=ident.skin)  # neck
    d.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=ident.skin)
    if ident.hair_style in ("short", "long", "fringe", "bun"):
        d.chord((cx - fw * 1.05, cy - fh * 1.08, cx + fw * 1.05, cy + fh * 0.3), 180, 360, fill=hair)
    if ident.hair_style == "fringe":
        d.rectangle((cx - fw * 0.8, cy - fh * 0.45, cx + fw * 0.8, cy - fh * 0.3), fill=hair)
    ey = cy + ident.eye_y * s
    for side in (-1, 1):
        ex = cx + side * ident.eye_dx * s
        er = ident.eye_r * s
        d.ellipse((ex - er * 1.6, ey - er, ex + er * 1.6, ey + er), fill=(245, 245, 240))
        d.ellipse((ex - er * 0.8, ey - er * 0.8, ex + er * 0.8, ey + er * 0.8), fill=ident.iris)
        d.ellipse((ex - er * 0.35, ey - er * 0.35, ex + er * 0.35, ey + er * 0.35), fill=(10, 10, 10))
        by = ey - er * 2.2
        d.line((ex - er * 1.8, by + side * ident.brow_tilt * s, ex + er * 1.8, by - side * ident.brow_tilt * s),
               fill=tuple(int(v * 0.8) for v in hair), width=max(2, int(er * 0.6)))
        if ident.glasses:
            d.ellipse((ex - er * 2.4, ey - er * 1.9, ex + er * 2.4, ey + er * 1.9), outline=(30, 30, 30), width=3)
    nose_col = tuple(int(v * 0.8) for v in ident.skin)
    d.line((cx, ey + ident.eye_r * s, cx - 0.02 * s, ey + ident.nose_len * s, cx + 0.01 * s, ey + ident.nose_len * s),
           fill=nose_col, width=3)
    my, mw = cy + ident.mouth_y * s, ident.mouth_w * s
    smile = rng.uniform(0.0, 0.04) * s
    d.arc((cx - mw, my - smile - 4, cx + mw, my + smile + 4), 10, 170, fill=(150, 60, 60), width=4)

    img = img.rotate(float(rng.normal(0, 6)), resample=Image.BICUBIC, center=(cx, cy), fillcolor=bg)
    img = img.resize((SIZE, SIZE), Image.BILINEAR)
    a = np.asarray(img, np.float32) / 255
    gx = rng.uniform(-0.25, 0.25)  # light from one side
    light = 1 + gx * np.linspace(-1, 1, SIZE, dtype=np.float32)[None, :]
    a = a * (light * rng.uniform(0.75, 1.1))[..., None] + rng.normal(0, 0.02, a.shape).astype(np.float32)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
