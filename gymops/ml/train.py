"""Transfer learning for the laundry model with PyTorch Lightning, sized for 2 CPU cores.

The model is a frozen ImageNet backbone TRUNK plus small trainable defect HEADS, one per map:

  image (N, 3, 224, 224) -> trunk: EfficientNet-Lite0 up to stage 6 (blocks 0-14), tapped after
  stage 4 (80 ch, 14 x 14), stage 5 (112 ch, 14 x 14) and stage 6 (192 ch, 7 x 7) -> per map, a
  head: per-channel standardisation, a per-position MLP (1x1 convs C -> 64 -> 64, ReLU), global
  average AND max pooling over the positions, linear (128 -> 2) -> the heads' softmax
  probabilities averaged [good, defective].

Why: defects (a stain, a tear, a bleached patch) are small and local, and the garments vary far
more than the defects do. The ImageNet classifier's pooled 1280-d features average the defect
away (a linear probe plateaus near 0.75-0.80 with ~100 photos); a per-position detector on a
mid-level map, max-pooled, sees a defect wherever it is. Measured on 400 unseen simulator photos
with 150 training tasks (3 datasets x 2 seeds): a one-layer head on stage 5 alone 0.951
(defective 0.936), two layers 0.960 (0.946); the three-map ensemble 0.967 (good 0.972, defective
0.956; heads on stage 4 or 6 alone score 0.931 and 0.923, but their mistakes differ). A deeper
head with 3x3 context, concatenating the maps into one head, fine-tuning blocks 5-10,
PatchCore-style nearest-normal-patch scores and flip TTA did no better than +-0.005. More tasks
do: 250 training tasks reach 0.962 with the one-layer stage-5 head.

Speed: the trunk is frozen, so its feature maps are computed ONCE per (augmented) image content
and cached across trainings (gymops.ml.feature_cache); only the heads (~38k parameters) are
trained, an epoch takes about a second per 500 images. The exported model is trunk + heads.

Training: Adam, class-weighted cross-entropy (classes balanced, then a missed defect weighted
``defective_weight`` = 1.5 false alarms: on the measurements above that moved the two classes'
accuracy from 0.960 / 0.944 to 0.950 / 0.954 with the stage-5 head, and the gate checks the weaker
one). A weight of 3 helps the weaker class further at 150 training tasks (400 unseen photos, 3
datasets x 2 seeds x 2 augmentation draws: good 0.982 -> 0.968, defective 0.937 -> 0.958, the worst
run's defective 0.865-0.885 -> 0.90-0.935), but with 35-70 training tasks it tips the model into
calling most photos defective (good 0.71 on the 70-task test set), so 1.5 stays the default.
Each head learns from its own loss, validation loss is the ensemble's; EarlyStopping on val_loss,
ModelCheckpoint every ``checkpoint_every`` epochs plus the best (val_loss) plus last.ckpt after
every epoch; a call that finds last.ckpt of the same dataset and config resumes from it; a call that
finds the finished result of the same dataset and config returns it without training again.
After training, the decision threshold may be calibrated on validation (balanced accuracy) and
folded into the ensemble as a logit bias, so served argmax == calibrated decision. It is off by
default: the class weights already balance the classes, and a threshold fitted to ~30 validation
photos cost 0.008 test accuracy on average in the measurements above.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gymops.ml.dataset import DatasetManifest
from gymops.ml.evaluate import classification_metrics
from gymops.ml.feature_cache import FeatureCache
from gymops.ml.model import HeadEnsemble, LaundryNet, TrainConfig, Trunk, build_model, extract_features
from gymops.settings import quiet_tools

Progress = Callable[[str, int, int], None]  # (stage, done, total)

def lightning_pytorch():
    quiet_tools()
    import lightning.pytorch as pl

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return pl


class EpochCurves:
    """Per-epoch curves of a LightningModule (listed before it in the bases), kept in its
    checkpoints so a resumed run keeps its history. The module sums ``_train_sum``/``_train_n`` in
    its training steps and calls ``record_epoch`` with its validation figures."""

    curves: list[dict[str, float]]
    progress: Callable[[int], None] | None
    _train_sum: float
    _train_n: int

    def start_curves(self) -> None:
        self.curves, self.progress = [], None
        self._train_sum, self._train_n = 0.0, 0

    def on_train_epoch_start(self) -> None:
        self._train_sum, self._train_n = 0.0, 0

    def record_epoch(self, figures: dict[str, float]) -> None:
        row = {"epoch": int(self.current_epoch), **figures}
        if self._train_n:
            row["train_loss"] = round(self._train_sum / self._train_n, 6)
        self.curves = [r for r in self.curves if r["epoch"] != row["epoch"]] + [row]
        if self.progress:
            self.progress(row["epoch"] + 1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["curves"] = list(self.curves)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.curves = list(checkpoint.get("curves", []))


def _classifier_class():
    pl = lightning_pytorch()

    class LaundryClassifier(EpochCurves, pl.LightningModule):
        """Backbone trunk (frozen) + defect head. ``forward`` takes images; the training and
        validation steps take cached trunk feature maps, so only the head's cost is paid per epoch."""

        def __init__(self, trunk: Trunk, head: HeadEnsemble, lr: float = 1e-3, weight_decay: float = 1e-4,
                     class_weights: Sequence[float] = (1.0, 1.0)):
            super().__init__()
            self.trunk, self.head = trunk, head
            self.lr, self.weight_decay = lr, weight_decay
            self.register_buffer("class_weights", torch.tensor(list(class_weights), dtype=torch.float32))
            self.start_curves()
            self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.head(self.trunk(image)), dim=1)

        def training_step(self, batch, batch_idx):
            *maps, y = batch
            # The heads share no parameters: the mean of their losses trains each on its own.
            loss = torch.stack([F.cross_entropy(z, y, weight=self.class_weights)
                                for z in self.head.member_logits(maps)]).mean()
            self._train_sum += float(loss.detach()) * len(y)
            self._train_n += len(y)
            return loss

        def validation_step(self, batch, batch_idx):
            *maps, y = batch
            self._val.append((self.head(maps).detach(), y))

        def on_validation_epoch_end(self) -> None:
            if not self._val:
                return
            logits = torch.cat([a for a, _ in self._val])
            y = torch.cat([b for _, b in self._val])
            self._val.clear()
            val_loss = F.cross_entropy(logits, y, weight=self.class_weights)
            val_acc = (logits.argmax(1) == y).float().mean()
            self.log("val_loss", val_loss)
            self.log("val_accuracy", val_acc)
            self.record_epoch({"val_loss": round(float(val_loss), 6), "val_accuracy": round(float(val_acc), 6)})

        def configure_optimizers(self):
            return torch.optim.Adam(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    return LaundryClassifier


def __getattr__(name: str):  # LaundryClassifier is built lazily: importing lightning takes 5-7 s
    if name == "LaundryClassifier":
        cls = _classifier_class()
        globals()["LaundryClassifier"] = cls
        return cls
    raise AttributeError(name)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    curves: list[dict[str, float]]  # one row per epoch: epoch, train_loss, val_loss, val_accuracy
    metrics: dict[str, Any]  # final validation metrics (classification_metrics) at the model's threshold
    metrics_at_half: dict[str, Any]  # the same before threshold calibration (threshold 0.5)
    threshold: float  # p_defective threshold folded into the model (0.5 = none)
    best_checkpoint: str
    model: nn.Module = field(repr=False)  # eval-mode LaundryNet: images -> [good, defective]
    epochs: int = 0
    best_epoch: int | None = None
    resumed_from_epoch: int | None = None
    reused: bool = False  # True when the finished result was found in ckpt_dir
    timings: dict[str, float] = field(default_factory=dict)
    dataset_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "model"}
        return json.loads(json.dumps(d, default=str))


