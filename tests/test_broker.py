"""The RabbitMQ path on the real broker, PostgreSQL and Redis (services profile)."""
import dataclasses
import json
import shutil
import signal
import subprocess
import threading
import time
import uuid

import pytest

from gymops.history import tables as history
from gymops.ingest.broker import Publisher
from gymops.processes import start, stop, wait_for
from fixtures import skip_or_fail, task_event

pytestmark = pytest.mark.services


def photo(settings):
    return f"s3://{settings.s3_bucket}/tasks/BR-1/p.jpg"


def events(settings, n):
    return [json.dumps(task_event(photo(settings), corrected=i % 3 == 0)) for i in range(n)]


def stored(settings, ids):
    return history.history_for(settings, history.TASK_CONFIRMATIONS).present(ids)


def assert_exactly_once(settings, ids):
    rows = history.history_for(settings, history.TASK_CONFIRMATIONS).read().to_pandas()
    mine = rows[rows.event_id.isin(ids)]
    assert len(mine) == len(ids), f"{len(mine)} rows for {len(ids)} events"
    assert mine.event_id.is_unique


@pytest.fixture
def queue_settings(services):
    """Its own queue per test, so a test's leftovers never reach the next one."""
    from gymops.ingest.broker import delete_topology

    settings = dataclasses.replace(services, rabbitmq_queue=f"{services.rabbitmq_queue}.{uuid.uuid4().hex[:6]}",
                                   batch_size=100)
    yield settings
    delete_topology(settings)  # the queue, its parking queue and dead-letter exchange


def test_consumer_stores_valid_events_and_dead_letters_the_rest(queue_settings, tmp_path):
    settings = queue_settings
    good = events(settings, 250)
    bad = ["{nope", json.dumps(task_event(photo(settings), finalResult="?"))]
    publisher = Publisher(settings)
    publisher.publish_many(good + [good[0]] + bad)  # one duplicate, two invalid
    publisher.close()
    ids = {json.loads(e)["eventId"] for e in good}
    proc = start(settings, "ingest", "consume", log=tmp_path / "consume.log")
    try:
        wait_for(lambda: stored(settings, ids) == ids, 60, "all valid events stored")
        time.sleep(1)
    finally:
        assert stop(proc) == 0, (tmp_path / "consume.log").read_text()[-2000:]
    assert_exactly_once(settings, ids)
    from gymops.db import engine_for
    from gymops.ingest.deadletters import DeadLetterStore

    letters = [d for d in DeadLetterStore(engine_for(settings)).list(limit=10_000) if d.source == "amqp"]
    assert {"{nope"} <= {d.payload for d in letters}
    assert any(d.field == "finalResult" for d in letters)


def test_consumer_killed_mid_batch_then_restarted_stores_every_event_once(queue_settings, tmp_path):
    settings = queue_settings
    bodies = events(settings, 3000)
    ids = {json.loads(b)["eventId"] for b in bodies}
    publisher = Publisher(settings)
    publisher.publish_many(bodies)
    publisher.close()

    log = tmp_path / "consume.log"
    proc = start(settings, "ingest", "consume", log=log)
    wait_for(lambda: len(stored(settings, ids)) >= 300, 90, "consumer made progress", interval=0.05)
    stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    landed = len(stored(settings, ids))
    assert landed < len(ids), "killed too late to be mid-stream"

    proc = start(settings, "ingest", "consume", log=log)
    try:
        wait_for(lambda: stored(settings, ids) == ids, 120, "every event stored after the restart")
        time.sleep(1)  # let any redelivery land, if it were to duplicate
    finally:
        stop(proc)
    assert_exactly_once(settings, ids)


def _rabbitmqctl(*args):
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([exe, *args], check=True, capture_output=True, timeout=120)


def test_broker_restart_mid_stream_loses_nothing(queue_settings, tmp_path):
    if not (shutil.which("rabbitmqctl") or shutil.os.path.exists("/usr/sbin/rabbitmqctl")):
        skip_or_fail("rabbitmqctl not found: cannot restart the broker")
    settings = queue_settings
    bodies = events(settings, 2000)
    ids = {json.loads(b)["eventId"] for b in bodies}
    log = tmp_path / "consume.log"
    proc = start(settings, "ingest", "consume", log=log)
    published = []
    under_way = threading.Event()

    def publish():
        # the first 600 go out at once; the rest wait until the consumer is under way and are
        # then spread over ~14 s, so the broker restart lands while the publisher is still
        # sending however slowly the consumer started (CI once stored 300 only after all 2,000
        # had gone out)
        publisher = Publisher(settings, retry_for_s=120)
        for i, body in enumerate(bodies):
            if i == 600:
                under_way.wait(120)
            publisher.publish(body)
            published.append(body)
            time.sleep(0.003 if i < 600 else 0.01)
        publisher.close()

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        wait_for(lambda: len(stored(settings, ids)) >= 300, 90, "consumer under way", interval=0.05)
        under_way.set()
        assert len(published) < len(bodies)
        _rabbitmqctl("stop_app")  # every connection drops, the durable queue stays on disk
        time.sleep(2)
        _rabbitmqctl("start_app")
        thread.join(180)
        assert not thread.is_alive() and len(published) == len(bodies)
        wait_for(lambda: stored(settings, ids) == ids, 120, "every event stored after the broker restart")
        time.sleep(1)
    finally:
        thread.join(1)
        stop(proc)
    assert_exactly_once(settings, ids)
    assert "reconnecting" in log.read_text()
