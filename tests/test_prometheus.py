"""The services profile's path of the live signals: a real Prometheus (Debian package `prometheus`,
run by gymops.serving.prometheus with a project-written config on a free port) scraping a real Triton
and the tier's own endpoint; the watcher reads Prometheus's HTTP API as Flagger would and rolls back
an erroring canary. Outside CI these tests skip with the reason when prometheus is not installed;
in CI (.ci/run installs it) a missing binary is a failure.
"""
from __future__ import annotations

import time

import pytest
import requests

from fixtures import Clients, FAST, free_port, skip_or_fail, status, watch_until
from gymops.lifecycle.outbox import MODEL_ROLLED_BACK
from gymops.serving.prometheus import PrometheusServer, TierCollector, prometheus_binary, serve_tier_metrics
from gymops.serving.signals import PrometheusSource, figures_of
from gymops.serving.watcher import Watcher
from gymops.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def env(canary_env):
    """conftest's canary_env: a deployment serving version 1."""
    return canary_env


@pytest.fixture
def prometheus_bin():
    if prometheus_binary() is None:
        message = "prometheus is not installed (apt-get install -y prometheus; .ci/run does it)"
        skip_or_fail(message)


def _scraped(prom: PrometheusServer, query: str, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = PrometheusSource(prom.url).query(query)
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"{query}: no values from Prometheus after {timeout} s")


def test_prometheus_sees_per_version_counters_and_the_watcher_rolls_back(prometheus_bin, env, tmp_path):
    bad = env.registry.register_candidate("laundry", "tiny", {}, "DS-nan", "run-nan", str(env.models["nan"]))
    metrics = env.server.metrics_url.removeprefix("http://").removesuffix("/metrics")
    tier_port = free_port()
    collector = TierCollector(Settings(home=tmp_path / "home"), env.engine)
    serve_tier_metrics(collector, tier_port)
    with PrometheusServer(tmp_path / "prom", free_port(), {"triton": metrics, "gymops": f"127.0.0.1:{tier_port}"}) as prom:
        source = PrometheusSource(prom.url)
        # an empty result is "no data", never 0 (Flagger's "no values found")
        assert source.sample() == {} or all(v == v for v in source.sample().values())
        env.deployer.start_canary("laundry", bad.version, canary_fraction=0.3)
        watcher = Watcher(env.deployer, FAST.replace(watch_interval_s=0.5), source)
        watcher.look()
        with Clients(env.server.grpc_url) as clients:
            waited = watch_until(watcher, lambda: status(env, bad.version) == "rolled_back", timeout=90)
        assert not clients.stable_failures(bad.version)
        assert watcher.actions[-1].reason.startswith("errors")
        raw = source.sample()
        assert figures_of(raw, env.v1.version).ok > 0
        events = _scraped(prom, f'gymops_events_total{{event_type="{MODEL_ROLLED_BACK}"}}')
        assert float(events[0]["value"][1]) == 1.0
        up = requests.get(f"{prom.url}/api/v1/query", params={"query": "up"}, timeout=5).json()["data"]["result"]
        assert {r["metric"]["job"] for r in up if r["value"][1] == "1"} == {"triton", "gymops"}
    assert waited < 90