def _class_weights(y: np.ndarray, enabled: bool, defective_weight: float = 1.0) -> list[float]:
    """Loss weights [good, defective]: balanced (if ``enabled``), the defective one times
    ``defective_weight``."""
    if not defective_weight > 0:
        raise ValueError(f"defective_weight must be > 0, got {defective_weight}")
    counts = np.bincount(y, minlength=2).astype(np.float64)
    w = counts.sum() / (2 * counts) if enabled and not (counts == 0).any() else np.ones(2)
    return [float(w[0]), float(w[1] * defective_weight)]


def calibrate_threshold(p_defective: np.ndarray, y: np.ndarray) -> float:
    """The p_defective threshold with the best balanced accuracy on (p, y), then the best accuracy;
    among equals, the one closest to 0.5 (in logit space). 0.5 when a class is absent."""
    p = np.asarray(p_defective, np.float64)
    y = np.asarray(y)
    if (y == 0).sum() == 0 or (y == 1).sum() == 0:
        return 0.5
    s = np.unique(p)
    cands = np.unique(np.clip(np.concatenate([[0.5], (s[1:] + s[:-1]) / 2]), 1e-6, 1 - 1e-6))
    best, best_key = 0.5, None
    for t in cands:
        pred = p >= t
        bal = (pred[y == 1].mean() + (~pred[y == 0]).mean()) / 2
        acc = (pred == (y == 1)).mean()
        key = (round(bal, 9), round(acc, 9), -abs(math.log(t / (1 - t))))
        if best_key is None or key > best_key:
            best, best_key = float(t), key
    return best


