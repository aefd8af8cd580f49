"""The blocking gate for a face model candidate (issue 12, item 4): on the frozen holdout's
identities (gymops.face.dataset.FaceHoldout), the candidate against the active model on the SAME
pairs of photos.

The rule:
- every photo pair of the holdout is scored by each model: genuine (same identity) and impostor;
- each model's decision threshold is derived from ITS OWN impostor scores at ``far`` (1e-3): a
  retrained embedding moves its score distributions, so a carried-over threshold would give it a
  different false accept rate (gymops.face.evaluate). FAR 1e-3 is only measured when there are
  impostor pairs to spare: the gate refuses (NotEnoughPairs) below ``impostor_factor / far``
  (3,000: at that size the threshold rests on the 3 highest impostor scores), and with fewer
  than ``min_genuine_pairs`` genuine pairs, before any model runs;
- TAR of each model (genuine pairs accepted at its threshold), k of n with a Clopper-Pearson
  interval;
- paired on the genuine pairs: the pairs accepted by one model and not the other (McNemar, exact;
  gymops.lifecycle.statistics.paired_comparison). The candidate passes when the one-sided 95%
  lower bound of TAR(candidate) - TAR(active) is at least -``margin`` (non-inferiority: a candidate
  that is not measurably better still passes, so a retraining on new members is not blocked by
  noise; one that may be worse by more than the margin is blocked). The bound needs pairs: for an
  equally good candidate it is about -1.64 * sqrt(discordant) / genuine pairs, so with 22
  discordant of 372 genuine pairs (62 held-out identities x 4 photos) it is -0.021 and passes
  0.03, with 22 of 180 (30 identities) -0.044 and fails. A small holdout blocks, it never waves
  through;
- cost, measured in the sandbox process the laundry performance gate uses (the ONNX export under
  onnxruntime, single-photo requests): latency per photo, peak and model memory, ONNX size. These
  are reported for both models; a limit left None only reports.

Why genuine pairs only in the paired test: at a fixed FAR both models accept the same NUMBER of
impostor pairs by construction; what may differ is how many members they let in.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import binom

from gymops.face.evaluate import pair_scores, verification_at_far
from gymops.lifecycle.statistics import Estimate, PairedComparison, paired_comparison


class NotEnoughPairs(ValueError):
    """The holdout has too few pairs for the FAR the gate must resolve: the gate refuses to judge."""


@dataclass(frozen=True)
class FaceGateLimits:
    far: float = 1e-3
    impostor_factor: float = 3.0  # impostor pairs needed: impostor_factor / far
    min_genuine_pairs: int = 30
    margin: float = 0.03  # non-inferiority margin on TAR (absolute), the laundry gate's default
    confidence: float = 0.90  # two-sided interval of the difference: its lower end is a one-sided 95% bound
    tar_confidence: float = 0.95
    max_latency_ms: float | None = None  # mean per photo in the sandbox; None: reported only
    max_peak_memory_mb: float | None = None
    max_size_mb: float | None = None
    perf_requests: int = 100
    threads: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.far < 1:
            raise ValueError(f"far: must be within (0, 1), got {self.far}")
        if self.impostor_factor < 1:
            raise ValueError(f"impostor_factor: at least 1 impostor pair per accepted one, got {self.impostor_factor}")
        if self.min_genuine_pairs < 1 or self.perf_requests < 1 or self.threads < 1:
            raise ValueError("min_genuine_pairs, perf_requests and threads must be >= 1")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin: must be within [0, 1), got {self.margin}")
        for name in ("confidence", "tar_confidence"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}: must be within (0, 1), got {getattr(self, name)}")

    @property
    def min_impostor_pairs(self) -> int:
        return math.ceil(self.impostor_factor / self.far - 1e-9)


@dataclass(frozen=True)
class VersionFigures:
    """One model on the gate's pairs: its own threshold and what it accepts there."""
    name: str
    threshold: float
    achieved_far: float
    tar: Estimate
    genuine_mean: float
    impostor_mean: float
    performance: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "tar"}
        return {**d, "tar": self.tar.as_dict()}


