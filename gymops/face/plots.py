"""The face gate as a picture (PNG bytes, see gymops/ml/plots.py for why no pyplot): each model's TAR
at the gate's FAR with its exact interval, and the paired difference's interval against the
non-inferiority margin, the line the candidate's lower bound must stay right of."""
from __future__ import annotations

from gymops.face.gates import FaceGateResult
from gymops.ml.plots import _figure, _png


def gate_picture(result: FaceGateResult) -> bytes:
    fig = _figure(8, 2.6)
    tar, diff = fig.subplots(1, 2)
    for y, v in enumerate((result.active, result.candidate)):
        low, high = v.tar.interval
        tar.errorbar([v.tar.value], [y], xerr=[[v.tar.value - low], [high - v.tar.value]], fmt="o", capsize=4)
        tar.annotate(f"{v.tar.k}/{v.tar.n} at t={v.threshold:.4f}", (v.tar.value, y), textcoords="offset points",
                     xytext=(0, 8), ha="center", fontsize=8)
    tar.set_yticks([0, 1], [f"{result.active.name} (active)", f"{result.candidate.name} (candidate)"])
    tar.set_ylim(-0.6, 1.6)
    tar.set_xlim(0, 1)
    tar.set_xlabel(f"TAR at FAR {result.far:g} ({result.genuine_pairs} genuine / {result.impostor_pairs:,} impostor pairs)")
    c = result.comparison
    colour = "tab:green" if result.passed else "tab:red"
    diff.errorbar([c.difference], [0], xerr=[[c.difference - c.ci_low], [c.ci_high - c.difference]], fmt="o",
                  capsize=4, color=colour)
    diff.axvline(-result.margin, color="grey", linestyle="--", label=f"-margin {result.margin:g}")
    diff.axvline(0, color="black", linewidth=0.5)
    diff.set_yticks([])
    diff.set_xlabel(f"TAR candidate - active ({c.challenger_only} vs {c.champion_only} discordant, "
                    f"p = {result.p_value:.3g})")
    diff.legend(loc="upper left", fontsize=8)
    diff.set_title("passed" if result.passed else "FAILED", color=colour)
    return _png(fig)
