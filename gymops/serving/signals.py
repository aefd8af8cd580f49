"""Live signals per served model version, and the statistics that judge a canary on them.

Where the figures come from: the served model counts them itself per ``model_version``
(triton_models/laundry/model.py, pb_utils.MetricFamily) because Triton counts a Python-backend error
response as a success (server #7713) and labels its own metrics by folder number, which in a canary
holds two versions. Two readers of the same series:

- ``DirectSource``: Triton's metrics endpoint (text format), scraped by the watcher itself
  (embedded profile);
- ``PrometheusSource``: a Prometheus server's HTTP API (``/api/v1/query``), as Flagger and Argo
  Rollouts read it (services profile). An empty result ("no values found", Flagger's most reported
  trouble) and NaN are "no data" here, never 0.

Counters are cumulative and restart at 0 when their last owner unloads; ``Deltas`` turns raw samples
into totals since a baseline with Prometheus's reset rule (a value below the previous one means a
restart: the new value is the increase).

``judge`` gives each signal a state: "no data" (no traffic yet: never healthy, never failed),
"pending" (data, no decision yet), "pass" or "fail", with its figures and sample size:
- errors: exact one-sided binomial test of the candidate's error count against
  (active's rate + error_rate_limit), fail at p < alpha;
- latency: the candidate's share of slow requests (compute above the active's median x
  latency_ratio + latency_slack_ms, from the histogram buckets) against the active's share + 0.2,
  exact one-sided binomial test, fail at p < alpha;
- mix: the defective rate against the active's, Fisher's exact test p < alpha AND a difference above
  mix_margin, both with >= min_requests photos (labels inverted flip the rate);
- accuracy: Wald's SPRT on the branch managers' verdicts for this aiModelVersion (an error = a
  correction), H0 error rate good_error_rate against H1 1 - rollback_accuracy; "alert" is added
  when the exact upper bound of the accuracy is below alert_accuracy.
"""
from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field

from gymops.lifecycle.statistics import Estimate, Sprt

REQUESTS = "gymops_laundry_requests_total"
PREDICTIONS = "gymops_laundry_predictions_total"
COMPUTE = "gymops_laundry_compute_seconds"
SHADOW = "gymops_laundry_shadow_total"
DEFECTIVE = "defective"
NO_DATA, PENDING, PASS, FAIL = "no data", "pending", "pass", "fail"
SLOW_MARGIN = 0.2  # share of slow requests a candidate may have above the active version's

Key = tuple  # (metric name, sorted label items)


def _key(name: str, labels: dict) -> Key:
    return name, tuple(sorted(labels.items()))


# --------------------------------------------------------------------------------------------------
# Sources

