"""The golden check: a candidate's OFFLINE answers (onnxruntime in this process on
gymops.ml.preprocess of the photo bytes, i.e. the checkout's preprocessing, the same file
write_version copies into the version folder) against what Triton serves for the same bytes.

A difference beyond the tolerance, a non-finite answer or an artifact onnxruntime cannot run is a
model defect (``Defect``: the deploy rejects the candidate with these reasons); answers from an
unexpected model_version are an infrastructure problem (the deploy fails, the candidate stays one).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from gymops.lifecycle.outbox import failure_reason

from .reports import Defect

TOLERANCE = 1e-4
LABELS = ("good", "defective")


def reason(check: str, value, threshold, message: str) -> dict:
    """One rejection reason of the deploy gate (outbox.failure_reason's shape; a non-finite value
    as its string, so the event stays plain JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    return failure_reason("deploy", check, value, threshold, message)


def preprocess_golden(photos: Sequence[bytes]) -> np.ndarray:
    """The model inputs of the golden photos, float32 (N, 3, 224, 224); ValueError names the photo."""
    from gymops.ml.preprocess import preprocess

    if not photos:
        raise ValueError("golden_photos: at least one photo is needed for the golden check")
    rows = []
    for i, photo in enumerate(photos):
        try:
            rows.append(preprocess(photo))
        except ValueError as exc:
            raise ValueError(f"golden photo {i}: {exc}") from None
    return np.stack(rows)


def offline_answers(artifact: Path, arrays: np.ndarray) -> np.ndarray:
    """float32 (N, 2) probabilities of the artifact on the arrays; Defect when it cannot run or
    answers in another shape or non-finite."""
    from gymops.ml.evaluate import onnx_session, predict_onnx

    try:
        probs = predict_onnx(artifact, arrays, session=onnx_session(artifact))
    except Exception as exc:  # noqa: BLE001 -- an artifact onnxruntime cannot run is a defect
        raise Defect([reason("offline_inference", None, None,
                             f"onnxruntime cannot run {artifact.name}: {type(exc).__name__}: {exc}")]) from None
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (len(arrays), 2):
        raise Defect([reason("offline_shape", list(probs.shape), [len(arrays), 2],
                             f"offline output has shape {probs.shape}, expected ({len(arrays)}, 2)")])
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise Defect([reason("offline_finite", int(bad.sum()), 0,
                             f"{int(bad.sum())} of {len(probs)} golden photos get non-finite probabilities "
                             "offline (NaN/inf)")])
    return probs


def compare(where: str, verdicts, expected: np.ndarray, semver: str, tolerance: float = TOLERANCE,
            labels: Sequence[str] = LABELS) -> tuple[dict, list[dict], list[str]]:
    """(summary, defects, infrastructure problems) of served verdicts against offline answers."""
    served = np.array([v.probabilities for v in verdicts], dtype=np.float64)
    diff = np.abs(served - expected.astype(np.float64))
    off = ~(diff <= tolerance)  # NaN counts as off
    max_diff = float("nan") if np.isnan(diff).any() else float(np.max(diff))
    want_labels = [labels[int(k)] for k in expected.argmax(axis=1)]
    wrong_labels = [i for i, v in enumerate(verdicts) if v.label != want_labels[i]]
    versions = sorted({v.model_version for v in verdicts})
    summary = {"photos": len(verdicts), "max_abs_diff": max_diff, "versions": versions}
    defects, infra = [], []
    if versions != [semver]:
        infra.append(f"{where} answered as model_version {versions}, expected {semver}")
    rows = np.flatnonzero(off.any(axis=1))
    if len(rows):
        i = int(rows[0])
        defects.append(reason(f"{where}_probabilities", max_diff, tolerance,
                              f"{where}: {len(rows)} of {len(verdicts)} golden photos differ from the offline "
                              f"answers by more than {tolerance:g} (max {max_diff:.3g}; photo {i}: "
                              f"served {np.round(served[i], 6).tolist()}, offline {np.round(expected[i], 6).tolist()})"))
    if wrong_labels:
        i = wrong_labels[0]
        defects.append(reason(f"{where}_labels", len(wrong_labels), 0,
                              f"{where}: {len(wrong_labels)} of {len(verdicts)} golden photos get another label "
                              f"than offline (photo {i}: served {verdicts[i].label}, offline {want_labels[i]})"))
    return summary, defects, infra


def probe_photo(seed: int = 0) -> bytes:
    """A random 64x64 PNG: any answer will do, only its model_version counts (rollback's confirm)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()
