"""The watcher's board (gymops.serving.live) and the tier endpoint `gymops serving watch` serves.

Why: Prometheus and the Dagster UI must show the figures the watcher acted on. These tests feed the
board the watcher's own Look records (no Triton), scrape the tier endpoint over HTTP as Prometheus
would, and run `gymops serving watch --once` on an empty embedded profile (no canary: a look that
writes a board and acts on nothing).
"""
from __future__ import annotations

import urllib.request

import pytest

from fixtures import free_port
from gymops.serving.live import LiveBoard, board_path, board_picture, read_board
from gymops.serving.prometheus import TierCollector, serve_tier_metrics
from gymops.serving.signals import figures_of, judge
from gymops.serving.watcher import Look
from gymops.settings import DeliverySettings, Settings

DS = DeliverySettings()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _look(candidate, stable, outcomes, action=None, mode="canary", shadow=None, at=0.0) -> Look:
    look = Look(at, candidate, stable)
    look.mode = mode
    if candidate:
        look.signals = [s.as_dict() for s in judge(figures_of({}, candidate), figures_of({}, stable), outcomes, DS)]
        look.shadow = shadow or {"photos": 0, "agreement": None, "flips": {}}
    if action:
        look.action, look.reason = action, "accuracy failed on n=2"
    return look


def _scrape(port: int) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_board_records_live_accuracy_per_version_and_the_endpoint_serves_it(tmp_path):
    calls = []

    def verdicts(version, since):
        calls.append((version, since))
        return [False] * 45 + [True] * 5  # the active version: 45/50 right

    clock = Clock()
    collector = TierCollector(Settings(home=tmp_path / "home"))
    board = LiveBoard(DS, verdicts, collector, tmp_path / "run" / "delivery.json", refresh_s=30, clock=clock)
    shadow = {"photos": 10, "agreement": 0.9, "flips": {"clean->clean": 8, "defective->defective": 1,
                                                          "clean->defective": 1}}
    board(_look("2", "1", [], shadow=shadow))  # no verdicts on the candidate yet: no data
    board(_look("2", "1", [False] * 3))
    assert calls == [("1", None)]  # the active's verdicts re-read at most every refresh_s
    clock.t += 31
    board(_look("2", "1", [False] * 3 + [True, True], action="abort"))
    assert len(calls) == 2

    saved = read_board(tmp_path / "run" / "delivery.json")
    one, two = saved["versions"]["1"], saved["versions"]["2"]
    assert (one["role"], one["verdicts"], one["corrected"], one["accuracy"]) == ("active", 50, 5, 0.9)
    assert one["interval"][0] < 0.9 < one["interval"][1] and one["state"] == "pass"
    assert (two["role"], two["verdicts"], two["corrected"], two["state"], two["sprt"]) == \
        ("rolled_back", 5, 2, "fail", "reject")
    assert two["shadow"]["agreement"] is None  # the abort look's own shadow figures
    assert saved["actions"][-1]["action"] == "abort" and saved["actions"][-1]["candidate"] == "2"
    assert saved["thresholds"] == {"alert_accuracy": 0.85, "rollback_accuracy": 0.80}

    port = free_port()
    server, _ = serve_tier_metrics(collector, port)
    try:
        scraped = _scrape(port)
    finally:
        server.shutdown()
        server.server_close()
    assert scraped[("gymops_live_accuracy", (("model_version", "1"),))] == pytest.approx(0.9)
    assert scraped[("gymops_live_verdicts", (("model_version", "2"),))] == 5
    assert scraped[("gymops_live_accuracy", (("model_version", "2"),))] == pytest.approx(0.6)
    assert scraped[("gymops_shadow_photos", (("model_version", "2"),))] == 0


def test_no_verdicts_is_no_accuracy_sample_never_zero(tmp_path):
    collector = TierCollector(Settings(home=tmp_path / "home"))
    board = LiveBoard(DS, lambda version, since: [], collector, None)
    board(_look("2", "1", []))
    assert board.versions["2"]["accuracy"] is None and board.versions["2"]["state"] == "no data"
    assert collector.live == {"1": (None, 0), "2": (None, 0)}
    names = {(f.name, tuple(s.labels.items())) for f in collector.collect() for s in f.samples}
    assert not any(name == "gymops_live_accuracy" for name, _ in names)
    assert ("gymops_live_verdicts", (("model_version", "2"),)) in names


