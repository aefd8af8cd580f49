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
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from gymops.ingest.events import DEFECTIVE, GOOD, LABELS, normalise_label
from gymops.ml import augment as aug
from gymops.ml.preprocess import IMAGE_SIZE, decode_rgb, normalise, resize_rgb

Progress = Callable[[int, int], None]
CLASS_INDEX = {GOOD: 0, DEFECTIVE: 1}  # the model's output order: [good, defective]
MANIFEST = "manifest.json"
DATASET_FORMAT = 1


@dataclass(frozen=True)
class TaskRecord:
    """One confirmed laundry task: the manager's final label for a photo."""

    task_id: str
    photo_url: str
    label: str  # "good" | "defective" (aliases such as 양호/불량 are normalised)
    corrected: bool = False
    event_timestamp: datetime | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", normalise_label(self.label))


Fetched = list[tuple[TaskRecord, bytes]]
Dropped = list[tuple[TaskRecord, str]]


class NotEnoughData(ValueError):
    """Too few tasks (of some class) for the requested holdout or split."""


def _ts_key(ts: Any) -> str:
    if ts is None:
        return ""
    if isinstance(ts, datetime):
        return ts.astimezone(timezone.utc).isoformat() if ts.tzinfo else ts.isoformat()
    return str(ts)


