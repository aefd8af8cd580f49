"""Linen photos: real Fashion-MNIST garments rendered as colour photos, some with drawn defects.

No package ships photos of stained or torn textiles, so the garments are real and the defects
(stain, tear, discolouration) are drawn procedurally on a known subset: the ground truth is exact.
All randomness comes from the numpy Generator passed in, so a seed reproduces every pixel.

NEW_DEFECT_KINDS (pilling, residue) are kinds the first model never sees: the traffic simulator
draws them only from a configured day on (TrafficConfig.new_kinds_from), so a benchmark can measure
whether managers' corrections teach the loop something it did not know. They change the cloth's
TEXTURE over a wide area at low contrast, where every old kind is one local mark: pilling is a
scatter of small fuzz balls a shade off the cloth, residue pale parallel detergent streaks. A model
trained on the old kinds takes them for fabric (measured: it catches ~0.2-0.3 of them), and an
ImageNet trunk's features see texture well, so ~50 corrected photos of each teach them (0.9+).

OTHER_DEFECT_KINDS (hole, mould) are drawable too, but they are not new to a model of the old
kinds: a hole shows the table through the cloth, mould is clusters of dark speckles; both are local
marks like the old kinds, and the 800-task first model already catches 0.92 / 0.95 of them
(bench/loop, 2026-12-02), so corrections have nothing to teach there.
"""
from __future__ import annotations

import gzip
import io
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from gymops.ingest.events import DEFECTIVE, GOOD

DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
# Fashion-MNIST classes that are linen a gym washes (no sandals, bags, sneakers, boots).
GARMENT_CLASSES = {0: "t-shirt", 1: "trouser", 2: "pullover", 3: "dress", 4: "coat", 6: "shirt"}
DEFECT_KINDS = ("stain", "tear", "discolouration")  # what photos carry by default (the first model's kinds)
NEW_DEFECT_KINDS = ("pilling", "residue")  # drawn only when asked for: kinds the first model never sees
OTHER_DEFECT_KINDS = ("hole", "mould")  # drawn only when asked for; a model of the old kinds catches them
ALL_DEFECT_KINDS = DEFECT_KINDS + NEW_DEFECT_KINDS + OTHER_DEFECT_KINDS
SIZE = 128
_TEX = 2 * SIZE  # shared textures are this big; each photo takes a random crop


class DatasetMissing(FileNotFoundError):
    pass


class LinenPhoto(NamedTuple):
    image: np.ndarray  # uint8, (SIZE, SIZE, 3) RGB
    label: str  # "good" | "defective"
    defect: str | None  # one of ALL_DEFECT_KINDS when defective