def test_promotion_retires_the_old_active_and_a_failing_reader_keeps_the_last_figures(tmp_path):
    state = {"fail": False}

    def verdicts(version, since):
        if state["fail"]:
            raise OSError("history store down")
        return [False] * 20

    clock = Clock()
    board = LiveBoard(DS, verdicts, None, None, refresh_s=0, clock=clock)
    board(_look("2", "1", [False] * 16, action="promote"))
    assert board.versions["2"]["role"] == "active" and board.versions["1"]["role"] == "retired"
    state["fail"] = True
    board(_look(None, "2", []))
    assert board.versions["2"]["accuracy"] == 1.0 and "history store down" in board.versions["2"]["error"]
    assert board.versions["1"]["role"] == "retired"


def test_board_picture_is_a_png_with_and_without_shadow(tmp_path):
    board = LiveBoard(DS, lambda v, s: [False] * 40 + [True] * 10, None, None)
    board(_look("2", "1", [False] * 5, shadow={"photos": 4, "agreement": 0.75,
                                              "flips": {"clean->clean": 3, "clean->defective": 1}}))
    assert board_picture(board.as_dict())[:8] == b"\x89PNG\r\n\x1a\n"
    assert board_picture({"versions": {}})[:8] == b"\x89PNG\r\n\x1a\n"


def test_gymops_serving_watch_once_writes_the_board_on_an_empty_profile(tmp_path, capsys):
    from gymops.cli import build_parser

    settings = Settings(profile="embedded", home=tmp_path / "home")
    args = build_parser().parse_args(["serving", "watch", "--once", "--metrics-port", "0"])
    assert args.handler(settings, args) == 0
    saved = read_board(board_path(settings))
    assert saved["look"]["candidate"] is None and saved["versions"] == {} and saved["actions"] == []
    assert "no canary" in capsys.readouterr().out


def test_gymops_serving_watch_serves_the_tier_metrics_while_it_runs(tmp_path, capsys):
    import threading
    import time

    from gymops.cli import build_parser

    from gymops.db import engine_for
    from gymops.lifecycle.registry import ModelRegistry

    settings = Settings(profile="embedded", home=tmp_path / "home")
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"not served: only registered")
    ModelRegistry(engine_for(settings)).register_candidate("laundry", "tiny", {}, "DS-1", "run-1", str(artifact))
    port = free_port()
    args = build_parser().parse_args(["serving", "watch", "--seconds", "4", "--interval", "0.5",
                                      "--metrics-port", str(port)])
    thread = threading.Thread(target=args.handler, args=(settings, args), daemon=True)
    thread.start()
    scraped, deadline = None, time.monotonic() + 20
    while scraped is None and time.monotonic() < deadline:
        try:
            scraped = _scrape(port)
        except OSError:
            time.sleep(0.2)
    thread.join(30)
    assert scraped is not None and not thread.is_alive()
    assert scraped[("gymops_models", (("status", "candidate"),))] == 1  # read from the registry at scrape time
    assert f"tier metrics on http://127.0.0.1:{port}/metrics" in capsys.readouterr().out
    with pytest.raises(OSError):  # shut down with the watcher
        _scrape(port)


def test_gymops_serving_prometheus_scrapes_triton_and_the_tier_and_stops_its_child(tmp_path):
    import json
    import threading
    import time

    from fixtures import skip_or_fail
    from gymops.cli import build_parser
    from gymops.serving.prometheus import prometheus_binary

    if prometheus_binary() is None:
        skip_or_fail("prometheus is not installed (apt-get install -y prometheus; .ci/run does it)")
    settings = Settings(profile="services", home=tmp_path / "home").replace(
        delivery={"prometheus_port": free_port(), "metrics_port": free_port()},
        serving={"metrics_port": free_port()})
    args = build_parser().parse_args(["serving", "prometheus", "--seconds", "6"])
    rc = {}
    thread = threading.Thread(target=lambda: rc.setdefault("rc", args.handler(settings, args)), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.delivery.prometheus_port}"
    # Prometheus brings up one scrape pool at a time: wait for both, not the first.
    jobs, deadline = {}, time.monotonic() + 30
    while len(jobs) < 2 and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=2) as response:
                body = json.loads(response.read().decode())
            jobs = {t["labels"]["job"]: t["scrapeUrl"] for t in body["data"]["activeTargets"]}
        except OSError:
            pass
        time.sleep(0.2)
    thread.join(40)
    assert rc.get("rc") == 0 and not thread.is_alive()
    assert jobs == {"triton": f"http://127.0.0.1:{settings.serving.metrics_port}/metrics",
                    "gymops": f"http://127.0.0.1:{settings.delivery.metrics_port}/metrics"}
    with pytest.raises(OSError):  # the child was stopped with the command
        urllib.request.urlopen(f"{url}/-/ready", timeout=2)
