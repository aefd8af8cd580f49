import math
from dataclasses import asdict, dataclass, field

import dagster as dg
import pandas as pd

from assets.pictures import picture
from assets.progress import ProgressLog
from gymops.ml import plots
from gymops.ml.dataset import DatasetManifest
from gymops.ml.evaluate import confusion_md, why_not_learned
from gymops.ml.train import TrainConfig, train
from resources.pipeline import PipelineStore

class TrainingConfig(dg.Config):
    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    seed: int = 0
    backbone: str = "efficientnet_lite0"  # or "resnet50" with weights_path
    weights_path: str = ""
    defective_weight: float = 1.5  # loss weight of a missed defect against a false alarm (classes balanced)
    lr_factor_on_retry: float = 0.3  # each retry trains with lr * factor**retry
    max_retries: int = 3


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class TrainedCheckpoint:
    checkpoint: str
    ckpt_dir: str
    dataset_id: str
    config: dict
    metrics: dict
    threshold: float
    curves: list = field(default_factory=list)
    attempt: int = 0


def train_config(config: TrainingConfig, retry: int) -> TrainConfig:
    return TrainConfig(lr=config.lr * config.lr_factor_on_retry ** retry, batch_size=config.batch_size,
                       max_epochs=config.max_epochs, patience=config.patience, seed=config.seed,
                       backbone=config.backbone, weights_path=config.weights_path or None,
                       defective_weight=config.defective_weight)


@dg.asset(
    group_name="laundry", kinds={"pytorch", "lightning"},
    description="Transfer learning from EfficientNet-Lite0 ImageNet weights (head on a frozen trunk); "
                "early stopping, checkpoints every 5 epochs and the best, resumable.",
)
def trained_checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig, pipeline: PipelineStore,
                       training_dataset: DatasetManifest) -> TrainedCheckpoint:
    retry = context.retry_number
    cfg = train_config(config, retry)
    ckpt_dir = pipeline.path("checkpoints", f"{training_dataset.dataset_id}-{cfg.fingerprint()}")
    context.log.info("attempt %d: lr %.2g, checkpoints in %s", retry + 1, cfg.lr, ckpt_dir)
    try:
        result = train(training_dataset, cfg, ckpt_dir, progress=ProgressLog(context, "train"),
                       feature_cache=pipeline.feature_cache())
        why = why_not_learned(result.metrics, result.curves)
        if why:
            raise TrainingDiverged(why)
    except (TrainingDiverged, FloatingPointError) as exc:
        if retry < config.max_retries:
            context.log.warning("attempt %d failed (%s); retrying with lr %.2g", retry + 1, exc,
                                train_config(config, retry + 1).lr)
            raise dg.RetryRequested(max_retries=config.max_retries, seconds_to_wait=1) from exc
        raise dg.Failure(f"training failed after {retry + 1} attempts (lr from {config.lr:.2g} down to {cfg.lr:.2g}): "
                         f"{exc}", allow_retries=False) from exc
    m = result.metrics
    for row in result.curves:  # per-epoch curves, plotted by Dagster from the observations
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata={
            k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)}))
    context.add_output_metadata({
        "val_accuracy": dg.MetadataValue.float(float(m["accuracy"])),
        "val_f1": dg.MetadataValue.float(float(m["f1"])),
        "val_auc_roc": dg.MetadataValue.float(float(m["auc"] or 0.0)),
        "per_class_accuracy": dg.MetadataValue.json(m["per_class_accuracy"]),
        "confusion_matrix": dg.MetadataValue.md(confusion_md(m["confusion"])),
        "training_curves": dg.MetadataValue.md(pd.DataFrame(result.curves).round(4).to_markdown(index=False)),
        "training_curves_plot": picture(plots.training_curves(result.curves), "training curves"),
        "confusion_matrix_plot": picture(plots.confusion_matrix(m["confusion"], "validation"), "confusion matrix"),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch or 0,
        "lr": cfg.lr,
        "attempt": retry + 1,
        "resumed_from_epoch": result.resumed_from_epoch or 0,
        "feature_cache_hits": int(result.timings.get("feature_cache_hits", 0)),
        "feature_cache_misses": int(result.timings.get("feature_cache_misses", 0)),
        "features_s": float(result.timings.get("features_s", 0.0)),
        "train_s": float(result.timings.get("train_s", 0.0)),
        "threshold": result.threshold,
        "checkpoint": dg.MetadataValue.path(result.best_checkpoint),
    })
    return TrainedCheckpoint(result.best_checkpoint, str(ckpt_dir), training_dataset.dataset_id, asdict(cfg), m,
                             result.threshold, result.curves, retry)