@dataclass(frozen=True)
class FaceGateResult:
    passed: bool
    reasons: list[str]  # why it failed (empty when passed)
    far: float
    genuine_pairs: int
    impostor_pairs: int
    min_impostor_pairs: int
    candidate: VersionFigures
    active: VersionFigures
    comparison: PairedComparison  # challenger = candidate, champion = active, on the genuine pairs
    p_value: float  # exact two-sided McNemar p of "the TARs differ"
    margin: float
    identities: int
    photos: int
    holdout_version: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Everything a UI shows, JSON-ready."""
        return {"passed": self.passed, "reasons": list(self.reasons), "far": self.far,
                "genuine_pairs": self.genuine_pairs, "impostor_pairs": self.impostor_pairs,
                "min_impostor_pairs": self.min_impostor_pairs, "candidate": self.candidate.as_dict(),
                "active": self.active.as_dict(), "comparison": self.comparison.as_dict(),
                "candidate_only": self.comparison.challenger_only, "active_only": self.comparison.champion_only,
                "p_value": round(self.p_value, 6), "margin": self.margin, "identities": self.identities,
                "photos": self.photos, "holdout_version": self.holdout_version, "notes": list(self.notes)}


def pair_counts(user_ids: Sequence[str]) -> tuple[int, int]:
    """(genuine, impostor) pair counts of photos labelled ``user_ids``, without scoring anything."""
    _, counts = np.unique(np.asarray(list(user_ids)), return_counts=True)
    n = int(counts.sum())
    genuine = int((counts * (counts - 1) // 2).sum())
    return genuine, n * (n - 1) // 2 - genuine


def check_pairs(user_ids: Sequence[str], limits: FaceGateLimits) -> tuple[int, int]:
    """The pair counts, or NotEnoughPairs naming what is short and by how much."""
    genuine, impostor = pair_counts(user_ids)
    _require(genuine, impostor, limits, f" on {len(user_ids)} photos of {len(set(user_ids))} identities")
    return genuine, impostor


def _require(genuine: int, impostor: int, limits: FaceGateLimits, where: str = "") -> None:
    if impostor < limits.min_impostor_pairs:
        raise NotEnoughPairs(
            f"impostor pairs: {impostor:,} < {limits.min_impostor_pairs:,} ({limits.impostor_factor:g} / FAR "
            f"{limits.far:g}): FAR {limits.far:g} cannot be measured{where}; the holdout needs more identities")
    if genuine < limits.min_genuine_pairs:
        raise NotEnoughPairs(f"genuine pairs: {genuine} < min_genuine_pairs {limits.min_genuine_pairs}{where}: "
                             "TAR cannot be estimated")


def _figures(name: str, genuine: np.ndarray, impostor: np.ndarray, limits: FaceGateLimits,
             performance: dict | None) -> VersionFigures:
    v = verification_at_far(genuine, impostor, limits.far)
    k = int(np.sum(np.asarray(genuine, np.float64) >= v.threshold))
    return VersionFigures(name, v.threshold, v.achieved_far, Estimate(k, len(genuine), limits.tar_confidence),
                          float(np.mean(genuine)), float(np.mean(impostor)), performance)


def compare_scores(candidate: tuple[np.ndarray, np.ndarray], active: tuple[np.ndarray, np.ndarray],
                   limits: FaceGateLimits = FaceGateLimits(), names: tuple[str, str] = ("candidate", "active"),
                   performance: tuple[dict | None, dict | None] = (None, None), identities: int = 0,
                   photos: int = 0, holdout_version: int | None = None) -> FaceGateResult:
    """The gate on (genuine, impostor) scores of both models; genuine scores must be aligned (the
    same pairs in the same order, as pair_scores gives for the same photos)."""
    (cg, ci), (ag, ai) = [(np.asarray(g, np.float64), np.asarray(i, np.float64)) for g, i in (candidate, active)]
    if len(cg) != len(ag) or len(ci) != len(ai):
        raise ValueError(f"scores: the models were scored on different pairs (genuine {len(cg)} vs {len(ag)}, "
                         f"impostor {len(ci)} vs {len(ai)})")
    _require(len(cg), len(ci), limits)
    cand = _figures(names[0], cg, ci, limits, performance[0])
    act = _figures(names[1], ag, ai, limits, performance[1])
    comparison = paired_comparison(cg >= cand.threshold, ag >= act.threshold, limits.confidence)
    b, c = comparison.challenger_only, comparison.champion_only
    p_value = min(1.0, 2 * float(binom.cdf(min(b, c), b + c, 0.5))) if b + c else 1.0
    reasons = []
    if comparison.ci_low < -limits.margin:
        reasons.append(
            f"TAR: {names[0]} {cand.tar.value:.3f} vs {names[1]} {act.tar.value:.3f} at FAR {limits.far:g} on "
            f"{len(cg)} genuine pairs; the difference's one-sided {1 - (1 - limits.confidence) / 2:.0%} lower bound "
            f"{comparison.ci_low:+.3f} is below -{limits.margin:g} ({b} pairs accepted only by {names[0]}, "
            f"{c} only by {names[1]}, McNemar p = {p_value:.3g})")
    reasons += _performance_reasons(names[0], performance[0], limits)
    notes = [f"thresholds derived per model from its own {len(ci):,} impostor scores at FAR {limits.far:g} "
             f"(>= {limits.min_impostor_pairs:,} required)"]
    return FaceGateResult(not reasons, reasons, limits.far, len(cg), len(ci), limits.min_impostor_pairs, cand, act,
                          comparison, p_value, limits.margin, identities, photos, holdout_version, notes)


def _performance_reasons(name: str, figures: dict | None, limits: FaceGateLimits) -> list[str]:
    if figures is None:
        return []
    if "error" in figures:
        return [f"performance: {name} could not be measured: {figures['error']}"]
    out = []
    for key, limit, unit in (("mean_latency_ms", limits.max_latency_ms, "ms per photo"),
                             ("peak_memory_mb", limits.max_peak_memory_mb, "MB peak memory"),
                             ("size_mb", limits.max_size_mb, "MB ONNX size")):
        if limit is not None and figures[key] > limit:
            out.append(f"performance: {name} {figures[key]:g} {unit} exceeds the limit {limit:g}")
    return out


def _onnx_file(version_dir: Path) -> Path:
    meta = json.loads((version_dir / "metadata.json").read_text())
    return version_dir / meta.get("onnx_file", "model.onnx")


def measure_performance(model, inputs: np.ndarray, limits: FaceGateLimits = FaceGateLimits()) -> dict[str, Any]:
    """The model's ONNX (exported from a torch model, or a version folder's own) in the sandbox
    process: latency per photo (single-photo requests), peak and model memory, ONNX size.
    {"error": ...} when the sandbox fails."""
    from gymops.face.model import export_onnx
    from gymops.lifecycle.sandbox import run_sandbox

    with tempfile.TemporaryDirectory(prefix="gymops-face-gate-") as tmp:
        if isinstance(model, (str, Path)):
            onnx_path, parameters = _onnx_file(Path(model)), None
        else:
            onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
            parameters = int(sum(p.numel() for p in model.parameters()))
        size_mb = round(onnx_path.stat().st_size / 2 ** 20, 2)
        report = run_sandbox(onnx_path, np.ascontiguousarray(inputs, np.float32), requests=limits.perf_requests,
                             warmup=5, throughput_seconds=0.5, concurrency=1, threads=limits.threads)
    if not report.ok:
        return {"error": f"{report.stage}: {report.error}", "size_mb": size_mb}
    keep = ("mean_latency_ms", "p50_ms", "p99_ms", "peak_memory_mb", "model_memory_mb", "requests", "threads")
    return {**{k: report.figures[k] for k in keep}, "size_mb": size_mb, "parameters": parameters}


def embeddings(model, photos: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
    """(N, 128) unit vectors from a torch face model or a face version folder (its ONNX and its own
    preprocess.py, as Triton runs it: gymops.face.matching.LocalEmbedder)."""
    if isinstance(model, (str, Path)):
        from gymops.face.matching import LocalEmbedder

        return LocalEmbedder(Path(model)).embed(list(photos), batch_size)[0]
    from gymops.face.model import embed

    return embed(model, photos, batch_size)


def face_gate(candidate, active, photos: Sequence[bytes] | None = None, user_ids: Sequence[str] | None = None,
              holdout=None, limits: FaceGateLimits = FaceGateLimits(), names: tuple[str, str] = ("candidate", "active"),
              performance: bool = True, batch_size: int = 32) -> FaceGateResult:
    """The gate for two face models, each a torch FaceDescriptor or a face version folder (as
    gymops.face.serving.write_face_version writes it: the active version is usually one), on
    ``holdout`` (a FaceHoldout) or on ``photos`` labelled ``user_ids``. The pair counts are checked
    (NotEnoughPairs) before either model runs. ``performance`` measures both in the sandbox."""
    from gymops.face.preprocess import preprocess

    if holdout is not None:
        if photos is not None or user_ids is not None:
            raise ValueError("photos/user_ids: pass either a holdout or photos with user_ids, not both")
        photos, user_ids, version = holdout.photos(), list(holdout.user_ids), holdout.version
    elif photos is None or user_ids is None:
        raise ValueError("holdout: a FaceHoldout, or photos and user_ids, is required")
    else:
        photos, user_ids, version = list(photos), list(user_ids), None
    if len(photos) != len(user_ids):
        raise ValueError(f"user_ids: one per photo, got {len(user_ids)} for {len(photos)} photos")
    check_pairs(user_ids, limits)
    scores = [pair_scores(embeddings(m, photos, batch_size), user_ids) for m in (candidate, active)]
    perf: tuple[dict | None, dict | None] = (None, None)
    if performance:
        inputs = np.stack([preprocess(p) for p in photos[:16]])
        perf = (measure_performance(candidate, inputs, limits), measure_performance(active, inputs, limits))
    return compare_scores(scores[0], scores[1], limits, names, perf, len(set(user_ids)), len(photos), version)
