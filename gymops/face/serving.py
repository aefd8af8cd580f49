"""Face version folders for Triton's public name "face" (triton_models/face/).

A face version folder holds everything the version runs (as laundry's do): the ONNX export, the
metadata (semver and the version's OWN decision threshold, derived from impostor scores for every
version and never carried over), the template's model.py and a snapshot of gymops/face/preprocess.py.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from gymops.face.model import EMBEDDING_DIM, INPUT_SIZE, export_onnx
from gymops.serving.control import write_version

PREPROCESS_SOURCE = Path(__file__).resolve().parent / "preprocess.py"


def write_face_version(repository: Path, version: int, model: nn.Module, semver: str, threshold: float,
                       name: str = "face", extra: dict | None = None) -> Path:
    """Export ``model`` and write <repository>/<name>/<version>/ atomically (immutable afterwards)."""
    with tempfile.TemporaryDirectory(prefix="gymops-face-export-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        return write_face_onnx(repository, version, onnx_path, semver, threshold, name, extra)


def write_face_onnx(repository: Path, version: int, onnx_path: Path, semver: str, threshold: float,
                    name: str = "face", extra: dict | None = None) -> Path:
    """The same folder from an ONNX file already exported: the nightly batch serves the very file
    the registry recorded (its sha256), not a second export of the weights."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: a cosine threshold lies in [-1, 1], got {threshold}")
    meta = {"version": semver, "threshold": float(threshold), "embedding_dim": EMBEDDING_DIM,
            "image_size": INPUT_SIZE, "labels": [], **(extra or {})}
    return write_version(repository, name, version, Path(onnx_path), meta,
                         code=Path(repository) / name / "model.py", preprocessing=PREPROCESS_SOURCE)