class DirectSource:
    """Triton's metrics endpoint, scraped directly (embedded profile)."""

    def __init__(self, metrics_url: str, timeout: float = 2.0):
        self.url = metrics_url if metrics_url.startswith("http") else f"http://{metrics_url}"
        if not self.url.rstrip("/").endswith("/metrics"):
            self.url = self.url.rstrip("/") + "/metrics"
        self.timeout = timeout

    def sample(self) -> dict[Key, float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
            text = response.read().decode()
        out: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("gymops_laundry_"):
                    out[_key(s.name, s.labels)] = float(s.value)
        return out


class PrometheusSource:
    """A Prometheus server's HTTP API, read as Flagger reads it: one instant query per metric."""

    QUERIES = (REQUESTS, PREDICTIONS, COMPUTE + "_sum", COMPUTE + "_count", COMPUTE + "_bucket", SHADOW)

    def __init__(self, url: str, timeout: float = 2.0):
        self.url = url.rstrip("/") if url.startswith("http") else f"http://{url.rstrip('/')}"
        self.timeout = timeout

    def query(self, promql: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=self.timeout) as response:
            body = json.loads(response.read().decode())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query {promql!r}: {body.get('error')}")
        return body["data"]["result"]

    def sample(self) -> dict[Key, float]:
        out: dict[Key, float] = {}
        for name in self.QUERIES:
            # sum over scrape targets/instances (two Triton instances share the series already)
            labels = "model_version,outcome" if name == REQUESTS else \
                "model_version,label" if name == PREDICTIONS else \
                "model_version,active_version,active_label,candidate_label" if name == SHADOW else \
                "model_version,le" if name.endswith("_bucket") else "model_version"
            for row in self.query(f"sum by ({labels}) ({name})"):
                value = float(row["value"][1])
                if math.isnan(value):  # NaN is no data (Flagger read it as 0 and promoted)
                    continue
                out[_key(name, row["metric"])] = value
        return out


class Deltas:
    """Totals since the baseline (the first sample given), with Prometheus's counter-reset rule."""

    def __init__(self):
        self.last: dict[Key, float] = {}
        self.total: dict[Key, float] = {}
        self.started = False

    def update(self, raw: dict[Key, float]) -> None:
        for key, value in raw.items():
            if not self.started:
                self.last[key] = value
                self.total[key] = 0.0
                continue
            previous = self.last.get(key)
            if previous is None:  # a series born after the baseline: all of it is new
                increase = value
            elif value < previous:  # reset
                increase = value
            else:
                increase = value - previous
            self.last[key] = value
            self.total[key] = self.total.get(key, 0.0) + increase
        self.started = True


# --------------------------------------------------------------------------------------------------
# Figures per version

@dataclass
class VersionFigures:
    version: str
    ok: int = 0
    errors: int = 0
    invalid: int = 0
    compute_sum: float = 0.0
    compute_count: int = 0
    predictions: dict = field(default_factory=dict)
    buckets: dict = field(default_factory=dict)  # upper bound (s) -> cumulative count

    def quantile_bound(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile of compute seconds."""
        for le in sorted(self.buckets):
            if self.buckets[le] >= q * self.compute_count:
                return le
        return None

    def above(self, bound: float) -> int:
        """Requests whose compute seconds exceeded the bucket bound ``bound``."""
        return self.compute_count - int(self.buckets.get(bound, self.compute_count))

    @property
    def requests(self) -> int:
        return self.ok + self.errors

    @property
    def photos(self) -> int:
        return sum(self.predictions.values())

    @property
    def defective(self) -> int:
        return int(self.predictions.get(DEFECTIVE, 0))

    @property
    def mean_ms(self) -> float | None:
        return 1000 * self.compute_sum / self.compute_count if self.compute_count else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(requests=self.requests, mean_ms=self.mean_ms)
        return out


def figures_of(totals: dict[Key, float], version: str) -> VersionFigures:
    f = VersionFigures(version)
    for (name, labels), value in totals.items():
        labels = dict(labels)
        if labels.get("model_version") != version:
            continue
        if name == REQUESTS:
            outcome = labels.get("outcome")
            if outcome in ("ok", "error", "invalid"):
                setattr(f, {"ok": "ok", "error": "errors", "invalid": "invalid"}[outcome],
                        getattr(f, {"ok": "ok", "error": "errors", "invalid": "invalid"}[outcome]) + int(value))
        elif name == PREDICTIONS:
            f.predictions[labels.get("label")] = f.predictions.get(labels.get("label"), 0) + int(value)
        elif name == COMPUTE + "_sum":
            f.compute_sum += value
        elif name == COMPUTE + "_count":
            f.compute_count += int(value)
        elif name == COMPUTE + "_bucket" and labels.get("le") not in (None, "+Inf"):
            le = float(labels["le"])
            f.buckets[le] = f.buckets.get(le, 0) + int(value)
    return f


def shadow_agreement(totals: dict[Key, float], version: str) -> dict:
    """Mirrored photos of candidate ``version``: per (active label -> candidate label), agreement."""
    pairs: dict[str, int] = {}
    for (name, labels), value in totals.items():
        labels = dict(labels)
        if name == SHADOW and labels.get("model_version") == version and value:
            pair = f"{labels.get('active_label')}->{labels.get('candidate_label')}"
            pairs[pair] = pairs.get(pair, 0) + int(value)
    n = sum(pairs.values())
    agree = sum(v for k, v in pairs.items() if k.split("->")[0] == k.split("->")[1])
    return {"photos": n, "agreement": (agree / n) if n else None, "flips": pairs}


# --------------------------------------------------------------------------------------------------
# Judging

@dataclass
class Signal:
    name: str
    state: str
    n: int
    figures: dict
    alert: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def judge_errors(c: VersionFigures, s: VersionFigures, ds) -> Signal:
    from scipy.stats import binom

    stable_rate = (s.errors / s.requests) if s.requests else 0.0
    limit = min(stable_rate + ds.error_rate_limit, 0.999)
    figures = {"errors": c.errors, "requests": c.requests, "rate": (c.errors / c.requests) if c.requests else None,
               "active_rate": stable_rate if s.requests else None, "limit": limit}
    if c.requests == 0:
        return Signal("errors", NO_DATA, 0, figures)
    p = float(binom.sf(c.errors - 1, c.requests, limit)) if c.errors else 1.0
    figures["p_value"] = p
    if p < ds.alpha:
        return Signal("errors", FAIL, c.requests, figures)
    return Signal("errors", PASS if c.requests >= ds.min_requests else PENDING, c.requests, figures)


def judge_latency(c: VersionFigures, s: VersionFigures, ds) -> Signal:
    """Slow requests, not means: a mean of tens of requests on two shared cores is moved by a single
    stall (a good candidate was rolled back on one). A request is slow above the bucket bound
    ``t`` >= active median x latency_ratio + latency_slack_ms; the candidate fails when its share of
    slow requests exceeds the active's share + SLOW_MARGIN with exact binomial p < alpha."""
    from scipy.stats import binom

    figures = {"mean_ms": c.mean_ms, "active_mean_ms": s.mean_ms, "requests": c.compute_count,
               "active_requests": s.compute_count}
    if c.compute_count == 0:
        return Signal("latency", NO_DATA, 0, figures)
    if s.compute_count < ds.min_requests or not s.buckets or not c.buckets:
        return Signal("latency", PENDING, c.compute_count, figures)
    median = s.quantile_bound(0.5)
    target = median * ds.latency_ratio + ds.latency_slack_ms / 1000
    bound = next((le for le in sorted(s.buckets) if le >= target), max(s.buckets))
    slow, active_slow = c.above(bound), s.above(bound)
    limit = min(active_slow / s.compute_count + SLOW_MARGIN, 0.999)
    p = float(binom.sf(slow - 1, c.compute_count, limit)) if slow else 1.0
    figures.update(active_median_bound_ms=1000 * median, slow_above_ms=1000 * bound, slow=slow,
                   active_slow=active_slow, slow_share_limit=limit, p_value=p)
    if p < ds.alpha:
        return Signal("latency", FAIL, c.compute_count, figures)
    return Signal("latency", PASS if c.compute_count >= ds.min_requests else PENDING, c.compute_count, figures)


def judge_mix(c: VersionFigures, s: VersionFigures, ds) -> Signal:
    from scipy.stats import fisher_exact

    rate = (c.defective / c.photos) if c.photos else None
    active = (s.defective / s.photos) if s.photos else None
    figures = {"defective_rate": rate, "active_defective_rate": active, "photos": c.photos,
               "active_photos": s.photos, "margin": ds.mix_margin}
    if c.photos == 0:
        return Signal("mix", NO_DATA, 0, figures)
    if c.photos < ds.min_requests or s.photos < ds.min_requests:
        return Signal("mix", PENDING, c.photos, figures)
    p = float(fisher_exact([[c.defective, c.photos - c.defective], [s.defective, s.photos - s.defective]])[1])
    figures["p_value"] = p
    failed = p < ds.alpha and abs(rate - active) > ds.mix_margin
    return Signal("mix", FAIL if failed else PASS, c.photos, figures)


def judge_accuracy(outcomes: list[bool], ds) -> Signal:
    """outcomes: the verdicts on this version's answers, True = corrected (an error), in order."""
    sprt = Sprt(p0=ds.good_error_rate, p1=1 - ds.rollback_accuracy)
    result = sprt.run(outcomes)
    n = len(outcomes)
    right = n - sum(bool(o) for o in outcomes)
    figures = {"verdicts": n, "corrected": n - right, "sprt": result.decision, "sprt_verdicts": result.verdicts,
               "llr": round(result.llr, 3), "bounds": [round(result.lower, 3), round(result.upper, 3)],
               "p0": sprt.p0, "p1": sprt.p1, "alpha": sprt.alpha, "beta": sprt.beta}
    if n == 0:
        return Signal("accuracy", NO_DATA, 0, figures)
    est = Estimate(right, n)
    low, high = est.interval
    figures.update(accuracy=est.value, interval=[low, high])
    alert = high < ds.alert_accuracy
    state = FAIL if result.decision == "reject" else PASS if result.decision == "accept" else PENDING
    return Signal("accuracy", state, n, figures, alert)


def judge(c: VersionFigures, s: VersionFigures, outcomes: list[bool], ds) -> list[Signal]:
    return [judge_errors(c, s, ds), judge_latency(c, s, ds), judge_mix(c, s, ds), judge_accuracy(outcomes, ds)]


# --------------------------------------------------------------------------------------------------
# Live verdicts from the history tables (the offline side of Feast)

class HistoryVerdicts:
    """The branch managers' verdicts on one aiModelVersion's answers, from the task_confirmations
    history table (TaskConfirmedEvent, replicated): corrected = the AI was wrong. Read straight from
    the table (no Feast import in the watcher: 7-10 s)."""

    def __init__(self, settings, model_type: str = "laundry"):
        self.settings = settings
        self.model_type = model_type

    def __call__(self, version: str, since) -> list[bool]:
        from gymops.history import tables

        table = tables.history_for(self.settings, tables.TASK_CONFIRMATIONS).read()
        frame = table.select(["ai_model_version", "corrected", "model_type", "event_timestamp", "created"]).to_pandas()
        frame = frame[(frame.ai_model_version == version) & (frame.model_type == self.model_type)]
        if since is not None:
            frame = frame[frame.created >= since]
        return [bool(x) for x in frame.sort_values("created").corrected]