def trunk_key(cfg: TrainConfig) -> str:
    """What a trunk's feature maps depend on: backbone, tapped layers and the weights' bytes."""
    weights = "bundled"
    if cfg.weights_path:
        h = hashlib.sha256()
        with open(cfg.weights_path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        weights = h.hexdigest()
    ident = json.dumps([cfg.backbone, cfg.resolved_layers(), weights])
    return f"{cfg.backbone}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def _loader(maps: Sequence[np.ndarray], y: np.ndarray, batch: int, shuffle: bool, seed: int):
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(*(torch.from_numpy(m) for m in maps), torch.from_numpy(y.astype(np.int64)))
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, generator=g if shuffle else None, num_workers=0)


@contextlib.contextmanager
def quiet_training():
    with warnings.catch_warnings():
        for pattern in (".*does not have many workers.*", ".*number of training batches.*", ".*LeafSpec.*",
                        ".*GPU available but not used.*", ".*TPU available.*", ".*`isinstance.*treespec.*",
                        ".*checkpoint directory.*exists and is not empty.*", ".*srun.*", ".*val_dataloader.*",
                        ".*Checkpoint directory.*", ".*tensorboardX.*", ".*_pytree.*", ".*module\\(s\\) in eval mode.*"):
            warnings.filterwarnings("ignore", message=pattern)
        yield


def latest_checkpoint(dirpath: Path):
    """A ModelCheckpoint that writes last.ckpt after EVERY epoch. ModelCheckpoint's own save_last
    only follows that callback's saves: on the best-val_loss callback, a run whose val_loss had
    stopped improving would resume from its last improvement, not its last epoch. Checkpoint
    callbacks run after the others, in order, so listed last it saves their updated state too."""
    pl = lightning_pytorch()

    class LatestCheckpoint(pl.callbacks.ModelCheckpoint):
        @property
        def state_key(self) -> str:  # distinct from a periodic ModelCheckpoint with every_n_epochs=1
            return "LatestCheckpoint"

    return LatestCheckpoint(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                            auto_insert_metric_name=False, enable_version_counter=False)


def _load_head_state(head: HeadEnsemble, ckpt: Path) -> int:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    sd = {k[len("head."):]: v for k, v in state["state_dict"].items() if k.startswith("head.")}
    head.load_state_dict(sd)
    return int(state.get("epoch", 0))


