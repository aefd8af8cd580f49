"""The nightly face batch, stage by stage (issue 12, items 4 and 5's wiring). Plain Python: the
Dagster assets (assets/face_*.py) call these one per step; ``run_nightly`` calls them in a row.

    prepare_dataset   a window of nights' samples -> the frozen identity holdout grows, train/val
                      split by identity, saved under the pipeline root (gymops.face.stored)
    ensure_first      no active face version yet: the pretrained descriptor becomes 1.0.0, its
                      threshold derived on the holdout at the gate's FAR, served, its gallery live
                      (enrolment needs a live gallery; a candidate needs a version to be judged
                      against and to roll back to)
    train_candidate   the Lightning fine-tune of the last stage, one checkpoint folder per dataset
                      and config (a killed training resumes, a finished one is reused)
    register          ONNX export (checked against PyTorch), registered ONCE per artifact (sha256)
    gate              the candidate against the ACTIVE version's served folder on the same holdout
                      pairs (gymops.face.gates); a failure, or a holdout too small to judge, marks
                      it rejected with a ModelVerificationFailedEvent and changes nothing live; the
                      verdict (with the candidate's own threshold) is kept for the deploy
    deploy            gymops.face.release: re-index, flip, registry active, ModelDeployedEvent

Why each stage reads what the one before left on disk rather than objects: a Dagster step may run
in another process, and a re-execution from a failed step starts from the files.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from gymops.face.dataset import FaceDataset, FaceHoldout, FaceSample, build_face_dataset
from gymops.face.gates import FaceGateLimits, FaceGateResult, NotEnoughPairs, check_pairs, embeddings, face_gate
from gymops.face.release import ARCHITECTURE, FACE, FaceRelease, ReleaseReport
from gymops.face.stored import FacePaths, load_dataset, read_gate, save_dataset, write_gate
from gymops.face.train import FaceTrainConfig, FaceTrainResult, Progress
from gymops.lifecycle.outbox import failure_reason
from gymops.lifecycle.versions import CANDIDATE, ModelVersion

GATE = "face_gate"


@dataclass(frozen=True)
class DatasetConfig:
    seed: int = 0
    val_fraction: float = 0.15
    holdout_fraction: float = 0.2  # frozen with the holdout: changing it later raises
    min_photos: int = 2
    max_photos: int = 8
    workers: int = 8


def gate_limits(face_settings, **overrides) -> FaceGateLimits:
    """The gate's limits from settings.face (GYMOPS_FACE_GATE_*)."""
    return FaceGateLimits(far=face_settings.gate_far, margin=face_settings.gate_margin,
                          max_latency_ms=face_settings.gate_latency_ms,
                          max_peak_memory_mb=face_settings.gate_memory_mb, **overrides)


# -- dataset ---------------------------------------------------------------------------------------
def prepare_dataset(samples: Iterable[FaceSample], paths: FacePaths, cfg: DatasetConfig = DatasetConfig(),
                    get: Callable[[str], bytes] | None = None) -> FaceDataset:
    ds = build_face_dataset(samples, paths.holdout, get=get, seed=cfg.seed, val_fraction=cfg.val_fraction,
                            holdout_fraction=cfg.holdout_fraction, min_photos=cfg.min_photos,
                            max_photos=cfg.max_photos, workers=cfg.workers)
    save_dataset(ds, paths.dataset(ds.dataset_id))
    return ds


def open_dataset(paths: FacePaths, dataset_id: str) -> FaceDataset:
    return load_dataset(paths.dataset(dataset_id), paths.holdout)


# -- the first version -----------------------------------------------------------------------------
def holdout_verification(model, holdout: FaceHoldout, limits: FaceGateLimits) -> dict[str, Any]:
    """One model's threshold at ``limits.far`` from its own impostor scores on the holdout, and TAR
    there (NotEnoughPairs when the holdout cannot resolve that FAR)."""
    from gymops.face.evaluate import pair_scores, verification_at_far

    check_pairs(holdout.user_ids, limits)
    genuine, impostor = pair_scores(embeddings(model, holdout.photos()), list(holdout.user_ids))
    v = verification_at_far(genuine, impostor, limits.far)
    return {"threshold": v.threshold, "tar": v.tar, "far": v.far, "achieved_far": v.achieved_far,
            "genuine_pairs": v.genuine_pairs, "impostor_pairs": v.impostor_pairs,
            "holdout_version": holdout.version}


