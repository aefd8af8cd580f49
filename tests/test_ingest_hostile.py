"""Hostile input on every ingestion path (issue 10): validation that raises nothing but a validation
failure, dead letters stored once per message, the HTTP endpoint never answering 5xx for client
input, and the RabbitMQ consumer moving past poison messages (split batches, delivery limit,
parking queue, migration from the classic queue)."""
from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
import uuid
from datetime import datetime, timezone

import pytest
import requests
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from gymops.history import tables as history
from gymops.ingest.events import EventValidationError, parse_event
from gymops.processes import start, stop, wait_for
from fixtures import task_event

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)

# -- hostile material ---------------------------------------------------------------------------
HOSTILE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x20), max_size=5),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "x" * 3000, "0001-01-01T00:00:00+01:00",
                     "1600-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "file:///p\t.jpg", " file:///p.jpg",
                     "양호", "불량", "", " "]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FIELDS = ["eventType", "schemaVersion", "eventId", "taskId", "helperId", "branchId", "photoUrl", "aiResult",
          "aiModelVersion", "finalResult", "corrected", "correctionReason", "timestamp", "similarity",
          "x" * 200, "unknown", "\x00", "\ud800"]
RAW_NUMBERS = ["1e400", "-1e400", "1" + "0" * 400, "9" * 5000, "NaN", "Infinity", "-Infinity", "1E-400"]


@st.composite
def hostile_events(draw):
    """A valid event with one to three fields replaced, removed or added (as a dict)."""
    event = task_event("file:///photos/tasks/BR-1/p.jpg", event_id=f"ev-hostile-{uuid.uuid4()}")
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()) and field in event:
            del event[field]
        else:
            event[field] = draw(HOSTILE_VALUES)
    return event


def _text(event: dict) -> str:
    return json.dumps(event, ensure_ascii=False)


@st.composite
def hostile_bodies(draw):
    """Raw bodies: a hostile event as text, one with a raw number literal spliced in, deep nesting,
    raw NUL bytes, invalid UTF-8, duplicate keys."""
    kind = draw(st.sampled_from(["event", "number", "deep", "nul", "utf8", "dup", "bytes"]))
    base = task_event("file:///photos/tasks/BR-1/p.jpg", event_id=f"ev-hostile-{uuid.uuid4()}")
    if kind == "event":
        return _text(draw(hostile_events())).encode("utf-8", "surrogatepass")
    if kind == "number":
        field = draw(st.sampled_from(["schemaVersion", "corrected", "unknownField", "helperId"]))
        return _text({**base, field: 0}).replace(f'"{field}": 0', f'"{field}": {draw(st.sampled_from(RAW_NUMBERS))}').encode()
    if kind == "deep":
        n = draw(st.sampled_from([50, 1000, 30000]))
        return ("[" * n + "]" * n).encode() if draw(st.booleans()) else _text({**base, "x": 0}).replace(
            '"x": 0', '"x": ' + '{"a":' * n + "1" + "}" * n).encode()
    if kind == "nul":
        return _text(base).replace("HELPER-1", "HELP\x00ER").encode()
    if kind == "utf8":
        return _text(base).encode()[:-5] + b"\xff\xfe" + b'"}'
    if kind == "dup":
        return (_text(base)[:-1] + ', "taskId": "again"}').encode()
    return draw(st.binary(max_size=200))


# -- 1. the validator ------------------------------------------------------------------------------
@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(hostile_events(), hostile_bodies()))
def test_validation_raises_only_validation_failures(raw):
    try:
        parse_event(raw, now=NOW)
    except EventValidationError as exc:
        assert exc.field and exc.reason and len(exc.field) <= 128
        assert exc.field != "(validation)", f"unforeseen failure: {exc.reason}"
        exc.reason.encode("utf-8")  # storable as it is
        exc.field.encode("utf-8")


@hsettings(max_examples=200, deadline=None)
@given(reason=st.one_of(st.none(), st.text(max_size=100).filter(lambda s: "\x00" not in s
                                                                and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))),
       corrected=st.booleans(), pretty=st.booleans())
