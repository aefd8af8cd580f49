"""Enrolments as they arrive (gymops/face/enrolments.py), on both profiles: UserCreatedEvents ingested
into the history (Feast's offline store) reach every live gallery through the follower, once, across
restarts and late batches; a re-enrolment replaces the vector, a deletion removes it and older events
cannot undo it. The embedders are stand-ins (a vector from the photo's bytes and the version), so
these tests are about which vectors the galleries hold, not about faces."""
from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from gymops.db import engine_for
from gymops.face.enrolments import EnrolmentFollower, follower_state, handled
from gymops.face.gallery import GalleryStore, enrolments, gallery
from gymops.face.matching import FaceMatcher, InvalidPhoto
from gymops.face.swap import FaceGalleries, galleries
from gymops.history import tables as history
from gymops.ingest.events import parse_event
from gymops.ingest.replicator import Replicator, history_row


class StandIn:
    """The embedder of one version: a unit vector from (version, photo bytes); counts what it embeds."""

    def __init__(self, version: str, seen: list):
        self.version, self.seen = version, seen

    def embed(self, photos):
        vectors = []
        for p in photos:
            if p.startswith(b"broken"):
                raise InvalidPhoto("undecodable face photo: stand-in")
            self.seen.append((self.version, p))
            seed = int.from_bytes(hashlib.sha256(self.version.encode() + b"|" + p).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=128).astype(np.float32)
            vectors.append(v / np.linalg.norm(v))
        return np.stack(vectors), [self.version] * len(photos)


def photo_of(url: str) -> bytes:
    if "/missing/" in url:
        raise FileNotFoundError(url)
    return (b"broken:" if "/broken/" in url else b"") + url.encode()


@pytest.fixture
def world(profile):
    tag = uuid.uuid4().hex[:8]
    store = GalleryStore(engine_for(profile))
    seen: list = []
    embedders: dict = {}
    pairs = FaceGalleries(store, FaceMatcher(None), lambda v: embedders.setdefault(v, StandIn(v, seen)))
    pairs.initialise("1.0.0", threshold=0.99)
    replicator = Replicator(profile)
    prefix = (f"file://{profile.photo_root}" if not profile.services else f"s3://{profile.s3_bucket}") + f"/faces/{tag}"

    started = datetime.now(timezone.utc)

    def follower(overlap_s=0.0, **kw):
        """This test's follower. Its mark starts at the test's start: the session's history holds
        other tests' enrolments, which a new follower would otherwise enrol from the beginning."""
        f = EnrolmentFollower(profile, pairs, photo_of, name=f"test-{tag}", overlap_s=overlap_s, **kw)
        if f.watermark() is None:
            with store.engine.begin() as conn:
                conn.execute(follower_state.insert().values(name=f.name, watermark=started, updated_at=started))
        return f

    def event(user, minute=0, kind="", created=None, at=None):
        """A UserCreatedEvent for ``user`` timestamped ``minute`` past T0 (or ``at``), ingested now (or
        pushed with the given ingestion time, as a batch stamped earlier that committed late)."""
        raw = {"eventType": "UserCreatedEvent", "eventId": f"u-{uuid.uuid4()}", "userId": f"{tag}-{user}",
               "role": "member", "facePhotoUrl": f"{prefix}/{kind}{user}-{minute}.jpg", "branchId": "BR-1",
               "timestamp": (at or T0 + timedelta(minutes=minute)).isoformat()}
        if created is None:
            assert replicator.ingest([json.dumps(raw)], "test").summary()["stored"] == 1
        else:
            table, row = history_row(parse_event(json.dumps(raw), check_photo_url=replicator.check_photo_url), created)
            replicator._push(table, [row])
        return raw

    def embedded(user, minute=0):  # how often each version embedded this user's photo of that minute
        photo = f"{prefix}/{user}-{minute}.jpg".encode()
        return sorted(v for v, p in seen if p == photo)

    def vectors(version):
        ids, m = store.vectors(version)
        return {u.removeprefix(f"{tag}-"): v for u, v in zip(ids, m) if u.startswith(tag)}

    w = type("World", (), dict(pairs=pairs, store=store, follower=follower, event=event, embedded=embedded,
                               vectors=vectors, tag=tag, seen=seen, started=started))
    yield w
    with store.engine.begin() as conn:
        for table in (gallery, enrolments, galleries):
            conn.execute(table.delete())
        conn.execute(handled.delete().where(handled.c.follower == f"test-{tag}"))
        conn.execute(follower_state.delete().where(follower_state.c.name == f"test-{tag}"))


