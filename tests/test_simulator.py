"""The simulator: deterministic, valid events; photos whose labels are true and whose defects show."""
from __future__ import annotations

import io
import json
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from fixtures import skip_or_fail
from gymops.settings import Settings
from gymops.ingest.events import DEFECTIVE, GOOD, parse_event
from gymops.storage.photos import LocalPhotoStore
from gymops.simulator import TrafficConfig, generate, write_jsonl
from gymops.simulator import garments
from gymops.simulator.faces import face_photo, identity

START = datetime(2025, 3, 1, tzinfo=timezone.utc)
CFG = TrafficConfig(seed=11, tasks=400, members=12, entries=60, branches=3, start=START, span=timedelta(days=10))


@pytest.fixture(scope="module", autouse=True)
def _dataset():
    try:
        garments.load_garments()
    except garments.DatasetMissing as exc:
        skip_or_fail(str(exc))


def run(tmp_path, name: str, cfg: TrafficConfig = CFG, **kw) -> tuple[LocalPhotoStore, list[dict]]:
    store = LocalPhotoStore(tmp_path / name)
    return store, list(generate(store, cfg, **kw))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    return run(tmp_path_factory.mktemp("traffic"), "photos")


def by_type(events, event_type):
    return [e for e in events if e["eventType"] == event_type]


def test_counts_ids_and_order(traffic):
    _, events = traffic
    counts = Counter(e["eventType"] for e in events)
    assert counts == {"TaskConfirmedEvent": 400, "UserCreatedEvent": 12 + 6, "FaceAuthenticatedEvent": 60}
    assert len({e["eventId"] for e in events}) == len(events)
    assert len({e["taskId"] for e in by_type(events, "TaskConfirmedEvent")}) == 400
    stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in events]
    assert stamps == sorted(stamps)
    assert START <= stamps[0] and stamps[-1] < START + CFG.span
    roles = Counter(e["role"] for e in by_type(events, "UserCreatedEvent"))
    assert roles == {"member": 12, "helper": 6}
    enrolled = {}
    for e in events:  # every entry and task comes from someone enrolled before
        if e["eventType"] == "UserCreatedEvent":
            enrolled[e["userId"]] = e["role"]
        elif e["eventType"] == "FaceAuthenticatedEvent":
            assert e["userId"] in enrolled and 0.8 <= e["similarity"] <= 0.99 and e["modelVersion"] == "none"
    assert {enrolled[e["helperId"]] for e in by_type(events, "TaskConfirmedEvent")} == {"helper"}


def test_every_event_parses_with_the_store_check(traffic):
    store, events = traffic
    for wire in events:
        event = parse_event(json.dumps(wire, ensure_ascii=False), check_photo_url=store.check_url)
        assert event.to_wire() == wire
        url = wire.get("photoUrl") or wire["facePhotoUrl"]
        assert store.get(url)[:2] == b"\xff\xd8"  # a JPEG is stored there
    keys = {str(p.relative_to(store.root)) for p in store.root.rglob("*.jpg")}
    assert "tasks/branch-01/t11-000000.jpg" in keys or any(k.startswith("tasks/branch-0") for k in keys)
    assert {k.split("/")[0] for k in keys} == {"tasks", "faces"}


def test_same_seed_same_events_and_photos(tmp_path, traffic):
    store1, events1 = traffic
    store2, events2 = run(tmp_path, "again")
    root1, root2 = str(store1.root), str(store2.root)
    assert json.dumps(events1).replace(root1, "ROOT") == json.dumps(events2).replace(root2, "ROOT")
    files1 = sorted(store1.root.rglob("*.jpg"))
    assert [p.relative_to(store1.root) for p in files1] == sorted(p.relative_to(store2.root) for p in store2.root.rglob("*.jpg"))
    for p in files1:
        assert p.read_bytes() == (store2.root / p.relative_to(store1.root)).read_bytes(), p
    _, other = run(tmp_path, "other-seed", TrafficConfig(**{**CFG.__dict__, "seed": 12, "tasks": 20}))
    assert not {e["eventId"] for e in other} & {e["eventId"] for e in events1}
    assert not {e.get("taskId") for e in other} - {None} & {e.get("taskId") for e in events1}


