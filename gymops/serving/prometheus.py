"""A project-run Prometheus server (services profile) and the tier's own metrics endpoint.

Prometheus: the Debian package ``prometheus`` (2.42; .ci/run installs it when missing), run as a
child process with a config this module writes -- never the system service -- on a loopback port,
scraping Triton's metrics endpoint (the model's own per-version counters, server #7713) and the
tier's endpoint every ``scrape_interval`` (1 s: the watcher's detection time is bounded by the
scrape interval plus its own, Flagger's "interval x threshold"). Its TSDB lives under
$GYMOPS_HOME/prometheus. The watcher reads it through gymops.serving.signals.PrometheusSource.

The tier's metrics (prometheus-client, ``TierCollector``), read at scrape time from the stores that
hold the truth, so every process (replicator, Dagster runs, watcher) is counted without sharing a
registry (prometheus-client's multiprocess mode is what importing Feast otherwise switches on):
    gymops_events_total{event_type}               the outbox: deploys, rollbacks, verification failures
    gymops_models{status}                         registry versions per status (canary included)
    gymops_dead_letters                           ingestion dead letters stored
    gymops_history_rows / gymops_history_lag_seconds  replicated confirmations, newest one's age
    gymops_corrections_pending                    corrections since the active version was deployed
    gymops_live_accuracy{model_version}, gymops_live_verdicts{model_version}  set by the watcher
    gymops_shadow_agreement{model_version}, gymops_shadow_photos{model_version}  set by the watcher
(``gymops serving watch`` serves this collector on delivery.metrics_port and feeds the last four from
each look through gymops.serving.live.LiveBoard.)
"""
from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

PROMETHEUS_BINARIES = ("prometheus", "/usr/bin/prometheus")


def prometheus_binary() -> str | None:
    for name in PROMETHEUS_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def write_config(path: Path, targets: dict[str, str], scrape_interval: str = "1s") -> Path:
    """A prometheus.yml scraping ``targets`` (job name -> host:port, path /metrics)."""
    lines = ["global:", f"  scrape_interval: {scrape_interval}", f"  evaluation_interval: {scrape_interval}",
             "scrape_configs:"]
    for job, target in targets.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class PrometheusServer:
    """One Prometheus child process (started here, stopped by its PID)."""

    def __init__(self, home: Path, port: int, targets: dict[str, str], scrape_interval: str = "1s",
                 host: str = "127.0.0.1"):
        self.home, self.port, self.host = Path(home), int(port), host
        self.targets, self.scrape_interval = targets, scrape_interval
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian: apt-get install -y prometheus)")
        config = write_config(self.home / "prometheus.yml", self.targets, self.scrape_interval)
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.home / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.home / 'data'}",
             f"--web.listen-address={self.host}:{self.port}", "--storage.tsdb.retention.time=2d"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: "
                                   f"{(self.home / 'prometheus.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready on {self.url} after {timeout} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TierCollector:
    """prometheus-client collector of the tier's figures, read from the stores at scrape time."""

    def __init__(self, settings, engine=None, model_type: str = "laundry"):
        self.settings = settings
        self.engine = engine
        self.model_type = model_type
        self.live: dict[str, tuple[float | None, int]] = {}  # model_version -> (accuracy, verdicts)
        self.shadow: dict[str, tuple[float | None, int]] = {}  # model_version -> (agreement, photos)

    def set_live(self, version: str, accuracy: float | None, verdicts: int) -> None:
        self.live[version] = (accuracy, verdicts)

    def set_shadow(self, version: str, agreement: float | None, photos: int) -> None:
        self.shadow[version] = (agreement, photos)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        import sqlalchemy as sa

        if self.engine is not None:
            from gymops.lifecycle.outbox import outbox as outbox_table
            from gymops.lifecycle.registry import model_versions

            events = GaugeMetricFamily("gymops_events_total", "Lifecycle events recorded (outbox)",
                                       labels=["event_type"])
            models = GaugeMetricFamily("gymops_models", "Registry versions per status", labels=["status"])
            with self.engine.connect() as conn:
                for event_type, n in conn.execute(sa.select(outbox_table.c.event_type, sa.func.count())
                                                  .group_by(outbox_table.c.event_type)):
                    events.add_metric([event_type], n)
                for status, n in conn.execute(sa.select(model_versions.c.status, sa.func.count())
                                              .where(model_versions.c.model_type == self.model_type)
                                              .group_by(model_versions.c.status)):
                    models.add_metric([status], n)
            yield events
            yield models
        try:
            from gymops.history import tables

            history = tables.history_for(self.settings, tables.TASK_CONFIRMATIONS).read()
            rows = GaugeMetricFamily("gymops_history_rows", "Replicated confirmations in the history")
            rows.add_metric([], history.num_rows)
            yield rows
            if history.num_rows:
                newest = max(history.column("created").to_pylist())
                lag = GaugeMetricFamily("gymops_history_lag_seconds", "Age of the newest replicated confirmation")
                lag.add_metric([], (datetime.now(timezone.utc) - newest).total_seconds())
                yield lag
        except Exception:  # noqa: BLE001 -- a store that is down is a missing series, not a failed scrape
            pass
        accuracy = GaugeMetricFamily("gymops_live_accuracy", "Live accuracy from corrections per model_version",
                                     labels=["model_version"])
        verdicts = GaugeMetricFamily("gymops_live_verdicts", "Live verdicts per model_version", labels=["model_version"])
        for version, (acc, n) in self.live.items():
            if acc is not None:  # no verdicts yet is no data: no sample at all, never 0
                accuracy.add_metric([version], acc)
            verdicts.add_metric([version], n)
        yield accuracy
        yield verdicts
        agreement = GaugeMetricFamily("gymops_shadow_agreement", "Candidate's agreement with the active model "
                                      "on mirrored/served photos", labels=["model_version"])
        photos = GaugeMetricFamily("gymops_shadow_photos", "Photos compared for the agreement", labels=["model_version"])
        for version, (share, n) in self.shadow.items():
            if share is not None:
                agreement.add_metric([version], share)
            photos.add_metric([version], n)
        yield agreement
        yield photos


def serve_tier_metrics(collector: TierCollector, port: int, host: str = "127.0.0.1"):
    """Expose ``collector`` on http://host:port/metrics from a private registry (a daemon thread)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(collector)
    return start_http_server(port, addr=host, registry=registry)
