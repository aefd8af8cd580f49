"""The blocking asset checks: a failing gate stops the pipeline before anything is deployed, keeps
the active model, marks the candidate rejected and records ModelVerificationFailedEvent (outbox)."""
import dagster as dg
import numpy as np
import pandas as pd

from assets.candidate_model import CandidateModel, candidate_model
from assets.pictures import picture
from assets.corrected_tasks import KEY as CORRECTED_TASKS, load_days
from assets.training_dataset import training_dataset
from gymops.lifecycle import gates as verification
from gymops.lifecycle import outbox as events
from gymops.lifecycle.registry import LAUNDRY, IllegalTransition
from gymops.ml import plots
from gymops.ml.dataset import DatasetManifest
from gymops.ml.evaluate import current_holdout, judge_on_holdout
from gymops.ml.preprocess import IMAGE_SIZE, normalise
from resources.pipeline import PipelineStore
from resources.policy import GatesResource
from resources.registry import RegistryResource


def _result(context, registry: RegistryResource, gate: verification.GateResult, version: str | None,
            metadata: dict | None = None):
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
            **(metadata or {}),
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
                "class >= 0.90 (each k of n with its exact interval and pass mark), and better than the active model: "
                "paired on the current holdout version, non-inferior overall and not significantly worse on the newest photos.")
def accuracy_gate(context: dg.AssetCheckExecutionContext, pipeline: PipelineStore, registry: RegistryResource,
                  gates: GatesResource, candidate_model: CandidateModel):
    holdout = current_holdout(pipeline.path("holdout"), LAUNDRY)
    try:  # both models scored now, on the current version: like with like
        judged = judge_on_holdout(candidate_model.onnx_path, holdout, registry.registry(), IMAGE_SIZE)
    except FileNotFoundError as exc:
        raise dg.Failure(str(exc)) from exc
    gate = verification.accuracy_gate({"val": candidate_model.metrics["val"], "holdout": judged.metrics},
                                      judged.champion, gates.settings())
    gate.figures["holdout_version"] = holdout.version
    meta = gate_metadata(gate)
    meta["gate_plot"] = picture(plots.gate_intervals(gate.figures, gates.settings().noninferiority_margin),
                                "each gate's estimate and interval against its threshold")
    if judged.champion is not None:
        meta["champion_vs_challenger_plot"] = picture(plots.class_accuracy(judged.per_group(candidate_model.version)),
                                                      "champion and challenger per class and on the newest photos")
    return _result(context, registry, gate, candidate_model.version, meta)


def gate_metadata(gate: verification.GateResult) -> dict:
    """Each accuracy check as a figure (its estimate) and a table row: k/n, 95% CI, threshold,
    pass mark, and the chances a model 0.05 above or below passes; champion against challenger
    with its paired interval."""
    rows, meta = [], {}
    for name, fig in gate.figures.items():
        if isinstance(fig, dict) and "pass_mark" in fig:
            meta[name] = dg.MetadataValue.float(float(fig["estimate"]))
            rows.append(f"| {name} | {fig['k']}/{fig['n']} | {fig['estimate']:.3f} | {fig['ci_low']:.3f}-{fig['ci_high']:.3f} "
                        f"| {fig['threshold']:g} | {fig['pass_mark']} | {fig['pass_if_above']:.3f} | {fig['pass_if_below']:.3f} "
                        f"| {'pass' if fig['passed'] else 'FAIL'} |")
    if rows:
        meta["checks"] = dg.MetadataValue.md(
            "| check | right | estimate | 95% CI | threshold | pass mark | P(pass) 0.05 above | P(pass) 0.05 below | |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    champion = gate.figures.get("champion")
    if champion:
        meta["champion_version"] = champion["champion_version"]
        for part in ("overall", "newest"):
            c = champion.get(part)
            if c:
                meta[f"vs_champion.{part}.change"] = dg.MetadataValue.float(float(c["difference"]))
                meta[f"vs_champion.{part}.ci_low"] = dg.MetadataValue.float(float(c["ci_low"]))
                meta[f"vs_champion.{part}.photos"] = dg.MetadataValue.int(int(c["n"]))
                meta[f"vs_champion.{part}.discordant"] = f"{c['challenger_only']} challenger / {c['champion_only']} champion"
    return meta


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