def test_labels_corrections_and_ai_error_rate(traffic):
    _, events = traffic
    tasks = by_type(events, "TaskConfirmedEvent")
    defective = sum(e["finalResult"] == DEFECTIVE for e in tasks) / len(tasks)
    assert abs(defective - CFG.defective_fraction) < 0.07, defective
    for e in tasks:
        assert e["finalResult"] in (GOOD, DEFECTIVE) and e["aiModelVersion"] == "none"
        assert e["corrected"] == (e["aiResult"] != e["finalResult"])
        assert bool(e["correctionReason"]) == e["corrected"]
    errors = sum(e["corrected"] for e in tasks) / len(tasks)
    assert abs(errors - CFG.ai_error_rate) < 0.07, errors


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_ai_error_rate_extremes(tmp_path, rate):
    _, events = run(tmp_path, "x", TrafficConfig(**{**CFG.__dict__, "tasks": 30, "entries": 0, "ai_error_rate": rate}))
    assert {e["corrected"] for e in by_type(events, "TaskConfirmedEvent")} == {bool(rate)}


def test_pluggable_ai_verdict_changes_only_the_verdict(tmp_path, traffic):
    _, baseline = traffic
    seen = []

    def model(photo: bytes):
        seen.append(photo)
        return "불량", "1.2.0"

    cfg = TrafficConfig(**{**CFG.__dict__, "tasks": 50, "members": 0, "entries": 0})
    _, events = run(tmp_path, "model", cfg, ai_verdict=model)
    tasks = by_type(events, "TaskConfirmedEvent")
    assert len(seen) == 50 and all(p[:2] == b"\xff\xd8" for p in seen)
    for e, base in zip(tasks, by_type(baseline, "TaskConfirmedEvent")):
        assert (e["aiResult"], e["aiModelVersion"]) == (DEFECTIVE, "1.2.0")
        assert e["corrected"] == (e["finalResult"] == GOOD)
        assert (e["taskId"], e["finalResult"]) == (base["taskId"], base["finalResult"])


def test_time_window(tmp_path):
    now = datetime.now(timezone.utc)
    with pytest.raises(ValueError, match="later than now"):
        TrafficConfig(start=now - timedelta(days=1), span=timedelta(days=2)).window(now)
    with pytest.raises(ValueError, match="time zone"):
        TrafficConfig(start=datetime(2025, 1, 1))
    start, end = TrafficConfig(span=timedelta(days=3)).window(now)
    assert end <= now and end - start == timedelta(days=3)


def test_write_jsonl_and_cli(tmp_path, monkeypatch, capsys):
    out = tmp_path / "events.jsonl"
    assert write_jsonl([{"a": "양호"}, {"b": 1}], out) == 2
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [{"a": "양호"}, {"b": 1}]
    assert "양호" in out.read_text(encoding="utf-8")  # UTF-8, not \\u escapes

    from gymops.cli import main

    monkeypatch.setenv("GYMOPS_PROFILE", "embedded")
    monkeypatch.setenv("GYMOPS_HOME", str(tmp_path / "home"))
    args = ["simulate", "--tasks", "20", "--members", "3", "--entries", "5", "--seed", "4", "--start", "2025-01-01T00:00:00Z",
            "--out", str(out)]
    assert main(args) == 0
    events = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(events) == 20 + 3 + 6 + 5
    store = LocalPhotoStore(Settings.from_env().photo_root)
    for wire in events:
        parse_event(wire, check_photo_url=store.check_url)
    assert "TaskConfirmedEvent=20" in capsys.readouterr().out


def test_missing_dataset_names_the_debian_package(tmp_path):
    with pytest.raises(garments.DatasetMissing, match="dataset-fashion-mnist"):
        garments.load_garments("train", tmp_path)


def test_garment_classes():
    images, labels = garments.load_garments()
    assert images.shape == (36000, 28, 28) and set(np.unique(labels)) == set(garments.GARMENT_CLASSES)