def _read_idx(path: Path, offset: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise DatasetMissing(
            f"Fashion-MNIST file {path} is missing; install the Debian package {DEBIAN_PACKAGE} "
            f"(apt-get install -y {DEBIAN_PACKAGE})"
        ) from None
    return np.frombuffer(raw, dtype=np.uint8, offset=offset)


@lru_cache(maxsize=4)
def load_garments(split: str = "train", root: Path = DATASET_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int [N]) of the six garment classes of one split."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', got {split!r}")
    root = Path(root)
    images = _read_idx(root / f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(root / f"{split}-labels-idx1-ubyte.gz", 8)
    keep = np.isin(labels, list(GARMENT_CLASSES))
    return images[keep], labels[keep].astype(np.int64)


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Tileable Gaussian-blurred white noise (blurred in the Fourier domain), scaled to unit std."""
    f = np.fft.rfft2(rng.normal(0, 1, (_TEX, _TEX)))
    k2 = np.fft.fftfreq(_TEX)[:, None] ** 2 + np.fft.rfftfreq(_TEX)[None, :] ** 2
    a = np.fft.irfft2(f * np.exp(-2 * np.pi**2 * sigma**2 * k2), s=(_TEX, _TEX))
    return (a / a.std()).astype(np.float32)


@lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Woven-fabric luminance, sensor noise and a mottle for stain edges, made once (fixed seed)."""
    rng = np.random.default_rng(20240601)
    y, x = np.mgrid[0:_TEX, 0:_TEX].astype(np.float32)
    warp = _smooth_noise(rng, 6) * 1.5
    weave = np.sin((x + warp) * 2.1) * np.sin((y - warp) * 2.1)  # over-under threads, ~3 px pitch
    fibres = _smooth_noise(rng, 0.7)
    folds = _smooth_noise(rng, 18)
    fabric = 0.92 + 0.025 * weave + 0.012 * fibres + 0.03 * folds
    noise = rng.normal(0, 1, (_TEX, _TEX, 3)).astype(np.float32)
    return np.clip(fabric, 0.75, 1.0).astype(np.float32), noise, _smooth_noise(rng, 1.5)


def _crop(tex: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    oy, ox = rng.integers(0, _TEX - SIZE, 2)
    out = tex[oy:oy + SIZE, ox:ox + SIZE]
    return out[::-1] if rng.random() < 0.5 else out


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def _soft_blob(
    rng: np.random.Generator, cy: float, cx: float, radius: float, parts: int, droplets: int = 0
) -> tuple[slice, slice, np.ndarray]:
    """An irregular blob (offset Gaussians, a mottled edge, splashes), evaluated in its window only."""
    pad = int(radius * 3) + 2
    y0, y1 = max(0, int(cy) - pad), min(SIZE, int(cy) + pad)
    x0, x1 = max(0, int(cx) - pad), min(SIZE, int(cx) + pad)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    field = np.zeros(yy.shape, np.float32)
    for _ in range(parts):
        oy, ox = rng.normal(0, radius * 0.55, 2)
        sy, sx = radius * rng.uniform(0.35, 0.85, 2)
        field += np.exp(-(((yy - cy - oy) / sy) ** 2 + ((xx - cx - ox) / sx) ** 2) / 2)
    for _ in range(droplets):
        oy, ox = rng.normal(0, radius * 1.3, 2)
        s = radius * rng.uniform(0.12, 0.3)
        field += np.exp(-(((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / s**2) / 2)
    mottle = _textures()[2]
    my, mx = rng.integers(0, _TEX - SIZE, 2)
    field += 0.18 * mottle[my + y0:my + y1, mx + x0:mx + x1]
    return slice(y0, y1), slice(x0, x1), field


def _smoothstep(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((a - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _on_garment(rng: np.random.Generator, alpha: np.ndarray, margin: int) -> tuple[int, int]:
    """A random point on the cloth, at least ``margin`` px from its edge where the garment allows."""
    inside = alpha > 0.95
    for _ in range(margin):
        deeper = inside.copy()
        deeper[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
        if not deeper.any():
            break
        inside = deeper
    points = np.flatnonzero(inside.ravel())
    if points.size == 0:
        points = np.flatnonzero(alpha.ravel() > 0.3)
    return divmod(int(points[rng.integers(points.size)]), SIZE)


def _under(patch: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The mean colour of the cloth under a defect."""
    w = weight[..., None]
    return (patch * w).sum(axis=(0, 1)) / max(float(w.sum()), 1e-6)


def _stain(img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, background: np.ndarray) -> None:
    cy, cx = _on_garment(rng, alpha, 4)
    ys, xs, field = _soft_blob(rng, cy, cx, rng.uniform(4, 11), int(rng.integers(3, 7)), int(rng.integers(0, 4)))
    a = _smoothstep(field, 0.3, 0.8) * alpha[ys, xs]
    rim = 4 * a * (1 - a)  # dried stains are darker at the edge
    patch = img[ys, xs]
    cloth = _under(patch, a)
    brown, yellow = np.array([0.42, 0.26, 0.08]), np.array([0.85, 0.68, 0.2])
    colour = brown + (yellow - brown) * rng.random()
    if np.abs(colour - cloth).sum() < 0.45:  # brown on maroon would not show: take the far end
        colour = max((np.array([0.3, 0.18, 0.05]), np.array([0.92, 0.84, 0.5])), key=lambda c: np.abs(c - cloth).sum())
    colour = colour.astype(np.float32)
    k = rng.uniform(0.6, 0.9)
    patch += (colour * (0.8 + 0.2 * patch) - patch) * (a * k)[..., None]
    patch *= (1 - 0.25 * k * rim)[..., None]


def _tear(img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, background: np.ndarray) -> None:
    cy, cx = _on_garment(rng, alpha, 2)
    core = Image.new("L", (SIZE, SIZE))
    fringe = Image.new("L", (SIZE, SIZE))
    dc, df = ImageDraw.Draw(core), ImageDraw.Draw(fringe)
    angle = rng.uniform(0, 2 * np.pi)
    points = [(float(cx), float(cy))]
    for _ in range(int(rng.integers(5, 11))):
        step = rng.uniform(2.5, 6.5)
        for turn in rng.uniform(-0.9, 0.9, 4) + np.array([0, 0, np.pi / 2, np.pi]):
            x, y = points[-1][0] + step * np.cos(angle + turn), points[-1][1] + step * np.sin(angle + turn)
            if 0 <= x < SIZE and 0 <= y < SIZE and alpha[int(y), int(x)] > 0.8:  # the rip stays on the cloth
                angle += turn
                points.append((x, y))
                break
    width = int(rng.integers(1, 4))
    df.line(points, fill=150, width=width + 3, joint="curve")
    dc.line(points, fill=255, width=width, joint="curve")
    if rng.random() < 0.5:  # a hole torn open somewhere along the rip
        hx, hy = points[int(rng.integers(len(points)))]
        r = rng.uniform(2.5, 6)
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        rr = r * rng.uniform(0.5, 1.2, t.size)
        poly = list(zip((hx + rr * np.cos(t)).tolist(), (hy + rr * np.sin(t)).tolist()))
        df.polygon(poly, fill=150)
        dc.polygon(poly, fill=255)
    a_core = np.asarray(core, np.float32) / 255 * alpha
    a_fringe = np.asarray(fringe, np.float32) / 255 * alpha
    img += (np.float32(0.92) - img) * (0.6 * a_fringe)[..., None]  # frayed, lighter threads
    img += (np.float32(rng.uniform(0.05, 0.18)) - img) * a_core[..., None]  # the dark gap


def _discolouration(img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, background: np.ndarray) -> None:
    cy, cx = _on_garment(rng, alpha, 6)
    ys, xs, field = _soft_blob(rng, cy, cx, rng.uniform(12, 24), int(rng.integers(3, 6)))
    a = _smoothstep(field, 0.2, 0.9) * alpha[ys, xs]
    patch = img[ys, xs]
    if _under(patch, a).mean() < 0.55:  # bleached: a pale, slightly yellow fade
        target = (1 - (1 - patch) * 0.3) * np.array([1.0, 0.96, 0.84], np.float32)
    else:  # a light garment yellows and greys instead
        target = patch.mean(axis=2, keepdims=True) * np.array([0.86, 0.72, 0.45], np.float32)
    patch += (target - patch) * (a * rng.uniform(0.65, 0.9))[..., None]


def _hole(img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, background: np.ndarray) -> None:
    """A punched-out hole: the table shows through, shadowed on one side by the cloth above it,
    framed by a dark cut edge and lighter frayed thread ends. Its outline is a circle bent by a few
    low harmonics, so holes go from round to irregular."""
    cy, cx = _on_garment(rng, alpha, 6)
    r = rng.uniform(3.5, 8.0)
    harmonics = rng.uniform(0, 0.18, 3) / np.arange(1, 4)
    phases = rng.uniform(0, 2 * np.pi, 3)
    threads, thread_phase = int(rng.integers(7, 15)), rng.uniform(0, 2 * np.pi)
    shift, towards = rng.uniform(1.0, 2.2), rng.uniform(0, 2 * np.pi)  # the light's direction
    sy, sx = shift * np.sin(towards), shift * np.cos(towards)
    pad = int(r * 1.6) + 5
    y0, y1 = max(0, cy - pad), min(SIZE, cy + pad)
    x0, x1 = max(0, cx - pad), min(SIZE, cx + pad)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)

    def outside(dy: float, dx: float) -> tuple[np.ndarray, np.ndarray]:
        """(signed distance in px beyond the outline, angle) of each pixel, outline moved by dy, dx."""
        theta = np.arctan2(yy - cy - dy, xx - cx - dx)
        bend = sum(h * np.cos((k + 1) * theta + p) for k, (h, p) in enumerate(zip(harmonics, phases)))
        return np.hypot(yy - cy - dy, xx - cx - dx) - r * (1 + bend), theta

    d, theta = outside(0.0, 0.0)
    a = alpha[y0:y1, x0:x1]
    inside = np.clip(0.5 - d, 0, 1) * a
    lit = np.clip(0.5 - outside(sy, sx)[0], 0, 1)  # the part of the hole the cloth does not shade
    fray = np.clip(1 + 1.6 * np.cos(threads * theta + thread_phase), 0, 2.6)  # thread ends stick out
    edge = np.clip(1 - np.abs(d - 0.6) / 1.3, 0, 1) * a
    frayed = np.clip(1 - (d - 1.2) / np.maximum(fray, 0.3), 0, 1) * (d > 1.2) * a
    patch = img[y0:y1, x0:x1]
    patch *= (1 - 0.55 * edge)[..., None]  # the cut edge: the cloth's thickness in shadow
    patch += (np.float32(0.9) - patch) * (0.4 * frayed)[..., None]
    table = background[y0:y1, x0:x1] * (0.62 + 0.38 * lit)[..., None]
    patch += (table - patch) * inside[..., None]


def _dots(draw: ImageDraw.ImageDraw, centres: np.ndarray, radii: np.ndarray) -> None:
    """Filled dots at (y, x) ``centres`` with ``radii`` (px of the photo) on a canvas drawn at twice
    the photo's size (box-downsampled afterwards: anti-aliased sub-pixel dots)."""
    for (py, px), pr in zip(centres * 2, radii * 2):
        draw.ellipse((px - pr, py - pr, px + pr, py + pr), fill=255)


def _mould(img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, background: np.ndarray) -> None:
    """Mildew: a few clusters of tiny speckles, dense at their centre and sparse outside, over a
    faint damp halo. Dark grey-green on light cloth, a pale grey bloom on dark cloth. Grainy where a
    stain is one smooth blob."""
    cy, cx = _on_garment(rng, alpha, 5)
    dots = Image.new("L", (2 * SIZE, 2 * SIZE))
    draw = ImageDraw.Draw(dots)
    for _ in range(int(rng.integers(2, 5))):
        ccy, ccx = np.array([cy, cx]) + rng.normal(0, 6, 2)
        n = int(rng.integers(12, 32))
        _dots(draw, rng.normal(0, rng.uniform(2.5, 5.5), (n, 2)) + (ccy, ccx), rng.uniform(0.5, 1.3, n))
    speckle = np.asarray(dots.resize((SIZE, SIZE), Image.BOX), np.float32) / 255
    halo = np.asarray(dots.resize((SIZE, SIZE), Image.BOX).filter(ImageFilter.GaussianBlur(3)), np.float32) / 255
    speckle, halo = speckle * alpha, np.clip(halo * 2.5, 0, 1) * alpha
    if _under(img, speckle).mean() < 0.35:
        colour = np.array([0.78, 0.8, 0.72], np.float32) * np.float32(rng.uniform(0.9, 1.05))
    else:
        colour = np.array([0.14, 0.19, 0.12], np.float32) * np.float32(rng.uniform(0.7, 1.3))
    k = rng.uniform(0.8, 0.95)
    img += (colour - img) * (speckle * k + halo * 0.12)[..., None]


def _pilling(img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, background: np.ndarray) -> None:
    """Pilling: 60-120 small fuzz balls scattered over a wide patch of the cloth, paler than dark
    cloth or darker than light cloth. Each ball is as small as a mould speckle, but they spread
    evenly over the patch (a texture), not in tight clusters."""
    dots = Image.new("L", (2 * SIZE, 2 * SIZE))
    draw = ImageDraw.Draw(dots)
    cy, cx = _on_garment(rng, alpha, 8)
    n = int(rng.integers(60, 120))
    _dots(draw, rng.normal(0, rng.uniform(14, 26), (n, 2)) + (cy, cx), rng.uniform(0.7, 1.4, n))
    balls = np.asarray(dots.resize((SIZE, SIZE), Image.BOX), np.float32) / 255 * alpha
    target = (1 - (1 - img) * 0.55) if _under(img, alpha).mean() < 0.6 else img * 0.6
    img += (target - img) * (balls * rng.uniform(0.5, 0.8))[..., None]


def _residue(img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, background: np.ndarray) -> None:
    """Detergent residue: pale parallel streaks (5-9 px apart, uneven in width and strength) fading
    out from a point of the cloth; greyish on cloth too pale for a pale streak to show."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = yy * np.cos(angle) + xx * np.sin(angle)
    period = rng.uniform(5, 9)
    wave = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)) + 0.6 * np.sin(2 * np.pi * u / (period * 2.3))
    mottle = _textures()[2]
    my, mx = rng.integers(0, _TEX - SIZE, 2)
    streaks = np.clip(wave - 0.4, 0, 1) * np.clip(0.6 + mottle[my:my + SIZE, mx:mx + SIZE], 0, 1)
    cy, cx = _on_garment(rng, alpha, 8)
    fade = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(16, 28) ** 2))
    target = np.float32(0.95) if _under(img, alpha).mean() < 0.7 else img * 0.7  # grey on pale cloth
    img += (target - img) * (streaks * fade * alpha * rng.uniform(0.45, 0.65))[..., None]


_DEFECTS = {"stain": _stain, "tear": _tear, "discolouration": _discolouration, "pilling": _pilling,
            "residue": _residue, "hole": _hole, "mould": _mould}


def _print_holes(garment: np.ndarray) -> np.ndarray | None:
    """The garment's inside, if dark print would otherwise show through as holes, or None."""
    m = garment > 40  # where alpha (below) is not yet opaque
    rows = np.maximum.accumulate(m, axis=1) & np.maximum.accumulate(m[:, ::-1], axis=1)[:, ::-1]
    cols = np.maximum.accumulate(m, axis=0) & np.maximum.accumulate(m[::-1], axis=0)[::-1]
    filled = m | (rows & cols)
    if np.array_equal(filled, m):
        return None
    inner = filled.copy()  # one pixel in from the outline, which stays the photo's own soft edge
    inner[1:-1, 1:-1] &= filled[:-2, 1:-1] & filled[2:, 1:-1] & filled[1:-1, :-2] & filled[1:-1, 2:]
    return (inner * np.uint8(255)).astype(np.uint8)


def render(garment: np.ndarray, rng: np.random.Generator, defect: str | None = None) -> np.ndarray:
    """One RGB photo (uint8, SIZE x SIZE) of a 28x28 grey garment on fabric, with ``defect`` drawn."""
    if defect is not None and defect not in _DEFECTS:
        raise ValueError(f"unknown defect {defect!r} (expected one of {', '.join(ALL_DEFECT_KINDS)})")
    fabric, noise, _ = _textures()
    scale = int(rng.integers(int(SIZE * 0.75), int(SIZE * 0.95) + 1))
    oy, ox = rng.integers(0, SIZE - scale + 1, 2)
    v = np.zeros((SIZE, SIZE), np.float32)
    v[oy:oy + scale, ox:ox + scale] = np.asarray(Image.fromarray(garment).resize((scale, scale), Image.BICUBIC), np.float32) / 255
    alpha = np.clip(v * 8 - 0.15, 0, 1)
    holes = _print_holes(garment)
    if holes is not None:
        alpha[oy:oy + scale, ox:ox + scale] = np.maximum(alpha[oy:oy + scale, ox:ox + scale], np.asarray(
            Image.fromarray(holes).resize((scale, scale), Image.BILINEAR), np.float32) / 255)
    bg_tint = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.12), rng.uniform(0.9, 1.0))
    tint = _hsv_to_rgb(rng.random(), rng.uniform(0.25, 0.9), rng.uniform(0.45, 0.95))
    cloth = _crop(fabric, rng)
    shade = (0.35 + 0.75 * v) * (0.6 + 0.4 * _crop(fabric, rng))
    background = cloth[..., None] * bg_tint  # the bare table, which a hole shows through
    img = background * (1 - alpha[..., None]) + (shade[..., None] * tint) * alpha[..., None]
    # The defect draws from a generator of its own, so the same rng state renders the same photo
    # with and without it (the tests compare such pairs).
    defect_rng = np.random.default_rng(int(rng.integers(1 << 62)))
    if defect is not None:
        _DEFECTS[defect](img, alpha, defect_rng, background)
    gy, gx = rng.uniform(-0.12, 0.12, 2)  # uneven light across the table
    light = 1 + gy * np.linspace(-1, 1, SIZE, dtype=np.float32)[:, None] + gx * np.linspace(-1, 1, SIZE, dtype=np.float32)
    img *= (light * rng.uniform(0.9, 1.05))[..., None]
    img += _crop(noise, rng) * np.float32(rng.uniform(0.006, 0.02))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def linen_photo(
    rng: np.random.Generator,
    defective: bool | None = None,
    defective_fraction: float = 0.3,
    split: str = "train",
    kinds: tuple[str, ...] = DEFECT_KINDS,
) -> LinenPhoto:
    """A random garment photo; defective with probability ``defective_fraction`` unless forced,
    its defect one of ``kinds`` (by default the old kinds, so existing seeds render as before)."""
    if not kinds or set(kinds) - set(_DEFECTS):
        raise ValueError(f"kinds must be some of {', '.join(ALL_DEFECT_KINDS)}, got {kinds!r}")
    images, _ = load_garments(split)
    garment = images[rng.integers(len(images))]
    if defective is None:
        defective = bool(rng.random() < defective_fraction)
    defect = kinds[int(rng.integers(len(kinds)))] if defective else None
    image = render(garment, rng, defect)
    return LinenPhoto(image, DEFECTIVE if defective else GOOD, defect)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
