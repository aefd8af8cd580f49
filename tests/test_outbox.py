"""The transactional outbox on both profiles, its event payloads, and the real RabbitMQ exchange."""
import json
import time
import uuid
from datetime import datetime, timezone

import pytest

from gymops.db import engine_for
from gymops.lifecycle.outbox import (MODEL_DEPLOYED, MODEL_EVENTS_EXCHANGE, MODEL_ROLLED_BACK, MODEL_VERIFICATION_FAILED,
                           Outbox, model_deployed, model_rolled_back, model_verification_failed, outbox,
                           rabbitmq_publisher)
from gymops.lifecycle.registry import IllegalTransition, ModelRegistry, model_versions

REASONS = [{"gate": "accuracy", "check": "val_accuracy", "value": 0.85, "threshold": 0.9,
            "message": "validation accuracy 0.8500 is below 0.9000"}]


@pytest.fixture
def engine(profile):
    engine = engine_for(profile)
    with engine.begin() as conn:
        conn.execute(outbox.delete())
        conn.execute(model_versions.delete())
    return engine


@pytest.fixture
def box(engine):
    return Outbox(engine)


def candidate(registry, n=1):
    return [registry.register_candidate("laundry", "efficientnet_lite0", {"val": {"accuracy": 0.93}}, "DS-1",
                                        "run-7", "file:///m.onnx") for _ in range(n)]


def test_payloads_are_versioned_camel_case_json():
    at = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
    deployed = model_deployed("laundry", "1.2.0", 3, "1.1.0", at, 4.25)
    assert deployed["eventType"] == MODEL_DEPLOYED and deployed["schemaVersion"] == 1
    assert uuid.UUID(deployed["eventId"]) and deployed["timestamp"].endswith("Z")
    assert {k: deployed[k] for k in ("modelType", "version", "tritonVersion", "previousVersion", "deployedAt",
                                     "deploySeconds")} == {
        "modelType": "laundry", "version": "1.2.0", "tritonVersion": 3, "previousVersion": "1.1.0",
        "deployedAt": "2026-03-01T09:30:00Z", "deploySeconds": 4.25}
    failed = model_verification_failed("laundry", "1.3.0", REASONS, "run-9")
    assert failed["reasons"] == REASONS and failed["runId"] == "run-9"
    back = model_rolled_back("face", "2.0.0", "1.4.0", "p99 latency 900 ms", 12.5)
    assert (back["fromVersion"], back["toVersion"], back["reason"], back["seconds"]) == (
        "2.0.0", "1.4.0", "p99 latency 900 ms", 12.5)
    json.dumps([deployed, failed, back])
    with pytest.raises(ValueError, match="reasons"):
        model_verification_failed("laundry", "1.3.0", [])
    with pytest.raises(ValueError, match=r"reasons\[0\]: missing check"):
        model_verification_failed("laundry", "1.3.0", [{"gate": "x", "message": "y"}])
    with pytest.raises(ValueError, match="tritonVersion"):
        model_deployed("laundry", "1.2.0", 0, None, at)


def test_event_commits_and_rolls_back_with_the_registry_change(engine, box):
    registry = ModelRegistry(engine, outbox=box)
    v1, v2 = candidate(registry, 2)
    with pytest.raises(RuntimeError, match="triton load failed"):
        with registry.transaction("laundry") as tx:
            registry.activate("laundry", v1.version, conn=tx)
            box.record(MODEL_ROLLED_BACK, model_rolled_back("laundry", "1.0.0", "0.9.0", "x"), conn=tx)
            raise RuntimeError("triton load failed")
    assert registry.active("laundry") is None and box.pending() == []  # neither the change nor its events

    registry.activate("laundry", v1.version, deploy_seconds=3.5)
    registry.activate("laundry", v2.version)
    with pytest.raises(IllegalTransition):
        registry.reject("laundry", v2.version, REASONS)  # active cannot be rejected: no event either
    rows = box.pending()
    assert [r.event_type for r in rows] == [MODEL_DEPLOYED, MODEL_DEPLOYED]
    assert rows[0].payload["deploySeconds"] == 3.5 and rows[0].payload["previousVersion"] is None
    assert (rows[1].payload["version"], rows[1].payload["previousVersion"], rows[1].payload["tritonVersion"]) == (
        "1.1.0", "1.0.0", 2)

    v3, = candidate(registry)
    rejected = registry.reject("laundry", v3.version, REASONS, run_id="run-8")
    assert rejected.status == "rejected" and "val_accuracy" in rejected.status_reason
    assert registry.active("laundry").version == "1.1.0"  # a failed gate keeps the active model
    registry.rollback("laundry", reason="error rate", seconds=2.0)
    events = {r.event_type: r.payload for r in box.pending()}
    assert events[MODEL_VERIFICATION_FAILED]["reasons"] == REASONS
    assert events[MODEL_VERIFICATION_FAILED]["runId"] == "run-8"
    assert (events[MODEL_ROLLED_BACK]["fromVersion"], events[MODEL_ROLLED_BACK]["toVersion"]) == ("1.1.0", "1.0.0")


