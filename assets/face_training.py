"""The nightly face batch's training: face_dataset (a window of nights -> the frozen identity holdout
grows, train/val by identity) and face_checkpoint (the Lightning fine-tune of the last stage). Thin
over gymops.face.nightly; the files live under the pipeline root (gymops.face.stored)."""
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.face import KEY as FACE_SAMPLES, load_nights
from assets.partitions import PARTITION, RANGE_END, RANGE_START, SINGLE_RUN, days_in_range
from assets.progress import ProgressLog
from gymops.face import nightly
from gymops.face.dataset import samples_from_rows
from gymops.face.stored import FacePaths
from gymops.face.train import FaceTrainConfig
from gymops.ml.records import NotEnoughData
from resources.face import FaceResource
from resources.photos import PhotoStoreResource
from resources.pipeline import PipelineStore


class FaceDatasetConfig(dg.Config):
    seed: int = 0
    val_fraction: float = 0.15
    holdout_fraction: float = 0.2  # of identities; frozen with the holdout (changing it later fails the run)
    min_photos: int = 2
    max_photos: int = 8
    fetch_workers: int = 8


class FaceTrainingConfig(dg.Config):
    trainable_from: str = FaceTrainConfig.trainable_from
    scale: float = FaceTrainConfig.scale
    margin: float = FaceTrainConfig.margin
    lr: float = FaceTrainConfig.lr
    centre_lr: float = FaceTrainConfig.centre_lr
    batch_size: int = FaceTrainConfig.batch_size
    max_epochs: int = FaceTrainConfig.max_epochs
    patience: int = FaceTrainConfig.patience
    flip: bool = FaceTrainConfig.flip
    seed: int = FaceTrainConfig.seed


@dataclass
class FaceDatasetRef:
    dataset_id: str
    nights: list[str]
    summary: dict = field(default_factory=dict)


@dataclass
class FaceCheckpointRef:
    ckpt_dir: str
    dataset_id: str
    training: dict  # FaceTrainResult.summary(): curves, before/after, config, timings


def window_nights(context, window_days: int) -> list[str]:
    """The nights this run trains on: its own (the scheduled partition, or a backfill's range) and
    the nights materialised before them within ``window_days`` of its last night."""
    tags = context.run.tags
    if RANGE_START in tags:
        own = days_in_range(tags[RANGE_START], tags[RANGE_END])
    else:
        own = [tags[PARTITION]] if PARTITION in tags else []
    materialised = set(context.instance.get_materialized_partitions(FACE_SAMPLES))
    last = max(own) if own else max(materialised, default=None)
    if last is None:
        return []
    first = (date.fromisoformat(last) - timedelta(days=window_days - 1)).isoformat()
    return sorted({k for k in materialised if first <= k <= last} | set(own))


@dg.asset(
    deps=[FACE_SAMPLES], group_name="face", backfill_policy=SINGLE_RUN, kinds={"numpy"},
    description="The window's face samples (the last settings.face.window_days nights): photos fetched, the frozen "
                "identity holdout updated first (identities held out by a seeded hash, never trained on), the rest "
                "split by identity into train and validation.")
def face_dataset(context: dg.AssetExecutionContext, config: FaceDatasetConfig, face: FaceResource,
                 photos: PhotoStoreResource, pipeline: PipelineStore) -> FaceDatasetRef:
    nights = window_nights(context, face.window_days())
    frame, missing = load_nights(pipeline, nights)
    if not nights or missing:
        raise dg.Failure(f"face_samples_daily partitions not materialised: {', '.join(missing) or '(none at all)'}; "
                         "run the night (or backfill the range) first")
    cfg = nightly.DatasetConfig(config.seed, config.val_fraction, config.holdout_fraction, config.min_photos,
                                config.max_photos, config.fetch_workers)
    try:
        ds = nightly.prepare_dataset(samples_from_rows(frame.to_dict("records")), FacePaths(pipeline.root), cfg,
                                     get=photos.get)
    except (NotEnoughData, ValueError) as exc:
        raise dg.Failure(f"face dataset of {nights[0]}..{nights[-1]}: {exc}") from exc
    s = ds.summary()
    context.log.info("%d nights, %d samples -> dataset %s", len(nights), len(frame), ds.dataset_id)
    context.add_output_metadata({
        "dataset_id": ds.dataset_id,
        "nights": dg.MetadataValue.text(f"{nights[0]} .. {nights[-1]} ({len(nights)})"),
        "samples": dg.MetadataValue.int(len(frame)),
        "identities": dg.MetadataValue.int(frame.user_id.nunique() if len(frame) else 0),
        "splits": dg.MetadataValue.md(pd.DataFrame(
            {k: [s[f"{k}_photos"], s[f"{k}_identities"]] for k in ("train", "val", "holdout")},
            index=["photos", "identities"]).to_markdown()),
        "holdout_version": s["holdout_version"],
        "dropped_reasons": dg.MetadataValue.json(s["dropped"]),
    })
    return FaceDatasetRef(ds.dataset_id, nights, s)


@dg.asset(
    group_name="face", backfill_policy=SINGLE_RUN, kinds={"pytorch", "lightning"},
    description="dlib's face descriptor with its last (256-channel) stage and projection fine-tuned by PyTorch "
                "Lightning (CosFace on the training identities; the frozen part's maps cached by photo content); "
                "the epoch with the best validation TAR kept; checkpoints per dataset and config, resumable.")
def face_checkpoint(context: dg.AssetExecutionContext, config: FaceTrainingConfig, face: FaceResource,
                    pipeline: PipelineStore, face_dataset: FaceDatasetRef) -> FaceCheckpointRef:
    paths = FacePaths(pipeline.root)
    ds = nightly.open_dataset(paths, face_dataset.dataset_id)
    cfg = FaceTrainConfig(**config.model_dump())
    result = nightly.train_candidate(ds, paths, cfg, face.assets_dir(), progress=ProgressLog(context, "face training"))
    for row in result.curves:  # per-epoch figures, plotted by Dagster from the observations
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata={
            k: float(v) for k, v in row.items() if isinstance(v, (int, float))}))
    t = result.timings
    context.add_output_metadata({
        "val_tar_before": dg.MetadataValue.float(float(result.before["val_tar"])),
        "val_tar": dg.MetadataValue.float(float(result.after["val_tar"])),
        "val_far": dg.MetadataValue.float(float(result.after["val_far"])),
        "val_gap": dg.MetadataValue.float(float(result.after["val_gap"])),
        "training_curves": dg.MetadataValue.md(pd.DataFrame(result.curves).round(4).to_markdown(index=False)),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch or 0,
        "resumed_from_epoch": result.resumed_from_epoch or 0,
        "reused": result.reused,
        "feature_cache_hits": int(t.get("feature_cache_hits", 0)),
        "feature_cache_misses": int(t.get("feature_cache_misses", 0)),
        "features_s": float(t.get("features_s", 0.0)),
        "train_s": float(t.get("train_s", 0.0)),
        "checkpoint": dg.MetadataValue.path(result.best_checkpoint),
    })
    ckpt_dir = paths.checkpoints(ds.dataset_id, cfg.fingerprint())
    return FaceCheckpointRef(str(Path(ckpt_dir)), ds.dataset_id, result.summary())