def _render_pair(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    images, _ = garments.load_garments()
    garment = images[seed * 7919 % len(images)]
    clean = garments.render(garment, np.random.default_rng(seed), None)
    return clean, garments.render(garment, np.random.default_rng(seed), kind)


@pytest.mark.parametrize("kind", garments.ALL_DEFECT_KINDS)
def test_defects_are_visible_and_on_the_garment(kind):
    areas = []
    for seed in range(40):
        clean, damaged = _render_pair(seed, kind)
        changed = np.abs(clean.astype(int) - damaged.astype(int)).max(axis=2) > 40
        areas.append(changed.sum())
        background = np.median(np.concatenate([clean[:2].reshape(-1, 3), clean[-2:].reshape(-1, 3)]), axis=0)
        garment = np.abs(clean.astype(float) - background).sum(axis=2) > 25
        near = garment.copy()  # allow the soft edge: two pixels around the garment
        for _ in range(2):
            near[1:-1, 1:-1] |= near[:-2, 1:-1] | near[2:, 1:-1] | near[1:-1, :-2] | near[1:-1, 2:]
        assert (changed & ~near).sum() <= 0.05 * max(changed.sum(), 1), (kind, seed)
    assert min(areas) >= 8, (kind, areas)  # each one visible
    assert max(areas) > 2 * min(areas)  # and they vary in size


def _chroma_anomaly(img: np.ndarray) -> float:
    """A trivial feature: the share of garment pixels off the garment's dominant colour."""
    img = img.astype(np.float32) / 255
    bg = np.median(np.concatenate([img[:3].reshape(-1, 3), img[-3:].reshape(-1, 3)]), axis=0)
    m = np.abs(img - bg).sum(axis=2) > 0.2
    for _ in range(2):
        m[1:-1, 1:-1] &= m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    pixels = img[m]
    if len(pixels) < 50:
        return 0.0
    chroma = pixels / (pixels.sum(axis=1, keepdims=True) + 1e-3)
    return float((np.abs(chroma - np.median(chroma, axis=0)).sum(axis=1) > 0.05).mean())


def test_a_trivial_feature_separates_defective_from_good():
    rng = np.random.default_rng(5)
    scores = {GOOD: [], DEFECTIVE: []}
    for i in range(300):
        photo = garments.linen_photo(rng, defective=i % 2 == 0)
        decoded = np.asarray(Image.open(io.BytesIO(garments.encode_jpeg(photo.image))))
        scores[photo.label].append(_chroma_anomaly(decoded))
    pos, neg = np.array(scores[DEFECTIVE]), np.array(scores[GOOD])
    auc = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc > 0.6, auc  # chance is 0.5; a learned model has to do much better


def test_photo_shape_and_speed():
    rng = np.random.default_rng(0)
    garments.linen_photo(rng)  # warm the caches
    began = time.perf_counter()
    for _ in range(100):
        photo = garments.linen_photo(rng)
        garments.encode_jpeg(photo.image)
    per_photo = (time.perf_counter() - began) / 100
    assert photo.image.shape == (garments.SIZE, garments.SIZE, 3) and photo.image.dtype == np.uint8
    assert per_photo < 0.010, f"{per_photo * 1000:.1f} ms per photo"  # ~1 ms here; generous for slow CI
    with pytest.raises(ValueError, match="unknown defect"):
        garments.render(np.zeros((28, 28), np.uint8), rng, "burn")


def test_faces_keep_identity_and_vary_per_photo():
    assert identity("m1-00001") == identity("m1-00001") != identity("m1-00002")
    a1 = face_photo("m1-00001", np.random.default_rng(1))
    assert np.array_equal(a1, face_photo("m1-00001", np.random.default_rng(1)))
    a2 = face_photo("m1-00001", np.random.default_rng(2))
    b1 = face_photo("m1-00002", np.random.default_rng(1))
    assert a1.shape == (112, 112, 3) and not np.array_equal(a1, a2) and not np.array_equal(a1, b1)


def test_sending_is_paced_at_the_configured_rate():
    import time

    from gymops.simulator.send import paced

    began = time.monotonic()
    assert list(paced(range(21), rate=100)) == list(range(21))
    elapsed = time.monotonic() - began
    assert 0.19 <= elapsed < 0.5  # 20 intervals of 10 ms


# -- new defect kinds (the first model never sees them): only from a configured day on -------------

NEW_FROM = (START + timedelta(days=5)).date()
NEW_CFG = TrafficConfig(seed=11, tasks=240, members=0, entries=0, branches=3, start=START, span=timedelta(days=10),
                        defective_fraction=0.5, new_kinds_from=NEW_FROM, new_kind_share=0.6)


def _tasks_with_kinds(tmp_path, name: str, cfg: TrafficConfig) -> tuple[LocalPhotoStore, list[dict], dict]:
    kinds: dict = {}
    store, events = run(tmp_path, name, cfg, defects=kinds)
    return store, by_type(events, "TaskConfirmedEvent"), kinds


def test_new_kinds_appear_only_from_the_configured_day(tmp_path):
    store, tasks, kinds = _tasks_with_kinds(tmp_path, "new", NEW_CFG)
    old_store, old_tasks, old_kinds = _tasks_with_kinds(
        tmp_path, "old", TrafficConfig(**{**NEW_CFG.__dict__, "new_kinds_from": None}))
    assert set(kinds) == {e["taskId"] for e in tasks}
    day = datetime(NEW_FROM.year, NEW_FROM.month, NEW_FROM.day, tzinfo=timezone.utc)
    before = [e for e in tasks if datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) < day]
    after = [e for e in tasks if e not in before]
    assert 80 < len(before) < 160
    assert {kinds[e["taskId"]] for e in before} <= {None, *garments.DEFECT_KINDS}
    after_kinds = Counter(kinds[e["taskId"]] for e in after if e["finalResult"] == DEFECTIVE)
    assert set(garments.NEW_DEFECT_KINDS) <= set(after_kinds) and set(after_kinds) & set(garments.DEFECT_KINDS)
    share = sum(after_kinds[k] for k in garments.NEW_DEFECT_KINDS) / sum(after_kinds.values())
    assert 0.4 < share < 0.8, share  # new_kind_share = 0.6 of ~60 defective photos
    for e in tasks:  # labels are the truth, good photos carry no kind, and managers name the new kinds
        assert (kinds[e["taskId"]] is None) == (e["finalResult"] == GOOD)
        if e["corrected"] and kinds[e["taskId"]] in garments.NEW_DEFECT_KINDS:
            assert any(w in e["correctionReason"] for w in ("보풀", "세제", "줄무늬", "Pilling", "Fuzz", "residue", "streaks"))
    # Without the setting, and before the day with it, every event and photo is what it was.
    assert set(old_kinds.values()) <= {None, *garments.DEFECT_KINDS}
    for new, old in zip(tasks, old_tasks):
        assert (new["taskId"], new["finalResult"], new["timestamp"]) == (old["taskId"], old["finalResult"], old["timestamp"])
        same = store.get(new["photoUrl"]) == old_store.get(old["photoUrl"])
        assert same == (kinds[new["taskId"]] == old_kinds[old["taskId"]] or new["finalResult"] == GOOD), new["taskId"]
        if new in before:
            assert same and kinds[new["taskId"]] == old_kinds[old["taskId"]]


