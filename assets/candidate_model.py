from dataclasses import dataclass, field

import dagster as dg

from assets.pictures import picture
from assets.trained_checkpoint import TrainedCheckpoint
from gymops.lifecycle.registry import LAUNDRY
from gymops.ml.dataset import DatasetManifest
from gymops.ml.evaluate import confusion_md, current_holdout, evaluate_onnx, judge_on_holdout
from gymops.ml import plots
from gymops.ml.export import export_onnx
from gymops.ml.train import TrainConfig, train
from resources.pipeline import PipelineStore
from resources.registry import RegistryResource


@dataclass
class CandidateModel:
    model_type: str
    version: str
    triton_version: int
    onnx_path: str
    dataset_id: str
    metrics: dict = field(default_factory=dict)  # {"val": .., "holdout": .., "onnx_max_abs_diff": ..}


@dg.asset(
    group_name="laundry", kinds={"onnx"},
    description="The trained model exported to ONNX (checked against PyTorch), evaluated on validation "
                "and the current holdout version, registered as a candidate version.",
)
def candidate_model(context: dg.AssetExecutionContext, pipeline: PipelineStore, registry: RegistryResource,
                    training_dataset: DatasetManifest, trained_checkpoint: TrainedCheckpoint) -> CandidateModel:
    cfg = TrainConfig(**trained_checkpoint.config)
    model = train(training_dataset, cfg, trained_checkpoint.ckpt_dir,
                  feature_cache=pipeline.feature_cache()).model  # the finished training, reloaded
    onnx_path = pipeline.path("models", LAUNDRY, f"{training_dataset.dataset_id}-{cfg.fingerprint()}.onnx")
    val_x = training_dataset.images("val")
    diff = export_onnx(model, onnx_path, training_dataset.size, samples=val_x[:32])
    holdout_metrics = judge_on_holdout(onnx_path, current_holdout(pipeline.path("holdout"), LAUNDRY),
                                       size=training_dataset.size).metrics
    metrics = {
        "val": evaluate_onnx(onnx_path, val_x, training_dataset.labels("val")),
        "holdout": holdout_metrics,  # on the newest holdout version (the gate scores again on the current one)
        # the holdout version set aside before this model's data was built: photos added after it
        # are the newest confirmed tasks when this model is the champion
        "holdout_version": training_dataset.extra.get("holdout_version"),
        "onnx_max_abs_diff": diff,
    }
    version = registry.registry().register_candidate(
        LAUNDRY, cfg.backbone, metrics, training_dataset.dataset_id, context.run.run_id, str(onnx_path))
    h = metrics["holdout"]
    context.add_output_metadata({
        "version": version.version,
        "triton_version": version.triton_version,
        "holdout_accuracy": dg.MetadataValue.float(float(h["accuracy"])),
        "val_accuracy": dg.MetadataValue.float(float(metrics["val"]["accuracy"])),
        "holdout_per_class_accuracy": dg.MetadataValue.json(h["per_class_accuracy"]),
        "holdout_confusion_matrix": dg.MetadataValue.md(confusion_md(h["confusion"])),
        "holdout_confusion_matrix_plot": picture(plots.confusion_matrix(
            h["confusion"], f"{version.version} on holdout v{h['holdout_version']}"), "confusion matrix"),
        "onnx_max_abs_diff": dg.MetadataValue.float(float(diff)),
        "onnx": dg.MetadataValue.path(str(onnx_path)),
        "dataset_id": training_dataset.dataset_id,
    })
    return CandidateModel(LAUNDRY, version.version, version.triton_version, str(onnx_path),
                          training_dataset.dataset_id, metrics)