def test_valid_events_always_parse(reason, corrected, pretty):
    event = task_event("file:///photos/tasks/BR-1/p.jpg", corrected=corrected, correctionReason=reason)
    text = json.dumps(event, ensure_ascii=False, indent=2 if pretty else None)
    assert parse_event(text.encode(), now=NOW).event_id == event["eventId"]


def test_shapes_that_blocked_the_stream_are_named(tmp_path):
    base = task_event("file:///photos/tasks/BR-1/p.jpg")
    face = {"eventType": "FaceAuthenticatedEvent", "eventId": "f1", "userId": "M-1", "photoUrl": "file:///g.jpg",
            "similarity": 0.5, "modelVersion": "1", "timestamp": "2026-11-22T01:00:00Z"}
    cases = {
        _text(face).replace("0.5", "1e400"): "similarity",
        _text(face).replace("0.5", "1" + "0" * 400): "similarity",
        _text({**base, "schemaVersion": 1}).replace('"schemaVersion": 1', '"schemaVersion": ' + "9" * 5000): "schemaVersion",
        _text({**base, "z": 1}).replace('"z": 1', '"z": ' + "9" * 5000): "z",
        "[" * 100_000 + "]" * 100_000: "(body)",
        "[" * 30_000 + "]" * 30_000: "(body)",
        "[" * 9 + '"' + '\\"' * 30_000: "(body)",  # quadratic for a regex over strings; one pass here
        _text({**base, "schemaVersion": [1]}): "schemaVersion",
        _text({**base, "schemaVersion": {"v": 1}}): "schemaVersion",
        _text({**base, "eventType": "E" * 65}): "eventType",
        _text({**base, "eventId": "a\x00b"}): "eventId",
        json.dumps({**base, "taskId": "\ud800"}): "taskId",  # the JSON escape \ud800
        _text({**base, "timestamp": "0001-01-01T00:00:00+01:00"}): "timestamp",
        _text({**base, "timestamp": "1600-01-01T00:00:00Z"}): "timestamp",
        _text({**base, "photoUrl": "file:///photos/t\t1.jpg"}): "photoUrl",
        _text({**base, "photoUrl": "file:///photos/t1.jpg\n"}): "photoUrl",
    }
    for raw, field in cases.items():
        began = time.monotonic()
        with pytest.raises(EventValidationError) as info:
            parse_event(raw.encode("utf-8", "surrogatepass"), now=NOW)
        assert info.value.field == field, (raw[:80], info.value)
        assert time.monotonic() - began < 1.0, raw[:80]
    long_field = parse_error({**base, "f" * 200: 1})
    assert long_field.field.startswith("fff") and len(long_field.field) <= 128


def parse_error(raw):
    with pytest.raises(EventValidationError) as info:
        parse_event(raw, now=NOW)
    return info.value


# -- 2. dead letters once per message -------------------------------------------------------------
def test_dead_letters_are_stored_once_and_anything_is_storable(profile):
    from gymops.db import engine_for
    from gymops.ingest.deadletters import DeadLetterStore, message_key

    store = DeadLetterStore(engine_for(profile))
    tag = uuid.uuid4().hex
    payloads = [f'{{"eventId": "dl-{tag}", "eventType": "E{"x" * 100}"}}', f"raw \x00 NUL {tag}".encode(),
                f"surrogate \ud800 {tag}", {"eventId": f"dl2-{tag}", "bad": "\ud800\x00"}, b"\xff\xfe" + tag.encode()]
    first = store.add([(p, "f" * 300, "reason \x00") for p in payloads], "test")
    again = store.add([(p, "(body)", "again") for p in payloads], "test")
    assert first == again and len(set(first)) == len(payloads)
    assert store.count_keys([message_key(p) for p in payloads]) == len(payloads)
    letters = store.get(first)
    assert all(len(letter.field) <= 128 and "\x00" not in letter.payload for letter in letters)