def test_new_kinds_are_deterministic_in_the_seed(tmp_path):
    cfg = TrafficConfig(**{**NEW_CFG.__dict__, "tasks": 60, "new_kinds_from": START.date(), "new_kind_share": 1.0})
    store1, tasks1, kinds1 = _tasks_with_kinds(tmp_path, "a", cfg)
    store2, tasks2, kinds2 = _tasks_with_kinds(tmp_path, "b", cfg)
    assert kinds1 == kinds2 and {k for k in kinds1.values() if k} == set(garments.NEW_DEFECT_KINDS)
    for e1, e2 in zip(tasks1, tasks2):
        assert store1.get(e1["photoUrl"]) == store2.get(e2["photoUrl"])
    _, _, other = _tasks_with_kinds(tmp_path, "c", TrafficConfig(**{**cfg.__dict__, "seed": 12}))
    assert list(other.values()) != list(kinds1.values())
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(10):
        a = garments.linen_photo(rng1, defective=True, kinds=garments.NEW_DEFECT_KINDS)
        b = garments.linen_photo(rng2, defective=True, kinds=garments.NEW_DEFECT_KINDS)
        assert a.defect == b.defect and np.array_equal(a.image, b.image)


def test_new_kind_settings_are_checked():
    with pytest.raises(ValueError, match="time zone"):
        TrafficConfig(new_kinds_from=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="new_kind_share"):
        TrafficConfig(new_kinds_from=START.date(), new_kind_share=1.5)
    assert TrafficConfig(new_kinds_from=START.date()).new_kinds_start == START
    assert TrafficConfig(new_kinds_from=START + timedelta(hours=3)).new_kinds_start == START + timedelta(hours=3)
    with pytest.raises(ValueError, match="kinds"):
        garments.linen_photo(np.random.default_rng(0), kinds=("burn",))


