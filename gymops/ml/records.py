"""Confirmed laundry tasks and their photos, as the dataset and the holdout read them: the task
record, fetching photos in parallel (unreadable ones dropped with reasons), and the small
crash-safe file steps both write with (json and .npy through a temporary name, then a rename)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from gymops.ingest.events import DEFECTIVE, GOOD, LABELS, normalise_label
from gymops.ml.preprocess import decode_rgb

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


def ts_key(ts: Any) -> str:
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
        if j is None or ts_key(rec.event_timestamp) >= ts_key(records[j].event_timestamp):
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


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def pack_bytes(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def write_frozen_version(final: Path, blobs: Sequence[bytes], manifest: dict) -> None:
    """A holdout version folder (photos.npy, offsets.npy, then the manifest), written under a
    temporary name and renamed into place: atomic, and immutable once there. When another process
    wrote the same version first, its folder stands."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
    try:
        data, offsets = pack_bytes(blobs)
        save_npy(tmp / "photos.npy", data)
        save_npy(tmp / "offsets.npy", offsets)
        write_json(tmp / MANIFEST, manifest)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_frozen_photos(path: Path, keys: Sequence[str], digests: Sequence[str], what: str) -> list[bytes]:
    """The photo bytes of a holdout version folder in ``keys`` order, each checked against its
    digest (ValueError naming ``what`` and the key when one is corrupt)."""
    data = np.load(path / "photos.npy", allow_pickle=False)
    offsets = np.load(path / "offsets.npy", allow_pickle=False)
    out = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(keys))]
    for key, blob, expected in zip(keys, out, digests):
        if digest(blob) != expected:
            raise ValueError(f"{what} {key} in {path} is corrupt (digest mismatch)")
    return out


def stratified_pick(items: list[tuple[str, str]], count_for: Callable[[str, int], int], seed: int,
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
