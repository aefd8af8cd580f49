"""A past of laundry confirmations, simulated and ingested through the replicator in one call
(for the demo, benchmarks and tests that need training history to exist)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone


def ingest_simulated_history(settings, tasks: int, days: int, seed: int = 3, defective_fraction: float = 0.4,
                             members: int = 2, entries: int = 0) -> tuple[str, str]:
    """``tasks`` confirmations spread over the ``days`` days before today (UTC), photos in the
    profile's photo store, events through Replicator.ingest. Returns (first day, last day)."""
    from gymops.storage.photos import S3PhotoStore, photo_store_for
    from gymops.ingest.replicator import Replicator
    from gymops.simulator.traffic import TrafficConfig, generate

    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    cfg = TrafficConfig(seed=seed, tasks=tasks, members=members, entries=entries, branches=2,
                        start=today - timedelta(days=days), span=timedelta(days=days),
                        defective_fraction=defective_fraction)
    store = photo_store_for(settings)
    if isinstance(store, S3PhotoStore):
        store.ensure_bucket()
    events = [json.dumps(e, ensure_ascii=False) for e in generate(store, cfg)]
    report = Replicator(settings).ingest(events, "simulator")
    if report.dead_lettered:
        raise RuntimeError(f"simulated events were dead-lettered: {report.outcomes[:3]}")
    return (today - timedelta(days=days)).date().isoformat(), (today - timedelta(days=1)).date().isoformat()
