"""bench/pipeline: wall time per stage of the laundry training pipeline (800 simulated tasks ->
~540 training tasks x (photo + 1 augmented copy) -> gated candidate), on this CPU, through the real
Dagster job (Feast history, GE checks, Lightning training, ONNX export, sandboxed gates).

    .venv/bin/python -m bench.pipeline [--seeds 11,...,20] [--tasks 800] [--copies 2] [--quick]

The pipeline keeps a frozen holdout (per class max(--holdout-min, 15%)) and 20% of the rest for
validation out of training, so 800 simulated tasks leave ~540 training tasks. Issue 13's target
(>= 0.98 on unseen photos, >= 0.97 per class) was met by more tasks with one augmented copy, not
by more copies of fewer tasks (230 tasks x 5 copies: 0.9685); the old workload is
`--tasks 230 --copies 5`.

One run is one draw of history, holdout and validation split; the gates' verdict on ~40 holdout
and ~38 validation photos varies between draws more than the model does. So the benchmark runs one
fresh pipeline per history seed (each in a child process with its own home) and reports every run,
the median stage times and the mean accuracies. Each candidate is also scored on 400 unseen
simulator photos (the same for every run, half defective): its accuracy per class known to about
+-0.03 instead of +-0.07, and from those, the probability that a model that good passes the
accuracy gates when they read as few photos as this run's validation and holdout hold.

Compared against the design's estimate for the same job (2-4 hours on two T4 GPUs; the lower
bound, 2 h, is used for the ratio). Writes bench/results/pipeline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN_ESTIMATE_S = 2 * 3600


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=800, help="simulated tasks (holdout and validation come out of them)")
    parser.add_argument("--holdout-min", type=int, default=20, help="holdout tasks per class, at least")
    parser.add_argument("--seeds", default="11,12,13,14,15,16,17,18,19,20", help="history seeds, one pipeline run each")
    parser.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # one run, in this process
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (60 tasks, 2 copies)")
    parser.add_argument("--unseen", type=int, default=400,
                        help="also score the candidate on this many unseen simulator photos, half defective (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the run's files (printed) instead of deleting them")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.copies = 60, 2
    if args.seed is None:
        return repeat(args, argv if argv is not None else sys.argv[1:])

    home = Path(tempfile.mkdtemp(prefix="gymops-bench-pipeline-"))
    os.environ.update({"GYMOPS_PROFILE": "embedded", "GYMOPS_HOME": str(home), "GYMOPS_INGEST_TOKEN": "bench"})
    import dagster as dg

    from assets import jobs as runs
    from gymops.history import feature_store
    from gymops.settings import load_settings
    from gymops.simulator.history import ingest_simulated_history

    settings = load_settings()
    os.environ.update(settings.environment())
    try:
        t = time.perf_counter()
        feature_store.apply(settings)
        first, last = ingest_simulated_history(settings, args.tasks, args.days, seed=args.seed)
        setup_s = time.perf_counter() - t
        print(f"history: {args.tasks} tasks over {args.days} days ingested in {setup_s:.1f} s", file=sys.stderr)
        (home / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
            t = time.perf_counter()
            holdout_min = 4 if args.quick else args.holdout_min
            result = runs.run_laundry_training(
                settings, instance, first, last, runs.training_run_config(copies=args.copies, holdout_min_per_class=holdout_min))
            total_s = time.perf_counter() - t
            stages = runs.step_seconds(instance, result.run_id)
        dataset = runs.metadata(result, "training_dataset")
        ckpt = runs.metadata(result, "trained_checkpoint")
        cand = runs.metadata(result, "candidate_model")
        checks = {name: e.passed for name, e in runs.check_results(result).items()}
        out = {
            "benchmark": "pipeline",
            "command": "python -m bench.pipeline " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "gpu": None},
            "workload": {"tasks_simulated": args.tasks, "days": args.days, "copies": args.copies,
                         "history_seed": args.seed, "holdout_min_per_class": holdout_min,
                         "counts": dataset.get("counts"), "dataset_id": dataset.get("dataset_id")},
            "success": result.success,
            "gates": checks,
            "stage_seconds": stages,
            "total_s": round(total_s, 1),
            "history_setup_s": round(setup_s, 1),
            "epochs": ckpt.get("epochs"),
            "val_accuracy": cand.get("val_accuracy"),
            "holdout_accuracy": cand.get("holdout_accuracy"),
            "per_class_accuracy": cand.get("holdout_per_class_accuracy"),
            "gate_sample": gate_sample(home / "pipeline", dataset.get("dataset_id")),
            "unseen": unseen_accuracy(cand.get("onnx"), args.unseen) if args.unseen and cand.get("onnx") else None,
            "design_estimate_s": DESIGN_ESTIMATE_S,
            "ratio_vs_design_estimate": round(total_s / DESIGN_ESTIMATE_S, 4),
            "targets": {"total_s<=600": total_s <= 600, "gates_passed": bool(checks) and all(checks.values())},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(json.dumps(out, indent=2, default=str))
        return 0 if result.success else 1
    finally:
        if args.keep:
            print(f"kept the run's files in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)



UNSEEN_SEED = 424242  # the unseen photos are the same for every run and every model


def unseen_accuracy(onnx_path: str, n: int) -> dict:
    """The candidate's accuracy on ``n`` photos no run trains, validates or gates on: the simulator's
    own renders (half defective, the defect kinds in turn), JPEG-encoded and preprocessed as served.
    With 200 photos per class a class's accuracy is known to about +-0.03, against +-0.07 on the
    20-photo holdout class the gate reads."""
    import numpy as np

    from gymops.ml.evaluate import classification_metrics, predict_onnx
    from gymops.ml.preprocess import decode_rgb, resize_rgb
    from gymops.simulator.garments import encode_jpeg, linen_photo

    rng = np.random.default_rng(UNSEEN_SEED)
    photos = [linen_photo(rng, defective=bool(i % 2)) for i in range(n)]
    x = np.stack([resize_rgb(decode_rgb(encode_jpeg(p.image))) for p in photos])
    p_defective = predict_onnx(onnx_path, x)[:, 1]
    m = classification_metrics(p_defective, [p.label for p in photos], 0.5)
    kinds = {}
    for kind in sorted({p.defect for p in photos if p.defect}):
        caught = [p_defective[i] >= 0.5 for i, p in enumerate(photos) if p.defect == kind]
        kinds[kind] = round(sum(caught) / len(caught), 4)
    return {"photos": n, "accuracy": m["accuracy"], "per_class_accuracy": m["per_class_accuracy"],
            "defect_kind_recall": kinds}


def gate_sample(pipeline_root: Path, dataset_id: str | None) -> dict | None:
    """Photos per class the accuracy gates read: validation and the frozen holdout."""
    from gymops.ml.dataset import DatasetManifest
    from gymops.ml.holdout import Holdout

    holdout = Holdout.load(pipeline_root / "holdout", "laundry")
    folder = pipeline_root / "datasets" / str(dataset_id)
    if holdout is None or not dataset_id or not folder.exists():
        return None
    val = DatasetManifest.load(folder).labels("val")
    return {"val": {"good": int((val == 0).sum()), "defective": int((val == 1).sum())},
            "holdout": {k: int(v) for k, v in holdout.class_counts.items()}}


def gate_pass_probability(good: float, defective: float, val: dict, holdout: dict, gates=None) -> float:
    """How often a model with these true per-class accuracies passes the accuracy gates (the
    thresholds of ``gates``, a verification.GateSettings, read as the gate reads them: validation by
    its estimate, the holdout and each class by their pass marks) measured on validation and
    holdout sets with these photos per class: independent binomial errors per class, champion
    comparison left out."""
    from math import comb

    from gymops.lifecycle.gates import GateSettings, pass_mark

    gates = gates or GateSettings()

    def pmf(k: int, n: int, p_err: float) -> float:
        return comb(n, k) * p_err**k * (1 - p_err) ** (n - k)

    def p(ng: int, nd: int, ok) -> float:
        return sum(pmf(eg, ng, 1 - good) * pmf(ed, nd, 1 - defective)
                   for eg in range(ng + 1) for ed in range(nd + 1) if ok(ng, nd, eg, ed))

    eps = 1e-9
    p_val = p(val["good"], val["defective"],
              lambda ng, nd, eg, ed: (ng + nd - eg - ed) / (ng + nd) >= gates.val_accuracy - eps)
    def mark(n: int, threshold: float) -> int:
        return pass_mark(n, threshold, gates.decision_margin, gates.decision_alpha)

    p_hold = p(holdout["good"], holdout["defective"], lambda ng, nd, eg, ed: (
        ng + nd - eg - ed >= mark(ng + nd, gates.holdout_accuracy)
        and ng - eg >= mark(ng, gates.class_accuracy) and nd - ed >= mark(nd, gates.class_accuracy)))
    return p_val * p_hold


def repeat(args, argv: list[str]) -> int:
    """One child run per seed, then the summary: median stage times, mean accuracies, every run."""
    import statistics
    import subprocess

    from gymops.lifecycle.gates import GateSettings

    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    # From the parsed options, not argv: "--seeds 11,12" or "--out FILE" as two words would leak.
    passthrough = ["--tasks", str(args.tasks), "--holdout-min", str(args.holdout_min), "--days", str(args.days),
                   "--copies", str(args.copies), "--unseen", str(args.unseen),
                   *(["--quick"] if args.quick else []), *(["--keep"] if args.keep else [])]
    runs_out = []
    with tempfile.TemporaryDirectory(prefix="gymops-bench-pipeline-runs-") as tmp:
        for i, seed in enumerate(seeds):
            out = Path(tmp) / f"run-{seed}.json"
            print(f"run {i + 1}/{len(seeds)}: history seed {seed}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, __file__, *passthrough, "--seed", str(seed), "--out", str(out)],
                           stdout=subprocess.DEVNULL, check=False)
            if not out.exists():
                raise SystemExit(f"the run with seed {seed} wrote no result")
            runs_out.append(json.loads(out.read_text()))
    ok = [r for r in runs_out if r["holdout_accuracy"] is not None]
    stages = {k: round(statistics.median(r["stage_seconds"][k] for r in runs_out if k in r["stage_seconds"]), 2)
              for k in runs_out[0]["stage_seconds"]}
    total = statistics.median(r["total_s"] for r in runs_out)
    passed = sum(1 for r in runs_out if r["targets"]["gates_passed"])
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    for r in runs_out:  # how often would THIS model pass gates read on so few photos?
        u, g = r.get("unseen"), r.get("gate_sample")
        r["gate_pass_probability"] = round(gate_pass_probability(
            u["per_class_accuracy"]["good"], u["per_class_accuracy"]["defective"], g["val"], g["holdout"]), 3) \
            if u and g else None
    unseen = [r["unseen"] for r in runs_out if r.get("unseen")]
    probs = [r["gate_pass_probability"] for r in runs_out if r["gate_pass_probability"] is not None]
    summary = {
        "benchmark": "pipeline",
        "command": "python -m bench.pipeline " + " ".join(argv),
        "machine": runs_out[0]["machine"],
        "workload": {k: v for k, v in runs_out[0]["workload"].items() if k not in ("history_seed", "dataset_id")}
        | {"history_seeds": seeds},
        "stage_seconds": stages,
        "total_s": round(total, 1),
        "holdout_accuracy": mean([r["holdout_accuracy"] for r in ok]),
        "per_class_accuracy": {c: mean([r["per_class_accuracy"][c] for r in ok]) for c in ("good", "defective")},
        "val_accuracy": mean([r["val_accuracy"] for r in ok]),
        "runs_passing_all_gates": f"{passed}/{len(runs_out)}",
        "unseen_accuracy": mean([u["accuracy"] for u in unseen]),
        "unseen_per_class_accuracy": {c: mean([u["per_class_accuracy"][c] for u in unseen]) for c in ("good", "defective")},
        "unseen_defect_kind_recall": {k: mean([u["defect_kind_recall"][k] for u in unseen])
                                      for k in (unseen[0]["defect_kind_recall"] if unseen else {})},
        "expected_runs_passing_all_gates": round(sum(probs), 2) if probs else None,
        "design_estimate_s": DESIGN_ESTIMATE_S,
        "ratio_vs_design_estimate": round(total / DESIGN_ESTIMATE_S, 4),
        "targets": {"total_s<=600": all(r["total_s"] <= 600 for r in runs_out),
                    "gates_passed_every_run": passed == len(runs_out),
                    "unseen_each_class>=class_gate": bool(unseen) and all(
                        min(u["per_class_accuracy"].values()) >= GateSettings().class_accuracy for u in unseen)},
        "runs": [{"history_seed": r["workload"]["history_seed"], "success": r["success"], "gates": r["gates"],
                  "counts": r["workload"]["counts"], "epochs": r["epochs"], "val_accuracy": r["val_accuracy"],
                  "holdout_accuracy": r["holdout_accuracy"], "per_class_accuracy": r["per_class_accuracy"],
                  "gate_sample": r.get("gate_sample"), "unseen": r.get("unseen"),
                  "gate_pass_probability": r["gate_pass_probability"], "total_s": r["total_s"]} for r in runs_out],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))
    return 0 if passed == len(runs_out) else 1


if __name__ == "__main__":
    sys.exit(main())
