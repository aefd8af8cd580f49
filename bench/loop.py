"""Does the loop learn what managers correct, and decide right? One or more full cycles on the
embedded profile, measured on fresh simulator photos no run trains, validates or gates on.

    python -m bench.loop [--runs 1] [--history 800] [--batch 100] [--unseen 100] [--worse 10]
                         # -> bench/results/loop.json  (run it alone: it trains ~2 + 10 models)

Per run (a seed each): a week of history (old defect kinds only) -> the first model, trained and
gated by the production job and made active -> live traffic judged by the active model (its ONNX
in onnxruntime, as Triton would), in batches, with the simulator's NEW defect kinds (pilling, residue)
from the first batch on, the managers' corrections ingested -> the correction sensor (production
rule) after each batch -> when it fires: the production training job over its window, the
production gates, the candidate made active if they pass. Measured: recall of each defect kind and
good-photo accuracy on unseen photos before and after, corrections (all, of new kinds) it took, and
seconds from the sensor's tick to the new version active in the registry (Triton's swap is
measured by bench/deploy: a few seconds). Then ``--worse`` deliberately worse challengers against
the new champion: its own dataset with a share of the training labels flipped, or its training cut
short, each exported and put through the same accuracy gate; how many would have been deployed.
When the sensor never fires (the first model already catches the new kinds: nothing to correct),
the worse challengers are judged against the first model instead.

Keys of loop.json: runs, swapped, new_kind_recall_before, new_kind_recall_after, corrections_used,
worse_trials, worse_accepted, sensor_to_serving_s (and the details per run). When a cycle ran,
loop.png pictures the recall of every defect kind (and good-photo accuracy) before and after: the Dagster UI pictures
champion and challenger per class and on the newest photos, not per kind, since the event contract
carries no defect kind (a manager's correctionReason is free text).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNSEEN_SEED = 515151  # the unseen photos are the same for every run and every model
# (kind of worse, value): a share of the training labels flipped, or (epochs, learning rate) cut short
QUICK_GATES = {"val_accuracy": 0.6, "holdout_accuracy": 0.6, "class_accuracy": 0.4, "throughput_rps": 5.0,
               "latency_ms": 1000.0, "perf_requests": 200}
WORSE = [("flip", 0.1), ("flip", 0.15), ("flip", 0.2), ("flip", 0.25), ("flip", 0.3), ("flip", 0.4),
         ("short", (1, 1e-4)), ("short", (2, 1e-4)), ("short", (1, 3e-4)), ("short", (3, 5e-5))]


def unseen_photos(per_kind: int, good: int):
    """uint8 resized images, labels and kinds (None for good) of fresh renders, every kind alike."""
    import numpy as np

    from gymops.ml.preprocess import decode_rgb, resize_rgb
    from gymops.simulator.garments import ALL_DEFECT_KINDS, encode_jpeg, linen_photo

    rng = np.random.default_rng(UNSEEN_SEED)
    photos = [linen_photo(rng, defective=True, kinds=(kind,)) for kind in ALL_DEFECT_KINDS for _ in range(per_kind)]
    photos += [linen_photo(rng, defective=False) for _ in range(good)]
    x = np.stack([resize_rgb(decode_rgb(encode_jpeg(p.image))) for p in photos])
    return x, [p.label for p in photos], [p.defect for p in photos]


def recall_by_kind(onnx_path: str, unseen) -> dict:
    """{kind: recall, ..., "good": accuracy on good photos}."""
    from gymops.ml.evaluate import predict_onnx

    x, labels, kinds = unseen
    caught = predict_onnx(onnx_path, x)[:, 1] >= 0.5
    out = {}
    for kind in sorted({k for k in kinds if k}) + [None]:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        hits = [bool(caught[i]) == (kind is not None) for i in idx]
        out[kind or "good"] = round(sum(hits) / len(hits), 4)
    return out


def served_verdict(onnx_path: str, version: str):
    """The Helper app's AI verdict from the active model, as Triton would answer it."""
    from gymops.ml.evaluate import onnx_session, predict_onnx
    from gymops.ml.preprocess import preprocess

    session = onnx_session(onnx_path)

    def verdict(photo: bytes) -> tuple[str, str]:
        p = predict_onnx(onnx_path, preprocess(photo)[None], session=session)[0, 1]
        return ("defective" if p >= 0.5 else "good"), version

    return verdict


