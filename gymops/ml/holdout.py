"""The holdout of a model type: tasks never trained or validated on, frozen on disk in versions.
Each training grows it (``Holdout.grow``) by a share of the tasks confirmed since the newest
version's cutoff, so new defect kinds reach it; a version never changes, and the gates score the
champion and the challenger on the current one. Its size per class follows the README's rule
(``count_per_class``, ``gymops.lifecycle.statistics.gate_sample_size``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gymops.ingest.events import LABELS
from gymops.ml.preprocess import IMAGE_SIZE, decode_rgb, normalise, resize_rgb

from gymops.ml.records import (CLASS_INDEX, DATASET_FORMAT, MANIFEST, NotEnoughData, TaskRecord, digest,
                               read_frozen_photos, stratified_pick, ts_key, write_frozen_version)


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
        return read_frozen_photos(self.path, self.task_ids, self.digests, "holdout photo of task")

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
                   considered_until=m.get("considered_until") or ts_key(datetime.fromisoformat(
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

        chosen = stratified_pick(items, count_for, seed, "holdout")
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
                 if rec.task_id not in held and ts_key(rec.event_timestamp) > self.considered_until}
        if not fresh:
            return self
        have = self.class_counts

        def count_for(label: str, n: int) -> int:
            return count_per_class(n, have[label], fraction, target_per_class, max_share)

        chosen = sorted(stratified_pick([(t, rec.label) for t, (rec, _) in fresh.items()], count_for, self.seed,
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
    return max((ts_key(r.event_timestamp) for r in records), default="")


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
        "digests": [digest(b) for b in blobs],
        "added_in": added_in,
    }
    write_frozen_version(_version_dir(folder, model_type, version), blobs, manifest)
    loaded = Holdout.load(folder, model_type, version)
    assert loaded is not None
    return loaded
