"""Pictures an operator would rather look at than read: PNG bytes, made without pyplot (its global
state is not thread-safe, and a Dagster step may run beside others), small (~20-40 KB) so they
travel inside run metadata. The Dagster side embeds them (assets/pictures.py).

- ``training_curves``: loss (training, validation) and validation accuracy per epoch;
- ``confusion_matrix``: [[tn, fp], [fn, tp]] with counts and row shares;
- ``gate_intervals``: each accuracy check's estimate with its exact 95% interval against its
  threshold and pass mark, and champion against challenger (overall and newest photos) with the
  paired interval of the difference against the non-inferiority margin;
- ``class_accuracy``: per class (and defect kind, where known) accuracy of champion and challenger.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

from gymops.settings import quiet_tools

quiet_tools()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def training_curves(curves: Sequence[Mapping]) -> bytes:
    """Loss per epoch (training and validation, left) and validation accuracy (right)."""
    fig = _figure(8, 3)
    loss, acc = fig.subplots(1, 2)
    epochs = [row.get("epoch") for row in curves]
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        values = [row.get(key) for row in curves]
        if any(v is not None for v in values):
            loss.plot(epochs, values, style, markersize=3, label=key.replace("_", " "))
    loss.set_xlabel("epoch")
    loss.set_ylabel("cross-entropy")
    loss.legend()
    loss.set_title("loss")
    accuracy = [row.get("val_accuracy") for row in curves]
    acc.plot(epochs, accuracy, "-o", markersize=3, color="tab:green")
    acc.set_xlabel("epoch")
    acc.set_ylabel("validation accuracy")
    acc.set_ylim(min([a for a in accuracy if a is not None] + [0.5]) - 0.02, 1.0)
    acc.set_title("validation accuracy")
    return _png(fig)


def confusion_matrix(confusion, title: str = "confusion matrix") -> bytes:
    """Rows: the truth (good, defective); columns: the model's answer. Counts and row shares."""
    import numpy as np

    m = np.asarray(confusion, dtype=float)
    shares = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig = _figure(3.6, 3.2)
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{int(m[i, j])}\n{shares[i, j]:.1%}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks([0, 1], ["good", "defective"])
    ax.set_yticks([0, 1], ["good", "defective"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _png(fig)


def gate_intervals(figures: Mapping, noninferiority_margin: float | None = None) -> bytes:
    """Each threshold check (figures with "estimate", "ci_low", "ci_high", "threshold",
    "pass_mark", "n"): the estimate and its interval against the threshold (a red tick) and the
    pass mark as a share (a grey tick); below, champion against challenger: the paired difference
    and its interval against -margin, green or red as the gate decided (each part's "passed")."""
    checks = [(name, f) for name, f in figures.items() if isinstance(f, Mapping) and "pass_mark" in f]
    champion = figures.get("champion") if isinstance(figures.get("champion"), Mapping) else None
    parts = [(part, champion[part]) for part in ("overall", "newest") if champion and champion.get(part)]
    rows = 1 + (1 if parts else 0)
    fig = _figure(8, 0.55 * len(checks) + 1.2 + (0.5 * len(parts) + 1.0 if parts else 0))
    axes = fig.subplots(rows, 1, squeeze=False, height_ratios=[max(len(checks), 1)] + ([max(len(parts), 1)] if parts else []))
    ax = axes[0][0]
    for i, (name, f) in enumerate(checks):
        y = len(checks) - 1 - i
        colour = "tab:green" if f.get("passed") else "tab:red"
        est = f["estimate"] if f["estimate"] is not None else 0.0
        ax.errorbar(est, y, xerr=[[est - f["ci_low"]], [f["ci_high"] - est]], fmt="o", color=colour, capsize=4)
        ax.plot([f["threshold"]] * 2, [y - 0.35, y + 0.35], color="tab:red", linewidth=2)
        if f["n"]:
            ax.plot([min(f["pass_mark"] / f["n"], 1.0)] * 2, [y - 0.25, y + 0.25], color="grey", linewidth=1.5)
        ax.annotate(f"{f['k']}/{f['n']} (pass at {f['pass_mark']})", (1.01, y), xycoords=("axes fraction", "data"),
                    va="center", fontsize=8)
    ax.set_yticks(range(len(checks)), [name for name, _ in reversed(checks)])
    lows = [f["ci_low"] for _, f in checks] + [f["threshold"] for _, f in checks]
    ax.set_xlim(min(lows + [0.8]) - 0.02, 1.0)
    ax.set_title("accuracy: estimate, 95% exact interval, threshold (red), pass mark (grey)", fontsize=9)
    if parts:
        bx = axes[1][0]
        for i, (part, c) in enumerate(parts):
            y = len(parts) - 1 - i
            ok = c.get("passed", True)
            bx.errorbar(c["difference"], y, xerr=[[c["difference"] - c["ci_low"]], [c["ci_high"] - c["difference"]]],
                        fmt="o", color="tab:green" if ok else "tab:red", capsize=4)
            worse = f", p(worse) {c['p_worse']:.3f}" if part == "newest" and "p_worse" in c else ""
            bx.annotate(f"{c['n']} photos, {c['challenger_only']} vs {c['champion_only']}{worse}", (1.01, y),
                        xycoords=("axes fraction", "data"), va="center", fontsize=8)
        bx.axvline(0, color="grey", linewidth=1)
        if noninferiority_margin is not None:
            bx.axvline(-noninferiority_margin, color="tab:red", linewidth=2)
        bx.set_yticks(range(len(parts)), [p for p, _ in reversed(parts)])
        bx.set_title(f"challenger - champion {champion.get('champion_version')} (paired, 90% exact interval)", fontsize=9)
    return _png(fig)


def class_accuracy(rows: Mapping[str, Mapping[str, float | None]]) -> bytes:
    """Grouped bars: for each group (a class, a defect kind, "newest photos"), each model's accuracy.
    ``rows``: {model name: {group: accuracy}}."""
    models = list(rows)
    groups = sorted({g for values in rows.values() for g in values})
    fig = _figure(max(4.0, 1.1 * len(groups) + 2), 3)
    ax = fig.subplots()
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        values = [rows[model].get(g) for g in groups]
        xs = [k + (i - (len(models) - 1) / 2) * width for k in range(len(groups))]
        bars = ax.bar(xs, [v if v is not None else 0 for v in values], width, label=model)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.text(bar.get_x() + bar.get_width() / 2, v + 0.005, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy (recall)")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)
