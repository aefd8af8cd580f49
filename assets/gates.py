"""The blocking asset checks: a failing gate stops the pipeline before anything is deployed, keeps
the active model, marks the candidate rejected and records ModelVerificationFailedEvent (outbox)."""
import dagster as dg
import numpy as np
import pandas as pd

from assets.candidate_model import CandidateModel, candidate_model, champion_holdout_accuracy
from assets.corrected_tasks import corrected_tasks, load_days, partition_days
from assets.training_dataset import MODEL_TYPE, training_dataset
from gymops.lifecycle import outbox as events
from gymops.lifecycle import gates as verification
from gymops.ml.dataset import DatasetManifest
from gymops.ml.preprocess import normalise
from gymops.lifecycle.registry import IllegalTransition
from gymops.settings import load_settings
from resources.pipeline import PipelineStore
from resources.registry import RegistryResource


def _result(context, registry: RegistryResource, gate: verification.GateResult, version: str | None):
    if not gate.passed:
        reasons = verification.failures_as_reasons([gate])
        if version is not None:
            try:
                registry.registry().reject(MODEL_TYPE, version, reasons, run_id=context.run.run_id)
            except IllegalTransition:  # already rejected by a sibling gate: still record this gate's reasons
                registry.outbox().record_event(events.model_verification_failed(MODEL_TYPE, version, reasons, context.run.run_id))
        else:
            registry.outbox().record_event(events.model_verification_failed(
                MODEL_TYPE, f"(run {context.run.run_id[:8]}, not trained)", reasons, context.run.run_id))
    return dg.AssetCheckResult(
        passed=gate.passed,
        metadata={
            **{k: v for k, v in gate.figures.items() if isinstance(v, (int, float, str)) and v is not None},
            "failures": dg.MetadataValue.md(
                "\n".join(f"- **{f.check}**: {f.message}" for f in gate.failures) or "none"),
        },
        description=f"{gate.gate}: {'passed' if gate.passed else 'FAILED'}",
    )


@dg.asset_check(asset=corrected_tasks, blocking=True, description="Great Expectations: labels in the set, "
                "photo URL present, ids unique, timestamps sane, class balance.")
def corrected_tasks_data_check(context: dg.AssetCheckExecutionContext, pipeline: PipelineStore,
                               registry: RegistryResource):
    frame, _ = load_days(pipeline, partition_days(context))
    gate = verification.check_corrected_tasks(frame)
    return _result(context, registry, gate, None)


def manifest_rows(manifest: DatasetManifest) -> pd.DataFrame:
    rows = []
    for split in ("train", "val"):
        labels = manifest.labels(split)
        rows.append(pd.DataFrame({"split": split, "label": np.where(labels == 1, "defective", "good"),
                                  "decodable": True, "task_id": manifest.task_ids(split)}))
    return pd.concat(rows, ignore_index=True)


@dg.asset_check(asset=training_dataset, blocking=True, description="Great Expectations: every photo decodable, "
                "labels in the set, both classes in every split, class balance, no task in two splits.")
def training_dataset_data_check(context: dg.AssetCheckExecutionContext, registry: RegistryResource,
                                training_dataset: DatasetManifest):
    gate = verification.check_training_dataset(manifest_rows(training_dataset), required_splits=("train", "val"))
    return _result(context, registry, gate, None)


@dg.asset_check(asset=candidate_model, blocking=True, description="Validation >= 0.90, holdout >= 0.88, each "
                "class >= 0.90, and better than the active model on the same frozen holdout.")
def accuracy_gate(context: dg.AssetCheckExecutionContext, pipeline: PipelineStore, registry: RegistryResource,
                  candidate_model: CandidateModel):
    champion, accuracy = champion_holdout_accuracy(registry.registry(), pipeline, 224)
    gate = verification.accuracy_gate(candidate_model.metrics, accuracy, load_settings().gates)
    if champion:
        gate.figures["champion_version"] = champion
    return _result(context, registry, gate, candidate_model.version)


@dg.asset_check(asset=candidate_model, blocking=True, additional_ins={"training_dataset": dg.AssetIn("training_dataset")},
                description="In a sandbox (onnxruntime in a child "
                "process, never the serving Triton): mean latency <= 200 ms over 1000 requests, memory <= 2 GB, "
                "throughput >= 50 req/s.")
def performance_gate(context: dg.AssetCheckExecutionContext, registry: RegistryResource,
                     training_dataset: DatasetManifest, candidate_model: CandidateModel):
    samples = normalise(np.asarray(training_dataset.images("val")[:16]))
    gate = verification.performance_gate(candidate_model.onnx_path, samples, load_settings().gates)
    return _result(context, registry, gate, candidate_model.version)


GATES = [corrected_tasks_data_check, training_dataset_data_check, accuracy_gate, performance_gate]
