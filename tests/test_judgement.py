"""The accuracy gate's inputs: champion and challenger scored on the same current holdout version,
paired, with the photos set aside since the champion's training as the newest slice."""
from __future__ import annotations

import pytest

from bench.stages import records_from_traffic
from gymops.lifecycle.gates import accuracy_gate
from gymops.ml.holdout import Holdout
from gymops.ml.records import fetch_photos
from gymops.storage.photos import LocalPhotoStore


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    store = LocalPhotoStore(tmp_path_factory.mktemp("photos"))
    fetched, _ = fetch_photos(records_from_traffic(store, 60, seed=4), store.get)
    ordered = sorted(fetched, key=lambda rd: str(rd[0].event_timestamp))
    folder = tmp_path_factory.mktemp("holdout")
    v1 = Holdout.freeze_or_load(folder, "laundry", ordered[:36], fraction=0.2, min_per_class=2, seed=0)
    return v1, v1.grow(ordered, fraction=0.3)


@pytest.fixture
def registry(tmp_path):
    import sqlalchemy as sa

    from gymops.lifecycle.registry import ModelRegistry

    return ModelRegistry(sa.create_engine(f"sqlite:///{tmp_path / 'registry.db'}"))


def test_without_an_active_model_only_the_candidate_is_scored(versions, tiny_classifier_onnx):
    from gymops.ml.evaluate import judge_on_holdout

    _, v2 = versions
    judged = judge_on_holdout(tiny_classifier_onnx, v2, None)
    assert judged.champion is None and judged.metrics["holdout_version"] == 2 and judged.metrics["n"] == len(v2)


def test_champion_and_challenger_on_the_same_photos_with_the_newest_slice(versions, tiny_classifier_onnx, registry):
    from gymops.ml.evaluate import judge_on_holdout

    v1, v2 = versions
    champion = registry.register_candidate("laundry", "tiny", {"holdout_version": 1, "holdout": {"accuracy": 0.5}},
                                           "ds", "run", str(tiny_classifier_onnx))
    registry.activate("laundry", champion.version)
    judged = judge_on_holdout(tiny_classifier_onnx, v2, registry)  # the same weights: every photo concordant
    added = sum(1 for v in v2.added_in if v == 2)
    assert added > 0 and judged.champion.champion_version == champion.version and judged.champion.holdout_version == 2
    assert judged.champion.overall.n == len(v2) and judged.champion.newest.n == added
    assert (judged.champion.overall.challenger_only, judged.champion.overall.champion_only) == (0, 0)
    assert judged.champion_metrics["confusion"] == judged.metrics["confusion"]
    assert judged.newest_accuracy["challenger"] == judged.newest_accuracy["champion"]
    groups = judged.per_group("9.9.9")
    assert set(groups) == {f"champion {champion.version}", "challenger 9.9.9"}
    assert set(groups["challenger 9.9.9"]) == {"holdout good", "holdout defective", "newest photos"}
    # the gate reads it: equal models are non-inferior and tie on the newest photos
    gate = accuracy_gate({"val": judged.metrics, "holdout": judged.metrics}, judged.champion)
    assert not any(f.check.startswith("better_than_champion") for f in gate.failures)


def test_a_champion_trained_against_the_current_version_has_no_newest_slice(versions, tiny_classifier_onnx, registry):
    from gymops.ml.evaluate import judge_on_holdout

    _, v2 = versions
    champion = registry.register_candidate("laundry", "tiny", {"holdout_version": 2}, "ds", "run", str(tiny_classifier_onnx))
    registry.activate("laundry", champion.version)
    assert judge_on_holdout(tiny_classifier_onnx, v2, registry).champion.newest is None
