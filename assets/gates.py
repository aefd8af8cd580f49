"""The blocking asset checks: a failing gate stops the pipeline before anything is deployed, keeps
the active model, marks the candidate rejected and records ModelVerificationFailedEvent (outbox)."""
import dagster as dg
import numpy as np
import pandas as pd

from assets.candidate_model import CandidateModel, candidate_model
from assets.corrected_tasks import KEY as CORRECTED_TASKS, load_days
from assets.training_dataset import training_dataset
from gymops.lifecycle import gates as verification
from gymops.lifecycle import outbox as events
from gymops.lifecycle.registry import LAUNDRY, IllegalTransition
from gymops.ml.dataset import DatasetManifest
from gymops.ml.evaluate import champion_holdout_accuracy
from gymops.ml.preprocess import IMAGE_SIZE, normalise
from resources.pipeline import PipelineStore
from resources.policy import GatesResource
from resources.registry import RegistryResource


def _result(context, registry: RegistryResource, gate: verification.GateResult, version: str | None):
    if not gate.passed:
        reasons = verification.failures_as_reasons([gate])
        if version is not None:
            try:
                registry.registry().reject(LAUNDRY, version, reasons, run_id=context.run.run_id)
            except IllegalTransition:  # already rejected by a sibling gate: still record this gate's reasons
                registry.outbox().record_event(events.model_verification_failed(LAUNDRY, version, reasons, context.run.run_id))
        else:
            registry.outbox().record_event(events.model_verification_failed(
                LAUNDRY, f"(run {context.run.run_id[:8]}, not trained)", reasons, context.run.run_id))
    return dg.AssetCheckResult(
        passed=gate.passed,
        metadata={
            **{k: v for k, v in gate.figures.items() if isinstance(v, (int, float, str)) and v is not None},
            "failures": dg.MetadataValue.md(
                "\n".join(f"- **{f.check}**: {f.message}" for f in gate.failures) or "none"),
        },
        description=f"{gate.gate}: {'passed' if gate.passed else 'FAILED'}",
    )


@dg.asset_check(asset=CORRECTED_TASKS, blocking=True, description="Great Expectations: labels in the set, "
                "photo URL present, ids unique, timestamps sane, class balance.")
def corrected_tasks_data_check(context: dg.AssetCheckExecutionContext, pipeline: PipelineStore,
                               registry: RegistryResource):
    frame, _ = load_days(pipeline, list(context.partition_keys))
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
                  gates: GatesResource, candidate_model: CandidateModel):
    try:
        champion, accuracy = champion_holdout_accuracy(registry.registry(), pipeline.path("holdout"), LAUNDRY,
                                                       IMAGE_SIZE)
    except FileNotFoundError as exc:
        raise dg.Failure(str(exc)) from exc
    gate = verification.accuracy_gate(candidate_model.metrics, accuracy, gates.settings())
    if champion:
        gate.figures["champion_version"] = champion
    return _result(context, registry, gate, candidate_model.version)


@dg.asset_check(asset=candidate_model, blocking=True, additional_ins={"training_dataset": dg.AssetIn("training_dataset")},
                description="In a sandbox (onnxruntime in a child "
                "process, never the serving Triton): mean latency <= 200 ms over 1000 requests, memory <= 2 GB, "
                "throughput >= 50 req/s.")
def performance_gate(context: dg.AssetCheckExecutionContext, registry: RegistryResource, gates: GatesResource,
                     training_dataset: DatasetManifest, candidate_model: CandidateModel):
    samples = normalise(np.asarray(training_dataset.images("val")[:16]))
    gate = verification.performance_gate(candidate_model.onnx_path, samples, gates.settings())
    return _result(context, registry, gate, candidate_model.version)


GATES = [corrected_tasks_data_check, training_dataset_data_check, accuracy_gate, performance_gate]