# -- 3. HTTP ---------------------------------------------------------------------------------------
def _post(base, token, body):
    return requests.post(base + "/v1/events", data=body, timeout=60,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def _photo(settings):
    return f"file://{settings.photo_root}/tasks/BR-1/p.jpg"


def _stored(settings, ids):
    return history.FileHistory(settings.feast_offline_dir / history.TASK_CONFIRMATIONS).present(ids)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=st.one_of(hostile_bodies(), hostile_events().map(lambda e: _text(e).encode("utf-8", "surrogatepass"))))
def test_http_hostile_bodies_get_422_and_the_canary_behind_them_lands(endpoint, body):
    settings, base = endpoint
    resp = _post(base, settings.ingest_token, body)
    assert resp.status_code in (200, 422), (resp.status_code, resp.text[:300])
    if resp.status_code == 422:
        for letter in resp.json()["deadLettered"]:
            assert letter["field"] and letter["reason"]
        again = _post(base, settings.ingest_token, body)  # a client's retry: still one dead letter each
        assert again.status_code == 422
        assert [d["deadLetterId"] for d in again.json()["deadLettered"]] == \
            [d["deadLetterId"] for d in resp.json()["deadLettered"]]
    else:
        assert resp.json()["stored"] + resp.json()["duplicates"] >= 1
    canary = task_event(_photo(settings))
    started = time.monotonic()
    ok = _post(base, settings.ingest_token, json.dumps(canary))
    assert ok.status_code == 200 and ok.json()["stored"] == 1
    assert time.monotonic() - started < 10
    assert _stored(settings, [canary["eventId"]]) == {canary["eventId"]}