def passed(result) -> bool:
    from assets import jobs as runs

    checks = runs.check_results(result)
    return result.success and bool(checks) and all(e.passed for e in checks.values())


def one_run(seed: int, args, work: Path) -> dict:
    import dagster as dg

    from assets import jobs as runs
    from assets.location import build_definitions
    from gymops.db import engine_for
    from gymops.history import feature_store
    from gymops.ingest.replicator import Replicator
    from gymops.lifecycle.outbox import Outbox
    from gymops.lifecycle.registry import LAUNDRY, ModelRegistry
    from gymops.settings import Settings
    from gymops.simulator.garments import NEW_DEFECT_KINDS
    from gymops.simulator.history import ingest_simulated_history
    from gymops.simulator.traffic import TrafficConfig, generate
    from gymops.storage.photos import photo_store_for
    from resources import build_resources

    settings = Settings(profile="embedded", home=work / "home", ingest_token="bench")
    if args.quick:  # a smoke of the code path only: tiny trainings cannot meet the design's gates
        settings = settings.replace(gates=QUICK_GATES, retrain={"min_corrections": 10, "urgent_corrections": 10})
    run_config = runs.training_run_config(copies=2, max_epochs=8, patience=8) if args.quick else runs.training_run_config()
    feature_store.apply(settings)
    engine = engine_for(settings)
    registry = ModelRegistry(engine, outbox=Outbox(engine))
    out: dict = {"seed": seed}
    t = time.perf_counter()
    first, last = ingest_simulated_history(settings, args.history, 7, seed=seed, defective_fraction=0.3)
    (work / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(work / "dagster")) as instance:
        today = datetime.now(timezone.utc).date().isoformat()
        first_run = runs.run_laundry_training(settings, instance, first, today, run_config)
        out["first_model_passed"] = passed(first_run)
        if not out["first_model_passed"]:
            out["error"] = "the first model did not pass its gates"
            return out
        v1 = registry.history(LAUNDRY, limit=1)[0]
        registry.activate(LAUNDRY, v1.version)
        out["first_model_s"] = round(time.perf_counter() - t, 1)
        unseen = unseen_photos(args.unseen, 2 * args.unseen)
        out["before"] = recall_by_kind(v1.artifact_uri, unseen)

        store = photo_store_for(settings)
        sensor = build_definitions(settings).get_sensor_def("laundry_corrections_sensor")
        verdict = served_verdict(v1.artifact_uri, v1.version)
        drift_from = datetime.now(timezone.utc) - timedelta(hours=2)
        corrections = new_kind_corrections = tasks = 0
        tick = None
        for batch in range(args.max_batches):
            now = datetime.now(timezone.utc)
            kinds: dict = {}
            cfg = TrafficConfig(seed=seed * 1000 + batch, tasks=args.batch, members=1, entries=0, branches=3,
                                start=now - timedelta(minutes=30), span=timedelta(minutes=29), new_kinds_from=drift_from)
            events = list(generate(store, cfg, ai_verdict=verdict, defects=kinds))
            Replicator(settings).ingest([json.dumps(e, ensure_ascii=False) for e in events], "bench")
            confirmed = [e for e in events if e["eventType"] == "TaskConfirmedEvent"]
            tasks += len(confirmed)
            corrections += sum(1 for e in confirmed if e["corrected"])
            new_kind_corrections += sum(1 for e in confirmed if e["corrected"] and kinds.get(e["taskId"]) in NEW_DEFECT_KINDS)
            tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=build_resources(settings)))
            if tick.run_requests:
                break
            if (tick.skip_message or "").startswith("ALARM") and "alarm_after" not in out:
                out["alarm_after"] = {"live_tasks": tasks, "corrections": corrections, "message": tick.skip_message}
        out.update(live_tasks=tasks, corrections_used=corrections, new_kind_corrections_used=new_kind_corrections)
        if not tick or not tick.run_requests:
            out["error"] = f"the sensor did not fire: {tick.skip_message if tick else ''}"
            if args.worse:  # the gates are still tried: worse challengers against the first model
                out["worse_against"] = v1.version
                out["worse"] = worse_trials(settings, registry, first_run, args.worse, settings.gates)
            return out
        request = tick.run_requests[0]
        out["trigger"] = request.tags["gymops/trigger"]
        t0 = time.perf_counter()
        second = runs.run_laundry_training(settings, instance, request.tags[runs.RANGE_START],
                                           request.tags[runs.RANGE_END], run_config,
                                           tags={"dagster/run_key": request.run_key})
        out["gates"] = {name: e.passed for name, e in runs.check_results(second).items()}
        check = runs.check_results(second).get("accuracy_gate")
        if check is not None:
            out["accuracy_gate"] = {k: v.value for k, v in check.metadata.items()
                                    if not k.endswith("_plot") and k != "checks"}
        v2 = registry.history(LAUNDRY, limit=1)[0]
        out["swapped"] = passed(second)
        if out["swapped"]:
            registry.activate(LAUNDRY, v2.version)
            out["sensor_to_serving_s"] = round(time.perf_counter() - t0, 1)
        out["after"] = recall_by_kind(v2.artifact_uri, unseen)
        out["challenger"] = v2.version
        print(json.dumps({k: out.get(k) for k in ("trigger", "alarm_after", "swapped", "sensor_to_serving_s",
                                                  "corrections_used", "new_kind_corrections_used", "before", "after")},
                         default=str), file=sys.stderr, flush=True)  # the cycle's figures, before the long trials
        if args.worse:
            out["worse_against"] = registry.active(LAUNDRY).version
            out["worse"] = worse_trials(settings, registry, second, args.worse, settings.gates)
    return out


