"""Fine-tuning the face descriptor's LAST stage with PyTorch Lightning, sized for 2 CPU cores.

What is trained: dlib's ResNet (gymops.face.model) is split at ``trainable_from`` (default
"conv256_down", the start of the 256-channel stage). The stem and the 32/64/128-channel stages
stay frozen; the 256-channel stage (conv256_down, conv256_1, conv256_2, conv256_down_out) and the
256->128 projection are trained: 4.4 M of the 5.6 M parameters, but only on 8 x 8 maps. The frozen
part's output (128 x 8 x 8 per photo) is computed ONCE per photo and cached by content
(gymops.ml.feature_cache, as gymops.ml.train caches its trunk maps), so an epoch costs only the
tail (2.3 s for 1,616 cached maps on 2 cores). The result is a whole FaceDescriptor, exported and
served as before.

Loss: CosFace (large-margin cosine softmax) over the training identities: logits s * (cos - m) for
the own identity's centre and s * cos for the others, s = 16, m = 0.2. The centres start at each
identity's mean PRETRAINED embedding. Horizontal flips of every training photo are cached as extra
images (faces are roughly symmetric; the serving path never flips).

Measured on SYNTHETIC faces (gymops.simulator.faces; 300 identities x 4 photos, 60 of them held
out: 360 genuine / 28,320 impostor pairs; TAR at FAR 1e-3, pretrained 0.278; one seed each):
  trainable from            flips  epochs  held-out TAR
  fc only                   no     5-20    0.30-0.35 (too little capacity)
  conv256_down_out + fc     no     5-30    0.46-0.60 (train loss -> 0.2: overfits)
  conv256_down_out + fc     yes    5-20    0.53-0.68
  conv256_1 ... fc          no     5-20    0.51-0.68
  conv256_1 ... fc          yes    5-20    0.71-0.82
  conv256_down ... fc       yes    5-20    0.85-0.89   <- default
  the default with batch-hard triplet loss (margin 0.2, 8 identities x 8 images a batch): 0.71 at
  5 epochs, 0.81 at 10.
Adam at lr 3e-3 on the convolutions first collapsed the embedding (the held-out genuine-impostor
gap fell to 0.00) and recovered to TAR 0.55 only after 40 epochs; at 3e-4 (centres 1e-2) TAR
rises from the first epoch. CosFace at s = 30, m = 0.35 starts at a loss of ~16 (the centres all
sit near one direction: the pretrained descriptor gives the synthetic faces a genuine-impostor
cosine gap of only 0.04) and reached 0.53 in 30 epochs where s = 16, m = 0.2 reached 0.60.
The module as it stands, ``python -m gymops.face.train`` (held-out identities by the hash rule):
  300 identities, seed 0: 62 held out, 372 genuine / 30,256 impostor pairs: 0.282 -> 0.855, 43 s
  300 identities, seed 1: 69 held out, 414 / 37,536: 0.302 -> 0.647 (its validation TAR was 0.86:
      at FAR 1e-3 the threshold rests on the top ~30-40 impostor pairs, so draws of 60-80
      held-out identities differ a lot)
  400 identities, seed 0: 83 held out, 498 / 54,448: 0.295 -> 0.916
(seconds on 2 cores, features + 10 epochs + the gate; 4.6-5.7 min while another job held the cores).

Validation (identities disjoint from training and holdout) gives each epoch's ``val_tar``: TAR at
the strictest FAR the validation impostor pairs resolve, max(far, 3 / impostor pairs). The best
epoch by ``val_score`` (val_tar, ties broken by the cosine gap) is kept (ModelCheckpoint),
EarlyStopping after ``patience`` epochs without gain; last.ckpt after every epoch, so a killed run
resumes; a finished run's result.json is reused.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gymops.face.dataset import FaceDataset
from gymops.face.evaluate import pair_scores, verification_at_far
from gymops.face.model import BLOCKS, FaceDescriptor, load_pretrained
from gymops.face.preprocess import preprocess
from gymops.ml.feature_cache import FeatureCache
from gymops.ml.train import EpochCurves, latest_checkpoint, lightning_pytorch, quiet_training

Progress = Callable[[str, int, int], None]  # (stage, done, total)
BLOCK_NAMES = tuple(name for name, *_ in BLOCKS)


@dataclass(frozen=True)
class FaceTrainConfig:
    trainable_from: str = "conv256_down"  # first trained block (a BLOCKS name) or "fc"
    scale: float = 16.0  # CosFace s
    margin: float = 0.2  # CosFace m
    lr: float = 3e-4  # the trained blocks and fc
    centre_lr: float = 1e-2  # the identity centres
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 10
    patience: int = 3
    flip: bool = True
    far: float = 1e-3
    seed: int = 0
    num_threads: int = 2
    feature_batch: int = 32

    def __post_init__(self) -> None:
        if self.trainable_from not in BLOCK_NAMES + ("fc",):
            raise ValueError(f"trainable_from: one of {BLOCK_NAMES + ('fc',)}, got {self.trainable_from!r}")
        for name in ("scale", "lr", "centre_lr", "far"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "max_epochs", "patience", "num_threads", "feature_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin: must be within [0, 1), got {self.margin}")

    @property
    def frozen_blocks(self) -> int:
        return len(BLOCK_NAMES) if self.trainable_from == "fc" else BLOCK_NAMES.index(self.trainable_from)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class Front(nn.Module):
    """The frozen part: stem and the first ``k`` residual blocks (shares the model's modules)."""

    def __init__(self, model: FaceDescriptor, k: int):
        super().__init__()
        self.stem, self.blocks = model.stem, nn.ModuleList(model.blocks[:k])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return x


class Tail(nn.Module):
    """The trained part: the remaining blocks, the average pool and fc (shares the model's modules)."""

    def __init__(self, model: FaceDescriptor, k: int):
        super().__init__()
        self.blocks, self.fc = nn.ModuleList(model.blocks[k:]), model.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


def weights_key(module: nn.Module) -> str:
    """12 hex digits of sha256 over a module's parameters (what cached features depend on)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def front_features(front: nn.Module, photos: Sequence[bytes], cache: FeatureCache, batch: int = 32,
                   flip: bool = False, progress: Callable[[int, int], None] | None = None,
                   chunk: int = 256) -> np.ndarray:
    """float32 (N, C, H, W) frozen-part outputs, looked up by input content in ``cache``
    (gymops.ml.feature_cache: a photo seen by an earlier training of the same frozen part is not
    run again); with ``flip`` (2N, ...), the mirrored photos after all the originals. Photos are
    preprocessed ``chunk`` at a time, so memory stays at ~70 MB of inputs whatever N is."""
    front.eval()

    def extract(x: np.ndarray, step) -> tuple[np.ndarray]:
        with torch.no_grad():
            out = [front(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))).numpy()
                   for i in range(0, len(x), batch)]
        return (np.concatenate(out),)

    originals, mirrored = [], []
    for i in range(0, len(photos), chunk):
        x = np.stack([preprocess(p) for p in photos[i:i + chunk]])
        originals.append(cache.features(x, extract)[0])
        if flip:
            mirrored.append(cache.features(np.ascontiguousarray(x[..., ::-1]), extract)[0])
        if progress:
            progress(min(i + chunk, len(photos)), len(photos))
    return np.concatenate(originals + mirrored)


def validation_figures(embeddings: np.ndarray, user_ids: Sequence[str], far: float) -> dict[str, float]:
    """val_tar at max(far, 3 / impostor pairs) (a FAR the validation pairs resolve), the FAR used,
    the mean genuine-minus-impostor cosine gap, and val_score = val_tar + 1e-4 * val_gap, the figure
    epochs are chosen by: TAR first, ties broken by the gap (a gap adds < 2e-4, less than one pair of
    TAR below 5,000 genuine pairs). Why the tie-break: on a small validation split TAR saturates (4
    identities: 1.0 from the first epoch on), and ties would keep the first epoch, barely trained."""
    genuine, impostor = pair_scores(embeddings, list(user_ids))
    used = max(far, 3.0 / max(len(impostor), 1))
    v = verification_at_far(genuine, impostor, used)
    gap = float(genuine.mean() - impostor.mean()) if len(genuine) and len(impostor) else float("nan")
    return {"val_tar": float(v.tar), "val_far": used, "val_gap": gap,
            "val_score": float(v.tar) + 1e-4 * (gap if math.isfinite(gap) else 0.0)}


def _tuner_class():
    pl = lightning_pytorch()

    class FaceFineTuner(EpochCurves, pl.LightningModule):
        """Tail + identity centres; steps take cached frozen-part maps. CosFace loss."""

        def __init__(self, tail: Tail, centres: torch.Tensor, cfg: FaceTrainConfig, val_ids: Sequence[str]):
            super().__init__()
            self.tail, self.cfg, self.val_ids = tail, cfg, list(val_ids)
            self.centres = nn.Parameter(F.normalize(centres, dim=1))
            self.start_curves()
            self._val = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            cos = F.normalize(self.tail(x), dim=1) @ F.normalize(self.centres, dim=1).T
            logits = self.cfg.scale * (cos - self.cfg.margin * F.one_hot(y, cos.shape[1]))
            loss = F.cross_entropy(logits, y)
            self._train_sum += float(loss.detach()) * len(y)
            self._train_n += len(y)
            return loss

        def validation_step(self, batch, batch_idx):
            self._val.append(F.normalize(self.tail(batch[0]), dim=1).detach())

        def on_validation_epoch_end(self) -> None:
            if not self._val:
                return
            figures = validation_figures(torch.cat(self._val).numpy(), self.val_ids, self.cfg.far)
            self._val.clear()
            self.log("val_score", figures["val_score"])
            self.record_epoch({k: round(v, 6) for k, v in figures.items()})

        def configure_optimizers(self):
            return torch.optim.Adam([{"params": self.tail.parameters(), "lr": self.cfg.lr},
                                     {"params": [self.centres], "lr": self.cfg.centre_lr}],
                                    weight_decay=self.cfg.weight_decay)

    return FaceFineTuner


@dataclass
class FaceTrainResult:
    model: nn.Module = field(repr=False)  # eval-mode FaceDescriptor: chips -> raw 128-d descriptors
    curves: list[dict[str, float]]  # per epoch: epoch, train_loss, val_tar, val_far, val_gap, val_score
    before: dict[str, float]  # validation figures of the base model
    after: dict[str, float]  # validation figures of the returned model
    best_checkpoint: str
    epochs: int
    best_epoch: int | None
    resumed_from_epoch: int | None
    reused: bool
    timings: dict[str, float]
    dataset_id: str
    config: dict[str, Any]
    base_key: str

    def summary(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready."""
        return json.loads(json.dumps({k: getattr(self, k) for k in self.__dataclass_fields__ if k != "model"},
                                     default=str))


def _loader(x: np.ndarray, y: np.ndarray, batch: int, shuffle: bool, seed: int):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))), batch_size=batch,
                      shuffle=shuffle, generator=g if shuffle else None, num_workers=0)