T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def test_enrolments_reach_every_live_gallery_once(world):
    world.pairs.begin("1.1.0", threshold=0.98)  # a candidate being re-indexed: enrolled into as well
    for user in ("a", "b", "c"):
        world.event(user)
    first = world.follower().run_once()
    assert first.watermark is not None and not first.rejected
    assert set(world.vectors("1.0.0")) == set(world.vectors("1.1.0")) == {"a", "b", "c"}
    assert world.embedded("a") == ["1.0.0", "1.1.0"]
    again = world.follower().run_once()  # a restarted follower: the mark and the ledger hold
    assert again.new == 0 and again.enrolled == 0
    world.event("d")
    assert world.follower().run_once().enrolled == 1
    assert world.embedded("a") == ["1.0.0", "1.1.0"] and world.embedded("d") == ["1.0.0", "1.1.0"]


def test_a_crash_between_enrolment_and_ledger_embeds_nothing_twice(world, monkeypatch):
    world.event("a")
    follower = world.follower()

    def killed(*_):
        raise KeyboardInterrupt("killed after the enrolment, before the ledger")

    monkeypatch.setattr(follower, "_record", killed)
    with pytest.raises(KeyboardInterrupt):
        follower.run_once()
    assert set(world.vectors("1.0.0")) == {"a"} and world.embedded("a") == ["1.0.0"]
    report = world.follower().run_once()  # restarted: reads the event again, the store skips it unembedded
    assert report.new >= 1 and report.enrolled == 0 and report.unchanged >= 1
    assert world.embedded("a") == ["1.0.0"]


def test_reenrolment_replaces_and_an_older_event_changes_nothing(world):
    world.event("a", minute=0)
    world.follower().run_once()
    old = world.vectors("1.0.0")["a"]
    world.event("a", minute=20)  # a newer photo ...
    world.event("a", minute=30)  # ... and a newer one still, in the same pass: only the newest is embedded
    assert (world.follower().run_once().enrolled, world.embedded("a", 20)) == (1, [])
    new = world.vectors("1.0.0")["a"]
    assert not np.allclose(old, new)
    world.event("a", minute=10)  # arrives late, older than what is stored
    report = world.follower().run_once()
    assert (report.enrolled, report.unchanged) == (0, 1)
    assert np.allclose(world.vectors("1.0.0")["a"], new)
    assert world.store.enrolment(f"{world.tag}-a").photo_url.endswith("a-30.jpg")
    assert world.embedded("a", 10) == []  # the older photo was never even embedded


def test_deletion_stays_against_older_events_and_a_newer_enrolment_returns(world):
    world.event("a", minute=0)
    follower = world.follower()
    follower.run_once()
    assert world.pairs.delete(f"{world.tag}-a")  # `gymops face delete`: no deletion event exists
    assert "a" not in world.vectors("1.0.0")
    replay = follower.run_once(since=world.started)  # `enrol-sync --since`: reads the event again
    assert replay.enrolled == 0 and replay.unchanged == 1 and "a" not in world.vectors("1.0.0")
    world.event("a", minute=1, at=datetime.now(timezone.utc))  # enrols again after the deletion (dated now)
    assert follower.run_once().enrolled == 1 and "a" in world.vectors("1.0.0")


