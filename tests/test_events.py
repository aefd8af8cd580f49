import json
from datetime import datetime, timedelta, timezone

import pytest

from gymops.ingest.events import (
    EventValidationError,
    FaceAuthenticatedEvent,
    TaskConfirmedEvent,
    UserCreatedEvent,
    normalise_label,
    parse_event,
)
from gymops.storage.photos import LocalPhotoStore

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def task(**over):
    event = {
        "eventType": "TaskConfirmedEvent", "schemaVersion": 1, "eventId": "ev-1", "taskId": "TASK-1",
        "helperId": "HELPER-1", "branchId": "BR-1", "photoUrl": "file:///photos/tasks/t1.jpg",
        "aiResult": "불량", "aiModelVersion": "1.0.0", "finalResult": "양호", "corrected": True,
        "correctionReason": "AI가 놓친 얼룩 없음", "timestamp": "2026-11-22T09:30:00+09:00",
    }
    event.update(over)
    return event


@pytest.fixture
def store(tmp_path):
    return LocalPhotoStore(tmp_path / "photos")


def errors(raw, store=None):
    with pytest.raises(EventValidationError) as info:
        parse_event(raw, check_photo_url=store.check_url if store else None, now=NOW)
    return info.value


@pytest.mark.parametrize("raw,label", [("양호", "good"), ("불량", "defective"), ("good", "good"),
                                       ("Defective", "defective"), (" 양호 ", "good")])
def test_labels_are_stored_canonically(raw, label):
    assert normalise_label(raw) == label


def test_task_confirmed_parses_and_round_trips():
    event = parse_event(json.dumps(task(), ensure_ascii=False).encode(), now=NOW)
    assert isinstance(event, TaskConfirmedEvent)
    assert (event.ai_result, event.final_result, event.corrected) == ("defective", "good", True)
    assert event.timestamp == datetime(2026, 11, 22, 0, 30, tzinfo=timezone.utc)
    assert event.model_type == "laundry"
    again = parse_event(event.to_json(), now=NOW)
    assert again == event


def test_other_event_types_parse():
    user = parse_event({"eventType": "UserCreatedEvent", "eventId": "u1", "userId": "M-1", "role": "MEMBER",
                        "facePhotoUrl": "file:///f.jpg", "branchId": "BR-1", "timestamp": "2026-11-22T01:00:00Z"}, now=NOW)
    assert isinstance(user, UserCreatedEvent) and user.role == "member" and user.model_type == "face"
    entry = parse_event({"eventType": "FaceAuthenticatedEvent", "eventId": "f1", "userId": "M-1",
                         "photoUrl": "file:///g.jpg", "similarity": 0.93, "modelVersion": "1.0.0",
                         "timestamp": "2026-11-22T01:00:00Z"}, now=NOW)
    assert isinstance(entry, FaceAuthenticatedEvent) and entry.similarity == pytest.approx(0.93)


@pytest.mark.parametrize("raw,field,reason", [
    (b"{not json", "(body)", "bad JSON"),
    (b"\xff\xfe", "(body)", "not UTF-8"),
    ("[1, 2]", "(body)", "must be a JSON object"),
    (task(eventType="TaskDeleted"), "eventType", "unknown event type"),
    (task(schemaVersion=9), "schemaVersion", "unsupported version"),
    ({k: v for k, v in task().items() if k != "taskId"}, "taskId", "missing"),
    (task(eventId=""), "eventId", "must not be empty"),
    (task(helperId=42), "helperId", "must be a string"),
    (task(finalResult="so-so"), "finalResult", "unknown label"),
    (task(aiResult=None), "aiResult", "missing"),
    (task(corrected="yes"), "corrected", "must be true or false"),
    (task(corrected=False), "corrected", "is false but"),
    (task(timestamp="yesterday"), "timestamp", "not an ISO-8601"),
    (task(timestamp="2026-11-22T09:30:00"), "timestamp", "time zone"),
    (task(timestamp=(NOW + timedelta(days=1)).isoformat()), "timestamp", "in the future"),
    (task(extra="x"), "extra", "unknown field"),
    (task(taskId="x" * 600), "taskId", "longer than"),
    (task(schemaVersion=[1]), "schemaVersion", "unsupported version"),
    (task(schemaVersion="1"), "schemaVersion", "unsupported version"),
    (task(eventId="a\x00b"), "eventId", "NUL"),
    (task(helperId="H\ud800"), "helperId", "lone surrogate"),
    (task(branchId="BR\n1"), "branchId", "control character"),
    (task(branchId="BR\x7f1"), "branchId", "control character"),  # ASCII but not printable
    (task(helperId="H\x851"), "helperId", "control character"),  # a C1 control
    (task(correctionReason="a\tb\x00"), "correctionReason", "NUL"),  # free text: tab allowed, NUL not
    (task(timestamp="1600-01-01T00:00:00Z"), "timestamp", "before 2000-01-01"),
    (task(timestamp="0001-01-01T00:00:00+01:00"), "timestamp", "out of range"),
    (task(photoUrl="file:///photos/t\t1.jpg"), "photoUrl", "whitespace"),
    (task(**{"k" * 300: 1}), "k" * 125 + "...", "field name longer than 128"),
    (json.dumps(task()).replace('"corrected": true', '"corrected": true, "n": ' + "9" * 5000), "n", "unknown field"),
    ("[" * 50 + "]" * 50, "(body)", "nested deeper"),
])
def test_bad_input_names_the_field_and_the_reason(raw, field, reason):
    exc = errors(raw)
    assert exc.field == field
    assert reason in exc.reason


@pytest.mark.parametrize("url,reason", [
    ("s3://other-bucket/tasks/t1.jpg", ""),
    ("https://example.com/t1.jpg", ""),
    ("file:///etc/passwd", ""),
])
def test_photo_url_outside_the_stores_is_rejected(store, url, reason):
    exc = errors(task(photoUrl=url), store)
    assert exc.field == "photoUrl"
    assert exc.reason


def test_photo_url_path_traversal_is_rejected(store):
    root = f"file://{store.root}"
    for url in (f"{root}/../secrets.jpg", f"{root}/tasks/%2e%2e/%2e%2e/x.jpg", f"{root}/tasks\\..\\x.jpg"):
        exc = errors(task(photoUrl=url), store)
        assert exc.field == "photoUrl", url


def test_photo_url_inside_the_store_is_accepted(store):
    url = store.put("tasks/BR-1/TASK-1.jpg", b"\xff\xd8jpeg")
    assert parse_event(task(photoUrl=url), check_photo_url=store.check_url, now=NOW).photo_url == url
