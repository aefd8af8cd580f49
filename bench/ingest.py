#!/usr/bin/env python
"""Ingestion benchmark: events/s, loss, duplication and latency through the real ingestion paths.

Paths (each on isolated state that is removed at the end):

1. ``amqp``: RabbitMQ -> replicator -> both Feast stores, services profile (the headline). Its own
   PostgreSQL database, Feast project and queue; the real consumer (``python -m gymops consume``)
   as a child process with the default batching (GYMOPS_BATCH_SIZE 500, 200 ms); N events
   published with publisher confirms by separate publisher processes, paced at ``--rate``.
   Latency is event-to-offline-store: each eventId carries its publish time (epoch microseconds)
   and a poller in this process records when each row becomes visible in the PostgreSQL history
   table (``visible``, an upper bound: the poll that first saw it, every ``--poll-ms``). The
   replicator's ``created`` column (set when its batch starts, before the push) gives a second,
   lower figure (``created``).
   ``amqp_max``: the same path with the publishers unpaced (``--max-publishers`` processes, as fast
   as possible): the capacity of the whole machine, publishers included; its latency includes
   whatever backlog the queue builds when the publishers outrun the consumer.
2. ``amqp_baseline``: the same path with one push per event (GYMOPS_BATCH_SIZE=1): the ratio's
   denominator.
3. ``http`` / ``http_baseline``: the HTTP endpoint (``python -m gymops serve-ingest``) on the
   embedded profile, 4 client threads posting NDJSON batches of 50; the baseline posts one event
   per request with one push per event.

events_per_s = events / (first publish -> last event visible in the history).
lost = published - distinct stored; duplicated = history rows - distinct event ids.

Prints one JSON object on stdout and writes bench/results/ingest.json; progress goes to stderr.
    python -m bench.ingest            # the full run (100,000 events through RabbitMQ)
    python -m bench.ingest --quick    # a small smoke run

``amqp_hostile``: the ``amqp`` run again with ``--hostile-pct`` (1 %) hostile messages mixed in
(the shapes that used to block the queue: numbers beyond range, 5,000-digit integers, deep
nesting, NUL, lone surrogates, ancient timestamps, ...): the same throughput within noise, and
every hostile message dead-lettered exactly once (``hostile_sent``, ``hostile_dead_letters``,
``hostile_events_per_s``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from gymops.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results" / "ingest.json"
TABLE = "task_confirmations"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Settings, events, statistics
# ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def task_event(event_id: str, i: int, scope: str, photo_prefix: str, ts: str) -> dict:
    """A valid TaskConfirmedEvent (its own task: one online-store key per event); one in four is a correction."""
    corrected = i % 4 == 0
    return {
        "eventType": "TaskConfirmedEvent", "schemaVersion": 1, "eventId": event_id,
        "taskId": f"TASK-{scope}-{i:07d}", "helperId": f"HELPER-{i % 37}", "branchId": f"BR-{i % 5}",
        "photoUrl": f"{photo_prefix}/tasks/BR-{i % 5}/{scope}-{i:07d}.jpg",
        "aiResult": "good", "aiModelVersion": "laundry-v1",
        "finalResult": "defective" if corrected else "good", "corrected": corrected,
        "correctionReason": "stain left on the collar" if corrected else None, "timestamp": ts,
    }


def hostile_body(i: int, scope: str, photo_prefix: str, ts: str) -> bytes:
    """One of the shapes that used to block the stream (issue 10), unique per ``i`` (its dead
    letter is keyed by eventId or by the digest of its bytes)."""
    ev = task_event(f"hostile-{scope}-{i:07d}", i, f"{scope}-h", photo_prefix, ts)
    text = json.dumps(ev, separators=(",", ":"), ensure_ascii=False)
    kind = i % 10
    if kind == 0:
        return text.replace('"corrected":', '"similarity":1e400,"corrected":').encode()
    if kind == 1:
        return text.replace('"schemaVersion":1', '"schemaVersion":' + "9" * 5000).encode()
    if kind == 2:
        return ('{"eventId":"hostile-%s-%07d","x":' % (scope, i) + "[" * 30000 + "]" * 30000 + "}").encode()
    if kind == 3:
        return text.replace('"schemaVersion":1', '"schemaVersion":[1]').encode()
    if kind == 4:
        return text.replace('"TaskConfirmedEvent"', '"' + "T" * 80 + '"').encode()
    if kind == 5:
        return text.replace('"helperId":"', '"helperId":"\\u0000').encode()
    if kind == 6:
        return text.replace('"branchId":"', '"branchId":"\\ud800').encode()
    if kind == 7:
        return text.replace(ts, "0001-01-01T00:00:00+01:00").encode()
    if kind == 8:
        return text.replace('"aiResult":"good"', '"aiResult":"good","' + "f" * 200 + f'{i}":1').encode()
    return (text[:40] + "\x00" + text[40:]).replace('"eventId":"hostile', '"eventId":"h\x00ostile').encode()


def publish_time(event_id: str) -> float:
    """Epoch seconds encoded as the eventId's last field (microseconds)."""
    return int(event_id.rsplit("-", 1)[1]) / 1e6


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def latency_summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {
        "p50_s": round(pct(values, 50), 4), "p95_s": round(pct(values, 95), 4),
        "p99_s": round(pct(values, 99), 4), "max_s": round(max(values), 4),
        "mean_s": round(sum(values) / len(values), 4),
    }