def worse_trials(settings, registry, run, n: int, gates) -> list[dict]:
    """Deliberately worse challengers against the active model: the run's own dataset with a share
    of the training labels flipped (by task), or its training cut short; each exported and judged
    by the same accuracy gate on the current holdout. Trunk features come from the run's feature
    cache (the images did not change)."""
    import numpy as np

    from assets import jobs as runs
    from gymops.lifecycle.gates import accuracy_gate
    from gymops.lifecycle.registry import LAUNDRY
    from gymops.ml.dataset import DatasetManifest
    from gymops.ml.evaluate import current_holdout, evaluate_onnx, judge_on_holdout
    from gymops.ml.export import export_onnx
    from gymops.ml.train import TrainConfig, train

    dataset_id = runs.metadata(run, "training_dataset")["dataset_id"]
    pipeline = settings.pipeline_root
    manifest = DatasetManifest.load(pipeline / "datasets" / dataset_id)
    holdout = current_holdout(pipeline / "holdout", LAUNDRY)
    trials = []
    for i, (kind, value) in enumerate(WORSE[:n]):
        folder = pipeline / "worse" / f"{i}"
        shutil.copytree(manifest.path, folder / "dataset", dirs_exist_ok=True)
        ckpt = folder / "ckpt"
        ckpt.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig(seed=i)
        if kind == "flip":
            labels = manifest.labels("train").copy()
            tids = manifest.task_ids("train")
            rng = np.random.default_rng(i)
            flipped = {t for t in sorted(set(tids.tolist())) if rng.random() < value}
            mask = np.array([t in flipped for t in tids])
            labels[mask] = 1 - labels[mask]
            np.save(folder / "dataset" / manifest.files["train_labels"], labels, allow_pickle=False)
        else:
            epochs, lr = value
            cfg = TrainConfig(seed=i, max_epochs=epochs, lr=lr, patience=epochs)
        trial_manifest = DatasetManifest.load(folder / "dataset")
        result = train(trial_manifest, cfg, ckpt, feature_cache=pipeline / "features")  # the run's trunk features
        onnx = folder / "model.onnx"
        export_onnx(result.model, onnx, trial_manifest.size, samples=trial_manifest.images("val")[:8])
        judged = judge_on_holdout(onnx, holdout, registry)
        val = evaluate_onnx(onnx, trial_manifest.images("val"), trial_manifest.labels("val"))
        gate = accuracy_gate({"val": val, "holdout": judged.metrics}, judged.champion, gates)
        trials.append({"kind": kind, "value": value, "holdout_accuracy": round(judged.metrics["accuracy"], 4),
                       "change_vs_champion": round(judged.champion.overall.difference, 4) if judged.champion else None,
                       "accepted": gate.passed, "failed": sorted({f.check for f in gate.failures})})
        print(f"worse trial {i + 1}/{n} ({kind} {value}): holdout {judged.metrics['accuracy']:.3f}, "
              f"{'ACCEPTED' if gate.passed else 'rejected'}", file=sys.stderr, flush=True)
    return trials