def _changed(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clean, damaged = _render_pair(seed, kind)
    return clean, damaged, np.abs(clean.astype(int) - damaged.astype(int)).max(axis=2) > 40


def test_hole_and_mould_look_unlike_a_good_photo_and_the_old_kinds():
    from scipy import ndimage

    fill = {kind: [] for kind in ("stain", "mould")}
    table_seen = 0
    for seed in range(30):
        for kind in fill:  # mould is specks with cloth between them, a stain one solid blob
            changed = _changed(kind, seed)[2]
            outline = ndimage.binary_fill_holes(ndimage.binary_closing(changed, iterations=3))
            fill[kind].append(changed.sum() / max(outline.sum(), 1))
        clean, damaged, changed = _changed("hole", seed)
        background = np.median(np.concatenate([clean[:2].reshape(-1, 3), clean[-2:].reshape(-1, 3)]), axis=0)
        # inside a hole the table shows: changed pixels close to the table's colour (within the light's
        # shading, which varies across the photo), where the good photo had cloth
        near_table = np.abs(damaged.astype(float) - background).sum(axis=2) < 60
        cloth_before = np.abs(clean.astype(float) - background).sum(axis=2) > 90
        table_seen += bool((changed & near_table & cloth_before).sum() >= 5)
        assert np.abs(clean.astype(float) - damaged).mean() > 0.1, seed  # a good photo differs from it
    assert np.median(fill["mould"]) < 0.8 < 0.9 < np.median(fill["stain"]), fill
    assert table_seen >= 15, table_seen  # garments as pale as the table hide some holes' insides


def test_the_new_kinds_are_faint_texture_over_a_wide_area_where_the_old_are_one_strong_mark():
    """Why a model of the old kinds misses pilling and residue: every old kind (and hole, mould) is
    one local mark that changes pixels strongly; the new kinds change the cloth faintly over a wide
    area, as fabric texture does. Measured on 20 rendered pairs: the spread (px) of the pixels a
    defect changes by > 15 and their mean change."""
    def figures(kind):
        spread, strength = [], []
        for seed in range(20):
            clean, damaged = _render_pair(seed, kind)
            diff = np.abs(clean.astype(int) - damaged.astype(int)).max(axis=2)
            ys, xs = np.nonzero(diff > 15)
            spread.append(np.hypot(ys.std(), xs.std()))
            strength.append(diff[diff > 15].mean())
        return np.median(spread), np.median(strength)

    for kind in garments.NEW_DEFECT_KINDS:
        spread, strength = figures(kind)
        assert spread > 15 and strength < 55, (kind, spread, strength)
    for kind in garments.DEFECT_KINDS + garments.OTHER_DEFECT_KINDS:
        spread, strength = figures(kind)
        assert spread < 15 or strength > 65, (kind, spread, strength)