def machine_cpu() -> list[int]:
    """The aggregate line of /proc/stat: user nice system idle iowait irq softirq steal (ticks)."""
    with contextlib.suppress(OSError):
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return []


def machine_usage(before: list[int], after: list[int]) -> dict:
    """Busy and steal shares of all CPUs between two machine_cpu() readings: other load on the box
    (or a noisy hypervisor neighbour) shows up here and explains a slow run."""
    if not before or not after:
        return {}
    d = [b - a for a, b in zip(before, after)]
    total = sum(d) or 1
    idle = d[3] + d[4]
    return {"busy_pct": round(100 * (total - idle) / total, 1), "steal_pct": round(100 * d[7] / total, 1)}


def background_load(seconds: float = 2.0) -> dict:
    """The machine's CPU use while this benchmark runs nothing: load from other work on the box."""
    before = machine_cpu()
    time.sleep(seconds)
    return machine_usage(before, machine_cpu())


SERVICE_DAEMONS = {"postgres", "beam.smp", "redis-server", "erl_child_setup", "epmd", "inet_gethost"}


def cpu_attribution() -> dict:
    """CPU seconds so far of this benchmark's process tree and of the service daemons it drives
    (PostgreSQL, RabbitMQ, Redis), each with its reaped children; and the machine's busy seconds.
    The difference of two readings leaves the CPU that other work on the machine took."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            comm = raw[raw.index("(") + 1: raw.rindex(")")]
            f = raw.rsplit(")", 1)[1].split()
            procs[int(entry.name)] = (int(f[1]), comm, sum(int(x) for x in f[11:15]) / tick)
    mine, frontier = set(), [os.getpid()]
    while frontier:
        pid = frontier.pop()
        mine.add(pid)
        frontier.extend(p for p, (ppid, _, _) in procs.items() if ppid == pid and p not in mine)
    usage = machine_cpu()
    busy = (sum(usage) - usage[3] - usage[4]) / tick if usage else 0.0
    return {"bench": sum(procs[p][2] for p in mine if p in procs),
            "services": sum(c for p, (_, comm, c) in procs.items() if comm in SERVICE_DAEMONS and p not in mine),
            "busy": busy}


def cpu_split(before: dict, after: dict, seconds: float) -> dict:
    """Average CPUs in use during a run: by the benchmark's processes, by the service daemons and by
    everything else (other work on the machine: nonzero means the figures were taken under load)."""
    if not before or not after or seconds <= 0:
        return {}
    d = {k: after[k] - before[k] for k in before}
    other = max(0.0, d["busy"] - d["bench"] - d["services"])
    return {"bench_cpus": round(d["bench"] / seconds, 2), "services_cpus": round(d["services"] / seconds, 2),
            "other_cpus": round(other / seconds, 2), "of_cpus": os.cpu_count()}


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def _tail(path: Path, n: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-n:]
    return ""


# ----------------------------------------------------------------------------------------------
# RabbitMQ path (services profile)
# ----------------------------------------------------------------------------------------------

def _publish_worker(env: dict, worker: int, workers: int, total: int, prefix: str, scope: str,
                    photo_prefix: str, rate: float, start_at: float, progress, result_q,
                    hostile_every: int = 0) -> None:
    """One publisher process: events worker, worker+workers, ... paced so that all workers
    together publish ``rate`` events/s (0: as fast as possible), each with publisher confirms."""
    os.environ.update(env)
    from gymops.ingest.broker import Publisher
    from gymops.settings import load_settings

    publisher = Publisher(load_settings())
    publisher._connect()  # connect (and declare) before the clock starts
    ts = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    first = last = None
    n = hostile = 0
    for i in range(worker, total, workers):
        if rate:
            wait = start_at + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
        now = time.time()
        event_id = f"{prefix}{i:07d}-{int(now * 1e6)}"
        body = json.dumps(task_event(event_id, i, scope, photo_prefix, ts), separators=(",", ":"))
        publisher.publish(body, message_id=event_id)
        if hostile_every and i % hostile_every == 0:
            publisher.publish(hostile_body(i, scope, photo_prefix, ts))
            hostile += 1
        first = first or now
        last = time.time()
        n += 1
        if n % 100 == 0:
            progress[worker] = n
    progress[worker] = n
    publisher.close()
    result_q.put({"worker": worker, "published": n, "hostile": hostile, "first": first, "last": last})


class PgPoller(threading.Thread):
    """Records when each benchmark row first becomes visible in the PostgreSQL history table.

    The consumer is one process pushing one batch at a time, so batches commit in ``created``
    order: polling ``created >= the latest created seen`` finds every new row."""

    def __init__(self, conninfo: str, prefix: str, interval: float):
        super().__init__(daemon=True, name="pg-poller")
        self.conninfo, self.prefix, self.interval = conninfo, prefix, interval
        self.seen: dict[str, tuple[float, float]] = {}  # event_id -> (visible at, created)
        self.polls = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                last = datetime(1970, 1, 1, tzinfo=timezone.utc)
                while not self._halt.is_set():
                    began = time.time()
                    rows = conn.execute(
                        f"SELECT event_id, created FROM {TABLE} WHERE model_type = 'laundry' AND created >= %s "
                        "AND event_id LIKE %s", (last, self.prefix + "%")).fetchall()
                    self.polls += 1
                    for event_id, created in rows:
                        if event_id not in self.seen:
                            self.seen[event_id] = (began, created.timestamp())
                        if created > last:
                            last = created
                    self._halt.wait(max(0.0, self.interval - (time.time() - began)))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def wait_log(path: Path, needle: str, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited {proc.returncode}:\n{_tail(path)}")
        if needle in _tail(path, 100_000):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{needle!r} not in {path} after {timeout} s:\n{_tail(path)}")


def pg_counts(conninfo: str, prefix: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows, distinct = conn.execute(
            f"SELECT count(*), count(DISTINCT event_id) FROM {TABLE} WHERE event_id LIKE %s", (prefix + "%",)
        ).fetchone()
    return rows, distinct


def run_amqp(settings, label: str, events: int, rate: float, publishers: int, poll_s: float,
             stall_s: float, workdir: Path, tag: str, hostile_every: int = 0) -> dict:
    from gymops import processes
    from gymops.history.tables import pg_conninfo

    prefix = f"bench-{tag}-{label}-"
    conninfo = pg_conninfo(settings)
    logfile = workdir / f"{label}.consume.log"
    log(f"{label}: starting the consumer (batch size {settings.batch_size}, wait {settings.batch_wait_ms} ms, "
        f"queue {settings.rabbitmq_queue})")
    proc = processes.start(settings, "ingest", "consume", log=logfile)
    dead_before = dead_letters_pg(settings) or 0
    poller = PgPoller(conninfo, prefix, poll_s)
    workers: list = []
    try:
        wait_log(logfile, f"consuming {settings.rabbitmq_queue}", proc, 180)
        cpu_before, consumer_before = machine_cpu(), process_cpu_s(proc.pid)
        split_before, split_t = cpu_attribution(), time.monotonic()
        ctx = mp.get_context("spawn")
        progress = ctx.Array("q", publishers, lock=False)
        result_q = ctx.Queue()
        env = processes.child_env(settings)
        start_at = time.time() + 2.0  # the publishers connect first
        photo_prefix = f"s3://{settings.s3_bucket}"
        for w in range(publishers):
            p = ctx.Process(target=_publish_worker, name=f"publisher-{w}",
                            args=(env, w, publishers, events, prefix, f"{tag}-{label}", photo_prefix, rate, start_at,
                                  progress, result_q, hostile_every))
            p.start()
            workers.append(p)
        poller.start()
        log(f"{label}: publishing {events:,} events from {publishers} process(es) at "
            f"{'max' if not rate else f'{rate:,.0f}/s'}")
        results: list[dict] = []
        last_count, last_change, last_report = 0, time.monotonic(), 0.0
        while True:
            time.sleep(0.25)
            while not result_q.empty():
                results.append(result_q.get())
            count = len(poller.seen)
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            if now - last_report >= 3:
                elapsed = max(1e-9, time.time() - start_at)
                pub = sum(progress)
                log(f"{label}: published {pub:,}  stored {count:,}/{events:,}  "
                    f"({count / elapsed:,.0f} ev/s since the first publish, {elapsed:.0f} s)")
                last_report = now
            if poller.error:
                raise RuntimeError(f"poller failed: {poller.error!r}")
            if proc.poll() is not None:
                raise RuntimeError(f"consumer exited {proc.returncode}:\n{_tail(logfile)}")
            if any(p.exitcode not in (None, 0) for p in workers):
                raise RuntimeError(f"a publisher failed: {[p.exitcode for p in workers]}")
            if count >= events:
                break
            if len(results) == publishers and now - last_change > stall_s:
                log(f"{label}: no new rows for {stall_s:.0f} s after the last publish; giving up waiting")
                break
        for p in workers:
            p.join(60)
        while len(results) < publishers and not result_q.empty():
            results.append(result_q.get())
        time.sleep(max(1.0, 3 * poll_s))  # let any redelivery (a duplicate) land before counting
        cpu_after, consumer_after = machine_cpu(), process_cpu_s(proc.pid)
        split = cpu_split(split_before, cpu_attribution(), time.monotonic() - split_t)
    finally:
        code = processes.stop(proc)  # first, whatever else fails: never leave a consumer running
        for p in workers:
            if p.is_alive():
                p.terminate()
                p.join(5)
        poller.stop()
    if code != 0:
        log(f"{label}: consumer exited {code}:\n{_tail(logfile)}")

    published = sum(r["published"] for r in results)
    first_pub = min(r["first"] for r in results if r["first"])
    last_pub = max(r["last"] for r in results if r["last"])
    rows, distinct = pg_counts(conninfo, prefix)
    seen = poller.seen
    visible = [t - publish_time(e) for e, (t, _) in seen.items()]
    created = [c - publish_time(e) for e, (_, c) in seen.items()]
    last_visible = max((t for t, _ in seen.values()), default=float("nan"))
    # The longest time without a new row while events were still due: a stall anywhere on the path.
    moments = sorted({t for t, _ in seen.values()})
    gaps = [(b - a, a - first_pub) for a, b in zip(moments, moments[1:])]
    longest = max(gaps, default=(0.0, 0.0))
    span = last_visible - first_pub
    batches = sum(1 for line in _tail(logfile, 50_000_000).splitlines() if "batch: {" in line)
    out = {
        "path": "RabbitMQ -> consumer -> Feast (Redis online + PostgreSQL offline), services profile",
        "batch_size": settings.batch_size, "batch_wait_ms": settings.batch_wait_ms,
        "events": published, "stored_rows": rows, "stored_distinct": distinct,
        "lost": published - distinct, "duplicated": rows - distinct,
        "seconds": round(span, 3),
        "events_per_s": round(distinct / span, 1) if span > 0 else None,
        "publish_rate_target": rate or None,
        "publish_rate_achieved": round(published / (last_pub - first_pub), 1) if last_pub > first_pub else None,
        "publishers": publishers,
        "latency_visible": latency_summary(visible),
        "latency_created": latency_summary(created),
        "poll_interval_s": poll_s, "polls": poller.polls,
        "longest_gap_s": round(longest[0], 3), "longest_gap_at_s": round(longest[1], 1),
        "consumer_cpu_s": round(consumer_after - consumer_before, 2)
        if consumer_after is not None and consumer_before is not None else None,
        "machine_cpu": machine_usage(cpu_before, cpu_after),
        "cpu_split": split,
        "consumer_batches": batches,
        "mean_batch": round(distinct / batches, 1) if batches else None,
        "consumer_exit": code,
    }
    if hostile_every:
        out["hostile_sent"] = sum(r.get("hostile", 0) for r in results)
        out["hostile_dead_letters"] = (dead_letters_pg(settings) or 0) - dead_before
    if out["consumer_cpu_s"]:
        out["events_per_consumer_cpu_s"] = round(distinct / out["consumer_cpu_s"], 1)
    if len(seen) != distinct:
        out["not_seen_by_poller"] = distinct - len(seen)
    log(f"{label}: {out['events_per_s']} ev/s, lost {out['lost']}, duplicated {out['duplicated']}, "
        f"p99 visible {out['latency_visible'].get('p99_s')} s, consumer CPU {out['consumer_cpu_s']} s, "
        f"CPUs in use {out['cpu_split']}")
    return out


def online_keys_redis(project: str) -> list[bytes]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    suffix = project.encode()
    return [k for k in client.scan_iter(match=f"*{project}", count=5000) if k.endswith(suffix)]


def drop_services(settings, queues: list[str], keys: list[bytes] | None) -> None:
    import pika
    import psycopg

    from gymops.ingest.broker import parameters

    with contextlib.suppress(Exception):
        conn = pika.BlockingConnection(parameters(settings))
        channel = conn.channel()
        for q in queues:
            channel.queue_delete(q)
            channel.exchange_delete(q)
        conn.close()
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = keys if keys is not None else online_keys_redis(settings.feast_project)
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start:start + 5000])
    with contextlib.suppress(Exception):
        with psycopg.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)')


def dead_letters_pg(settings) -> int | None:
    import psycopg

    from gymops.history.tables import pg_conninfo

    with contextlib.suppress(Exception):
        with psycopg.connect(pg_conninfo(settings), autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return None


def bench_amqp(args, tag: str, workdir: Path) -> dict:
    from gymops.history import feature_store

    settings = Settings(
        profile="services", home=workdir / "services", pg_database=f"gymops_bench_{tag}",
        feast_project=f"gymops_bench_{tag}", rabbitmq_queue=f"gymops.bench.{tag}",
        ingest_token=f"bench-{tag}", s3_endpoint=f"http://127.0.0.1:{free_port()}",
        batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms)
    baseline = dataclasses.replace(settings, batch_size=1, rabbitmq_queue=f"gymops.bench.{tag}.baseline")
    flat_out = dataclasses.replace(settings, rabbitmq_queue=f"gymops.bench.{tag}.max")
    out: dict = {}
    keys = None
    try:
        t = time.monotonic()
        feature_store.apply(settings)
        log(f"services profile applied (database {settings.pg_database}) in {time.monotonic() - t:.1f} s")
        # The baseline first, on the empty table (no autovacuum of the big runs' rows under it).
        if args.baseline_events:
            out["amqp_baseline"] = run_amqp(baseline, "amqp_baseline", args.baseline_events, args.baseline_rate,
                                            1, args.poll_ms / 1000, args.stall_s, workdir, tag)
        out["amqp"] = run_amqp(settings, "amqp", args.events, args.rate, args.publishers, args.poll_ms / 1000,
                               args.stall_s, workdir, tag)
        if args.hostile_pct:
            hostile = dataclasses.replace(settings, rabbitmq_queue=f"gymops.bench.{tag}.hostile")
            out["amqp_hostile"] = run_amqp(hostile, "amqp_hostile", args.hostile_events or args.events, args.rate,
                                           args.publishers, args.poll_ms / 1000, args.stall_s, workdir, tag,
                                           hostile_every=max(1, round(100 / args.hostile_pct)))
        if args.max_events:
            out["amqp_max"] = run_amqp(flat_out, "amqp_max", args.max_events, 0, args.max_publishers,
                                       args.poll_ms / 1000, args.stall_s, workdir, tag)
        keys = online_keys_redis(settings.feast_project)
        expected = sum(r["stored_distinct"] for r in out.values())
        out["checks"] = {"online_store_keys": len(keys), "offline_distinct": expected,
                         "online_matches_offline": len(keys) == expected,
                         "dead_letters": dead_letters_pg(settings)}
        log(f"services checks: {out['checks']}")
    finally:
        if args.keep:
            log(f"--keep: leaving database {settings.pg_database}, queues and Redis keys in place")
        else:
            queues = [settings.rabbitmq_queue, flat_out.rabbitmq_queue, baseline.rabbitmq_queue,
                      f"gymops.bench.{tag}.hostile"]
            drop_services(settings, queues + [f"{q}.parked" for q in queues] + [f"{q}.dlx" for q in queues], keys)
            log(f"dropped database {settings.pg_database} and the queues" + (f" and {len(keys)} Redis keys" if keys else ""))
    return out


# ----------------------------------------------------------------------------------------------
# HTTP path (embedded profile)
# ----------------------------------------------------------------------------------------------

def run_http(settings, label: str, events: int, threads: int, batch: int, workdir: Path, tag: str) -> dict:
    from gymops import processes
    from gymops.history.tables import FileHistory
    from gymops.simulator.send import HttpSender

    prefix = f"bench-{tag}-{label}-"
    photo_prefix = f"file://{settings.photo_root}"
    ts = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    bodies = [json.dumps(task_event(f"{prefix}{i:07d}", i, f"{tag}-{label}", photo_prefix, ts), separators=(",", ":"))
              for i in range(events)]
    shares = [bodies[w::threads] for w in range(threads)]
    logfile = workdir / f"{label}.serve.log"
    url = f"http://{settings.ingest_host}:{settings.ingest_port}"
    log(f"{label}: starting serve-ingest on {url} (batch size {settings.batch_size})")
    proc = processes.start(settings, "ingest", "serve", log=logfile)
    request_s: list[float] = []
    posted = [0] * threads
    errors: list[BaseException] = []
    totals = [None] * threads

    class TimedSender(HttpSender):
        def __init__(self, worker, *a, **kw):
            super().__init__(*a, **kw)
            self.worker = worker

        def _post(self, chunk, acc):
            began = time.perf_counter()
            super()._post(chunk, acc)
            request_s.append(time.perf_counter() - began)
            posted[self.worker] += len(chunk)

    def client(w: int) -> None:
        try:
            totals[w] = TimedSender(w, url, settings.ingest_token, batch=batch).send(shares[w])
        except BaseException as exc:
            errors.append(exc)

    try:
        processes.wait_http(url + "/healthz", proc, logfile, timeout=180)
        cpu_before, server_before = machine_cpu(), process_cpu_s(proc.pid)
        split_before, split_t = cpu_attribution(), time.monotonic()
        pool = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(threads)]
        began = time.time()
        for t in pool:
            t.start()
        last_report = time.monotonic()
        while any(t.is_alive() for t in pool):
            time.sleep(0.25)
            if time.monotonic() - last_report >= 3:
                done, elapsed = sum(posted), time.time() - began
                log(f"{label}: stored {done:,}/{events:,} ({done / elapsed:,.0f} ev/s, {elapsed:.0f} s)")
                last_report = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"serve-ingest exited {proc.returncode}:\n{_tail(logfile)}")
        ended = time.time()
        cpu_after, server_after = machine_cpu(), process_cpu_s(proc.pid)
        split = cpu_split(split_before, cpu_attribution(), time.monotonic() - split_t)
    finally:
        code = processes.stop(proc)
    if errors:
        raise RuntimeError(f"{label}: client failed: {errors[0]!r}\n{_tail(logfile)}")
    ids = FileHistory(settings.feast_offline_dir / TABLE).read().column("event_id").to_pylist()
    mine = [e for e in ids if e.startswith(prefix)]
    distinct = len(set(mine))
    span = ended - began
    stored = sum(t["stored"] for t in totals)
    out = {
        "path": "HTTP POST /v1/events (NDJSON) -> Feast (SQLite online + parquet offline), embedded profile",
        "batch_size": settings.batch_size, "client_threads": threads, "events_per_request": batch,
        "events": events, "acknowledged_stored": stored,
        "acknowledged_duplicates": sum(t["duplicates"] for t in totals),
        "dead_lettered": sum(len(t["deadLettered"]) for t in totals),
        "stored_rows": len(mine), "stored_distinct": distinct,
        "lost": events - distinct, "duplicated": len(mine) - distinct,
        "seconds": round(span, 3), "events_per_s": round(distinct / span, 1) if span > 0 else None,
        "requests": len(request_s), "request_latency": latency_summary(request_s),
        "server_cpu_s": round(server_after - server_before, 2)
        if server_after is not None and server_before is not None else None,
        "machine_cpu": machine_usage(cpu_before, cpu_after),
        "cpu_split": split,
        "server_exit": code,  # uvicorn >= 0.29 re-raises SIGTERM after its graceful shutdown: -15
    }
    if out["server_cpu_s"]:
        out["events_per_server_cpu_s"] = round(distinct / out["server_cpu_s"], 1)
    log(f"{label}: {out['events_per_s']} ev/s, lost {out['lost']}, duplicated {out['duplicated']}, "
        f"request p99 {out['request_latency'].get('p99_s')} s, server CPU {out['server_cpu_s']} s, "
        f"CPUs in use {out['cpu_split']}")
    return out


def online_rows_sqlite(settings) -> int | None:
    with contextlib.suppress(Exception):
        with contextlib.closing(sqlite3.connect(settings.home / "feast" / "online.db")) as conn:
            return conn.execute(
                f'SELECT count(DISTINCT entity_key) FROM "{settings.feast_project}_{TABLE}"').fetchone()[0]
    return None


def bench_http(args, tag: str, workdir: Path) -> dict:
    from gymops.history import feature_store

    settings = Settings(profile="embedded", home=workdir / "embedded", feast_project=f"gymops_bench_{tag}",
                             ingest_token=f"bench-{tag}", ingest_port=free_port(), batch_size=args.batch_size)
    t = time.monotonic()
    feature_store.apply(settings)
    log(f"embedded profile applied under {settings.home} in {time.monotonic() - t:.1f} s")
    out = {"http": run_http(settings, "http", args.http_events, args.http_threads, args.http_batch, workdir, tag)}
    if args.http_baseline_events:
        baseline = dataclasses.replace(settings, batch_size=1, ingest_port=free_port())
        out["http_baseline"] = run_http(baseline, "http_baseline", args.http_baseline_events, args.http_threads, 1,
                                        workdir, tag)
    online = online_rows_sqlite(settings)
    expected = sum(r["stored_distinct"] for r in out.values())
    out["checks_embedded"] = {"online_store_keys": online, "offline_distinct": expected,
                              "online_matches_offline": online == expected}
    return out


# ----------------------------------------------------------------------------------------------

def _figure_args(argv: list[str]) -> list[str]:
    """The arguments that shape the figures (not where they are written)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="events through RabbitMQ (headline)")
    p.add_argument("--rate", type=float, default=1500, help="publish rate, events/s in all (0: as fast as possible)")
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--max-events", type=int, default=50_000,
                   help="capacity run: events published as fast as possible (0: skip it)")
    p.add_argument("--max-publishers", type=int, default=4, help="publisher processes of the capacity run")
    p.add_argument("--baseline-events", type=int, default=3000, help="RabbitMQ events with one push per event")
    p.add_argument("--baseline-rate", type=float, default=0, help="baseline publish rate (0: as fast as possible)")
    p.add_argument("--http-events", type=int, default=20_000)
    p.add_argument("--http-baseline-events", type=int, default=2000)
    p.add_argument("--http-threads", type=int, default=4)
    p.add_argument("--http-batch", type=int, default=50, help="events per HTTP request")
    p.add_argument("--batch-size", type=int, default=500, help="GYMOPS_BATCH_SIZE of the batched runs")
    p.add_argument("--batch-wait-ms", type=int, default=200, help="GYMOPS_BATCH_WAIT_MS of the consumer")
    p.add_argument("--poll-ms", type=float, default=100, help="history poll interval (latency resolution)")
    p.add_argument("--stall-s", type=float, default=60, help="give up after this long without a new row")
    p.add_argument("--hostile-pct", type=float, default=1.0,
                   help="the amqp_hostile run: this percentage of hostile messages mixed in (0: skip it)")
    p.add_argument("--hostile-events", type=int, default=0, help="valid events of the hostile run (0: --events)")
    p.add_argument("--skip-amqp", action="store_true")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run (5,000 / 5,000 / 300 RabbitMQ, 2,000 / 200 HTTP events)")
    p.add_argument("--keep", action="store_true", help="keep the isolated state (database, queues, home)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes ('-': nowhere)")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.baseline_events = min(args.events, 5000), min(args.baseline_events, 300)
        args.max_events = min(args.max_events, 5000)
        args.hostile_events = min(args.hostile_events or args.events, 5000)
        args.http_events, args.http_baseline_events = min(args.http_events, 2000), min(args.http_baseline_events, 200)

    from gymops.settings import quiet_tools

    quiet_tools()
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix=f"gymops-bench-{tag}-"))
    began = time.time()
    log(f"tag {tag}, work dir {workdir}")
    quiet_before = background_load()
    log(f"background CPU load before the runs: {quiet_before}")
    paths: dict = {}
    try:
        if not args.skip_amqp:
            paths.update(bench_amqp(args, tag, workdir))
        if not args.skip_http:
            paths.update(bench_http(args, tag, workdir))
    finally:
        if args.keep:
            log(f"--keep: leaving {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    quiet_after = background_load()
    log(f"background CPU load after the runs: {quiet_after}")
    result: dict = {
        "benchmark": "ingest",
        "command": " ".join(["python -m bench.ingest", *_figure_args(sys.argv[1:] if argv is None else argv)]),
        "started": datetime.fromtimestamp(began, timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - began, 1),
        "machine": {"cpus": os.cpu_count(), "gpu": None, "python": platform.python_version(),
                    "platform": platform.platform(),
                    # Busy share of both CPUs with none of this benchmark running: other work on the
                    # machine competes with every run, so compare figures taken at a low load only.
                    "background_busy_before": quiet_before, "background_busy_after": quiet_after},
    }
    head = paths.get("amqp")
    if head:
        base = paths.get("amqp_baseline", {})
        result.update({
            "events": head["events"], "lost": head["lost"], "duplicated": head["duplicated"],
            "events_per_s": head["events_per_s"], "baseline_events_per_s": base.get("events_per_s"),
            "ratio": round(head["events_per_s"] / base["events_per_s"], 1)
            if base.get("events_per_s") and head["events_per_s"] else None,
            "p99_latency_s": head["latency_visible"].get("p99_s"),
        })
        hostile = paths.get("amqp_hostile")
        if hostile:
            result.update({"hostile_sent": hostile.get("hostile_sent"),
                           "hostile_dead_letters": hostile.get("hostile_dead_letters"),
                           "hostile_events_per_s": hostile["events_per_s"],
                           "hostile_lost": hostile["lost"], "hostile_duplicated": hostile["duplicated"]})
        top = paths.get("amqp_max", {})
        if top.get("events_per_s") and base.get("events_per_s"):
            result["max_events_per_s"] = top["events_per_s"]
            result["max_ratio"] = round(top["events_per_s"] / base["events_per_s"], 1)
        result["targets"] = {
            "events_per_s>=1000": bool(head["events_per_s"] and head["events_per_s"] >= 1000),
            "lost==0": head["lost"] == 0, "duplicated==0": head["duplicated"] == 0,
            "p99_latency_s<=2": bool(result["p99_latency_s"] is not None and result["p99_latency_s"] <= 2),
        }
        if hostile:
            result["targets"]["hostile_dead_lettered_once"] = hostile.get("hostile_dead_letters") == hostile.get("hostile_sent")
    http, http_base = paths.get("http"), paths.get("http_baseline")
    if http and http_base and http_base.get("events_per_s"):
        result["http_ratio"] = round(http["events_per_s"] / http_base["events_per_s"], 1)
    others = {k: v["cpu_split"]["other_cpus"] for k, v in paths.items() if v.get("cpu_split")}
    # Other work took more than a tenth of a CPU on average during some run: its figures are low.
    result["contended"] = {"any": any(v > 0.1 for v in others.values()), "other_cpus_by_path": others}
    result["paths"] = paths
    text = json.dumps(result, indent=2)
    print(text)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