COARSEST_FIRST_FAR = 1e-2


def first_version_limits(holdout: FaceHoldout, limits: FaceGateLimits) -> FaceGateLimits:
    """The FAR the FIRST version's threshold is derived at: the gate's, or, while the holdout is too
    small to resolve it, the finest it can (impostor_factor / impostor pairs), never coarser than
    COARSEST_FIRST_FAR. Why: with no active version there is no live gallery, so nobody can enrol
    or enter until the first version serves; at FAR 1e-3 that would wait for ~3,000 impostor pairs
    (~20 identities of 4 photos in the holdout, ~100 enrolled at a 0.2 holdout share). A
    provisional threshold lets entry start on the first night; every candidate is still gated at
    the design FAR (a candidate is judged only once the holdout resolves it) and brings its own
    threshold, so the provisional one lasts until the first gated swap. The achieved FAR is in
    the version's metrics (holdout.far), so an operator sees it."""
    from dataclasses import replace

    from gymops.face.gates import pair_counts

    _, impostor = pair_counts(holdout.user_ids)
    if impostor >= limits.min_impostor_pairs:
        return limits
    far = limits.impostor_factor / max(impostor, 1)
    if far > COARSEST_FIRST_FAR:
        needed = math.ceil(limits.impostor_factor / COARSEST_FIRST_FAR)
        raise NotEnoughPairs(f"impostor pairs: {impostor:,} < {needed:,}: even the first version's provisional "
                             f"threshold needs FAR <= {COARSEST_FIRST_FAR:g}; the holdout needs more identities")
    return replace(limits, far=far)


def ensure_first(release: FaceRelease, paths: FacePaths, holdout: FaceHoldout, limits: FaceGateLimits,
                 assets_dir: Path | None = None, run_id: str | None = None) -> tuple[ModelVersion, list[str]]:
    """The active face version; when there is none, the pretrained descriptor released as the first
    (see the module docstring)."""
    from gymops.face.model import export_onnx, load_pretrained

    active = release.registry.active(FACE)
    if active is not None:
        return active, release.reconcile()
    model = load_pretrained(assets_dir)
    figures = holdout_verification(model, holdout, first_version_limits(holdout, limits))
    onnx = paths.pretrained_onnx
    if not onnx.exists():  # one file, so a retried first night registers the same artifact
        tmp = export_onnx(model, onnx.with_name(f".{onnx.name}.{os.getpid()}.part"))
        os.replace(tmp, onnx)
    return release.ensure_first(onnx, figures["threshold"], {"holdout": figures, "source": "pretrained"}, run_id)


# -- training --------------------------------------------------------------------------------------
def train_candidate(ds: FaceDataset, paths: FacePaths, cfg: FaceTrainConfig = FaceTrainConfig(),
                    assets_dir: Path | None = None, progress: Progress | None = None,
                    callbacks=()) -> FaceTrainResult:
    from gymops.face.train import train_face

    return train_face(ds, cfg, paths.checkpoints(ds.dataset_id, cfg.fingerprint()), base=None, assets_dir=assets_dir,
                      progress=progress, callbacks=callbacks, feature_cache=paths.features)


