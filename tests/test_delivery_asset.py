"""The Dagster side of progressive delivery: the ``live_delivery`` observable source asset and its
sensor show the watcher's board (gymops.serving.live) -- live accuracy per version, a candidate's
shadow agreement, the watcher's actions -- without any server: the board is written here from the
watcher's own Look records."""
from __future__ import annotations

import dagster as dg

from assets.delivery import live_delivery, live_delivery_sensor, observation
from gymops.serving.live import LiveBoard, board_path
from gymops.serving.signals import figures_of, judge
from gymops.serving.watcher import Look
from gymops.settings import DeliverySettings, Settings
from resources.triton import TritonResource

DS = DeliverySettings()
SHADOW = {"photos": 20, "agreement": 0.85, "flips": {"good->good": 15, "defective->defective": 2,
                                                      "good->defective": 3}}


def _board(settings: Settings, candidate_outcomes: list[bool], action: str | None = None) -> LiveBoard:
    board = LiveBoard(DS, lambda version, since: [False] * 90 + [True] * 10, None, board_path(settings))
    look = Look(1_780_000_000.0, "1.1.0", "1.0.0")
    look.mode = "canary"
    look.signals = [s.as_dict() for s in judge(figures_of({}, "1.1.0"), figures_of({}, "1.0.0"), candidate_outcomes, DS)]
    look.shadow = SHADOW
    if action:
        look.action, look.reason = action, "accuracy failed on n=2"
    board(look)
    return board


def test_observation_without_a_board_says_so():
    version, meta = observation(None)
    assert version == "none" and "gymops serving watch" in meta["watcher"].value


def test_observation_shows_live_accuracy_per_version_shadow_flips_and_actions(tmp_path):
    settings = Settings(home=tmp_path)
    board = _board(settings, [True, True], action="abort")
    version, meta = observation(board.as_dict())
    assert meta["live accuracy 1.0.0"].value == 0.9 and meta["live verdicts 1.0.0"].value == 100
    assert meta["live accuracy 1.1.0"].value == 0.0 and meta["live verdicts 1.1.0"].value == 2
    assert meta["shadow agreement 1.1.0"].value == 0.85
    assert "| good->defective | 3 |" in meta["shadow flips 1.1.0"].value
    assert "| 1.1.0 | rolled_back | 0.000 | 0/2 |" in meta["versions"].value
    assert "| abort | 1.1.0 | 1.0.0 | accuracy failed on n=2 |" in meta["actions"].value
    assert meta["picture"].value.startswith("![live accuracy")
    # a new look with the same figures is the same data version; new verdicts are a new one
    assert observation(board.as_dict())[0] == version
    assert observation(_board(settings, [False]).as_dict())[0] != version


def test_no_verdicts_is_no_accuracy_point(tmp_path):
    _, meta = observation(_board(Settings(home=tmp_path), []).as_dict())
    assert "live accuracy 1.1.0" not in meta and meta["live verdicts 1.1.0"].value == 0
    assert "| 1.1.0 | canary | no data | 0/0 |" in meta["versions"].value


def test_the_location_observes_the_board_and_the_sensor_records_only_changes(tmp_path):
    from assets.location import build_definitions

    settings = Settings(home=tmp_path, ingest_token="t")
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    assert defs.get_sensor_def("live_delivery_sensor") is not None
    _board(settings, [False] * 3)
    triton = TritonResource.from_settings(settings)

    from dagster._core.definitions.observe import observe  # the in-process observation run (not exported in 1.13)

    instance = dg.DagsterInstance.ephemeral()
    result = observe([live_delivery], instance=instance, resources={"triton": triton})
    assert result.success
    observed = instance.fetch_observations(dg.AssetKey("live_delivery"), limit=1).records[0]
    metadata = observed.asset_observation.metadata
    assert metadata["live accuracy 1.0.0"].value == 0.9 and metadata["live verdicts 1.1.0"].value == 3

    with dg.build_sensor_context(instance=instance, resources={"triton": triton}) as context:
        first = live_delivery_sensor(context)
    assert isinstance(first, dg.SensorResult) and len(first.asset_events) == 1
    assert first.asset_events[0].metadata["shadow agreement 1.1.0"].value == 0.85
    with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"triton": triton}) as context:
        again = live_delivery_sensor(context)
    assert isinstance(again, dg.SkipReason)
