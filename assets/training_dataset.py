from datetime import datetime, timezone

import dagster as dg
import pandas as pd

from assets.corrected_tasks import KEY as CORRECTED_TASKS, load_days
from assets.partitions import RANGE_END, RANGE_START, days_in_range
from assets.progress import ProgressLog
from gymops.history import confirmations
from gymops.lifecycle.gates import holdout_target
from gymops.lifecycle.registry import LAUNDRY
from gymops.lifecycle.retraining import training_window
from gymops.ml.dataset import DatasetManifest, build_dataset, dataset_id_for
from gymops.ml.holdout import Holdout
from gymops.ml.records import TaskRecord, fetch_photos
from gymops.ml.preprocess import IMAGE_SIZE
from resources.feast import FeastResource
from resources.photos import PhotoStoreResource
from resources.pipeline import PipelineStore
from resources.policy import GatesResource, RetrainResource


class DatasetConfig(dg.Config):
    newest_corrections: int = 1000  # the newest corrections, whatever their day, always in the training set
    val_fraction: float = 0.2
    # Images per training task: the photo and copies-1 augmented ones. 2: at 800 tasks the model
    # is above its targets (bench/pipeline: 0.980 unseen, where 230 tasks x 5 copies gave 0.969), and
    # every copy of a new photo costs trunk time on the retrain's path (bench/loop: 5 copies took
    # the sensor-to-serving time to 6.3 minutes on 2 cores).
    copies: int = 2
    # A corrected training task gives copies x this images: the model's mistakes oversampled. 3: with
    # 2 the first retrain after a new kind's alarm (~45 corrections of each of two kinds) caught one
    # of them at 0.89 (bench/loop, 2026-12-02).
    corrected_weight: int = 3
    holdout_fraction: float = 0.15  # of newly confirmed tasks per class, always set aside into the holdout
    holdout_max_share: float = 0.5  # while a class is below the sizing rule's target, up to this share
    holdout_min_per_class: int = 10
    seed: int = 0
    fetch_workers: int = 8


def window_keys(context: dg.AssetExecutionContext, retrain: RetrainResource) -> list[str]:
    """The confirmation days this training reads: the run's partition range (a sensor-launched or
    backfill run: the sensor tags the training window), else every materialised day of the
    training window ending today (settings.retrain.window_days)."""
    tags = context.run.tags
    if RANGE_START in tags:
        return days_in_range(tags[RANGE_START], tags[RANGE_END])
    materialised = sorted(context.instance.get_materialized_partitions(CORRECTED_TASKS))
    if not materialised:
        return []
    start, _ = training_window(materialised[0], datetime.now(timezone.utc), retrain.settings().window_days)
    return [k for k in materialised if k >= start]


def select_tasks(window: pd.DataFrame, newest: pd.DataFrame) -> pd.DataFrame:
    """The window's confirmations plus the newest corrections; a task's latest confirmation wins."""
    both = pd.concat([f for f in (window, newest) if len(f)], ignore_index=True) if len(window) + len(newest) else window
    both = both.sort_values("event_timestamp").drop_duplicates("task_id", keep="last")
    return both.reset_index(drop=True)


@dg.asset(
    deps=[CORRECTED_TASKS], group_name="laundry", kinds={"albumentations", "numpy"},
    description="The training window's confirmations plus the newest corrections (corrected tasks oversampled); "
                "a share of the newly confirmed tasks set aside into a new holdout version first; the rest split "
                "by task 80/20 before augmentation (training: the photo and one augmented copy).",
)
def training_dataset(context: dg.AssetExecutionContext, config: DatasetConfig, feast: FeastResource,
                     photos: PhotoStoreResource, pipeline: PipelineStore, gates: GatesResource,
                     retrain: RetrainResource) -> DatasetManifest:
    keys = window_keys(context, retrain)
    window, missing = load_days(pipeline, keys)
    if missing:
        raise dg.Failure(f"corrected_tasks partitions not materialised: {', '.join(missing)}; "
                         "backfill them (UI or `dagster asset materialize --partition-range`)")
    newest = confirmations.newest_corrections(feast.tree(), feast.store(), config.newest_corrections)
    tasks = select_tasks(window, newest)
    context.log.info("%d days, %d confirmations in the window + %d newest corrections -> %d tasks",
                     len(keys), len(window), len(newest), len(tasks))
    records = [TaskRecord(r.task_id, r.photo_url, r.final_result, bool(r.corrected), r.event_timestamp)
               for r in tasks.itertuples()]
    fetched, dropped = fetch_photos(records, photos.get, workers=config.fetch_workers,
                                    progress=ProgressLog(context, "fetch photos"))
    # The holdout first: newly confirmed tasks drawn into it are never trained on.
    sizing = dict(fraction=config.holdout_fraction, target_per_class=holdout_target(gates.settings()),
                  max_share=config.holdout_max_share)
    holdout = Holdout.freeze_or_load(pipeline.path("holdout"), LAUNDRY, fetched, min_per_class=config.holdout_min_per_class,
                                     seed=config.seed, **sizing).grow(fetched, **sizing)
    corrected_copies = config.copies * config.corrected_weight
    dataset_id = dataset_id_for(fetched, holdout.task_ids, config.val_fraction, config.copies, IMAGE_SIZE, config.seed,
                                corrected_copies)
    manifest = build_dataset(fetched, holdout, pipeline.path("datasets", dataset_id), val_fraction=config.val_fraction,
                             copies=config.copies, seed=config.seed, progress=ProgressLog(context, "augment"),
                             corrected_copies=corrected_copies)
    reasons = pd.Series([reason.split(":")[0] for _, reason in dropped]).value_counts().to_dict()
    context.add_output_metadata({
        "dataset_id": manifest.dataset_id,
        "days": len(keys),
        "tasks": len(tasks),
        "corrected_tasks": int(tasks.corrected.sum()) if len(tasks) else 0,
        "dropped_photos": len(dropped),
        "dropped_reasons": dg.MetadataValue.json(reasons or {}),
        "counts": dg.MetadataValue.json(manifest.counts),
        "class_balance": dg.MetadataValue.md(pd.DataFrame(manifest.class_balance).T.to_markdown()),
        "holdout_version": holdout.version,
        "holdout_tasks": len(holdout),
        "holdout_per_class": dg.MetadataValue.json(holdout.class_counts),
        "holdout_added": sum(1 for v in holdout.added_in if v == holdout.version),
        "build_seconds": manifest.build_seconds,
    })
    return manifest