def mean(xs):
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 4) if xs else None


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="full cycles, one history seed each")
    parser.add_argument("--seed", type=int, default=21, help="the first history seed")
    parser.add_argument("--history", type=int, default=800, help="tasks in the first week (old defect kinds)")
    parser.add_argument("--batch", type=int, default=100, help="live tasks between two sensor ticks")
    parser.add_argument("--max-batches", type=int, default=20)
    parser.add_argument("--unseen", type=int, default=100, help="unseen photos per defect kind (and twice as many good)")
    parser.add_argument("--worse", type=int, default=10, help="deliberately worse challengers (first run only)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke the code path: tiny trainings and lenient gates (figures mean nothing)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop.json"))
    args = parser.parse_args(argv)

    from gymops.simulator.garments import DEFECT_KINDS, NEW_DEFECT_KINDS, OTHER_DEFECT_KINDS

    results = []
    for r in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="gymops-bench-loop-"))
        try:
            print(f"run {r + 1}/{args.runs}: seed {args.seed + r}", file=sys.stderr, flush=True)
            results.append(one_run(args.seed + r, argparse.Namespace(**{**vars(args), "worse": args.worse if r == 0 else 0}),
                                   work))
        finally:
            if args.keep:
                print(f"kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    done = [r for r in results if "after" in r]
    worse = [t for r in results for t in r.get("worse", [])]
    summary = {
        "benchmark": "loop" + (" (--quick smoke: lenient gates, figures mean nothing)" if args.quick else ""),
        "command": "python -m bench.loop " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": len(results),
        "swapped": sum(1 for r in results if r.get("swapped")),
        "sensor_did_not_fire": sum(1 for r in results if "did not fire" in r.get("error", "")),
        "new_kind_recall_before": {k: mean([r["before"][k] for r in done]) for k in NEW_DEFECT_KINDS},
        "new_kind_recall_after": {k: mean([r["after"][k] for r in done]) for k in NEW_DEFECT_KINDS},
        "old_kind_recall_before": {k: mean([r["before"][k] for r in done]) for k in DEFECT_KINDS + OTHER_DEFECT_KINDS},
        "old_kind_recall_after": {k: mean([r["after"][k] for r in done]) for k in DEFECT_KINDS + OTHER_DEFECT_KINDS},
        "good_accuracy_before": mean([r["before"]["good"] for r in done]),
        "good_accuracy_after": mean([r["after"]["good"] for r in done]),
        "corrections_used": {"all": mean([r.get("corrections_used") for r in done]),
                             "new_kinds": mean([r.get("new_kind_corrections_used") for r in done])},
        "worse_trials": len(worse),
        "worse_accepted": sum(1 for t in worse if t["accepted"]),
        "sensor_to_serving_s": mean([r.get("sensor_to_serving_s") for r in results]),
        "unseen_photos": {"per_defect_kind": args.unseen, "good": 2 * args.unseen, "seed": UNSEEN_SEED},
        "details": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if done:  # the picture the Dagster UI cannot show: production events carry no defect kind
        from gymops.ml.plots import class_accuracy

        kinds = [*DEFECT_KINDS, *OTHER_DEFECT_KINDS, *NEW_DEFECT_KINDS]
        rows = {label: {**{f"{k}{' (new)' if k in NEW_DEFECT_KINDS else ''}": mean([r[when][k] for r in done])
                           for k in kinds}, "good": mean([r[when]["good"] for r in done])}
                for label, when in (("champion (before)", "before"), ("challenger (after one cycle)", "after"))}
        Path(args.out).with_suffix(".png").write_bytes(class_accuracy(rows))
    print(json.dumps({k: v for k, v in summary.items() if k != "details"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
