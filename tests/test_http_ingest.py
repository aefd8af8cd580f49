import json

import requests

from fixtures import task_event
from gymops.history import tables as history


def post(base, body, token, content_type="application/json"):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(base + "/v1/events", data=body, headers=headers, timeout=30)


def photo(settings):
    return f"file://{settings.photo_root}/tasks/BR-1/p.jpg"


def test_events_need_the_token(endpoint):
    settings, base = endpoint
    event = json.dumps(task_event(photo(settings)))
    assert post(base, event, None).status_code == 401
    assert post(base, event, "wrong").status_code == 401
    assert history.FileHistory(settings.feast_offline_dir / "task_confirmations").present([json.loads(event)["eventId"]]) == set()


def test_single_array_and_ndjson_bodies_are_stored(endpoint):
    settings, base = endpoint
    events = [task_event(photo(settings)) for _ in range(5)]
    one = post(base, json.dumps(events[0]), settings.ingest_token)
    assert one.status_code == 200 and one.json()["stored"] == 1
    arr = post(base, json.dumps(events[1:3]), settings.ingest_token)
    assert arr.json() == {"stored": 2, "duplicates": 0, "deadLettered": []}
    nd = post(base, "\n".join(json.dumps(e) for e in events[3:]) + "\n", settings.ingest_token, "application/x-ndjson")
    assert nd.json()["stored"] == 2
    again = post(base, json.dumps(events), settings.ingest_token)
    assert again.json() == {"stored": 0, "duplicates": 5, "deadLettered": []}
    ids = {e["eventId"] for e in events}
    assert history.FileHistory(settings.feast_offline_dir / "task_confirmations").present(ids) == ids


def test_invalid_events_are_dead_lettered_with_their_reason(endpoint):
    settings, base = endpoint
    good = task_event(photo(settings))
    bad = task_event(photo(settings), aiResult="maybe")
    resp = post(base, json.dumps([good, bad]), settings.ingest_token)
    assert resp.status_code == 422
    body = resp.json()
    assert body["stored"] == 1
    [letter] = body["deadLettered"]
    assert letter["index"] == 1 and letter["field"] == "aiResult" and "unknown label" in letter["reason"]
    garbage = post(base, b"{this is not json", settings.ingest_token)
    assert garbage.status_code == 422 and garbage.json()["deadLettered"][0]["field"] == "(body)"
    listed = requests.get(base + "/v1/deadletters", headers={"Authorization": f"Bearer {settings.ingest_token}"}).json()
    assert {d["id"] for d in listed} >= {letter["deadLetterId"]}
