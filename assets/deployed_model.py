import dagster as dg
import pandas as pd

from assets.candidate_model import CandidateModel
from gymops.deploy.deployer import DeployFailed
from gymops.lifecycle.registry import LAUNDRY
from gymops.ml.holdout import Holdout
from resources.pipeline import PipelineStore
from resources.registry import RegistryResource
from resources.triton import TritonResource

GOLDEN_PHOTOS = 16


@dg.asset(
    group_name="laundry", kinds={"triton"},
    description="The verified candidate hot-swapped into Triton: version folder, staging load + golden check, "
                "flip, post-flip check, registry active, ModelDeployedEvent; the previous version stays for rollback.",
)
def deployed_model(context: dg.AssetExecutionContext, candidate_model: CandidateModel, pipeline: PipelineStore,
                   registry: RegistryResource, triton: TritonResource) -> dg.MaterializeResult:
    deployer = triton.deployer(registry.registry())
    state = deployer.consistency(LAUNDRY)
    if not state.ok:  # e.g. Triton restarted since the last deploy: serve the registry's active version first
        context.log.warning("serving and registry disagree (%s): reconciling first", "; ".join(state.problems))
        deployer.reconcile(LAUNDRY)
    golden = Holdout.freeze_or_load(pipeline.path("holdout"), LAUNDRY, []).photos()[:GOLDEN_PHOTOS]
    try:
        report = deployer.deploy(LAUNDRY, candidate_model.version, golden,
                                 on_step=lambda step, s: context.log.info("deploy %s: %.2f s", step, s))
    except DeployFailed as exc:
        raise dg.Failure(f"deploy of {candidate_model.version} failed at {exc.step}: {exc.cause}; "
                         f"the previous version keeps serving", metadata={"steps": dg.MetadataValue.json(
                             getattr(exc.report, "steps", {}))}) from exc
    return dg.MaterializeResult(metadata={
        "version": report.version,
        "triton_version": report.triton_version,
        "previous_version": report.previous_version or "(none)",
        "deploy_seconds": dg.MetadataValue.float(float(report.deploy_seconds or report.seconds)),
        "steps": dg.MetadataValue.md(pd.Series(report.steps, name="seconds").round(3).to_frame().to_markdown()),
        "golden_max_abs_diff": dg.MetadataValue.json(report.golden),
        "archived": dg.MetadataValue.json(report.archived),
    })


class RollbackConfig(dg.Config):
    to_version: str = ""  # empty: the version the active one replaced
    reason: str = "operator rollback"


@dg.op(description="Serve the previous (or a named) laundry version again; ModelRolledBackEvent recorded.")
def rollback_laundry(context: dg.OpExecutionContext, config: RollbackConfig, registry: RegistryResource,
                     triton: TritonResource) -> dict:
    report = triton.deployer(registry.registry()).rollback(LAUNDRY, config.to_version or None, config.reason)
    context.log.info("rolled back %s -> %s in %.2f s", report.from_version, report.to_version, report.seconds)
    context.add_output_metadata({"from_version": report.from_version, "to_version": report.to_version,
                                 "seconds": dg.MetadataValue.float(report.seconds)})
    return report.as_dict()