def load_trained(ckpt_dir: Path, assets_dir: Path | None = None):
    """The best epoch's model of a FINISHED training in ``ckpt_dir`` (no feature extraction: a later
    step reloads the weights only)."""
    import torch

    from gymops.face.model import load_pretrained
    from gymops.face.train import Tail, weights_key

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "result.json").exists():
        raise FileNotFoundError(f"{ckpt_dir} holds no finished face training (result.json): materialise "
                                "face_checkpoint first")
    meta = json.loads((ckpt_dir / "train_meta.json").read_text())
    cfg = FaceTrainConfig(**meta["config"])
    model = load_pretrained(assets_dir)
    if weights_key(model) != meta["base"]:
        raise ValueError(f"ckpt_dir: {ckpt_dir} was trained from base {meta['base']}, the installed pretrained "
                         f"weights are {weights_key(model)}")
    best = json.loads((ckpt_dir / "result.json").read_text())["best_checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    Tail(model, cfg.frozen_blocks).load_state_dict({k[len("tail."):]: v for k, v in state.items()
                                                    if k.startswith("tail.")})
    return model.eval()


# -- registration ----------------------------------------------------------------------------------
def onnx_max_abs_diff(model, onnx_path: Path, photos: list[bytes]) -> float:
    """Largest difference between PyTorch's and onnxruntime's raw descriptors on ``photos``."""
    import onnxruntime as ort
    import torch

    from gymops.face.preprocess import preprocess

    x = np.stack([preprocess(p) for p in photos]).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["embedding"], {"image": x})[0]
    return float(np.abs(got - want).max())


def register(release: FaceRelease, model, ds: FaceDataset, training: dict, paths: FacePaths,
             run_id: str | None = None, max_abs_diff: float = 1e-4) -> ModelVersion:
    """Export and register the candidate (``training``: its FaceTrainResult.summary()); a re-run
    registers the same file, so it keeps its version."""
    from gymops.face.model import export_onnx

    fingerprint = FaceTrainConfig(**training["config"]).fingerprint()
    onnx = paths.onnx(ds.dataset_id, fingerprint)
    if not onnx.exists():
        os.replace(export_onnx(model, onnx.with_name(f".{onnx.name}.{os.getpid()}.part")), onnx)
    diff = onnx_max_abs_diff(model, onnx, ds.holdout.photos()[:8])
    if diff > max_abs_diff:
        raise ValueError(f"onnx: {onnx} differs from PyTorch by {diff:.3g} (> {max_abs_diff:g})")
    metrics = {"val_before": training["before"], "val": training["after"], "epochs": training["epochs"],
               "best_epoch": training["best_epoch"], "holdout_version": ds.holdout.version, "onnx_max_abs_diff": diff,
               "dataset": ds.summary(), "config": training["config"], "source": "fine-tuned"}
    return release.registry.register_candidate(FACE, ARCHITECTURE, metrics, ds.dataset_id, run_id, str(onnx))