def train_face(dataset: FaceDataset, cfg: FaceTrainConfig = FaceTrainConfig(),
               ckpt_dir: Path | str = "face-checkpoints", base: FaceDescriptor | None = None,
               assets_dir: Path | None = None, progress: Progress | None = None,
               callbacks: Sequence[Any] = (), feature_cache: Path | str | None = None) -> FaceTrainResult:
    """Fine-tune ``base`` (default: the pretrained descriptor from ``assets_dir``) on ``dataset``'s
    train split, choosing the epoch by its val split; ``base`` itself is left unchanged.

    ``ckpt_dir`` belongs to one (dataset, config, base): another there raises ValueError. A run
    killed mid-way resumes from last.ckpt; a finished one is returned from result.json and best.ckpt.
    ``progress(stage, done, total)`` reports "features" (photos) and "train" (epochs).
    ``feature_cache``: the folder of frozen-part outputs shared across trainings (default
    ``ckpt_dir/features``, this training's own)."""
    pl = lightning_pytorch()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    torch.set_num_threads(cfg.num_threads)
    base = base if base is not None else load_pretrained(assets_dir)
    model = copy.deepcopy(base).eval()
    front, tail = Front(model, cfg.frozen_blocks), Tail(model, cfg.frozen_blocks)
    for p in front.parameters():
        p.requires_grad_(False)
    base_key = weights_key(base)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    meta = {"dataset_id": dataset.dataset_id, "fingerprint": cfg.fingerprint(), "base": base_key}
    meta_path = ckpt_dir / "train_meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ValueError(f"ckpt_dir: {ckpt_dir} holds the training of {old}, not {meta}: use one directory "
                             "per dataset, config and base model")
    else:
        meta_path.write_text(json.dumps({**meta, "config": asdict(cfg)}, indent=2))

    # 1. The frozen part's maps, once per photo (and mirror image).
    t = time.perf_counter()
    train_photos, train_ids = dataset.split("train")
    val_photos, val_ids = dataset.split("val")
    cache = FeatureCache(feature_cache or ckpt_dir / "features", f"face-{cfg.trainable_from}-{weights_key(front)}",
                         ("front",))
    n = len(train_photos) + len(val_photos)
    x_train = front_features(front, train_photos, cache, cfg.feature_batch, cfg.flip,
                             progress and (lambda d, _: progress("features", d, n)))
    x_val = front_features(front, val_photos, cache, cfg.feature_batch, False,
                           progress and (lambda d, _: progress("features", len(train_photos) + d, n)))
    timings["feature_cache_hits"], timings["feature_cache_misses"] = cache.hits, cache.misses
    classes = {u: i for i, u in enumerate(sorted(set(train_ids)))}
    y_train = np.array([classes[u] for u in train_ids] * (2 if cfg.flip else 1), np.int64)
    timings["features_s"] = time.perf_counter() - t

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    with torch.no_grad():
        e = F.normalize(tail(torch.from_numpy(x_train)), dim=1)
        centres = torch.zeros(len(classes), e.shape[1]).index_add_(0, torch.from_numpy(y_train), e)
        before = validation_figures(F.normalize(tail(torch.from_numpy(x_val)), dim=1).numpy(), val_ids, cfg.far)
    module = _tuner_class()(tail, centres, cfg, val_ids)

    result_path, last = ckpt_dir / "result.json", ckpt_dir / "last.ckpt"
    resumed_from, reused = None, False
    t = time.perf_counter()
    if result_path.exists():
        saved = json.loads(result_path.read_text())
        best_path, curves, reused = Path(saved["best_checkpoint"]), saved["curves"], True
    else:
        if progress:
            module.progress = lambda epoch: progress("train", epoch, cfg.max_epochs)
        best_cb = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_score", mode="max",
                                               save_top_k=1, auto_insert_metric_name=False)
        stop_cb = pl.callbacks.EarlyStopping(monitor="val_score", mode="max", patience=cfg.patience)
        trainer = pl.Trainer(max_epochs=cfg.max_epochs, accelerator="cpu", devices=1, logger=False,
                             callbacks=[best_cb, stop_cb, latest_checkpoint(ckpt_dir), *callbacks],
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(ckpt_dir),
                             deterministic=True, num_sanity_val_steps=0, log_every_n_steps=1)
        ckpt_path = None
        if last.exists():
            ckpt_path = str(last)
            resumed_from = int(torch.load(last, map_location="cpu", weights_only=False).get("epoch", 0))
        with quiet_training():
            trainer.fit(module, _loader(x_train, y_train, cfg.batch_size, True, cfg.seed),
                        _loader(x_val, np.zeros(len(x_val), np.int64), 256, False, cfg.seed), ckpt_path=ckpt_path)
        best_path = Path(best_cb.best_model_path or last)
        curves = sorted(module.curves, key=lambda r: r["epoch"])
    timings["train_s"] = time.perf_counter() - t

    # 2. The best epoch's tail, measured on validation.
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    tail.load_state_dict({k[len("tail."):]: v for k, v in state["state_dict"].items() if k.startswith("tail.")})
    model.eval()
    with torch.no_grad():
        after = validation_figures(F.normalize(tail(torch.from_numpy(x_val)), dim=1).numpy(), val_ids, cfg.far)
    timings["total_s"] = time.perf_counter() - t0
    result = FaceTrainResult(model, curves, before, after, str(best_path), len(curves), int(state.get("epoch", 0)),
                             resumed_from, reused, {k: round(v, 3) for k, v in timings.items()},
                             dataset.dataset_id, asdict(cfg), base_key)
    if not reused:
        tmp = result_path.with_name(".result.json.part")
        tmp.write_text(json.dumps(result.summary(), indent=2))
        os.replace(tmp, result_path)
    return result


