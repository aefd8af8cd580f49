"""Trunk feature maps by image content, shared by every training of the same trunk.

Why: the trunk is frozen, so an image's feature maps depend only on its pixels and the trunk. A
retraining reads the whole training window (issue 13: a retrain that reads only the newest
corrections forgets what it knew), so from the second training on, nearly every image was seen
before: in `make demo`, the retrain's 12,052 images took ~13 minutes of trunk time on 2 cores (~15
images/s) although all but the newest few hundred had been through the same trunk an hour
earlier. Augmented copies are deterministic (``augment.image_seed(seed, task, copy)``), so they
hit the cache too.

Layout: ``<root>/<trunk key>/<pack>/`` holds one ``<layer>.npy`` per trunk layer (float32, rows in
``digests.npy`` order) and ``digests.npy`` (16-byte BLAKE2b digests of the uint8 image bytes),
written last: a pack directory is built under a temporary name and renamed into place, so a crash
leaves either a whole pack or a ``.part`` directory that the next call removes. Lookups memory-map
the packs and copy the rows they need. Packs beyond ``max_bytes`` are evicted oldest first after a
lookup (their rows were already copied; a reader elsewhere keeps its mapping: unlink does not
invalidate an mmap on Linux).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

Extract = Callable[[np.ndarray, Callable[[int, int], None] | None], tuple[np.ndarray, ...]]
FORMAT = 1
DEFAULT_MAX_BYTES = 6 << 30  # ~32,000 images of EfficientNet-Lite0's three tapped maps (188 kB each)


def digests(images: np.ndarray) -> np.ndarray:
    """(N,) 'S16': the content address of each image (its dtype and shape included)."""
    out = np.empty(len(images), dtype="S16")
    for i, img in enumerate(images):
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{img.dtype.str}{img.shape}".encode())
        h.update(np.ascontiguousarray(img).data)
        out[i] = h.digest()
    return out


class FeatureCache:
    def __init__(self, root: Path | str, trunk_key: str, layers: Sequence[str], max_bytes: int = DEFAULT_MAX_BYTES):
        self.dir = Path(root) / f"v{FORMAT}-{trunk_key}"
        self.layers = tuple(layers)
        self.max_bytes = max_bytes
        self.hits = self.misses = 0

    def _packs(self) -> list[Path]:
        if not self.dir.exists():
            return []
        packs = []
        for p in self.dir.iterdir():
            if p.name.endswith(".part"):
                if time.time() - p.stat().st_mtime > 3600:  # a crashed writer's leftovers
                    shutil.rmtree(p, ignore_errors=True)
            elif (p / "digests.npy").exists():
                packs.append(p)
        return sorted(packs, key=lambda p: p.stat().st_mtime)

    def features(self, images: np.ndarray, extract: Extract,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, ...]:
        """One float32 array per layer, row i for ``images[i]``: rows found in the cache are
        copied, the others extracted (``extract(images_subset, progress)``) and stored as a pack."""
        n = len(images)
        if not n:
            raise ValueError("no images to extract features from")
        uniq, first, inverse = np.unique(digests(images), return_index=True, return_inverse=True)
        found = np.zeros(len(uniq), dtype=bool)
        out: list[np.ndarray] | None = None
        for pack in reversed(self._packs()):  # newest first
            if found.all():
                break
            try:
                pack_keys = np.load(pack / "digests.npy", allow_pickle=False)
                rows = np.flatnonzero(np.isin(pack_keys, uniq[~found]))
                if not len(rows):
                    continue
                maps = [np.load(pack / f"{layer}.npy", mmap_mode="r", allow_pickle=False) for layer in self.layers]
                at = np.searchsorted(uniq, pack_keys[rows])
                if out is None:
                    out = [np.empty((n, *m.shape[1:]), dtype=np.float32) for m in maps]
                for o, m in zip(out, maps, strict=True):
                    o[first[at]] = m[rows]
            except (OSError, ValueError):  # evicted meanwhile, or unreadable: extracted below instead
                continue
            found[at] = True
        missing = np.flatnonzero(~found)
        self.misses += len(missing)
        self.hits += len(uniq) - len(missing)
        if len(missing):
            new = extract(images[first[missing]], progress)
            if out is None:
                out = [np.empty((n, *m.shape[1:]), dtype=np.float32) for m in new]
            for o, m in zip(out, new, strict=True):
                o[first[missing]] = m
            self._write(uniq[missing], new)
        repeats = np.flatnonzero(first[inverse] != np.arange(n))  # an image that occurs twice: copy its row
        for o in out:
            o[repeats] = o[first[inverse[repeats]]]
        self._evict()
        return tuple(out)

    def _write(self, keys: np.ndarray, maps: Sequence[np.ndarray]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f"{name}.part"
        tmp.mkdir()
        for layer, m in zip(self.layers, maps, strict=True):
            with open(tmp / f"{layer}.npy", "wb") as fh:
                np.save(fh, np.ascontiguousarray(m, dtype=np.float32), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        with open(tmp / "digests.npy", "wb") as fh:
            np.save(fh, keys, allow_pickle=False)
        os.replace(tmp, self.dir / name)

    def _evict(self) -> None:
        packs = self._packs()
        sizes = [sum(f.stat().st_size for f in p.iterdir()) for p in packs]
        total = sum(sizes)
        for pack, size in zip(packs, sizes):
            if total <= self.max_bytes or pack == packs[-1]:
                break
            shutil.rmtree(pack, ignore_errors=True)
            total -= size
