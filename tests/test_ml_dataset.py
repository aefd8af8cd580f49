"""Fetching photos, the frozen holdout and the split-by-task dataset of the laundry model."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from gymops.ingest.events import DEFECTIVE, GOOD
from bench.stages import records_from_traffic
from gymops.ml.dataset import DatasetManifest, build_dataset
from gymops.ml.holdout import Holdout
from gymops.ml.records import NotEnoughData, TaskRecord, fetch_photos
from gymops.ml.preprocess import normalise, preprocess
from gymops.storage.photos import LocalPhotoStore

SIZE = 64  # small images keep these tests fast; the logic is size-independent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return LocalPhotoStore(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def records(store):
    return records_from_traffic(store, 60, seed=5)


@pytest.fixture(scope="module")
def fetched(records, store):
    fetched, dropped = fetch_photos(records, store.get)
    assert not dropped
    return fetched


def test_records_come_from_the_simulator(records):
    labels = Counter(r.label for r in records)
    assert len(records) == 60 and set(labels) == {GOOD, DEFECTIVE}
    assert labels[DEFECTIVE] >= 10


def test_unreadable_and_undecodable_photos_are_dropped_with_reasons(records, store):
    broken = store.put("tasks/broken.jpg", b"\xff\xd8\xff\xe0 definitely not a JPEG")
    extra = [
        TaskRecord("missing-1", store.url_for("tasks/nowhere.jpg"), "good"),
        TaskRecord("corrupt-1", broken, "불량"),
        TaskRecord("outside-1", "file:///etc/passwd", "defective"),
    ]
    calls = []

    def get(url):
        calls.append(url)
        return store.get(url)

    progress = []
    fetched, dropped = fetch_photos(records[:10] + extra, get, workers=4,
                                    progress=lambda d, t: progress.append((d, t)))
    assert [r.task_id for r, _ in fetched] == [r.task_id for r in records[:10]]  # input order kept
    reasons = {r.task_id: why for r, why in dropped}
    assert set(reasons) == {"missing-1", "corrupt-1", "outside-1"}
    assert reasons["missing-1"].startswith("unreadable: FileNotFoundError")
    assert reasons["corrupt-1"].startswith("undecodable:")
    assert reasons["outside-1"].startswith("unreadable: ValueError")
    assert len(calls) == 13 and progress[-1] == (13, 13)
    assert extra[1].label == DEFECTIVE  # Korean labels are normalised


def test_duplicate_task_records_keep_the_latest(records, store):
    first = records[0]
    relabelled = TaskRecord(first.task_id, first.photo_url,
                            GOOD if first.label == DEFECTIVE else DEFECTIVE, True, "2999-01-01T00:00:00Z")
    fetched, dropped = fetch_photos([first, relabelled], store.get)
    assert [r for r, _ in fetched] == [relabelled]
    assert dropped[0][0] == first and dropped[0][1].startswith("superseded")


def test_holdout_is_stratified_frozen_and_only_loaded_afterwards(tmp_path, fetched):
    h = Holdout.freeze_or_load(tmp_path, "laundry", fetched, fraction=0.15, min_per_class=4, seed=1)
    counts = h.class_counts
    n_def = sum(1 for r, _ in fetched if r.label == DEFECTIVE)
    assert counts[DEFECTIVE] == max(4, round(0.15 * n_def)) and counts[GOOD] >= 4
    manifest = json.loads((tmp_path / "laundry" / "v0001" / "manifest.json").read_text())
    assert manifest["task_ids"] == h.task_ids and manifest["labels"] == h.labels and h.version == 1
    # A second call with other candidates (and other settings) returns the same frozen set.
    again = Holdout.freeze_or_load(tmp_path, "laundry", fetched[::-1][:30], fraction=0.5, min_per_class=1, seed=9)
    assert again.task_ids == h.task_ids and again.labels == h.labels
    # The photo bytes are kept and preprocess exactly as the originals.
    by_id = {r.task_id: data for r, data in fetched}
    photos = again.photos()
    assert photos == [by_id[t] for t in h.task_ids]
    x, y = again.arrays(SIZE)
    assert np.array_equal(x[0], preprocess(by_id[h.task_ids[0]], SIZE))
    assert list(y) == [1 if label == DEFECTIVE else 0 for label in h.labels]
    # Another model type has a holdout of its own.
    other = Holdout.freeze_or_load(tmp_path, "face-test", fetched[:30], min_per_class=2, seed=1)
    assert other.path != h.path


def test_holdout_grows_in_versions_from_newly_confirmed_tasks_only(tmp_path, fetched):
    """Version 1 from the first 40 tasks; version 2 adds a share of the tasks confirmed after them
    (never one of the first 40: those may have been trained on), up to the sizing target."""
    ordered = sorted(fetched, key=lambda rd: str(rd[0].event_timestamp))
    old, new = ordered[:40], ordered[40:]
    v1 = Holdout.freeze_or_load(tmp_path, "laundry", old, fraction=0.2, min_per_class=2, seed=1)
    assert v1.version == 1 and v1.considered_until and all(v == 1 for v in v1.added_in)
    v2 = v1.grow(old + new, fraction=0.2, target_per_class=1000, max_share=0.5)
    assert v2.version == 2 and Holdout.versions(tmp_path, "laundry") == [1, 2]
    added = [t for t, v in zip(v2.task_ids, v2.added_in) if v == 2]
    assert added and set(added) <= {r.task_id for r, _ in new}  # only newly confirmed tasks
    assert v2.task_ids[:len(v1)] == v1.task_ids and v2.added_after(1) == [False] * len(v1) + [True] * len(added)
    for label in (GOOD, DEFECTIVE):  # below the target: half of each class's new tasks
        n_new = sum(1 for r, _ in new if r.label == label)
        assert sum(1 for t, lab in zip(added, v2.labels[len(v1):]) if lab == label) == int(0.5 * n_new)
    assert Holdout.load(tmp_path, "laundry").version == 2 and Holdout.load(tmp_path, "laundry", 1).task_ids == v1.task_ids
    by_id = {r.task_id: d for r, d in fetched}
    assert v2.photos() == [by_id[t] for t in v2.task_ids]
    # nothing newer: the same version; the same candidates again: nothing is drawn twice
    assert v2.grow(old + new).version == 2
    # at the target only the fraction is set aside
    from gymops.ml.holdout import count_per_class
    assert count_per_class(100, 200, 0.1, 134, 0.5) == 10 and count_per_class(100, 100, 0.1, 134, 0.5) == 34
    assert count_per_class(10, 0, 0.1, 134, 0.5) == 5 and count_per_class(3, 0, 0.0, 0, 0.5) == 0


def test_holdout_choice_does_not_depend_on_candidate_order(tmp_path, fetched):
    a = Holdout.freeze_or_load(tmp_path / "a", "laundry", fetched, min_per_class=4, seed=2)
    b = Holdout.freeze_or_load(tmp_path / "b", "laundry", list(reversed(fetched)), min_per_class=4, seed=2)
    assert a.task_ids == b.task_ids


def test_holdout_refuses_when_a_class_is_too_small(tmp_path, fetched):
    few = [(r, d) for r, d in fetched if r.label == GOOD] + [(r, d) for r, d in fetched if r.label == DEFECTIVE][:5]
    with pytest.raises(NotEnoughData, match="defective"):
        Holdout.freeze_or_load(tmp_path, "laundry", few, min_per_class=10)
    assert Holdout.load(tmp_path, "laundry") is None


@pytest.fixture(scope="module")
def built(tmp_path_factory, fetched):
    root = tmp_path_factory.mktemp("ds")
    holdout = Holdout.freeze_or_load(root / "holdout", "laundry", fetched, min_per_class=4, seed=0)
    progress = []
    manifest = build_dataset(fetched, holdout, root / "data", val_fraction=0.2, copies=3, size=SIZE, seed=0,
                             progress=lambda d, t: progress.append((d, t)))
    return manifest, holdout, progress


def test_split_is_by_task_and_excludes_the_holdout(built, fetched):
    m, holdout, _ = built
    train, val, hold = set(m.train_task_ids), set(m.val_task_ids), set(holdout.task_ids)
    assert not train & val and not train & hold and not val & hold
    assert train | val | hold == {r.task_id for r, _ in fetched}
    assert set(m.task_ids("train")) == train and set(m.task_ids("val")) == val
    assert m.holdout_task_ids == sorted(hold)
    # Stratified: both classes in both splits, validation about val_fraction of each class.
    labels = {r.task_id: r.label for r, _ in fetched}
    for label in (GOOD, DEFECTIVE):
        n_val = sum(1 for t in val if labels[t] == label)
        n_all = sum(1 for t in train | val if labels[t] == label)
        assert n_val == round(0.2 * n_all)


def test_augmented_copies_come_only_from_training_tasks(built, fetched):
    m, _, progress = built
    tids = m.task_ids("train")
    assert Counter(tids.tolist()) == {t: 3 for t in m.train_task_ids}  # original + 2 augmented each
    assert len(m.task_ids("val")) == len(m.val_task_ids)  # validation is not augmented
    by_id = {r.task_id: (r, data) for r, data in fetched}
    images, labels = m.images("train"), m.labels("train")
    assert images.shape == (3 * len(m.train_task_ids), SIZE, SIZE, 3) and images.dtype == np.uint8
    for i in (0, 3, len(tids) - 3):  # the first image of each task is its original photo
        rec, data = by_id[tids[i]]
        assert np.array_equal(normalise(images[i]), preprocess(data, SIZE))
        assert labels[i] == (1 if rec.label == DEFECTIVE else 0)
        assert not np.array_equal(images[i], images[i + 1])  # and the others are augmented
    val_x, val_y = m.arrays("val")
    first = m.task_ids("val")[0]
    assert np.array_equal(val_x[0], preprocess(by_id[first][1], SIZE))
    assert progress[-1] == (len(tids) + len(val_y), len(tids) + len(val_y))


def test_manifest_counts_balance_and_files(built):
    m, holdout, _ = built
    assert m.counts["train_images"] == 3 * m.counts["train_tasks"]
    assert m.counts["val_images"] == m.counts["val_tasks"]
    assert m.counts["holdout_tasks"] == len(holdout)
    assert sum(m.class_balance["train"].values()) == m.counts["train_images"]
    assert m.class_balance["train"][DEFECTIVE] == int(m.labels("train").sum())
    assert m.class_balance["holdout"] == holdout.class_counts
    assert "original + 2 augmented" in m.augmentation
    for name in m.files.values():
        assert name.endswith(".npy")
        np.load(m.path / name, allow_pickle=False)  # no pickles anywhere
    loaded = DatasetManifest.load(m.path)
    assert loaded.to_dict() == m.to_dict()


def test_dataset_id_is_stable_and_follows_the_content(tmp_path, built, fetched):
    m, holdout, _ = built
    same = build_dataset(list(reversed(fetched)), holdout, tmp_path / "same", copies=3, size=SIZE, seed=0)
    assert same.dataset_id == m.dataset_id
    assert np.array_equal(same.images("train"), m.images("train"))  # deterministic augmentation
    # a complete dataset with the same id is reused, not rebuilt
    again = build_dataset(fetched, holdout, tmp_path / "same", copies=3, size=SIZE, seed=0)
    assert again.created_at == same.created_at
    k = next(i for i, (r, _) in enumerate(fetched) if r.task_id not in holdout)
    rk, dk = fetched[k]
    flipped = list(fetched)
    flipped[k] = (TaskRecord(rk.task_id, rk.photo_url, GOOD if rk.label == DEFECTIVE else DEFECTIVE), dk)
    ids = {
        "label": build_dataset(flipped, holdout, tmp_path / "l", copies=3, size=SIZE, seed=0).dataset_id,
        "fewer": build_dataset(fetched[:k] + fetched[k + 1:], holdout, tmp_path / "f", copies=3, size=SIZE,
                               seed=0).dataset_id,
        "copies": build_dataset(fetched, holdout, tmp_path / "c", copies=2, size=SIZE, seed=0).dataset_id,
        "seed": build_dataset(fetched, holdout, tmp_path / "s", copies=3, size=SIZE, seed=1).dataset_id,
    }
    assert m.dataset_id not in ids.values() and len(set(ids.values())) == len(ids)
    assert len(m.dataset_id) == 12


def test_build_without_holdout_and_with_too_few_tasks(tmp_path, fetched):
    m = build_dataset(fetched[:20], None, tmp_path / "nh", copies=1, size=SIZE)
    assert m.counts["holdout_tasks"] == 0 and m.counts["train_images"] == m.counts["train_tasks"]
    one_defect = [(r, d) for r, d in fetched if r.label == GOOD][:10] + \
        [(r, d) for r, d in fetched if r.label == DEFECTIVE][:1]
    with pytest.raises(NotEnoughData):
        build_dataset(one_defect, None, tmp_path / "few", size=SIZE)


def test_corrected_tasks_are_oversampled_in_training_only(tmp_path, fetched):
    """A corrected training task gives corrected_copies images (the model's own mistakes weigh more);
    validation photos stay one each; the setting is part of the dataset id."""
    import dataclasses

    marked = [(dataclasses.replace(r, corrected=i % 4 == 0), d) for i, (r, d) in enumerate(fetched)]
    plain = build_dataset(marked, None, tmp_path / "plain", copies=2, size=SIZE, seed=0)
    boosted = build_dataset(marked, None, tmp_path / "boosted", copies=2, size=SIZE, seed=0, corrected_copies=4)
    assert boosted.dataset_id != plain.dataset_id and boosted.train_task_ids == plain.train_task_ids
    corrected = {r.task_id for r, _ in marked if r.corrected}
    n_corr = sum(1 for t in boosted.train_task_ids if t in corrected)
    assert n_corr and boosted.counts["corrected_train_tasks"] == n_corr
    assert boosted.counts["train_images"] == plain.counts["train_images"] + 2 * n_corr
    per_task = Counter(boosted.task_ids("train").tolist())
    assert all(per_task[t] == (4 if t in corrected else 2) for t in boosted.train_task_ids)
    assert boosted.counts["val_images"] == len(boosted.val_task_ids)
