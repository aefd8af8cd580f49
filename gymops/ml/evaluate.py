"""Classification metrics, and the evaluation of an exported ONNX model on a labelled set.

Label order everywhere: [good, defective] (0, 1); "positive" means defective. The confusion matrix
is [[tn, fp], [fn, tp]] = [[good->good, good->defective], [defective->good, defective->defective]].
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gymops.ingest.events import DEFECTIVE, GOOD, LABELS

from gymops.settings import quiet_tools  # noqa: E402

quiet_tools()  # before onnxruntime/albumentations are imported


def _labels_to_int(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind in "US":
        index = {GOOD: 0, DEFECTIVE: 1}
        try:
            return np.array([index[str(v)] for v in arr], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"unknown label {exc.args[0]!r} (expected {LABELS})") from None
    arr = arr.astype(np.int64)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("integer labels must be 0 (good) or 1 (defective)")
    return arr


def _auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None when a class is absent."""
    pos, neg = scores[y == 1], scores[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([neg, pos]), kind="mergesort")
    allscores = np.concatenate([neg, pos])[order]
    ranks = np.empty(len(allscores), dtype=np.float64)
    # average ranks over ties
    i = 0
    while i < len(allscores):
        j = i
        while j + 1 < len(allscores) and allscores[j + 1] == allscores[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    is_pos = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])[order].astype(bool)
    return float((ranks[is_pos].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def classification_metrics(p_defective: np.ndarray, labels: Sequence[Any] | np.ndarray,
                           threshold: float = 0.5) -> dict[str, Any]:
    """accuracy, per_class_accuracy {good, defective}, f1 (defective), auc, confusion, n, threshold.

    A photo is predicted defective when p_defective >= threshold. A class absent from ``labels`` has
    per-class accuracy None; auc is None unless both classes are present."""
    p = np.asarray(p_defective, dtype=np.float64).reshape(-1)
    y = _labels_to_int(labels).reshape(-1)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} scores but {len(y)} labels")
    pred = (p >= threshold).astype(np.int64)
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tp = int(((pred == 1) & (y == 1)).sum())
    n = len(y)
    f1_den = 2 * tp + fp + fn
    return {
        "accuracy": (tp + tn) / n if n else None,
        "per_class_accuracy": {
            GOOD: tn / (tn + fp) if tn + fp else None,
            DEFECTIVE: tp / (tp + fn) if tp + fn else None,
        },
        "f1": 2 * tp / f1_den if f1_den else 0.0,
        "auc": _auc(p, y),
        "confusion": [[tn, fp], [fn, tp]],
        "labels": list(LABELS),
        "n": n,
        "threshold": threshold,
    }


def onnx_session(onnx_path: Path | str, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def predict_onnx(onnx_path: Path | str, arrays: np.ndarray, threads: int = 2, batch: int = 32,
                 session=None) -> np.ndarray:
    """float32 (N, 2) probabilities [good, defective]. ``arrays``: float32 (N, 3, S, S) model input,
    or uint8 (N, S, S, 3) resized RGB (normalised here with gymops.ml.preprocess.normalise)."""
    from gymops.ml.preprocess import normalise

    sess = session or onnx_session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(arrays), batch):
        chunk = np.asarray(arrays[i:i + batch])
        x = normalise(chunk) if chunk.dtype == np.uint8 else np.ascontiguousarray(chunk, dtype=np.float32)
        out.append(sess.run(None, {name: x})[0])
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def evaluate_onnx(onnx_path: Path | str, arrays: np.ndarray, labels: Sequence[Any] | np.ndarray,
                  threads: int = 2) -> dict[str, Any]:
    """Metrics of the ONNX model on (arrays, labels): see classification_metrics; plus seconds and
    per-image milliseconds. The model's own decision rule is argmax, i.e. p_defective >= 0.5."""
    started = time.perf_counter()
    probs = predict_onnx(onnx_path, arrays, threads=threads)
    seconds = time.perf_counter() - started
    metrics = classification_metrics(probs[:, 1], labels, 0.5)
    metrics["seconds"] = round(seconds, 3)
    metrics["ms_per_image"] = round(1000 * seconds / max(len(probs), 1), 3)
    return metrics


# -- did a training learn? (the training step retries one that did not) -----------------------------
MIN_BALANCED_ACCURACY = 0.6  # below this on validation the training did not learn: retry it
COIN_TOSS_LOSS = math.log(2)  # cross-entropy of always answering 50/50


def why_not_learned(metrics: dict, curves: list) -> str | None:
    """Why a finished training did not learn (None if it did): a loss that is not finite, a best
    validation loss no better than a coin toss, or a balanced accuracy below MIN_BALANCED_ACCURACY."""
    losses = [row.get("train_loss") for row in curves]
    if not losses or any(v is None or not math.isfinite(v) for v in losses):
        return f"training loss is not finite ({losses[-3:]})"
    val_losses = [row["val_loss"] for row in curves if row.get("val_loss") is not None]
    if not val_losses or not min(val_losses) < COIN_TOSS_LOSS:
        return (f"best validation loss {min(val_losses, default=float('nan')):.3g} never beat a coin toss "
                f"({COIN_TOSS_LOSS:.3f})")
    per_class = metrics.get("per_class_accuracy", {})
    balanced = sum(per_class.values()) / max(len(per_class), 1)
    if balanced < MIN_BALANCED_ACCURACY:
        return f"validation balanced accuracy {balanced:.3f} < {MIN_BALANCED_ACCURACY}: no better than chance"
    return None


def confusion_md(confusion) -> str:
    """The confusion matrix [[tn, fp], [fn, tp]] as a Markdown table (true rows, predicted columns)."""
    (tn, fp), (fn, tp) = confusion
    return ("| true \\ predicted | good | defective |\n|---|---|---|\n"
            f"| **good** | {tn} | {fp} |\n| **defective** | {fn} | {tp} |")


# -- champion against challenger on the current holdout version -------------------------------------
def current_holdout(holdout_dir: Path | str, model_type: str):
    """The newest version of the model type's holdout (it must have been frozen already)."""
    from gymops.ml.holdout import Holdout

    holdout = Holdout.load(holdout_dir, model_type)
    if holdout is None:
        raise FileNotFoundError(f"no {model_type} holdout in {holdout_dir}: a training run freezes it first")
    return holdout


@dataclass(frozen=True)
class Judgement:
    """A candidate judged on one holdout version: its metrics, and with an active model, the
    champion's metrics and the paired comparison of the two on the very same photos."""
    metrics: dict
    champion: Any = None  # lifecycle.gates.ChampionComparison
    champion_metrics: dict | None = None
    newest_accuracy: dict | None = None  # {"challenger": .., "champion": ..} on the newest photos, if any

    def per_group(self, challenger: str) -> dict[str, dict[str, float | None]]:
        """{model: {group: accuracy}}: each class of the holdout, and the newest photos."""
        out = {}
        for name, metrics, key in ((f"champion {self.champion.champion_version}", self.champion_metrics, "champion"),
                                   (f"challenger {challenger}", self.metrics, "challenger")):
            row = {f"holdout {label}": acc for label, acc in metrics["per_class_accuracy"].items()}
            if self.newest_accuracy:
                row["newest photos"] = self.newest_accuracy[key]
            out[name] = row
        return out


def judge_on_holdout(candidate_onnx: Path | str, holdout, registry=None, size: int | None = None) -> Judgement:
    """The candidate's metrics on ``holdout`` (a Holdout version) and, when a model is active, the
    paired comparison of the two on the very same photos (lifecycle.gates.ChampionComparison):
    overall, and on the photos set aside after the version the champion was trained against (its
    registry metrics' ``holdout_version``), the newest confirmed tasks. Both models are scored now,
    on this version: like with like. FileNotFoundError when the active model's artifact is gone."""
    from gymops.lifecycle.gates import compare_with_champion
    from gymops.ml.preprocess import IMAGE_SIZE

    x, y = holdout.arrays(size or IMAGE_SIZE)
    p_candidate = predict_onnx(candidate_onnx, x)[:, 1]
    metrics = classification_metrics(p_candidate, y, 0.5)
    metrics["holdout_version"] = holdout.version
    active = registry.active(holdout.model_type) if registry is not None else None
    if active is None:
        return Judgement(metrics)
    if not Path(active.artifact_uri).exists():
        raise FileNotFoundError(f"active model {active.version}: artifact {active.artifact_uri} is missing")
    p_champion = predict_onnx(active.artifact_uri, x)[:, 1]
    trained_against = active.metrics.get("holdout_version") if isinstance(active.metrics, dict) else None
    newest = holdout.added_after(trained_against) if trained_against is not None else None
    right_candidate, right_champion = (p_candidate >= 0.5) == (y == 1), (p_champion >= 0.5) == (y == 1)
    comparison = compare_with_champion(active.version, holdout.version, right_candidate, right_champion, newest)
    champion_metrics = classification_metrics(p_champion, y, 0.5)
    champion_metrics["holdout_version"] = holdout.version
    newest_accuracy = None
    if newest is not None and any(newest):
        mask = np.asarray(newest, dtype=bool)
        newest_accuracy = {"challenger": float(right_candidate[mask].mean()),
                           "champion": float(right_champion[mask].mean())}
    return Judgement(metrics, comparison, champion_metrics, newest_accuracy)
