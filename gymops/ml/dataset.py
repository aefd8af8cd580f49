"""Training data for the laundry model: fetch photos, freeze a holdout, split by task, augment.

Rules (DESIGN.md, Contracts):
- the split is BY TASK and happens BEFORE augmentation, stratified by label: no augmented copy of
  a training photo lands in validation or the holdout;
- the holdout of a model type is frozen (task ids, labels and photo bytes on disk) and is never
  trained or validated on; it grows in versions, each new one adding a share of the tasks
  confirmed since the last (``Holdout.grow``), and a version never changes;
- arrays are written as .npy (never pickle) next to a manifest.json; ``dataset_id`` is a short
  content hash of the tasks (ids, labels, photo digests), the holdout and the configuration.

Training images: each training task contributes ``copies`` images, namely its ORIGINAL photo plus
``copies - 1`` augmented copies (so the model also sees photos exactly as served). Validation and
holdout photos are never augmented. All images are stored as uint8 (N, size, size, 3) after the
resize step of ``gymops.ml.preprocess``; ``normalise`` turns them into the model input, which is
then bit-identical to ``preprocess(photo_bytes)`` for un-augmented photos.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from gymops.ingest.events import LABELS
from gymops.ml import augment as aug
from gymops.ml.preprocess import IMAGE_SIZE, decode_rgb, normalise, resize_rgb

from gymops.ml.holdout import Holdout
from gymops.ml.records import (CLASS_INDEX, DATASET_FORMAT, MANIFEST, NotEnoughData, Progress, TaskRecord,
                               digest, save_npy, stratified_pick, write_json)


@dataclass
class DatasetManifest:
    """What ``build_dataset`` wrote: ids, counts, balance, files (relative to ``out_dir``)."""

    dataset_id: str
    out_dir: str
    size: int
    copies: int
    val_fraction: float
    seed: int
    augmentation: str
    counts: dict[str, int]
    class_balance: dict[str, dict[str, int]]
    train_task_ids: list[str]
    val_task_ids: list[str]
    holdout_task_ids: list[str]
    files: dict[str, str]
    created_at: str
    build_seconds: float = 0.0
    format: int = DATASET_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.out_dir)

    def images(self, split: str) -> np.ndarray:
        """uint8 (N, size, size, 3) of 'train' or 'val' (memory-mapped)."""
        return np.load(self.path / self.files[f"{split}_images"], mmap_mode="r", allow_pickle=False)

    def labels(self, split: str) -> np.ndarray:
        """int64 (N,): 0 good, 1 defective."""
        return np.load(self.path / self.files[f"{split}_labels"], allow_pickle=False)

    def task_ids(self, split: str) -> np.ndarray:
        """str (N,): the task each image came from (repeated for augmented copies)."""
        return np.load(self.path / self.files[f"{split}_task_ids"], allow_pickle=False)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (N, 3, size, size) normalised, y int64). For big splits prefer images()."""
        return normalise(np.asarray(self.images(split))), self.labels(split)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self) -> Path:
        path = self.path / MANIFEST
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, out_dir: Path | str) -> "DatasetManifest":
        data = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
        data["out_dir"] = str(Path(out_dir))
        return cls(**data)


def dataset_id_for(
    fetched: Sequence[tuple[TaskRecord, bytes]], holdout_ids: Iterable[str], val_fraction: float, copies: int,
    size: int, seed: int, corrected_copies: int | None = None,
) -> str:
    """12 hex digits of sha256 over the sorted (task id, label, corrected, photo digest) of the
    tasks not held out, the holdout and the config: the id build_dataset gives the same input."""
    holdout_ids = set(holdout_ids)
    h = hashlib.sha256()
    config = {"format": DATASET_FORMAT, "val_fraction": val_fraction, "copies": copies, "size": size, "seed": seed,
              "augmentation": aug.DESCRIPTION, "holdout": sorted(holdout_ids),
              "corrected_copies": corrected_copies or copies}
    h.update(json.dumps(config, sort_keys=True).encode())
    for rec, data in sorted((rd for rd in fetched if rd[0].task_id not in holdout_ids), key=lambda rd: rd[0].task_id):
        h.update(f"\n{rec.task_id}\x00{rec.label}\x00{int(rec.corrected)}\x00{digest(data)}".encode())
    return h.hexdigest()[:12]