def fetch_photos(
    records: Iterable[TaskRecord],
    get: Callable[[str], bytes],
    workers: int = 8,
    progress: Progress | None = None,
) -> tuple[Fetched, Dropped]:
    """Fetch every record's photo in ``workers`` threads and check that it decodes.

    Returns (fetched, dropped): fetched keeps the input order; dropped pairs each rejected record
    with its reason ("unreadable: ...", "undecodable: ...", "superseded: ..."). When a task id
    appears more than once, only its latest record (by event_timestamp, then position) is used.
    """
    records = list(records)
    latest: dict[str, int] = {}
    for i, rec in enumerate(records):
        j = latest.get(rec.task_id)
        if j is None or _ts_key(rec.event_timestamp) >= _ts_key(records[j].event_timestamp):
            latest[rec.task_id] = i
    keep = sorted(latest.values())
    dropped: Dropped = [
        (rec, f"superseded: a later record of task {rec.task_id} exists")
        for i, rec in enumerate(records) if latest[rec.task_id] != i
    ]

    def one(rec: TaskRecord) -> tuple[bytes | None, str | None]:
        try:
            data = get(rec.photo_url)
        except Exception as exc:  # noqa: BLE001 - any store error drops this photo, with the reason
            return None, f"unreadable: {type(exc).__name__}: {exc}"
        if not isinstance(data, (bytes, bytearray)):
            return None, f"unreadable: the store returned {type(data).__name__}, not bytes"
        try:
            decode_rgb(bytes(data))
        except ValueError as exc:
            return None, f"undecodable: {exc}"
        return bytes(data), None

    fetched: Fetched = []
    total = len(keep)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch-photo") as pool:
        for done, (i, (data, reason)) in enumerate(zip(keep, pool.map(one, (records[i] for i in keep))), 1):
            if data is None:
                dropped.append((records[i], reason or "unreadable"))
            else:
                fetched.append((records[i], data))
            if progress:
                progress(done, total)
    return fetched, dropped


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def _pack_bytes(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def _stratified_pick(items: list[tuple[str, str]], count_for: Callable[[str, int], int], seed: int,
                     salt: str) -> set[str]:
    """Task ids chosen per label: ``count_for(label, n)`` of the label's n tasks, order-independent."""
    chosen: set[str] = set()
    for label in LABELS:
        ids = sorted(t for t, lab in items if lab == label)
        k = count_for(label, len(ids))
        if k <= 0:
            continue
        # The rank of a task is a hash of (seed, salt, task id): the pick does not depend on the
        # order the tasks arrived in, and adding tasks never reshuffles the ones already there.
        ranked = sorted(ids, key=lambda t: hashlib.sha256(f"{seed}\x00{salt}\x00{t}".encode()).digest())
        chosen.update(ranked[:k])
    return chosen


@dataclass
class Holdout:
    """One version of a model type's holdout: tasks that are never trained or validated on.

    Why versions: a holdout frozen once holds only what the first model's data held (old defect
    kinds), so it cannot credit a model for learning a new kind, nor notice one forgetting. Each
    training run ``grow``s it: of the tasks confirmed since the newest version looked (their
    event_timestamp after ``considered_until``), a hash-drawn share per class is set aside into a
    new version before the dataset is built, the rest may be trained on. A task once trained on is
    never set aside later (it was confirmed before the cutoff), and a version never changes, so a
    gate can name the version it read. ``added_in`` says which version brought each task: the
    tasks added after the version a model was trained against are the newest confirmed ones.

    Layout: ``<folder>/<model_type>/v0001/`` (manifest.json, photos.npy, offsets.npy), one folder
    per version, each complete; a folder written before versions existed (manifest directly in
    ``<model_type>/``) reads as version 1."""

    folder: Path
    model_type: str
    task_ids: list[str]
    labels: list[str]
    digests: list[str]
    created_at: str
    seed: int
    fraction: float
    min_per_class: int
    version: int = 1
    added_in: list[int] = field(default_factory=list)  # per task: the version that set it aside
    considered_until: str = ""  # the newest event_timestamp this version looked at (ISO, UTC)

    def __post_init__(self) -> None:
        if not self.added_in:
            self.added_in = [1] * len(self.task_ids)

    @property
    def path(self) -> Path:
        return _version_dir(self.folder, self.model_type, self.version)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def _ids(self) -> frozenset[str]:
        return frozenset(self.task_ids)

    @property
    def class_counts(self) -> dict[str, int]:
        return {label: self.labels.count(label) for label in LABELS}

    def added_after(self, version: int | None) -> list[bool]:
        """Per task: set aside by a version after ``version`` (None: no task is)."""
        return [version is not None and v > version for v in self.added_in]

    def photos(self) -> list[bytes]:
        """The frozen photo bytes, in ``task_ids`` order (checked against their digests)."""
        data = np.load(self.path / "photos.npy", allow_pickle=False)
        offsets = np.load(self.path / "offsets.npy", allow_pickle=False)
        out = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(self.task_ids))]
        for tid, blob, digest in zip(self.task_ids, out, self.digests):
            if _digest(blob) != digest:
                raise ValueError(f"holdout photo of task {tid} in {self.path} is corrupt (digest mismatch)")
        return out

    def images(self, size: int = IMAGE_SIZE) -> np.ndarray:
        """uint8 (N, size, size, 3): the holdout photos after the resize step."""
        return np.stack([resize_rgb(decode_rgb(b), size) for b in self.photos()]) if self.task_ids else \
            np.zeros((0, size, size, 3), np.uint8)

    def arrays(self, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (N, 3, size, size) exactly as ``preprocess`` gives it, y int64 (0 good, 1 defective))."""
        return normalise(self.images(size)), np.array([CLASS_INDEX[l] for l in self.labels], dtype=np.int64)

    @classmethod
    def versions(cls, folder: Path | str, model_type: str) -> list[int]:
        root = Path(folder) / model_type
        found = sorted(int(p.name[1:]) for p in root.glob("v[0-9][0-9][0-9][0-9]") if (p / MANIFEST).exists()) \
            if root.exists() else []
        return found or ([1] if (root / MANIFEST).exists() else [])

    @classmethod
    def load(cls, folder: Path | str, model_type: str, version: int | None = None) -> "Holdout | None":
        """The given version, or the newest; None when none was frozen yet."""
        versions = cls.versions(folder, model_type)
        if not versions:
            return None
        version = versions[-1] if version is None else version
        path = _version_dir(folder, model_type, version) / MANIFEST
        if not path.exists():
            raise LookupError(f"{model_type} holdout has no version {version} (versions: {versions})")
        m = json.loads(path.read_text(encoding="utf-8"))
        return cls(folder=Path(folder), model_type=m["model_type"], task_ids=m["task_ids"], labels=m["labels"],
                   digests=m["digests"], created_at=m["created_at"], seed=m["seed"], fraction=m["fraction"],
                   min_per_class=m["min_per_class"], version=m.get("version", 1),
                   added_in=m.get("added_in") or [],
                   # a holdout frozen before versions existed looked at what was confirmed until its freeze
                   considered_until=m.get("considered_until") or _ts_key(datetime.fromisoformat(
                       m["created_at"].replace("Z", "+00:00"))))

    @classmethod
    def freeze_or_load(
        cls,
        folder: Path | str,
        model_type: str,
        candidates: Sequence[tuple[TaskRecord, bytes]],
        fraction: float = 0.15,
        min_per_class: int = 10,
        seed: int = 0,
        target_per_class: int = 0,
        max_share: float = 0.5,
    ) -> "Holdout":
        """The model type's newest holdout version: loaded if one was frozen before (``candidates``
        are then ignored; ``grow`` adds to it), else version 1 frozen now from ``candidates``: per
        class ``count_per_class`` tasks, chosen by a seeded hash of the task id. Raises
        NotEnoughData when a class would keep fewer than ``min_per_class`` tasks for training."""
        existing = cls.load(folder, model_type)
        if existing is not None:
            return existing
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be within (0, 1), got {fraction}")
        by_id = {rec.task_id: (rec, data) for rec, data in candidates}
        items = [(t, rec.label) for t, (rec, _) in by_id.items()]
        counts = {label: sum(1 for _, lab in items if lab == label) for label in LABELS}

        def count_for(label: str, n: int) -> int:
            k = max(min_per_class, count_per_class(n, 0, fraction, target_per_class, max_share))
            if n - k < max(min_per_class, 1):
                raise NotEnoughData(
                    f"cannot freeze a {model_type} holdout: {n} {label} tasks, {k} needed for the holdout "
                    f"and at least {max(min_per_class, 1)} more for training (have {counts})"
                )
            return k

        chosen = _stratified_pick(items, count_for, seed, "holdout")
        ids = sorted(chosen)
        return _write_version(folder, model_type, 1, ids, [by_id[t][0].label for t in ids], [by_id[t][1] for t in ids],
                              [1] * len(ids), _newest_ts(rec for rec, _ in candidates), seed, fraction, min_per_class,
                              len(items))

    def grow(self, candidates: Sequence[tuple[TaskRecord, bytes]], fraction: float | None = None,
             target_per_class: int = 0, max_share: float = 0.5) -> "Holdout":
        """The next version: this one plus, per class, ``count_per_class`` of the candidates
        confirmed after ``considered_until`` (and not held out already), hash-drawn. A version is
        written whenever there were such candidates (also when none was set aside: the cutoff
        moves, so they are never drawn later, after being trained on); else this one is returned."""
        fraction = self.fraction if fraction is None else fraction
        held = self._ids
        fresh = {rec.task_id: (rec, data) for rec, data in candidates
                 if rec.task_id not in held and _ts_key(rec.event_timestamp) > self.considered_until}
        if not fresh:
            return self
        have = self.class_counts

        def count_for(label: str, n: int) -> int:
            return count_per_class(n, have[label], fraction, target_per_class, max_share)

        chosen = sorted(_stratified_pick([(t, rec.label) for t, (rec, _) in fresh.items()], count_for, self.seed,
                                         f"holdout-v{self.version + 1}"))
        old_photos = self.photos()
        version = self.version + 1
        return _write_version(
            self.folder, self.model_type, version, self.task_ids + chosen,
            self.labels + [fresh[t][0].label for t in chosen], old_photos + [fresh[t][1] for t in chosen],
            self.added_in + [version] * len(chosen),
            max(self.considered_until, _newest_ts(rec for rec, _ in fresh.values())), self.seed, fraction,
            self.min_per_class, len(fresh))


def count_per_class(new: int, held: int, fraction: float, target: int, max_share: float) -> int:
    """Of ``new`` newly confirmed tasks of a class, how many are set aside when the holdout holds
    ``held`` of it: always ``fraction`` of them (so new defect kinds keep reaching the holdout),
    and while the class is below ``target`` (the README's sizing rule) up to ``max_share`` of them
    to close the gap (the rest is left for training)."""
    catch_up = min(max(target - held, 0), int(max_share * new))
    return min(new, max(round(fraction * new), catch_up))


def _version_dir(folder: Path | str, model_type: str, version: int) -> Path:
    root = Path(folder) / model_type
    if version == 1 and (root / MANIFEST).exists():  # written before versions existed
        return root
    return root / f"v{version:04d}"


def _newest_ts(records: Iterable[TaskRecord]) -> str:
    return max((_ts_key(r.event_timestamp) for r in records), default="")


def _write_version(folder, model_type: str, version: int, ids: list[str], labels: list[str], blobs: list[bytes],
                   added_in: list[int], considered_until: str, seed: int, fraction: float, min_per_class: int,
                   candidates: int) -> Holdout:
    """Write one complete version folder atomically (tmp folder, then rename: another process
    writing the same version first wins, and its version is returned)."""
    manifest = {
        "format": DATASET_FORMAT,
        "model_type": model_type,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "seed": seed,
        "fraction": fraction,
        "min_per_class": min_per_class,
        "candidates": candidates,
        "considered_until": considered_until,
        "class_counts": {label: labels.count(label) for label in LABELS},
        "added": {label: sum(1 for lab, v in zip(labels, added_in) if lab == label and v == version)
                  for label in LABELS},
        "task_ids": ids,
        "labels": labels,
        "digests": [_digest(b) for b in blobs],
        "added_in": added_in,
    }
    final = _version_dir(folder, model_type, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".v{version:04d}-"))
    try:
        data, offsets = _pack_bytes(blobs)
        _save_npy(tmp / "photos.npy", data)
        _save_npy(tmp / "offsets.npy", offsets)
        _write_json(tmp / MANIFEST, manifest)
        try:
            os.rename(tmp, final)  # atomic; fails if another process wrote this version first
        except OSError:
            if not (final / MANIFEST).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = Holdout.load(folder, model_type, version)
    assert loaded is not None
    return loaded


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
        _write_json(path, self.to_dict())
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
        h.update(f"\n{rec.task_id}\x00{rec.label}\x00{int(rec.corrected)}\x00{_digest(data)}".encode())
    return h.hexdigest()[:12]


def _split(items: list[tuple[str, str]], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    def count_for(label: str, n: int) -> int:
        if n == 0:
            return 0
        if n < 2:
            raise NotEnoughData(f"need at least 2 {label} tasks to split into training and validation, have {n}")
        return min(n - 1, max(1, round(val_fraction * n)))

    val = _stratified_pick(items, count_for, seed, "validation")
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
            _save_npy(out / name, arr)
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
