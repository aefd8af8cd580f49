"""The nightly face batch's release: face_candidate (registered once per artifact; the first night
also makes the pretrained descriptor the first served version), the blocking face gate, and
face_deployed (re-index and flip). Thin over gymops.face.nightly and gymops.face.release.

A failing gate stops the run before face_deployed: the candidate is rejected with a
ModelVerificationFailedEvent (outbox) and nothing that serves changes."""
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.face_training import FaceCheckpointRef, FaceDatasetRef
from assets.partitions import SINGLE_RUN
from assets.pictures import picture
from assets.progress import ProgressLog
from gymops.face import nightly
from gymops.face.dataset import FaceHoldout
from gymops.face.gates import NotEnoughPairs
from gymops.face.release import FACE, ReleaseError
from gymops.serving.control import ControlError
from gymops.face.stored import FacePaths
from resources.face import FaceResource
from resources.photos import PhotoStoreResource
from resources.pipeline import PipelineStore
from resources.registry import RegistryResource


@dataclass
class FaceCandidateRef:
    version: str
    triton_version: int
    onnx_path: str
    dataset_id: str
    ckpt_dir: str
    holdout_version: int


@dg.asset(
    group_name="face", backfill_policy=SINGLE_RUN, kinds={"onnx"},
    description="The fine-tuned model exported to ONNX (checked against PyTorch) and registered as a face candidate "
                "(once per artifact). With no active face version yet, the pretrained descriptor is released first "
                "as 1.0.0, its threshold derived on the holdout: enrolment and the gate need a served version.")
def face_candidate(context: dg.AssetExecutionContext, face: FaceResource, registry: RegistryResource,
                   pipeline: PipelineStore, face_dataset: FaceDatasetRef,
                   face_checkpoint: FaceCheckpointRef) -> FaceCandidateRef:
    paths = FacePaths(pipeline.root)
    ds = nightly.open_dataset(paths, face_dataset.dataset_id)
    release = face.release(registry.registry())
    try:
        active, actions = nightly.ensure_first(release, paths, ds.holdout, face.limits(), face.assets_dir(),
                                               context.run.run_id)
    except (NotEnoughPairs, ReleaseError, ControlError) as exc:
        raise dg.Failure(f"no active face version to judge the candidate against: {exc}") from exc
    for action in actions:
        context.log.info("face release: %s", action)
    model = nightly.load_trained(Path(face_checkpoint.ckpt_dir), face.assets_dir())
    mv = nightly.register(release, model, ds, face_checkpoint.training, paths, context.run.run_id)
    context.add_output_metadata({
        "version": mv.version,
        "triton_version": mv.triton_version,
        "status": mv.status,
        "active_version": active.version,
        "first_version_now": dg.MetadataValue.bool(any(a.startswith("first version") for a in actions)),
        "val_tar": dg.MetadataValue.float(float(mv.metrics["val"]["val_tar"])),
        "onnx_max_abs_diff": dg.MetadataValue.float(float(mv.metrics["onnx_max_abs_diff"])),
        "onnx": dg.MetadataValue.path(str(mv.artifact_uri)),
        "dataset_id": ds.dataset_id,
        "holdout_version": ds.holdout.version,
    })
    return FaceCandidateRef(mv.version, mv.triton_version, str(mv.artifact_uri), ds.dataset_id,
                            face_checkpoint.ckpt_dir, ds.holdout.version)


def gate_metadata(verdict: nightly.GateVerdict) -> dict:
    """TAR of each model with its interval and n, each model's threshold, the discordant pairs, the
    McNemar p, the reasons, and the picture."""
    meta = {"against": verdict.against, "holdout_version": verdict.holdout_version,
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in verdict.reasons) or "none")}
    r = verdict.result
    if r is None:
        return meta
    rows = []
    for role, v in (("candidate", r.candidate), ("active", r.active)):
        low, high = v.tar.interval
        meta[f"tar_{role}"] = dg.MetadataValue.float(float(v.tar.value))
        meta[f"threshold_{role}"] = dg.MetadataValue.float(float(v.threshold))
        perf = v.performance or {}
        rows.append({"model": f"{v.name} ({role})", "TAR": round(v.tar.value, 4), "accepted": f"{v.tar.k}/{v.tar.n}",
                     "95% CI": f"{low:.3f}-{high:.3f}", "threshold": round(v.threshold, 5),
                     "achieved FAR": round(v.achieved_far, 5), "ms/photo": perf.get("mean_latency_ms"),
                     "peak MB": perf.get("peak_memory_mb")})
    c = r.comparison
    meta.update({
        "models": dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False)),
        "far": dg.MetadataValue.float(r.far),
        "genuine_pairs": dg.MetadataValue.int(r.genuine_pairs),
        "impostor_pairs": dg.MetadataValue.int(r.impostor_pairs),
        "tar_difference": dg.MetadataValue.float(float(c.difference)),
        "difference_ci_low": dg.MetadataValue.float(float(c.ci_low)),
        "margin": dg.MetadataValue.float(r.margin),
        "discordant": f"{c.challenger_only} only the candidate / {c.champion_only} only the active accepts",
        "mcnemar_p": dg.MetadataValue.float(float(r.p_value)),
        "identities": dg.MetadataValue.int(r.identities),
        "gate_plot": picture(_gate_png(r), "TAR of each model and the paired difference against the margin"),
    })
    return meta


