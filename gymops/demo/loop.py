"""`make demo`: the whole loop on the embedded profile, start to finish, leaving nothing running.

1. replication: the ingestion endpoint, the simulator's history through it, what landed in Feast;
2. Triton starts and the first laundry model is trained from that history, gated and deployed;
3. live traffic: the Helper app asks Triton for verdicts (HTTP and gRPC) while new tasks arrive
   whose AI verdict comes from the served model; the branch managers' corrections flow back in;
4. the correction sensor fires, the new model is trained, passes its gates and is hot-swapped
   under that live traffic; the paired comparison, holdout accuracy before and after, and failed
   requests are printed. Production rules throughout (retraining and gates).
5. progressive delivery: a faulty candidate in canary, rolled back by the watcher (gymops.demo.canary);
6. face entry: members enrol, entries flow, and the nightly face batch retrains, re-indexes and swaps
   under entry traffic (gymops.demo.face; SYNTHETIC faces).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

# The demo runs the production GATES: the design's thresholds with the README's decision rule (no
# demo-only margin, no demo-only holdout size: the holdout follows the sizing rule). Its TRIGGER is
# lowered, and says so: the production rule (100 corrections and 7 days, or 300, or a correction
# rate significantly above the served model's promise with 100 corrections to learn from) would
# need about two of the demo's live batches. Live traffic brings two defect kinds 1.0.0 never saw
# (pilling, residue); it misses most of them, so the SPRT alarms in the first batch (bench/demo_swaps,
# seed 1: 55 of 500 verdicts corrected, 11.0% against the 3.5% it promised) and the demo retrains
# on those 55 corrections at once.
DEMO_RETRAIN = {"min_corrections": 15, "urgent_corrections": 15}
MAX_LIVE_BATCHES = 4  # of --live-tasks each, until the sensor fires
HISTORY_TASKS = 800  # a first history whose holdout reaches the sizing rule's ~134 photos per class (0.3 defective)


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


class LiveTraffic:
    """The Helper app: threads asking the served model for verdicts, counting every failure."""

    def __init__(self, grpc_url: str, http_url: str, photos: list[bytes], threads: int = 2):
        from gymops.serving.client import LaundryClient

        self.clients = [LaundryClient(grpc_url, "grpc", retries=0), LaundryClient(http_url, "http", retries=0)]
        self.photos, self.stop_flag = photos, threading.Event()
        self.requests = self.failed = 0
        self.versions: dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        client, rng = self.clients[i % 2], random.Random(i)
        while not self.stop_flag.is_set():
            try:
                verdict = client.classify(rng.choice(self.photos))
                with self.lock:
                    self.requests += 1
                    self.versions[verdict.model_version] = self.versions.get(verdict.model_version, 0) + 1
            except Exception:
                with self.lock:
                    self.requests += 1
                    self.failed += 1
            time.sleep(0.2)  # ~10 requests/s per thread: live, but leaving the CPU to training

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(10)


def report_run(result, title: str) -> None:
    from assets import jobs as runs

    checks = runs.check_results(result)
    print(f"   {title}: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
    for name, evaluation in checks.items():
        print(f"      gate {name:28} {'pass' if evaluation.passed else 'FAIL'}")
        meta = {k: v.value for k, v in evaluation.metadata.items()}
        if "vs_champion.overall.change" in meta:
            newest = (f"; on the {meta['vs_champion.newest.photos']} newest photos {meta['vs_champion.newest.change']:+.3f} "
                      f"({meta['vs_champion.newest.discordant']})" if "vs_champion.newest.change" in meta else "")
            print(f"         against {meta['champion_version']} on the same {meta['vs_champion.overall.photos']} holdout "
                  f"photos: {meta['vs_champion.overall.change']:+.3f} (95% lower bound "
                  f"{meta['vs_champion.overall.ci_low']:+.3f}){newest}")
    trained = runs.metadata(result, "trained_checkpoint")
    if trained:
        print(f"      trained: {trained['epochs']} epochs in {trained['train_s']:.0f} s; trunk features "
              f"{trained['features_s']:.0f} s ({trained['feature_cache_misses']} images extracted, "
              f"{trained['feature_cache_hits']} from the cache)")
    cand = runs.metadata(result, "candidate_model")
    if cand:
        print(f"      candidate {cand['version']}: holdout accuracy {cand['holdout_accuracy']:.3f}, "
              f"per class {json.dumps(cand['holdout_per_class_accuracy'])}")
    dep = runs.metadata(result, "deployed_model")
    if dep:
        print(f"      deployed {dep['version']} (Triton version {dep['triton_version']}) in {dep['deploy_seconds']:.2f} s, "
              f"previous {dep['previous_version']}")


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    # the tools route their own deprecation notices through logging (py.warnings) and announce
    # temporary directories at INFO: not what a person watching the demo needs
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=HISTORY_TASKS, help="laundry tasks in the first week of history")
    parser.add_argument("--live-tasks", type=int, default=500, help="tasks per batch of live traffic while the first model serves")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--result", default="", help="also write the outcome as JSON here (bench/demo_swaps.py counts it)")
    parser.add_argument("--no-face", action="store_true", help="leave out the face act (gymops.demo.face)")
    args = parser.parse_args(argv)

    import dagster as dg

    from assets import jobs as runs
    from assets.location import build_definitions
    from gymops.demo import replication
    from gymops import processes
    from gymops.settings import ensure_tokens, load_settings
    from gymops.dagster_home import prepare
    from gymops.storage.photos import photo_store_for
    from gymops.serving.client import LaundryClient
    from gymops.serving.server import TritonServer
    from resources import build_resources
    from gymops.simulator.send import HttpSender
    from gymops.simulator.traffic import TrafficConfig, generate
    from gymops.simulator.garments import NEW_DEFECT_KINDS

    began = time.monotonic()
    # Settings are built here once and handed to every job, the sensor and the child processes;
    # nothing below reads or changes this process's environment.
    settings = ensure_tokens(load_settings()).replace(retrain=DEMO_RETRAIN)
    dagster_home = prepare(settings)

    replication.run(settings, argparse.Namespace(tasks=args.tasks, seed=args.seed))

    ss = settings.serving
    step(f"starting Triton (explicit model control) on {ss.http_url} (HTTP) / {ss.grpc_url} (gRPC)")
    server = TritonServer.from_settings(ss).start()
    ingest = None
    try:
        from gymops.deploy.deployer import Deployer
        from gymops.db import engine_for
        from gymops.lifecycle.outbox import Outbox
        from gymops.lifecycle.registry import ModelRegistry

        engine = engine_for(settings)
        registry = ModelRegistry(engine, outbox=Outbox(engine))
        Deployer.for_settings(registry, ss).reconcile("laundry")  # a re-run serves the last active version again
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        today = datetime.now(timezone.utc).date()
        first_day = (today - timedelta(days=8)).isoformat()

        before = registry.active("laundry")
        if before is None:
            step("training the first laundry model from the simulator's history (Dagster: laundry_retrain)")
            first = runs.run_laundry_training(
                settings, instance, first_day, today.isoformat(), runs.training_run_config(),
                deploy=True, tags={"gymops/trigger": "demo: first model"})
            report_run(first, "first model")
            if not first.success:
                print("   the first model was not deployed (a gate or the deploy failed, see above): nothing is served")
                return 1
        else:
            print(f"\n== the registry already has an active model ({before.version}); serving it again")
        v1 = registry.active("laundry")
        v1_holdout = v1.metrics["holdout"]["accuracy"]

        store = photo_store_for(settings)
        photos = [store.get(url) for url in _sample_urls(settings, 32)]
        ingest_settings = dataclasses.replace(settings, ingest_port=processes.free_port(settings.ingest_port))
        log = settings.home / "logs" / "demo-ingest.log"
        ingest = processes.start(ingest_settings, "ingest", "serve", log=log)
        base = f"http://{ingest_settings.ingest_host}:{ingest_settings.ingest_port}"
        processes.wait_http(base + "/healthz", ingest, log)

        with LiveTraffic(ss.grpc_url, ss.http_url, photos) as traffic:
            step(f"live traffic on {v1.version}; new tasks judged by the served model, confirmed or corrected "
                 f"by branch managers, {args.live_tasks} at a time, with two defect kinds {v1.version} never saw "
                 f"({', '.join(NEW_DEFECT_KINDS)}), until the correction sensor fires")
            client = LaundryClient(ss.grpc_url, "grpc")
            sender = HttpSender(base, ingest_settings.ingest_token)
            sensor = build_definitions(settings).get_sensor_def("laundry_corrections_sensor")
            corrected, served_by, first_seed = 0, set(), args.seed + 1000 + int(time.time()) % 1000
            drift_from = datetime.now(timezone.utc) - timedelta(hours=1)
            tick = None
            for batch in range(MAX_LIVE_BATCHES):
                now = datetime.now(timezone.utc)
                cfg = TrafficConfig(seed=first_seed + batch, tasks=args.live_tasks, members=1, entries=0, branches=3,
                                    start=now - timedelta(minutes=30), span=timedelta(minutes=29),
                                    new_kinds_from=drift_from)
                events = list(generate(store, cfg, ai_verdict=client.ai_verdict))
                sent = sender.send(events)
                corrected += sum(1 for e in events if e.get("corrected"))
                served_by |= {e.get("aiModelVersion") for e in events if e["eventType"] == "TaskConfirmedEvent"}
                print(f"   {sent['stored']} events stored; {corrected} corrections of the served model so far "
                      f"(aiModelVersion {', '.join(sorted(served_by))})")
                context = dg.build_sensor_context(instance=instance, resources=build_resources(settings))
                tick = sensor.evaluate_tick(context)
                if tick.run_requests:
                    break
                print(f"   sensor: {tick.skip_message}")

            step(f"the correction sensor (demo trigger: {DEMO_RETRAIN['min_corrections']} corrections; production: "
                 "100 corrections and 7 days, or 300, or a correction rate significantly above the served model's "
                 "promise; the gates below are production's)")
            if not tick or not tick.run_requests:
                print(f"   sensor skipped: {tick.skip_message if tick else 'no tick'}")
                return 1
            request = tick.run_requests[0]
            print(f"   sensor fired: {request.tags['gymops/trigger']} -> run key {request.run_key}")
            step("retraining, gating and hot-swapping under live traffic (Dagster: laundry_retrain); the gates: "
                 "the design's thresholds with their pass marks, and the challenger paired with the champion on the "
                 "current holdout version (non-inferior overall, not significantly worse on the newest photos)")
            second = runs.run_laundry_training(
                settings, instance, request.tags[runs.RANGE_START], request.tags[runs.RANGE_END],
                runs.training_run_config(),
                deploy=True, tags={"dagster/run_key": request.run_key, "gymops/trigger": request.tags["gymops/trigger"]})
            report_run(second, "retrained model")
            time.sleep(1.0)
        after = registry.active("laundry")

        step("result")
        print(f"   holdout accuracy (each on the holdout version of its gate): before {v1_holdout:.3f} ({v1.version}) -> "
              f"after {after.metrics['holdout']['accuracy']:.3f} ({after.version})")
        print(f"   live requests during the demo: {traffic.requests}, failed: {traffic.failed}; "
              f"served by version: {json.dumps(traffic.versions)}")
        print(f"   registry: active {after.version}; previous {after.previous_version} kept loadable for `gymops models rollback`")
        from gymops.demo import canary as canary_act  # issue 11: progressive delivery

        step(f"progressive delivery: a deliberately faulty candidate goes to canary beside {after.version}; "
             "the watcher judges the live signals and rolls it back on its own")
        canary_act.run(settings, Deployer.for_settings(registry, ss), after, photos)
        if not args.no_face:
            from gymops.demo import face as face_act  # issue 12: face entry

            step("face entry (SYNTHETIC faces): members enrol through the ingestion endpoint, the nightly face batch "
                 "(Dagster: face_nightly) releases, retrains, gates, re-indexes and swaps under entry traffic")
            face_act.run(settings, instance, base, ingest_settings.ingest_token)
        if args.result:
            Path(args.result).write_text(json.dumps({
                "seed": args.seed, "first": v1.version, "active": after.version, "swapped": after.version != v1.version,
                "requests": traffic.requests, "failed": traffic.failed, "trigger": request.tags["gymops/trigger"],
                "gates": {name: {"passed": e.passed, **({"failures": e.metadata["failures"].value}
                                                        if "failures" in e.metadata else {})}
                          for name, e in runs.check_results(second).items()},
                "seconds": round(time.monotonic() - began, 1)}, default=str) + "\n")
    finally:
        if ingest is not None:
            processes.stop(ingest)
        server.stop()
    print(f"\ndemo finished in {time.monotonic() - began:.0f} s; nothing left running "
          f"(the Dagster runs are in {dagster_home}: `make up` shows them)")
    return 0


def _sample_urls(settings, n: int) -> list[str]:
    from gymops.history import tables as history

    rows = history.history_for(settings, history.TASK_CONFIRMATIONS).read().to_pandas()
    return list(rows.photo_url.head(n))


if __name__ == "__main__":
    sys.exit(main())
