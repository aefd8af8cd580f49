import json
import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from fixtures import task_event
from gymops.history import tables as history
from gymops.storage.photos import photo_store_for
from gymops.ingest.replicator import Replicator, replay_dead_letters



@pytest.fixture
def replicator(profile):
    return Replicator(profile)


@pytest.fixture
def photo_url(profile):
    store = photo_store_for(profile)
    prefix = f"file://{profile.photo_root}" if not profile.services else f"s3://{profile.s3_bucket}"
    return f"{prefix}/tasks/BR-1/photo.jpg"


def offline_rows(settings, table=history.TASK_CONFIRMATIONS):
    return history.history_for(settings, table).read().to_pandas()


def test_events_land_in_both_feast_stores(replicator, photo_url, profile):
    events = [task_event(photo_url, corrected=i % 2 == 0) for i in range(6)]
    report = replicator.ingest([json.dumps(e, ensure_ascii=False) for e in events], "test")
    assert report.summary() == {"stored": 6, "duplicates": 0, "deadLettered": 0}

    ids = {e["eventId"] for e in events}
    rows = offline_rows(profile)
    mine = rows[rows.event_id.isin(ids)]
    assert len(mine) == 6 and set(mine.final_result) == {"good", "defective"}

    entity = pd.DataFrame({"task_id": [events[0]["taskId"], events[1]["taskId"]],
                           "event_timestamp": [pd.Timestamp.now(tz="UTC")] * 2})
    offline = replicator.store.get_historical_features(
        entity_df=entity, features=["task_confirmations:final_result", "task_confirmations:corrected"]).to_df()
    assert sorted(offline.final_result) == ["defective", "good"]

    online = replicator.store.get_online_features(
        features=["task_confirmations:final_result", "task_confirmations:photo_url"],
        entity_rows=[{"task_id": events[0]["taskId"]}]).to_dict()
    assert online["final_result"] == ["defective"] and online["photo_url"] == [photo_url]


def test_face_events_land_as_face_samples(replicator, photo_url, profile):
    user = f"M-{uuid.uuid4().hex[:8]}"
    face_url = photo_url.replace("tasks/BR-1/photo.jpg", f"faces/{user}/enrol.jpg")
    events = [
        {"eventType": "UserCreatedEvent", "eventId": f"u-{uuid.uuid4()}", "userId": user, "role": "member",
         "facePhotoUrl": face_url, "branchId": "BR-1", "timestamp": "2026-11-21T08:00:00Z"},
        {"eventType": "FaceAuthenticatedEvent", "eventId": f"f-{uuid.uuid4()}", "userId": user,
         "photoUrl": face_url, "similarity": 0.91, "modelVersion": "none", "timestamp": "2026-11-21T09:00:00Z"},
    ]
    assert replicator.ingest(events, "test").stored == 2
    rows = offline_rows(profile, history.FACE_SAMPLES)
    mine = rows[rows.user_id == user].sort_values("event_timestamp")
    assert list(mine.sample_kind) == ["enrolment", "entry"]
    online = replicator.store.get_online_features(features=["face_samples:sample_kind"],
                                                  entity_rows=[{"user_id": user}]).to_dict()
    assert online["sample_kind"] == ["entry"]


def test_same_event_id_is_stored_once(replicator, photo_url, profile):
    event = json.dumps(task_event(photo_url))
    first = replicator.ingest([event, event], "test")
    assert first.summary() == {"stored": 1, "duplicates": 1, "deadLettered": 0}
    second = replicator.ingest([event], "test")
    assert second.summary() == {"stored": 0, "duplicates": 1, "deadLettered": 0}
    rows = offline_rows(profile)
    assert (rows.event_id == json.loads(event)["eventId"]).sum() == 1


def test_invalid_events_go_to_dead_letters_and_do_not_block(replicator, photo_url, profile):
    good = task_event(photo_url)
    bad = [
        b"{broken json",
        json.dumps(task_event(photo_url, finalResult="so-so")),
        json.dumps({k: v for k, v in task_event(photo_url).items() if k != "helperId"}),
        json.dumps(task_event(photo_url.replace("photo.jpg", "../../../etc/passwd"))),
        json.dumps(task_event("https://elsewhere.example/x.jpg")),
    ]
    report = replicator.ingest(bad + [json.dumps(good)], "test")
    assert report.stored == 1 and report.dead_lettered == 5
    reasons = {(o.field, o.reason.split(":")[0]) for o in report.outcomes if o.status == "dead_letter"}
    assert {f for f, _ in reasons} == {"(body)", "finalResult", "helperId", "photoUrl"}
    letters = replicator.dead_letters.get([o.dead_letter_id for o in report.outcomes if o.dead_letter_id])
    assert len(letters) == 5 and letters[0].payload == "{broken json" and letters[0].source == "test"
    assert all(letter.replayed_at is None for letter in letters)