def test_a_batch_committed_late_is_read_within_the_overlap(world):
    world.event("a")
    follower = world.follower(overlap_s=60)
    mark = follower.run_once().watermark
    world.event("late", created=mark - timedelta(seconds=30))  # stamped before the mark, visible only now
    world.event("lost", created=mark - timedelta(seconds=300))  # beyond the overlap: missed ...
    follower.run_once()
    assert {"a", "late"} <= set(world.vectors("1.0.0")) and "lost" not in world.vectors("1.0.0")
    follower.run_once(since=mark - timedelta(seconds=600))  # ... until a replay reads from before it
    assert "lost" in world.vectors("1.0.0")
    assert world.embedded("a") == world.embedded("late") == world.embedded("lost") == ["1.0.0"]


def test_a_bad_photo_is_rejected_and_blocks_nothing(world):
    world.event("x", kind="missing/")
    world.event("y", kind="broken/")
    world.event("b")
    follower = world.follower(max_events=2)  # one event left for a second pass
    report = follower.catch_up()
    assert report.enrolled == 1 and len(report.rejected) == 2 and report.pending == 0
    assert set(world.vectors("1.0.0")) == {"b"}
    status = follower.status()
    assert status["ledger"]["rejected"] == 2
    reasons = sorted(r["reason"].split(":")[1].strip() for r in status["rejected"])
    assert reasons == ["FileNotFoundError", "undecodable face photo"]


def test_nothing_is_consumed_before_the_first_gallery(world):
    with world.store.engine.begin() as conn:
        conn.execute(galleries.delete())
    world.event("a")
    report = world.follower().run_once()
    assert report.waiting and report.enrolled == 0
    world.pairs.initialise("1.0.0", 0.99)
    assert world.follower().run_once().enrolled >= 1 and "a" in world.vectors("1.0.0")


def test_the_history_reader_filters_by_ingestion_time(profile):
    h = history.history_for(profile, history.FACE_SAMPLES)
    later = datetime.now(timezone.utc) + timedelta(days=1)
    assert h.ingested_since(later).num_rows == 0
    assert h.ingested_since(datetime(2000, 1, 1, tzinfo=timezone.utc)).num_rows == h.read().num_rows


def test_a_serving_process_follows_what_other_processes_change(world):
    """gymops.face.service.GallerySync: the Access service's loaded galleries follow enrolments,
    deletions, a ready candidate and a flip made through another FaceGalleries on the same store."""
    from gymops.face.service import GallerySync
    from gymops.face.swap import gallery_loader

    served = []
    matcher = FaceMatcher(None, loader=gallery_loader(world.store))  # as `gymops face serve` builds it
    mine = FaceGalleries(world.store, matcher, world.pairs.embedder_for, served.append)
    sync = GallerySync(mine, follow=served.append)
    mine.recover()
    world.event("a")
    world.event("b")
    world.follower().run_once()  # another process enrols ...
    assert sync.once() == {"1.0.0": 2}  # ... and this one has them at its next pass
    index = mine.matcher.loaded("1.0.0")
    assert f"{world.tag}-a" in index and f"{world.tag}-b" in index
    world.pairs.delete(f"{world.tag}-b")
    world.event("a", minute=5)  # a newer photo
    world.follower().run_once()
    sync.once()
    assert f"{world.tag}-b" not in index and np.allclose(
        index.similarity(world.vectors("1.0.0")["a"], f"{world.tag}-a"), 1.0, atol=1e-5)
    world.pairs.begin("1.1.0", 0.98)
    world.pairs.complete("1.1.0", photo_of)
    assert sync.once() == {"1.0.0": 1, "1.1.0": 1}  # the ready candidate, loaded before any flip
    world.pairs.flip("1.1.0", photo_of)
    mine.matcher.drop_index("1.1.0")  # as if the flip came between two passes, before the load
    assert mine.matcher.index("1.1.0").version == "1.1.0"  # a probe of 1.1.0 loads it on the spot
    sync.once()
    assert served[-1] == "1.1.0"  # the local serve callable follows the recorded flip
    world.pairs.rollback()
    world.pairs.begin("1.2.0", 0.97)  # indexing: never loaded, and no probe loads it
    sync.once()
    assert served[-1] == "1.0.0" and mine.matcher.loaded("1.2.0") is None
    with pytest.raises(Exception, match="no gallery loaded for model version 1.2.0"):
        mine.matcher.index("1.2.0")
