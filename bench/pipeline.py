"""bench/pipeline: wall time per stage of the laundry training pipeline for the seed's workload
(~150 corrected tasks -> ~750 augmented images -> gated candidate), on this CPU, through the real
Dagster job (Feast history, GE checks, Lightning training, ONNX export, sandboxed gates).

    .venv/bin/python bench/pipeline.py [--tasks 180] [--quick]

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
sys.path.insert(0, str(ROOT))
DESIGN_ESTIMATE_S = 2 * 3600


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=180, help="simulated tasks (the holdout takes ~15%%)")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (60 tasks, 2 copies)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.copies = 60, 2

    home = Path(tempfile.mkdtemp(prefix="gymops-bench-pipeline-"))
    os.environ.update({"GYMOPS_PROFILE": "embedded", "GYMOPS_HOME": str(home), "GYMOPS_INGEST_TOKEN": "bench"})
    import dagster as dg

    import runs
    from gymops import feature_store
    from gymops.config import load_settings
    from gymops.simulator.history import ingest_simulated_history

    settings = load_settings()
    os.environ.update(settings.environment())
    try:
        t = time.perf_counter()
        feature_store.apply(settings)
        first, last = ingest_simulated_history(settings, args.tasks, args.days, seed=11)
        setup_s = time.perf_counter() - t
        print(f"history: {args.tasks} tasks over {args.days} days ingested in {setup_s:.1f} s", file=sys.stderr)
        (home / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
            t = time.perf_counter()
            holdout_min = 4 if args.quick else 10
            result = runs.run_laundry_training(
                instance, first, last, runs.training_run_config(copies=args.copies, holdout_min_per_class=holdout_min))
            total_s = time.perf_counter() - t
            stages = runs.step_seconds(instance, result.run_id)
        dataset = runs.metadata(result, "training_dataset")
        ckpt = runs.metadata(result, "trained_checkpoint")
        cand = runs.metadata(result, "candidate_model")
        checks = {name: e.passed for name, e in runs.check_results(result).items()}
        out = {
            "benchmark": "pipeline",
            "command": "python bench/pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "gpu": None},
            "workload": {"tasks_simulated": args.tasks, "days": args.days, "copies": args.copies,
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
            "design_estimate_s": DESIGN_ESTIMATE_S,
            "ratio_vs_design_estimate": round(total_s / DESIGN_ESTIMATE_S, 4),
            "targets": {"total_s<=600": total_s <= 600, "gates_passed": bool(checks) and all(checks.values())},
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(json.dumps(out, indent=2, default=str))
        return 0 if result.success else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