def test_publish_pending_marks_only_after_success_and_retries(box):
    ids = [box.record(MODEL_ROLLED_BACK, model_rolled_back("laundry", f"1.{i}.0", "1.0.0", "test")) for i in range(3)]
    sent, fail = [], {"left": 1}

    def flaky(payload):
        if fail["left"]:
            fail["left"] -= 1
            raise ConnectionError("broker down")
        sent.append(payload["eventId"])

    assert box.publish_pending(flaky) == 0  # the first failure ends the call, order kept
    row = box.get(ids[0])
    assert row.published_at is None and row.attempts == 1 and "broker down" in row.last_error
    assert len(box.pending()) == 3
    assert box.publish_pending(flaky) == 3
    assert sent == ids and box.pending() == []
    row = box.get(ids[0])
    assert row.published_at is not None and row.attempts == 2 and row.last_error is None
    assert box.publish_pending(flaky) == 0  # nothing twice

    more = [box.record_event(model_rolled_back("face", "2.0.0", "1.0.0", "t")) for _ in range(2)]

    def poison_first(payload):
        if payload["eventId"] == more[0]:
            raise ValueError("rejected by the publisher")
        sent.append(payload["eventId"])

    assert box.publish_pending(poison_first, stop_on_error=False) == 1  # skips past it when asked
    assert [r.event_id for r in box.pending()] == [more[0]]
    with pytest.raises(ValueError, match="unknown event type"):
        box.record("TaskConfirmedEvent", {})
    with pytest.raises(ValueError, match="does not match"):
        box.record(MODEL_DEPLOYED, model_rolled_back("face", "2.0.0", "1.0.0", "t"))


@pytest.mark.services
def test_published_event_reaches_a_bound_queue(services):
    import pika

    from gymops.ingest.broker import parameters

    engine = engine_for(services)
    box = Outbox(engine)
    with engine.begin() as conn:
        conn.execute(outbox.delete())
    conn = pika.BlockingConnection(parameters(services))
    channel = conn.channel()
    channel.exchange_declare(MODEL_EVENTS_EXCHANGE, exchange_type="fanout", durable=True)
    queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, MODEL_EVENTS_EXCHANGE)
    publish = rabbitmq_publisher(services)
    try:
        event_id = box.record_event(model_verification_failed("laundry", "1.4.0", REASONS, "run-3"))
        assert box.publish_pending(publish) == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            if props.message_id == event_id:
                break
        else:
            pytest.fail("the event did not arrive on the bound queue")
        payload = json.loads(body)
        assert payload["eventType"] == MODEL_VERIFICATION_FAILED and payload["reasons"] == REASONS
        assert props.type == MODEL_VERIFICATION_FAILED and props.delivery_mode == 2
        assert box.get(event_id).published_at is not None
    finally:
        publish.close()
        conn.close()


def test_publisher_failure_leaves_the_event_pending(profile, box):
    import dataclasses

    from fixtures import free_port

    nowhere = dataclasses.replace(profile, rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    event_id = box.record_event(model_deployed("laundry", "1.0.0", 1, None, datetime.now(timezone.utc)))
    publish = rabbitmq_publisher(nowhere)
    assert box.publish_pending(publish) == 0
    row = box.get(event_id)
    assert row.published_at is None and row.attempts == 1 and "ConnectionError" in row.last_error
