"""Head training (Lightning), checkpoint resume, ONNX export and evaluation of the laundry model.

A tiny configuration: 100 simulated tasks, 3 images per training task (about 240 images), 15 epochs.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from bench.stages import records_from_traffic
from gymops.ml.dataset import build_dataset
from gymops.ml.records import fetch_photos
from gymops.ml.evaluate import classification_metrics, evaluate_onnx, predict_onnx
from gymops.ml.export import ExportMismatch, export_onnx
from gymops.ml.model import DefectHead, TrainConfig
from gymops.ml.train import _class_weights, calibrate_threshold, train
from gymops.storage.photos import LocalPhotoStore

SIZE = 224
CFG = TrainConfig(max_epochs=15, patience=15, seed=0, checkpoint_every=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    store = LocalPhotoStore(root / "photos")
    fetched, dropped = fetch_photos(records_from_traffic(store, 100, seed=22), store.get)
    assert not dropped
    manifest = build_dataset(fetched, None, root / "data", val_fraction=0.3, copies=3, size=SIZE, seed=0)
    return root, manifest


@pytest.fixture(scope="module")
def trained(data):
    root, manifest = data
    return train(manifest, CFG, root / "ckpt")


def test_training_learns(trained, data):
    _, manifest = data
    curves = trained.curves
    assert [r["epoch"] for r in curves] == list(range(len(curves))) and len(curves) >= 5
    assert curves[-1]["train_loss"] < 0.5 * curves[0]["train_loss"]
    assert min(r["val_loss"] for r in curves) < curves[0]["val_loss"]
    m = trained.metrics
    n_val = manifest.counts["val_images"]
    assert m["n"] == n_val and sum(map(sum, m["confusion"])) == n_val
    majority = max(manifest.class_balance["val"].values()) / n_val
    assert m["auc"] >= 0.8
    assert m["accuracy"] >= majority + 0.1  # clearly better than always answering "good"
    assert min(m["per_class_accuracy"].values()) > 0.6
    for key in ("accuracy", "f1", "auc", "confusion", "per_class_accuracy"):
        assert key in m
    assert trained.best_checkpoint.endswith(".ckpt")
    assert {"features_s", "train_s", "total_s"} <= set(trained.timings)


def test_model_outputs_probabilities_and_is_deterministic(trained, data):
    _, manifest = data
    x, _ = manifest.arrays("val")
    with torch.no_grad():
        p = trained.model(torch.from_numpy(x[:4]))
        again = trained.model(torch.from_numpy(x[:4]))
    assert p.shape == (4, 2)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    assert torch.equal(p, again)
    assert not trained.model.training


def test_checkpoints_every_n_epochs_best_and_last(trained, data):
    root, _ = data
    names = {p.name for p in (root / "ckpt").glob("*.ckpt")}
    assert {"best.ckpt", "last.ckpt", "epoch004.ckpt", "epoch009.ckpt", "epoch014.ckpt"} <= names


def test_a_finished_training_is_reused(trained, data):
    root, manifest = data
    again = train(manifest, CFG, root / "ckpt")
    assert again.reused and again.curves == trained.curves
    assert again.metrics["accuracy"] == trained.metrics["accuracy"]
    with pytest.raises(ValueError, match="use a directory per dataset"):
        train(manifest, TrainConfig(max_epochs=3, head_hidden=8), root / "ckpt")


class _Crash(Exception):
    pass


def test_resume_after_a_crash_continues(data, tmp_path):
    import lightning.pytorch as pl

    _, manifest = data

    class CrashAfter(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 3:
                raise _Crash("power cut")

    cfg = TrainConfig(max_epochs=7, patience=50, seed=1, checkpoint_every=2)
    with pytest.raises(_Crash):
        train(manifest, cfg, tmp_path, callbacks=[CrashAfter()])
    assert (tmp_path / "last.ckpt").exists()
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    done_epochs = saved["epoch"]
    assert done_epochs == 2  # the last epoch completed before the crash, whether val_loss improved or not
    before = saved["curves"]
    packs = [p for p in (tmp_path / "features").glob("*/*") if (p / "digests.npy").exists()]
    assert len(packs) == 2  # train and val, cached: a resumed run skips the trunk
    resumed = train(manifest, cfg, tmp_path)
    assert resumed.resumed_from_epoch == done_epochs
    assert resumed.timings["feature_cache_misses"] == 0
    assert [r["epoch"] for r in resumed.curves] == list(range(7))  # continued, not restarted
    assert resumed.curves[:len(before)] == before
    assert resumed.timings["features_s"] < 2.0


def test_a_second_training_reuses_the_first_ones_trunk_features(trained, data, tmp_path):
    """A retraining on a grown window: only the new photos go through the trunk, and the result
    equals a training that extracted everything itself (issue 13: tick-to-serving)."""
    root, manifest = data
    shared = tmp_path / "shared"
    first = train(manifest, CFG, tmp_path / "a", feature_cache=shared)
    assert first.timings["feature_cache_hits"] == 0 and first.timings["feature_cache_misses"] > 0
    again = train(manifest, CFG, tmp_path / "b", feature_cache=shared)
    assert again.timings["feature_cache_misses"] == 0
    assert again.timings["feature_cache_hits"] == first.timings["feature_cache_misses"]
    assert again.metrics == trained.metrics and again.curves == trained.curves


def test_onnx_export_matches_pytorch(trained, data, tmp_path):
    _, manifest = data
    x_val, y_val = manifest.arrays("val")
    path = tmp_path / "model.onnx"
    diff = export_onnx(trained.model, path, size=SIZE, samples=x_val)
    assert diff <= 1e-4 and path.exists()
    import onnx

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["probabilities"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    probs = predict_onnx(path, x_val[:5])
    with torch.no_grad():
        ref = trained.model(torch.from_numpy(x_val[:5])).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-4)
    # The exported model's argmax is the trained decision (the calibrated threshold is folded in).
    metrics = evaluate_onnx(path, manifest.images("val"), y_val)
    assert metrics["confusion"] == trained.metrics["confusion"]
    assert metrics["n"] == len(y_val)


def test_export_refuses_a_model_onnx_cannot_reproduce(tmp_path):
    class Flaky(torch.nn.Module):  # differs between tracing and later calls
        calls = 0

        def forward(self, image):
            Flaky.calls += 1
            return torch.softmax(image.mean(dim=(2, 3))[:, :2] * (1 + Flaky.calls), dim=1)

    with pytest.raises(ExportMismatch):
        export_onnx(Flaky(), tmp_path / "bad.onnx", size=16)
    assert not (tmp_path / "bad.onnx").exists()


def test_classification_metrics():
    p = np.array([0.1, 0.4, 0.6, 0.9, 0.8, 0.2])
    y = np.array([0, 0, 0, 1, 1, 1])
    m = classification_metrics(p, y)
    assert m["confusion"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == {"good": pytest.approx(2 / 3), "defective": pytest.approx(2 / 3)}
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(7 / 9)
    from torchmetrics.functional.classification import binary_auroc, binary_f1_score

    assert m["auc"] == pytest.approx(float(binary_auroc(torch.tensor(p), torch.tensor(y))))
    assert m["f1"] == pytest.approx(float(binary_f1_score(torch.tensor(p), torch.tensor(y))))
    labelled = classification_metrics(p, ["good", "good", "good", "defective", "defective", "defective"])
    assert labelled["confusion"] == m["confusion"]
    one_class = classification_metrics(np.array([0.2, 0.7]), np.array([0, 0]))
    assert one_class["auc"] is None and one_class["per_class_accuracy"]["defective"] is None
    assert calibrate_threshold(np.array([0.1, 0.2, 0.3, 0.35]), np.array([0, 0, 1, 1])) == pytest.approx(0.25)
    assert calibrate_threshold(np.array([0.1, 0.9]), np.array([0, 0])) == 0.5


@pytest.mark.parametrize("layers", [1, 2])
def test_head_pools_a_local_defect_anywhere(layers):
    torch.manual_seed(0)
    head = DefectHead(4, hidden=8, dropout=0.0, layers=layers).eval()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in head.proj) == layers
    a = torch.zeros(1, 4, 6, 6)
    b = a.clone()
    b[0, :, 1, 4] = 5.0  # one "defective" position
    c = a.clone()
    c[0, :, 5, 0] = 5.0  # the same elsewhere
    with torch.no_grad():
        assert not torch.equal(head(a), head(b))
        torch.testing.assert_close(head(b), head(c))


def test_head_layers_must_be_positive():
    with pytest.raises(ValueError, match="head_layers must be >= 1"):
        DefectHead(4, layers=0)


def test_class_weights_balance_then_favour_defects():
    y = np.array([0, 0, 0, 1])
    assert _class_weights(y, True) == pytest.approx([4 / 6, 2.0])
    assert _class_weights(y, True, 1.5) == pytest.approx([4 / 6, 3.0])
    assert _class_weights(y, False, 1.5) == pytest.approx([1.0, 1.5])
    assert _class_weights(np.array([0, 0]), True) == pytest.approx([1.0, 1.0])  # one class: no balancing
    with pytest.raises(ValueError, match="defective_weight must be > 0"):
        _class_weights(y, True, 0.0)
