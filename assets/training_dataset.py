import dagster as dg
import pandas as pd

from assets.corrected_tasks import KEY as CORRECTED_TASKS, load_days
from assets.partitions import RANGE_END, RANGE_START, days_in_range
from assets.progress import ProgressLog
from gymops.history import confirmations
from gymops.lifecycle.registry import LAUNDRY
from gymops.ml.dataset import DatasetManifest, Holdout, TaskRecord, build_dataset, dataset_id_for, fetch_photos
from gymops.ml.preprocess import IMAGE_SIZE
from resources.feast import FeastResource
from resources.photos import PhotoStoreResource
from resources.pipeline import PipelineStore
from resources.registry import RegistryResource


class DatasetConfig(dg.Config):
    newest_corrections: int = 500  # always in the training set, whatever their day
    val_fraction: float = 0.2
    copies: int = 5  # images per training task: the photo and copies-1 augmented ones
    holdout_fraction: float = 0.15
    holdout_min_per_class: int = 10
    seed: int = 0
    fetch_workers: int = 8


def window_keys(context: dg.AssetExecutionContext, registry: RegistryResource) -> list[str]:
    """The confirmation days this training reads: the run's partition range (a sensor-launched or
    backfill run), else every materialised day since the last training."""
    tags = context.run.tags
    if RANGE_START in tags:
        return days_in_range(tags[RANGE_START], tags[RANGE_END])
    materialised = sorted(context.instance.get_materialized_partitions(CORRECTED_TASKS))
    since = registry.last_trained_at(LAUNDRY)
    return [k for k in materialised if since is None or k >= since.date().isoformat()]


def select_tasks(window: pd.DataFrame, newest: pd.DataFrame) -> pd.DataFrame:
    """The window's confirmations plus the newest corrections; a task's latest confirmation wins."""
    both = pd.concat([f for f in (window, newest) if len(f)], ignore_index=True) if len(window) + len(newest) else window
    both = both.sort_values("event_timestamp").drop_duplicates("task_id", keep="last")
    return both.reset_index(drop=True)


@dg.asset(
    deps=[CORRECTED_TASKS], group_name="laundry", kinds={"albumentations", "numpy"},
    description="Photos of the selected tasks, split by task 80/20 before augmentation (training x5 "
                "augmented), with the model type's frozen holdout set apart.",
)
def training_dataset(context: dg.AssetExecutionContext, config: DatasetConfig, feast: FeastResource,
                     photos: PhotoStoreResource, pipeline: PipelineStore, registry: RegistryResource) -> DatasetManifest:
    keys = window_keys(context, registry)
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
    holdout = Holdout.freeze_or_load(pipeline.path("holdout"), LAUNDRY, fetched, fraction=config.holdout_fraction,
                                     min_per_class=config.holdout_min_per_class, seed=config.seed)
    dataset_id = dataset_id_for(fetched, holdout.task_ids, config.val_fraction, config.copies, IMAGE_SIZE, config.seed)
    manifest = build_dataset(fetched, holdout, pipeline.path("datasets", dataset_id), val_fraction=config.val_fraction,
                             copies=config.copies, seed=config.seed, progress=ProgressLog(context, "augment"))
    reasons = pd.Series([reason.split(":")[0] for _, reason in dropped]).value_counts().to_dict()
    context.add_output_metadata({
        "dataset_id": manifest.dataset_id,
        "days": len(keys),
        "tasks": len(tasks),
        "dropped_photos": len(dropped),
        "dropped_reasons": dg.MetadataValue.json(reasons or {}),
        "counts": dg.MetadataValue.json(manifest.counts),
        "class_balance": dg.MetadataValue.md(pd.DataFrame(manifest.class_balance).T.to_markdown()),
        "holdout_tasks": len(holdout),
        "build_seconds": manifest.build_seconds,
    })
    return manifest