def test_dead_letter_replay_after_a_fix(replicator, photo_url, profile):
    broken = task_event(photo_url, finalResult="perfect")
    [outcome] = replicator.ingest([json.dumps(broken)], "test").outcomes
    assert outcome.status == "dead_letter" and outcome.field == "finalResult"

    [(letter, still)] = replay_dead_letters(replicator, [outcome.dead_letter_id])
    assert still.status == "dead_letter"  # replaying unchanged fails the same way, stays open
    assert replicator.dead_letters.get([letter.id])[0].replayed_at is None

    fixed = json.dumps({**broken, "finalResult": "불량"})
    [(_, done)] = replay_dead_letters(replicator, [outcome.dead_letter_id], payload=fixed)
    assert done.status == "stored"
    assert replicator.dead_letters.get([letter.id])[0].replay_outcome == "stored"
    assert broken["eventId"] in set(offline_rows(profile).event_id)


def test_corrections_since_counts_only_recent_corrections(replicator, photo_url, profile):
    before = datetime.now(timezone.utc)
    replicator.ingest([task_event(photo_url, corrected=i < 7) for i in range(10)], "test")
    assert history.corrections_since(profile, "laundry", before) == 7  # tests run one at a time
    assert history.corrections_since(profile, "laundry", datetime.now(timezone.utc) + timedelta(seconds=1)) == 0
    assert history.corrections_since(profile, "face", before) == 0


def test_file_history_recovers_a_batch_interrupted_by_a_crash(tmp_path):
    """A crash between the parquet write and the ledger commit leaves a tmp file that must be
    discarded; one after the commit but before the rename must be finished. Either way: once."""
    from gymops.ingest.replicator import history_frame, history_row
    from gymops.ingest.events import parse_event
    import pyarrow as pa
    import pyarrow.parquet as pq

    h = history.FileHistory(tmp_path / history.TASK_CONFIRMATIONS)
    h.create()
    now = datetime.now(timezone.utc)
    rows = [history_row(parse_event(task_event("file:///p.jpg")), now)[1] for _ in range(3)]
    table = pa.Table.from_pandas(history_frame(history.TASK_CONFIRMATIONS, rows), preserve_index=False)

    # crash before the commit: an uncommitted tmp file is left behind
    pq.write_table(table, h.folder / "batch-crashed.parquet.tmp")
    assert h.recover() == 1 and not list(h.folder.glob("*.tmp"))
    assert h.read().num_rows == 0

    # crash after the commit, before the rename: recovery renames it
    assert h.append(table) == 3
    [final] = [p for p in h.folder.glob("batch-2*.parquet")]
    final.rename(final.with_name(final.name + ".tmp"))
    assert h.read().num_rows == 0
    assert h.recover() == 1
    assert h.read().num_rows == 3
    assert h.append(table) == 0  # redelivered: already there
    assert h.read().num_rows == 3


def test_query_plan_of_corrections_since_uses_an_index(profile):
    """The sensors' query must stay an index lookup as the history grows, not a scan."""
    since = datetime.now(timezone.utc)
    h = history.history_for(profile, history.TASK_CONFIRMATIONS)
    if profile.services:
        with h._connect() as conn:
            conn.execute("SET enable_seqscan = off")  # tiny test tables would otherwise be scanned
            plan = " ".join(r[0] for r in conn.execute(
                "EXPLAIN SELECT count(*) FROM task_confirmations WHERE model_type = %s AND created >= %s AND corrected",
                ("laundry", since)))
        assert "task_confirmations_corrected_created" in plan, plan
    else:
        from contextlib import closing

        with closing(h._connect()) as conn:
            plan = " ".join(str(r) for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM task_confirmations WHERE model_type = ? AND created >= ? AND corrected = 1",
                ("laundry", 0)))
        assert "USING COVERING INDEX task_confirmations_by_type_created" in plan, plan


def test_a_store_outage_acknowledges_nothing_and_a_retry_lands_once(services, tmp_path):
    """Redis (the online store) unreachable: the push fails, ingest raises, the offline history
    has none of the batch; once the store is back the same batch lands exactly once."""
    from fixtures import free_port
    from gymops.settings import Settings
    from gymops.history.feature_store import open_store

    broken = Settings(profile="services", home=tmp_path, pg_database=services.pg_database,
                           feast_project=services.feast_project, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    photo = f"s3://{services.s3_bucket}/tasks/BR-1/p.jpg"
    batch = [json.dumps(task_event(photo)) for _ in range(20)]
    ids = {json.loads(b)["eventId"] for b in batch}
    with pytest.raises(Exception):
        Replicator(broken, store=open_store(broken)).ingest(batch, "test")
    h = history.history_for(services, history.TASK_CONFIRMATIONS)
    assert h.present(ids) == set()

    report = Replicator(services, store=open_store(services)).ingest(batch, "test")
    assert report.stored == 20 and h.present(ids) == ids