def _split(items: list[tuple[str, str]], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    def count_for(label: str, n: int) -> int:
        if n == 0:
            return 0
        if n < 2:
            raise NotEnoughData(f"need at least 2 {label} tasks to split into training and validation, have {n}")
        return min(n - 1, max(1, round(val_fraction * n)))

    val = stratified_pick(items, count_for, seed, "validation")
    return sorted(t for t, _ in items if t not in val), sorted(val)


def build_dataset(
    fetched: Sequence[tuple[TaskRecord, bytes]],
    holdout: Holdout | Iterable[str] | None,
    out_dir: Path | str,
    val_fraction: float = 0.2,
    copies: int = 5,
    size: int = IMAGE_SIZE,
    seed: int = 0,
    progress: Progress | None = None,
    corrected_copies: int | None = None,
) -> DatasetManifest:
    """Split by task (stratified, before augmentation), augment the training tasks, write arrays.

    Holdout tasks are excluded first. Each training task gives ``copies`` images: the original photo
    and ``copies - 1`` augmented ones; a task a manager corrected gives ``corrected_copies``
    (default ``copies``): the model's own mistakes, oversampled, weigh more in the loss without
    the history they sit in being dropped. Validation photos are not augmented. If ``out_dir`` already
    holds a complete dataset with the same ``dataset_id``, it is returned without rebuilding.
    ``progress(done, total)`` is called as images are made.
    """
    if copies < 1:
        raise ValueError("copies must be >= 1")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be within (0, 1), got {val_fraction}")
    started = time.perf_counter()
    holdout_ids = set(holdout.task_ids if isinstance(holdout, Holdout) else (holdout or ()))
    by_id: dict[str, tuple[TaskRecord, bytes]] = {}
    for rec, data in fetched:
        by_id[rec.task_id] = (rec, data)  # the last record of a task wins (fetch_photos already de-duplicates)
    usable = [by_id[t] for t in sorted(by_id) if t not in holdout_ids]
    excluded = len(by_id) - len(usable)
    corrected_copies = corrected_copies or copies
    if corrected_copies < 1:
        raise ValueError("corrected_copies must be >= 1")
    dataset_id = dataset_id_for(usable, holdout_ids, val_fraction, copies, size, seed, corrected_copies)

    out = Path(out_dir)
    if (out / MANIFEST).exists():
        try:
            existing = DatasetManifest.load(out)
            if existing.dataset_id == dataset_id and all((out / f).exists() for f in existing.files.values()):
                return existing
        except (ValueError, KeyError, TypeError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the manifest, written last, marks a complete dataset

    train_ids, val_ids = _split([(rec.task_id, rec.label) for rec, _ in usable], val_fraction, seed)

    def copies_of(t: str, split_copies: int) -> int:
        return corrected_copies if split_copies > 1 and by_id[t][0].corrected else split_copies

    total = sum(copies_of(t, copies) for t in train_ids) + len(val_ids)
    done = 0

    def make(ids: list[str], split_copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nonlocal done
        count = sum(copies_of(t, split_copies) for t in ids)
        images = np.empty((count, size, size, 3), dtype=np.uint8)
        labels = np.empty(count, dtype=np.int64)
        tids = []
        k = 0
        for t in ids:
            rec, data = by_id[t]
            rgb = decode_rgb(data)
            for c in range(copies_of(t, split_copies)):
                img = rgb if c == 0 else aug.augment(rgb, aug.image_seed(seed, t, c))
                images[k] = resize_rgb(img, size)
                labels[k] = CLASS_INDEX[rec.label]
                tids.append(t)
                k += 1
                done += 1
                if progress:
                    progress(done, total)
        return images, labels, np.array(tids, dtype=str)

    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    balance: dict[str, dict[str, int]] = {}
    for split, ids, n_copies in (("train", train_ids, copies), ("val", val_ids, 1)):
        images, labels, tids = make(ids, n_copies)
        for kind, arr in (("images", images), ("labels", labels), ("task_ids", tids)):
            name = f"{split}_{kind}.npy"
            save_npy(out / name, arr)
            files[f"{split}_{kind}"] = name
        counts[f"{split}_tasks"] = len(ids)
        counts[f"{split}_images"] = len(labels)
        balance[split] = {label: int((labels == CLASS_INDEX[label]).sum()) for label in LABELS}
    counts["holdout_tasks"] = len(holdout_ids)
    counts["excluded_holdout_tasks"] = excluded
    counts["input_tasks"] = len(by_id)
    counts["corrected_train_tasks"] = sum(1 for t in train_ids if by_id[t][0].corrected)
    balance["holdout"] = (holdout.class_counts if isinstance(holdout, Holdout) else {})
    manifest = DatasetManifest(
        dataset_id=dataset_id, out_dir=str(out), size=size, copies=copies, val_fraction=val_fraction, seed=seed,
        augmentation=f"original + {copies - 1} augmented per training task; " + aug.DESCRIPTION,
        counts=counts, class_balance=balance, train_task_ids=train_ids, val_task_ids=val_ids,
        holdout_task_ids=sorted(holdout_ids), files=files,
        extra={"holdout_version": holdout.version if isinstance(holdout, Holdout) else None,
               "corrected_copies": corrected_copies},
        created_at=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        build_seconds=round(time.perf_counter() - started, 3),
    )
    manifest.save()
    return manifest