# -- the gate --------------------------------------------------------------------------------------
@dataclass
class GateVerdict:
    version: str
    passed: bool
    reasons: list[str]
    against: str  # the active version the candidate was judged against, or "pretrained"
    threshold: float | None  # the candidate's own, at the gate's FAR (None: not judged)
    holdout_version: int
    result: FaceGateResult | None = field(default=None, repr=False)  # None: the holdout could not judge

    def record(self) -> dict[str, Any]:
        return {"version": self.version, "passed": self.passed, "reasons": self.reasons, "against": self.against,
                "threshold": self.threshold, "holdout_version": self.holdout_version,
                "gate": self.result.as_dict() if self.result else None,
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _reasons(result: FaceGateResult) -> list[dict]:
    """The verdict's reasons in the outbox's shape (gate, check, value, threshold, message)."""
    out = []
    for text in result.reasons:
        if text.startswith("TAR"):
            out.append(failure_reason(GATE, "tar_noninferiority", round(result.comparison.ci_low, 6),
                                      -result.margin, text))
        else:
            out.append(failure_reason(GATE, "performance", None, None, text))
    return out


def gate(release: FaceRelease, candidate: ModelVersion, model, holdout: FaceHoldout, paths: FacePaths,
         limits: FaceGateLimits = FaceGateLimits(), run_id: str | None = None, performance: bool = True,
         assets_dir: Path | None = None) -> GateVerdict:
    """Judge ``candidate`` (its PyTorch ``model``) against the active version's folder (or the
    pretrained model when none is active). A failing candidate is rejected (event in the outbox); a
    passing one keeps candidate status with the gate's figures as its metrics. The verdict is
    written to paths.gate(version) for the deploy."""
    active = release.registry.active(FACE)
    if active is not None and active.version != candidate.version:
        against, comparator = active.version, release.folder(active.version)
    else:
        from gymops.face.model import load_pretrained

        against, comparator = "pretrained", load_pretrained(assets_dir)
    try:
        result = face_gate(model, comparator, holdout=holdout, limits=limits, names=(candidate.version, against),
                           performance=performance)
    except NotEnoughPairs as exc:
        verdict = GateVerdict(candidate.version, False, [f"pairs: {exc}"], against, None, holdout.version)
        reasons = [failure_reason(GATE, "pairs", None, limits.min_impostor_pairs, str(exc))]
    else:
        verdict = GateVerdict(candidate.version, result.passed, list(result.reasons), against,
                              result.candidate.threshold, holdout.version, result)
        reasons = _reasons(result)
        if candidate.status == CANDIDATE:  # a re-evaluation: the registry keeps the gate's figures
            release.registry.register_candidate(
                FACE, candidate.architecture, {**candidate.metrics, "threshold": result.candidate.threshold,
                                               "gate": result.as_dict()},
                candidate.dataset_id, run_id, candidate.artifact_uri)
    if not verdict.passed and release.registry.get(FACE, candidate.version).status == CANDIDATE:
        release.registry.reject(FACE, candidate.version, reasons, run_id=run_id)
    write_gate(paths.gate(candidate.version), verdict.record())
    return verdict


def passed_threshold(paths: FacePaths, version: str) -> float:
    """The threshold of ``version``'s PASSED gate verdict; ValueError when it has none."""
    record = read_gate(paths.gate(version))
    if record is None or not record.get("passed") or record.get("threshold") is None:
        why = "no gate verdict" if record is None else f"its gate failed: {'; '.join(record.get('reasons') or [])}"
        raise ValueError(f"version: face {version} has no passed gate ({why}); it is not deployed")
    return float(record["threshold"])


# -- the whole night -------------------------------------------------------------------------------
@dataclass
class NightlyReport:
    dataset: dict
    first_version: str
    candidate: str
    verdict: GateVerdict
    training: dict
    release: ReleaseReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def run_nightly(samples: Iterable[FaceSample], paths: FacePaths, release: FaceRelease,
                get: Callable[[str], bytes] | None = None, dataset: DatasetConfig = DatasetConfig(),
                train: FaceTrainConfig = FaceTrainConfig(), limits: FaceGateLimits = FaceGateLimits(),
                assets_dir: Path | None = None, run_id: str | None = None, performance: bool = True,
                progress: Progress | None = None, deploy: bool = True) -> NightlyReport:
    """Every stage in a row; ``get`` fetches photo URLs (the samples' and the enrolments' for the
    re-index). The candidate is deployed only when its gate passed (and ``deploy``)."""
    seconds: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - t, 2)
        return out

    ds = timed("dataset", lambda: prepare_dataset(samples, paths, dataset, get))
    first, _ = timed("first_version", lambda: ensure_first(release, paths, ds.holdout, limits, assets_dir, run_id))
    result = timed("train", lambda: train_candidate(ds, paths, train, assets_dir, progress))
    candidate = timed("register", lambda: register(release, result.model, ds, result.summary(), paths, run_id))
    verdict = timed("gate", lambda: gate(release, candidate, result.model, ds.holdout, paths, limits, run_id,
                                         performance, assets_dir))
    report = NightlyReport(ds.summary(), first.version, candidate.version, verdict, result.summary(), seconds=seconds)
    if verdict.passed and deploy:
        if get is None:
            raise ValueError("get: the re-index fetches enrolment photos by URL; a photo getter is required")
        report.release = timed("deploy", lambda: release.deploy(candidate.version, verdict.threshold, get))
    return report
