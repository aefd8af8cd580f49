"""The replication part of the demo (`gymops demo`; `make demo` runs it first, then the loop in
demo.py): set up Feast, start the ingestion endpoint, run the simulator of the Helper and Auth
services through it (with a few malformed events and a resent batch, as a real stream has), and
show what was replicated into Feast's offline and online stores.
"""
from __future__ import annotations

import dataclasses
import json

import time
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone

import pandas as pd

from gymops import processes
from gymops.history import feature_store
from gymops.history import tables as history
from gymops.db import engine_for
from gymops.ingest.deadletters import DeadLetterStore
from gymops.storage.photos import S3PhotoStore, photo_store_for
from gymops.simulator.send import HttpSender
from gymops.simulator.traffic import TrafficConfig, generate

def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)

def _malformed(photo_url: str) -> list:
    base = {"eventType": "TaskConfirmedEvent", "eventId": "demo-bad-", "taskId": "TASK-X", "helperId": "H-1",
            "branchId": "BR-1", "photoUrl": photo_url, "aiResult": "양호", "aiModelVersion": "none",
            "finalResult": "불량", "corrected": True, "timestamp": "2026-01-01T00:00:00Z"}
    return [
        '{"eventType": "TaskConfirmedEvent", "eventId": ',  # truncated JSON
        {**base, "eventId": "demo-bad-label", "finalResult": "so-so"},
        {**base, "eventId": "demo-bad-path", "photoUrl": photo_url.rsplit("/", 1)[0] + "/../../../etc/passwd"},
        {k: v for k, v in base.items() if k != "helperId"} | {"eventId": "demo-bad-missing"},
    ]

def run(settings, args) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)  # dask, inside Feast's offline reads
    began = time.monotonic()
    _step(f"profile {settings.profile}: feast apply + history tables under {settings.home}")
    feature_store.apply(settings)

    settings = dataclasses.replace(settings, ingest_port=processes.free_port(settings.ingest_port))
    log = settings.home / "logs" / "demo-ingest.log"
    base = f"http://{settings.ingest_host}:{settings.ingest_port}"
    _step(f"starting the ingestion endpoint on {base} (log: {log})")
    proc = processes.start(settings, "ingest", "serve", log=log)
    try:
        processes.wait_http(base + "/healthz", proc, log)
        store = photo_store_for(settings)
        if isinstance(store, S3PhotoStore):
            store.ensure_bucket()
        cfg = TrafficConfig(seed=args.seed, tasks=args.tasks, members=20, entries=120, branches=3)
        _step(f"simulating {cfg.tasks} laundry confirmations, {cfg.members} enrolments and {cfg.entries} face "
              f"entries over {cfg.span.days} days (seed {cfg.seed}); photos -> {store!r}")
        t0 = time.monotonic()
        events = list(generate(store, cfg))
        sent_types = Counter(e["eventType"] for e in events)
        print(f"   {len(events)} events, photos written in {time.monotonic() - t0:.1f} s: {dict(sent_types)}")

        sender = HttpSender(base, settings.ingest_token, batch=50)
        t0 = time.monotonic()
        totals = sender.send(events)
        rate = len(events) / (time.monotonic() - t0)
        resent = sender.send(events[:50])  # a producer retrying a batch it never saw acknowledged
        bad = sender.send(_malformed(events[0].get("photoUrl", "file:///x.jpg")))
        print(f"   sent over HTTP at {rate:.0f} events/s: stored {totals['stored']}, duplicates {totals['duplicates']}")
        print(f"   resent 50 already-stored events: stored {resent['stored']}, duplicates {resent['duplicates']}")
        print(f"   sent 4 malformed events: dead-lettered {len(bad['deadLettered'])}")
    finally:
        processes.stop(proc)

    _step("what was replicated")
    fs = feature_store.open_store(settings)
    tasks = history.history_for(settings, history.TASK_CONFIRMATIONS).read().to_pandas()
    faces = history.history_for(settings, history.FACE_SAMPLES).read().to_pandas()
    print(f"   offline store: {len(tasks)} task confirmations ({tasks.event_id.nunique()} distinct eventIds), "
          f"{len(faces)} face samples ({dict(Counter(faces.sample_kind))})")
    since = datetime.now(timezone.utc) - timedelta(days=7)
    print(f"   corrected confirmations since {since:%Y-%m-%d %H:%M} UTC (the retraining sensor's query): "
          f"{history.corrections_since(settings, 'laundry', since)}")
    balance = tasks.groupby(["final_result", "corrected"]).size().rename("tasks")
    print("   labels (finalResult) by corrected:\n" + "\n".join("      " + line for line in balance.to_string().splitlines()))

    sample = tasks.sort_values("event_timestamp").tail(3)
    entity = pd.DataFrame({"task_id": sample.task_id, "event_timestamp": pd.Timestamp.now(tz="UTC")})
    offline = fs.get_historical_features(
        entity_df=entity,
        features=["task_confirmations:ai_result", "task_confirmations:final_result", "task_confirmations:corrected"],
    ).to_df()
    print("   point-in-time read from Feast's offline store (3 latest tasks):")
    print("\n".join("      " + line for line in offline[["task_id", "ai_result", "final_result", "corrected"]].to_string(index=False).splitlines()))
    member = faces.sort_values("event_timestamp").iloc[-1].user_id
    online = fs.get_online_features(features=["face_samples:sample_kind", "face_samples:similarity", "face_samples:photo_url"],
                                    entity_rows=[{"user_id": member}]).to_dict()
    print(f"   online store, member {member}: {json.dumps({k: v[0] for k, v in online.items()}, ensure_ascii=False)}")

    letters = DeadLetterStore(engine_for(settings)).list(limit=1000)
    print(f"   dead letters open: {len(letters)} (`gymops deadletters list` / `replay`):")
    for letter in letters[-4:]:
        print(f"      #{letter.id} {letter.field}: {letter.reason[:90]}")
    print(f"\nreplication part finished in {time.monotonic() - began:.0f} s; its ingestion endpoint is stopped")
    return 0
