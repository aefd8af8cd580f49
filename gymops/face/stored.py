"""The nightly face batch's files under the pipeline root ($GYMOPS_HOME/pipeline): where each stage
leaves its output for the next, which may run in another process (a Dagster step, a re-execution
from a failed step, a resumed run).

    holdout/face/vNNNN/          the frozen identity holdout (gymops.face.dataset)
    features/face-*/             frozen-part feature maps by photo content (gymops.ml.feature_cache)
    face/datasets/<id>/          a dataset's train and val photos (this module: save/load_dataset)
    face/checkpoints/<id>-<cfg>/ a training's checkpoints and result.json (gymops.face.train)
    face/models/<id>-<cfg>.onnx  the candidate's ONNX, registered by its sha256; pretrained.onnx
    face/gates/<version>.json    a candidate's gate verdict: the deploy reads its threshold from it

Every file is written whole or not at all (temporary name, then rename), and a dataset folder is
named by its id (a digest of its contents), so a re-run finds what an earlier run wrote.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gymops.face.dataset import FaceDataset, FaceHoldout
from gymops.ml.records import MANIFEST, pack_bytes, save_npy, write_json

SPLITS = ("train", "val")


class FacePaths:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def holdout(self) -> Path:
        return self._dir("holdout")

    @property
    def features(self) -> Path:
        return self._dir("features")

    def dataset(self, dataset_id: str) -> Path:
        return self._dir("face", "datasets") / dataset_id

    def checkpoints(self, dataset_id: str, fingerprint: str) -> Path:
        return self._dir("face", "checkpoints") / f"{dataset_id}-{fingerprint}"

    def onnx(self, dataset_id: str, fingerprint: str) -> Path:
        return self._dir("face", "models") / f"{dataset_id}-{fingerprint}.onnx"

    @property
    def pretrained_onnx(self) -> Path:
        return self._dir("face", "models") / "pretrained.onnx"

    def gate(self, version: str) -> Path:
        return self._dir("face", "gates") / f"{version}.json"


def save_dataset(ds: FaceDataset, folder: Path) -> Path:
    """Write ``ds``'s train and val photos and labels (the holdout is already frozen on disk)."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return folder  # the id is a digest of the contents: what is there is this dataset
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        for split in SPLITS:
            data, offsets = pack_bytes(ds.photos[split])
            save_npy(tmp / f"{split}_photos.npy", data)
            save_npy(tmp / f"{split}_offsets.npy", offsets)
        write_json(tmp / MANIFEST, {"dataset_id": ds.dataset_id, "seed": ds.seed,
                                    "holdout_version": ds.holdout.version, "user_ids": ds.user_ids,
                                    "event_ids": ds.event_ids, "dropped": [list(d) for d in ds.dropped]})
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_dataset(folder: Path, holdout_dir: Path) -> FaceDataset:
    """The dataset ``save_dataset`` wrote, with the holdout version it was built against."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        raise FileNotFoundError(f"face dataset {folder} does not exist (materialise face_dataset first)")
    m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    holdout = FaceHoldout.load(holdout_dir, m["holdout_version"])
    photos = {}
    for split in SPLITS:
        data = np.load(folder / f"{split}_photos.npy", allow_pickle=False)
        offsets = np.load(folder / f"{split}_offsets.npy", allow_pickle=False)
        photos[split] = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
    return FaceDataset(m["dataset_id"], m["seed"], holdout, photos, m["user_ids"], m["event_ids"],
                       [tuple(d) for d in m["dropped"]])


def write_gate(path: Path, record: dict) -> None:
    write_json(Path(path), record)


def read_gate(path: Path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
