"""End-to-end measurement of the laundry pipeline on simulated traffic, stage by stage.

    python -m bench.stages --tasks 150 [--seed 0] [--work DIR] [--keep]

simulate -> fetch -> holdout -> dataset (split + augment) -> features + train -> ONNX export ->
evaluation on the frozen holdout. Prints one JSON document (accuracy per split and class, timings).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gymops.ingest.events import TaskConfirmedEvent, parse_event


def records_from_traffic(store, tasks: int, seed: int = 0, defective_fraction: float = 0.3):
    """TaskRecords of ``tasks`` simulated TaskConfirmedEvents (photos written to ``store``)."""
    from gymops.ml.records import TaskRecord
    from gymops.simulator.traffic import TrafficConfig, generate

    cfg = TrafficConfig(seed=seed, tasks=tasks, members=0, entries=0, defective_fraction=defective_fraction)
    out = []
    for wire in generate(store, cfg):
        event = parse_event(wire)
        if isinstance(event, TaskConfirmedEvent):
            out.append(TaskRecord(event.task_id, event.photo_url, event.final_result, event.corrected,
                                  event.timestamp))
    return out


def run(tasks: int, seed: int, work: Path, copies: int = 5, **train_overrides) -> dict:
    from gymops.ml.dataset import build_dataset
    from gymops.ml.holdout import Holdout
    from gymops.ml.records import fetch_photos
    from gymops.ml.evaluate import evaluate_onnx
    from gymops.ml.export import export_onnx
    from gymops.ml.train import TrainConfig, train
    from gymops.storage.photos import LocalPhotoStore

    timings: dict[str, float] = {}
    t = time.perf_counter()
    store = LocalPhotoStore(work / "photos")
    records = records_from_traffic(store, tasks, seed)
    timings["simulate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    fetched, dropped = fetch_photos(records, store.get)
    timings["fetch_s"] = time.perf_counter() - t

    t = time.perf_counter()
    holdout = Holdout.freeze_or_load(work / "holdout", "laundry", fetched, seed=seed)
    timings["holdout_s"] = time.perf_counter() - t

    t = time.perf_counter()
    manifest = build_dataset(fetched, holdout, work / "dataset", copies=copies, seed=seed)
    timings["dataset_s"] = time.perf_counter() - t

    cfg = TrainConfig(seed=seed, **train_overrides)
    result = train(manifest, cfg, work / "ckpt")
    timings["features_s"] = result.timings["features_s"]
    timings["train_s"] = result.timings["train_s"]
    timings["train_total_s"] = result.timings["total_s"]

    t = time.perf_counter()
    x_val = manifest.images("val")
    diff = export_onnx(result.model, work / "model.onnx", manifest.size, samples=x_val)
    timings["export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    hx, hy = holdout.arrays(manifest.size)
    holdout_metrics = evaluate_onnx(work / "model.onnx", hx, hy)
    val_onnx = evaluate_onnx(work / "model.onnx", x_val, manifest.labels("val"))
    timings["evaluate_s"] = time.perf_counter() - t
    pipeline = ("fetch_s", "holdout_s", "dataset_s", "train_total_s", "export_s")
    timings["pipeline_s"] = sum(timings[k] for k in pipeline)
    return {
        "tasks": tasks,
        "seed": seed,
        "dropped": len(dropped),
        "dataset": {"id": manifest.dataset_id, "counts": manifest.counts, "class_balance": manifest.class_balance},
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "threshold": result.threshold,
        "val": result.metrics,
        "val_at_half": result.metrics_at_half,
        "val_onnx": val_onnx,
        "holdout": holdout_metrics,
        "onnx_max_abs_diff": diff,
        "curves": result.curves,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig override, e.g. --set feature_layer=stage6 (JSON values)")
    ns = ap.parse_args(argv)
    overrides = {}
    for item in ns.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    work = ns.work or Path(tempfile.mkdtemp(prefix="gymops-ml-bench-"))
    try:
        report = run(ns.tasks, ns.seed, work, ns.copies, **overrides)
        report["curves"] = [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in report["curves"]]
        json.dump(report, sys.stdout, indent=1)
        print()
    finally:
        if ns.work is None and not ns.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