def measure(identities: int = 300, photos: int = 4, cfg: FaceTrainConfig = FaceTrainConfig(),
            work_dir: Path | str | None = None, assets_dir: Path | None = None, seed: int = 0,
            performance: bool = True, holdout_fraction: float = 0.2) -> dict[str, Any]:
    """One measurement on SYNTHETIC faces: build the dataset (holdout included), fine-tune, and
    gate the fine-tuned model against the pretrained one on the held-out identities. Returns the
    figures (TAR at FAR 1e-3 before = pretrained, after = fine-tuned, on the same pairs)."""
    import tempfile

    from gymops.face.dataset import build_face_dataset, synthetic_samples
    from gymops.face.gates import FaceGateLimits, face_gate

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gymops-face-train-") as tmp:
        work = Path(work_dir or tmp)
        samples = synthetic_samples(identities, photos, seed)
        t = time.perf_counter()
        dataset = build_face_dataset(samples, work / "holdout", seed=seed, holdout_fraction=holdout_fraction)
        build_s = time.perf_counter() - t
        base = load_pretrained(assets_dir)
        result = train_face(dataset, cfg, work / f"ckpt-{dataset.dataset_id}-{cfg.fingerprint()}", base=base)
        t = time.perf_counter()
        gate = face_gate(result.model, base, holdout=dataset.holdout, limits=FaceGateLimits(far=cfg.far),
                         names=("fine-tuned", "pretrained"), performance=performance)
        gate_s = time.perf_counter() - t
    return {
        "data": "SYNTHETIC cartoon faces (gymops.simulator.faces), not real faces",
        "identities": identities, "photos_per_identity": photos, "dataset": dataset.summary(),
        "far": cfg.far, "tar_before": gate.active.tar.value, "tar_after": gate.candidate.tar.value,
        "tar_before_ci": gate.active.tar.interval, "tar_after_ci": gate.candidate.tar.interval,
        "genuine_pairs": gate.genuine_pairs, "impostor_pairs": gate.impostor_pairs,
        "gate": gate.as_dict(), "training": result.summary(),
        "seconds": {"samples_and_dataset": round(build_s, 1), "train": result.timings,
                    "gate": round(gate_s, 1), "total": round(time.perf_counter() - t0, 1)},
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gymops.face.train",
                                     description="Fine-tune the face descriptor on SYNTHETIC faces and print "
                                                 "TAR at FAR 1e-3 before/after on held-out identities (JSON).")
    parser.add_argument("--identities", type=int, default=300)
    parser.add_argument("--photos", type=int, default=4, help="photos per identity")
    parser.add_argument("--epochs", type=int, default=FaceTrainConfig.max_epochs)
    parser.add_argument("--trainable-from", default=FaceTrainConfig.trainable_from)
    parser.add_argument("--batch-size", type=int, default=FaceTrainConfig.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout-fraction", type=float, default=0.2, help="share of identities held out")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--no-performance", action="store_true", help="skip the sandbox latency/memory figures")
    args = parser.parse_args(argv)
    cfg = FaceTrainConfig(max_epochs=args.epochs, batch_size=args.batch_size, trainable_from=args.trainable_from,
                          seed=args.seed)
    figures = measure(args.identities, args.photos, cfg, args.work_dir, seed=args.seed,
                      performance=not args.no_performance, holdout_fraction=args.holdout_fraction)
    print(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
