"""The pictures the Dagster UI shows: PNGs from the core, small enough to travel in metadata."""
import io

from PIL import Image

from gymops.lifecycle.gates import accuracy_gate, compare_with_champion
from gymops.ml import plots


def _is_png(data: bytes, max_kb: int = 120) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < max_kb * 1024
    return Image.open(io.BytesIO(data)).size


def test_training_curves_and_confusion_matrix():
    curves = [{"epoch": e, "train_loss": 0.7 / (e + 1), "val_loss": 0.6 / (e + 1) + 0.05, "val_accuracy": 0.7 + e / 40}
              for e in range(10)]
    assert _is_png(plots.training_curves(curves))[0] > 500
    assert _is_png(plots.confusion_matrix([[120, 4], [6, 110]], "holdout v2"))


def test_gate_intervals_with_a_champion_and_per_class_bars():
    holdout = {"confusion": [[130, 4], [9, 125]]}
    a = [True] * 300
    b = [True] * 290 + [False] * 10
    cmp = compare_with_champion("1.0.0", 2, a, b, [False] * 240 + [True] * 60)
    gate = accuracy_gate({"val": {"confusion": [[60, 0], [2, 38]]}, "holdout": holdout}, cmp)
    assert gate.passed
    assert _is_png(plots.gate_intervals(gate.figures, 0.03))
    assert _is_png(plots.class_accuracy({"champion 1.0.0": {"holdout good": 0.97, "newest photos": 0.83},
                                         "challenger 1.1.0": {"holdout good": 0.97, "newest photos": 1.0}}))