def train(
    manifest: DatasetManifest,
    cfg: TrainConfig = TrainConfig(),
    ckpt_dir: Path | str = "checkpoints",
    progress: Progress | None = None,
    callbacks: Sequence[Any] = (),
    feature_cache: Path | str | None = None,
) -> TrainResult:
    """Train the laundry head on ``manifest``'s dataset; resumable in ``ckpt_dir``.

    ``progress(stage, done, total)`` reports "features" (images) and "train" (epochs). Extra
    Lightning ``callbacks`` are appended (e.g. to report to an orchestrator or stop a run).
    ``ckpt_dir`` belongs to one (dataset, config): a different one there raises ValueError.
    ``feature_cache`` is the directory of trunk feature maps shared across trainings (default
    ``ckpt_dir/features``: this training's own).
    """
    pl = lightning_pytorch()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, cfg.num_threads))
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    meta = {"dataset_id": manifest.dataset_id, "config": asdict(cfg), "fingerprint": cfg.fingerprint()}
    meta_path = ckpt_dir / "train_meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if (old.get("dataset_id"), old.get("fingerprint")) != (meta["dataset_id"], meta["fingerprint"]):
            raise ValueError(
                f"{ckpt_dir} holds a training of dataset {old.get('dataset_id')} / config {old.get('fingerprint')}, "
                f"not {meta['dataset_id']} / {meta['fingerprint']}: use a directory per dataset and config"
            )
    else:
        meta_path.write_text(json.dumps(meta, indent=2))

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    trunk, head = build_model(cfg)
    timings["build_model_s"] = time.perf_counter() - t0

    # 1. Trunk features, once per image content across trainings (issue 13: a retraining reads the
    # whole window, nearly all of it seen by the previous training).
    t = time.perf_counter()
    cache = FeatureCache(feature_cache or ckpt_dir / "features", trunk_key(cfg), trunk.layers)
    feat_progress = (lambda done, total: progress("features", done, total)) if progress else None

    def extract(images: np.ndarray, step) -> tuple[np.ndarray, ...]:
        return extract_features(trunk, images, cfg.feature_batch, step)

    x_train = cache.features(manifest.images("train"), extract, feat_progress)
    x_val = cache.features(manifest.images("val"), extract, feat_progress)
    timings["feature_cache_hits"], timings["feature_cache_misses"] = cache.hits, cache.misses
    y_train, y_val = manifest.labels("train"), manifest.labels("val")
    timings["features_s"] = time.perf_counter() - t

    # Standardise trunk channels with training statistics (stored in the head, so exported too).
    for member, x in zip(head.heads, x_train):
        ft = torch.from_numpy(x)
        member.set_standardisation(ft.mean(dim=(0, 2, 3)), ft.std(dim=(0, 2, 3)))
    weights = _class_weights(y_train, cfg.class_weighting, cfg.defective_weight)
    LaundryClassifier = _classifier_class()
    module = LaundryClassifier(trunk, head, cfg.lr, cfg.weight_decay, weights)

    result_path = ckpt_dir / "result.json"
    last = ckpt_dir / "last.ckpt"
    resumed_from = None
    reused = False
    t = time.perf_counter()
    if result_path.exists():
        saved = json.loads(result_path.read_text())
        best_path = Path(saved["best_checkpoint"])
        curves = saved["curves"]
        reused = True
    else:
        if progress:
            module.progress = lambda epoch: progress("train", epoch, cfg.max_epochs)
        best_cb = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min",
                                               save_top_k=1, auto_insert_metric_name=False)
        periodic_cb = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}",
                                                   every_n_epochs=max(1, cfg.checkpoint_every), save_top_k=-1,
                                                   auto_insert_metric_name=False)
        stop_cb = pl.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min")
        trainer = pl.Trainer(
            max_epochs=cfg.max_epochs, accelerator="cpu", devices=1, logger=False,
            callbacks=[best_cb, periodic_cb, stop_cb, latest_checkpoint(ckpt_dir), *callbacks], enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(ckpt_dir), deterministic=True,
            num_sanity_val_steps=0, log_every_n_steps=1,
        )
        ckpt_path = None
        if last.exists():
            ckpt_path = str(last)
            resumed_from = int(torch.load(last, map_location="cpu", weights_only=False).get("epoch", 0))
        with quiet_training():
            trainer.fit(module, _loader(x_train, y_train, cfg.batch_size, True, cfg.seed),
                        _loader(x_val, y_val, 256, False, cfg.seed), ckpt_path=ckpt_path)
        best_path = Path(best_cb.best_model_path or last)
        curves = sorted(module.curves, key=lambda r: r["epoch"])
    timings["train_s"] = time.perf_counter() - t

    # 2. The best head, then (optionally) the calibrated threshold, measured on validation.
    best_epoch = _load_head_state(head, best_path)
    head.logit_bias.zero_()
    net = LaundryNet(trunk, head).eval()
    with torch.no_grad():
        p_val = torch.softmax(head([torch.from_numpy(x) for x in x_val]), 1)[:, 1].numpy()
    at_half = classification_metrics(p_val, y_val, 0.5)
    threshold = calibrate_threshold(p_val, y_val) if cfg.calibrate_threshold else 0.5
    if threshold != 0.5:
        head.logit_bias[1] = -math.log(threshold / (1 - threshold))
    with torch.no_grad():
        p_cal = torch.softmax(head([torch.from_numpy(x) for x in x_val]), 1)[:, 1].numpy()
    metrics = classification_metrics(p_cal, y_val, 0.5)
    metrics["threshold"] = threshold
    timings["total_s"] = time.perf_counter() - t0
    timings = {k: round(v, 3) for k, v in timings.items()}
    result = TrainResult(
        curves=curves, metrics=metrics, metrics_at_half=at_half, threshold=threshold,
        best_checkpoint=str(best_path), model=net, epochs=len(curves), best_epoch=best_epoch,
        resumed_from_epoch=resumed_from, reused=reused, timings=timings, dataset_id=manifest.dataset_id,
        config=asdict(cfg),
    )
    if not reused:
        tmp = result_path.with_name(".result.json.part")
        tmp.write_text(json.dumps(result.summary(), indent=2))
        os.replace(tmp, result_path)
    return result