def test_http_one_clients_bad_event_never_fails_anothers(endpoint):
    settings, base = endpoint
    goods = [task_event(_photo(settings)) for _ in range(8)]
    bads = [b'{"eventType": "TaskConfirmedEvent", "similarity": 1e400}', b"[" * 5000 + b"]" * 5000,
            _text({**task_event(_photo(settings)), "timestamp": "0001-01-01T00:00:00+01:00"}).encode(),
            json.dumps({**task_event(_photo(settings)), "helperId": "\ud800"}).encode()]
    results: dict = {}

    def send(key, body):
        results[key] = _post(base, settings.ingest_token, body)

    threads = [threading.Thread(target=send, args=(f"g{i}", json.dumps(g))) for i, g in enumerate(goods)]
    threads += [threading.Thread(target=send, args=(f"b{i}", b)) for i, b in enumerate(bads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(results[f"g{i}"].status_code == 200 for i in range(len(goods)))
    assert all(results[f"b{i}"].status_code == 422 for i in range(len(bads)))
    ids = {g["eventId"] for g in goods}
    assert _stored(settings, ids) == ids


def test_http_pretty_printed_event_is_one_event_and_bad_queries_are_422(endpoint):
    settings, base = endpoint
    event = task_event(_photo(settings))
    resp = _post(base, settings.ingest_token, json.dumps(event, indent=2, ensure_ascii=False).encode())
    assert resp.status_code == 200 and resp.json() == {"stored": 1, "duplicates": 0, "deadLettered": []}
    big = _post(base, settings.ingest_token, b" " * (settings.ingest_max_body_bytes + 1))  # 10 MiB
    assert big.status_code == 413
    auth = {"Authorization": f"Bearer {settings.ingest_token}"}
    for query in ("limit=99999999999999999999", "limit=-5", "offset=-1", "limit=abc", "offset=99999999999999999999"):
        assert requests.get(f"{base}/v1/deadletters?{query}", headers=auth, timeout=30).status_code == 422, query
    listed = requests.get(f"{base}/v1/deadletters?limit=2&offset=0", headers=auth, timeout=30)
    assert listed.status_code == 200 and len(listed.json()) <= 2
    tabbed = _post(base, settings.ingest_token, json.dumps({**event, "eventId": f"tab-{uuid.uuid4()}",
                                                            "photoUrl": _photo(settings).replace("p.jpg", "p\t.jpg")}))
    assert tabbed.status_code == 422 and tabbed.json()["deadLettered"][0]["field"] == "photoUrl"
    assert requests.post(base + "/v1/events", data=b"{}", timeout=30).status_code == 401


# -- 4. RabbitMQ (services profile, the real broker) ------------------------------------------------
def _channel(settings):
    import pika

    from gymops.ingest.broker import parameters

    conn = pika.BlockingConnection(parameters(settings))
    return conn, conn.channel()


@pytest.fixture
def amqp(services):
    """Its own queue (and parking queue, dead-letter exchange) per test, removed afterwards."""
    settings = dataclasses.replace(services, rabbitmq_queue=f"{services.rabbitmq_queue}.h{uuid.uuid4().hex[:6]}",
                                   batch_size=100, rabbitmq_delivery_limit=3)
    yield settings
    from gymops.ingest.broker import delete_topology

    delete_topology(settings)


def _dead_letters(settings):
    from gymops.db import engine_for
    from gymops.ingest.deadletters import DeadLetterStore

    return DeadLetterStore(engine_for(settings))


def _s3(settings):
    return f"s3://{settings.s3_bucket}/tasks/BR-1/p.jpg"


@pytest.mark.services
def test_classic_queue_is_migrated_without_losing_messages(amqp):
    import pika

    from gymops.ingest.broker import Publisher

    settings, q = amqp, amqp.rabbitmq_queue
    conn, channel = _channel(settings)
    channel.exchange_declare(q, exchange_type="fanout", durable=True)  # what the old version declared
    channel.queue_declare(q, durable=True)
    channel.queue_bind(q, q)
    bodies = [json.dumps(task_event(_s3(settings))) for _ in range(300)]
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish(q, "", body, pika.BasicProperties(delivery_mode=2))
    conn.close()

    publisher = Publisher(settings)  # declares: finds the classic queue, migrates it
    publisher.publish(bodies[0])
    publisher.close()
    conn, channel = _channel(settings)
    ok = channel.queue_declare(q, passive=True)
    assert ok.method.message_count == 301
    from gymops.ingest.broker import queue_arguments

    channel.queue_declare(q, durable=True, arguments=queue_arguments(settings))  # now equivalent: no 406
    got = []
    while True:
        method, _props, body = channel.basic_get(q, auto_ack=True)
        if method is None:
            break
        got.append(body.decode())
    conn.close()
    assert sorted(got) == sorted(bodies + [bodies[0]])


class _PoisonReplicator:
    """The real replicator, except that a batch holding a POISON body raises (as a storage bug would)."""

    def __init__(self, real):
        self.real = real
        self.dead_letters = real.dead_letters

    def recover(self):
        return self.real.recover()

    def stores_ok(self):
        return self.real.stores_ok()

    def ingest(self, raws, source):
        if any(b"POISON" in bytes(r) for r in raws):
            raise RuntimeError("storage rejected the batch")
        return self.real.ingest(raws, source)


@pytest.mark.services
def test_a_failing_batch_is_split_good_events_stored_poison_dead_lettered_with_its_count(amqp):
    from gymops.ingest.broker import Consumer, Publisher
    from gymops.ingest.deadletters import message_key
    from gymops.ingest.replicator import Replicator

    settings = amqp
    good = [json.dumps(task_event(_s3(settings))) for _ in range(150)]
    poison = [json.dumps(task_event(_s3(settings), correctionReason=f"POISON {i}")) for i in range(2)]
    publisher = Publisher(settings)
    publisher.publish_many(good[:70] + poison[:1] + good[70:] + poison[1:])
    publisher.close()
    consumer = Consumer(settings, _PoisonReplicator(Replicator(settings)))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    ids = {json.loads(b)["eventId"] for b in good}
    store = _dead_letters(settings)
    try:
        wait_for(lambda: history.history_for(settings, history.TASK_CONFIRMATIONS).present(ids) == ids, 60,
                 "the good events stored")
        wait_for(lambda: store.count_keys([message_key(p) for p in poison]) == 2, 60, "the poison dead-lettered")
    finally:
        consumer.stop()
        thread.join(30)
    keys = [message_key(p) for p in poison]
    letters = [d for d in store.list(limit=1000, source="amqp", field="(delivery)") if d.message_key in keys]
    assert len(letters) == 2 and all(d.deliveries == settings.rabbitmq_delivery_limit for d in letters)
    assert all("storage rejected the batch" in d.reason for d in letters)


@pytest.mark.services
def test_sigkilled_consumer_dead_letters_each_malformed_message_once(amqp, tmp_path):
    from gymops.ingest.broker import Publisher
    from gymops.ingest.deadletters import message_key

    settings = dataclasses.replace(amqp, batch_size=200)
    good = [json.dumps(task_event(_s3(settings))) for _ in range(3000)]
    bad = [f"{{not json {i} {uuid.uuid4()}" for i in range(200)]
    mixed = [b for pair in zip(good, bad * 15) for b in pair][: len(good) + len(bad)]
    mixed = good[:0]
    for i, body in enumerate(good):
        mixed.append(body)
        if i % 15 == 0 and i // 15 < len(bad):
            mixed.append(bad[i // 15])
    assert len(mixed) == 3200
    publisher = Publisher(settings)
    publisher.publish_many(mixed)
    publisher.close()
    ids = {json.loads(b)["eventId"] for b in good}
    h = history.history_for(settings, history.TASK_CONFIRMATIONS)
    log = tmp_path / "consume.log"
    for _ in range(2):
        proc = start(settings, "ingest", "consume", log=log)
        wait_for(lambda: len(h.present(ids)) >= 600 * (_ + 1), 120, "progress", interval=0.05)
        stop(proc, signal.SIGKILL)
    proc = start(settings, "ingest", "consume", log=log)
    try:
        wait_for(lambda: h.present(ids) == ids, 180, "every valid event stored")
        keys = [message_key(b.encode()) for b in bad]
        wait_for(lambda: _dead_letters(settings).count_keys(keys) == 200, 60, "every malformed one dead-lettered")
        time.sleep(1.5)
    finally:
        stop(proc)
    assert _dead_letters(settings).count_keys(keys) == 200
    rows = h.read().to_pandas()
    assert rows[rows.event_id.isin(ids)].event_id.is_unique and rows.event_id.isin(ids).sum() == len(ids)


@pytest.fixture
def running_consumer(amqp, tmp_path):
    log = tmp_path / "consume.log"
    proc = start(amqp, "ingest", "consume", log=log)
    try:  # the bounded wait for each canary starts once the consumer is up, not while it imports Feast
        wait_for(lambda: f"consuming {amqp.rabbitmq_queue}" in log.read_text(), 180, "the consumer started")
        yield amqp
    finally:
        assert stop(proc) == 0, (tmp_path / "consume.log").read_text()[-3000:]
    text = (tmp_path / "consume.log").read_text()
    assert "Traceback" not in text and "connection lost" not in text, text[-3000:]


@pytest.mark.services
@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=st.one_of(hostile_bodies(), hostile_events().map(lambda e: json.dumps(e).encode())))
def test_rabbitmq_hostile_message_is_dead_lettered_once_and_the_canary_behind_it_lands(running_consumer, body):
    from gymops.ingest.broker import Publisher
    from gymops.ingest.deadletters import message_key

    settings = running_consumer
    body = body.replace(b"file:///photos/", f"s3://{settings.s3_bucket}/".encode())
    canary = task_event(_s3(settings))
    publisher = Publisher(settings)
    publisher.publish(body)
    publisher.publish(body)  # sent twice (a producer's retry): still dead-lettered once
    publisher.publish(json.dumps(canary))
    publisher.close()
    h = history.history_for(settings, history.TASK_CONFIRMATIONS)
    wait_for(lambda: h.present([canary["eventId"]]) == {canary["eventId"]}, 20, "the canary stored")
    store = _dead_letters(settings)
    key = message_key(body)
    try:
        event = parse_event(body, check_photo_url=lambda _u: None)
    except EventValidationError:
        event = None
    if event is None:
        wait_for(lambda: store.count_keys([key]) == 1, 10, "the hostile message dead-lettered")
        [letter] = [d for d in store.list(limit=1000, include_replayed=True) if d.message_key == key]
        assert letter.field and letter.reason


@pytest.mark.services
def test_messages_the_broker_parks_at_the_delivery_limit_are_stored_or_dead_lettered(amqp):
    """Returned more often than x-delivery-limit (as by consumers that crashed on them), RabbitMQ
    dead-letters a message to <queue>.parked; the consumer drains that queue too."""
    from gymops.ingest.broker import Consumer, Publisher, parked_queue
    from gymops.ingest.deadletters import message_key
    from gymops.ingest.replicator import Replicator

    settings = amqp
    good = json.dumps(task_event(_s3(settings)))
    bad = json.dumps(task_event(_s3(settings), finalResult="maybe"))
    publisher = Publisher(settings)
    publisher.publish_many([good, bad])
    publisher.close()
    conn, channel = _channel(settings)
    returns = 0
    while returns < 100:  # until the broker has taken both away
        method, _props, _body = channel.basic_get(settings.rabbitmq_queue)
        if method is None:
            break
        channel.basic_nack(method.delivery_tag, requeue=True)
        returns += 1
    wait_for(lambda: channel.queue_declare(parked_queue(settings.rabbitmq_queue), passive=True).method.message_count == 2,
             30, "both messages parked by the broker")
    conn.close()
    consumer = Consumer(settings, Replicator(settings))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    store = _dead_letters(settings)
    try:
        h = history.history_for(settings, history.TASK_CONFIRMATIONS)
        wait_for(lambda: h.present([json.loads(good)["eventId"]]), 60, "the parked good event stored")
        wait_for(lambda: store.count_keys([message_key(bad.encode())]) == 1, 60, "the parked bad one dead-lettered")
    finally:
        consumer.stop()
        thread.join(30)
    [letter] = [d for d in store.list(limit=1000) if d.message_key == message_key(bad.encode())]
    assert letter.source == "amqp-parked" and letter.field == "finalResult"


@pytest.mark.services
def test_a_store_outage_holds_the_batch_and_dead_letters_nothing(amqp, tmp_path):
    """Redis unreachable: the consumer keeps the batch (no acknowledgement, no dead letter, no
    delivery counted towards the limit) and stores it once the stores answer again."""
    from gymops.history.feature_store import open_store
    from gymops.ingest.broker import Consumer, Publisher
    from gymops.ingest.deadletters import message_key
    from gymops.ingest.replicator import Replicator
    from gymops.processes import free_port as any_port

    settings = amqp
    bodies = [json.dumps(task_event(_s3(settings))) for _ in range(20)]
    publisher = Publisher(settings)
    publisher.publish_many(bodies)
    publisher.close()
    broken = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{any_port()}/0")
    consumer = Consumer(broken, Replicator(broken, store=open_store(broken)))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    time.sleep(8)
    consumer.stop()
    thread.join(60)
    assert consumer.batches == 0 and consumer.poisoned == 0
    assert _dead_letters(settings).count_keys([message_key(b.encode()) for b in bodies]) == 0
    ids = {json.loads(b)["eventId"] for b in bodies}
    consumer = Consumer(settings, Replicator(settings))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        h = history.history_for(settings, history.TASK_CONFIRMATIONS)
        wait_for(lambda: h.present(ids) == ids, 60, "the held batch stored once the stores answer")
    finally:
        consumer.stop()
        thread.join(30)


@pytest.mark.services
def test_a_new_delivery_limit_migrates_the_quorum_queue_with_its_messages(amqp):
    from gymops.ingest.broker import Publisher

    bodies = [json.dumps(task_event(_s3(amqp))) for _ in range(50)]
    publisher = Publisher(amqp)
    publisher.publish_many(bodies)
    publisher.close()
    changed = dataclasses.replace(amqp, rabbitmq_delivery_limit=amqp.rabbitmq_delivery_limit + 2)
    publisher = Publisher(changed)  # the arguments differ: RabbitMQ refuses the redeclare, the queue is moved
    publisher.publish(bodies[0])
    publisher.close()
    conn, channel = _channel(changed)
    assert channel.queue_declare(changed.rabbitmq_queue, passive=True).method.message_count == 51
    conn.close()