def _gate_png(result) -> bytes:
    from gymops.face.plots import gate_picture

    return gate_picture(result)


@dg.asset_check(asset=face_candidate, blocking=True,
                description="The face gate on the frozen holdout's identities: TAR at settings.face.gate_far, each model "
                            "at the threshold from its own impostor scores; non-inferior to the ACTIVE version (paired, "
                            "McNemar; margin settings.face.gate_margin); latency and memory in the sandbox. Too few "
                            "pairs to measure that FAR blocks too.")
def face_gate(context: dg.AssetCheckExecutionContext, face: FaceResource, registry: RegistryResource,
              pipeline: PipelineStore, face_candidate: FaceCandidateRef) -> dg.AssetCheckResult:
    paths = FacePaths(pipeline.root)
    release = face.release(registry.registry())
    model = nightly.load_trained(Path(face_candidate.ckpt_dir), face.assets_dir())
    holdout = FaceHoldout.load(paths.holdout, face_candidate.holdout_version)
    verdict = nightly.gate(release, registry.registry().get(FACE, face_candidate.version), model, holdout, paths,
                           face.limits(), context.run.run_id, performance=True, assets_dir=face.assets_dir())
    return dg.AssetCheckResult(passed=verdict.passed, metadata=gate_metadata(verdict),
                               description=f"face gate of {verdict.version} against {verdict.against}: "
                                           f"{'passed' if verdict.passed else 'FAILED'}")


@dg.asset(
    group_name="face", backfill_policy=SINGLE_RUN, kinds={"triton"},
    description="The gated candidate released: every enrolled member re-embedded into its gallery (enrolments "
                "meanwhile go to both), then the flip: its gallery loaded, Triton's face model swapped (no failed "
                "request), the pair states and the registry updated, ModelDeployedEvent; the previous pair kept for "
                "rollback. A crash leaves the active pair serving; a re-run resumes the re-index.")
def face_deployed(context: dg.AssetExecutionContext, face: FaceResource, registry: RegistryResource,
                  photos: PhotoStoreResource, pipeline: PipelineStore,
                  face_candidate: FaceCandidateRef) -> dg.MaterializeResult:
    try:
        threshold = nightly.passed_threshold(FacePaths(pipeline.root), face_candidate.version)
        report = face.release(registry.registry()).deploy(
            face_candidate.version, threshold, photos.get, progress=ProgressLog(context, "re-index"),
            on_step=lambda step, s: context.log.info("face deploy %s: %.2f s", step, s))
    except (ValueError, ReleaseError, ControlError) as exc:
        raise dg.Failure(f"face {face_candidate.version} not deployed: {exc}; the active pair keeps serving "
                         "(a re-run resumes the re-index)") from exc
    return dg.MaterializeResult(metadata={
        "version": report.version,
        "triton_version": report.triton_version,
        "previous_version": report.previous_version or "(none)",
        "members": dg.MetadataValue.int(report.members),
        "reindexed": dg.MetadataValue.int(report.reindexed),
        "already_active": dg.MetadataValue.bool(report.already_active),
        "deploy_seconds": dg.MetadataValue.float(report.seconds),
        "steps": dg.MetadataValue.md(pd.Series(report.steps, name="seconds").to_frame().to_markdown()),
        "actions": dg.MetadataValue.json(report.actions),
    })


class FaceRollbackConfig(dg.Config):
    to_version: str = ""  # empty: the version the active one replaced
    reason: str = "operator rollback"


@dg.op(description="Serve the previous face model-and-gallery pair again (registry, galleries, Triton together); "
                   "ModelRolledBackEvent recorded.")
def rollback_face(context: dg.OpExecutionContext, config: FaceRollbackConfig, face: FaceResource,
                  registry: RegistryResource) -> dict:
    report = face.release(registry.registry()).rollback(config.reason, config.to_version or None)
    context.log.info("face rolled back %s -> %s in %.2f s", report.from_version, report.to_version, report.seconds)
    return {"from_version": report.from_version, "to_version": report.to_version, "seconds": report.seconds}


FACE_CHECKS = [face_gate]
