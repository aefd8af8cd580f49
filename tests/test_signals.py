"""Pure unit tests of gymops.serving.signals: no Triton, no Prometheus, milliseconds each.

Why they exist beside tests/test_canary.py (real Triton): the judges' thresholds and sample sizes
are where a canary is wrongly promoted or wrongly rolled back, and on a real server a wrong edge is
only seen as a flaky minute-long test. Here each edge is pinned with exact counts: counter resets
(Prometheus's rule), NaN and empty answers as "no data" (Flagger's most reported trouble), and each
judge's n, rate and p-value around its limit.
"""
from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from gymops.serving import signals as sg
from gymops.serving.signals import (
    COMPUTE, DEFECTIVE, FAIL, NO_DATA, PASS, PENDING, PREDICTIONS, REQUESTS, SHADOW, Deltas, DirectSource,
    PrometheusSource, VersionFigures, figures_of, judge, judge_accuracy, judge_errors, judge_latency, judge_mix,
    shadow_agreement,
)
from gymops.settings import DeliverySettings

DS = DeliverySettings()  # the seeds: alpha 0.001, min_requests 20, error_rate_limit 0.01, ...


def k(name: str, **labels) -> tuple:
    return sg._key(name, labels)


def fig(version="2", ok=0, errors=0, defective=0, photos=None, buckets=None, compute_sum=0.0) -> VersionFigures:
    """A version's figures; ``buckets`` = {upper bound s: cumulative count}, compute_count = the last."""
    photos = ok if photos is None else photos
    f = VersionFigures(version, ok=ok, errors=errors,
                       predictions={DEFECTIVE: defective, "clean": photos - defective} if photos else {})
    if buckets:
        f.buckets = dict(buckets)
        f.compute_count = max(buckets.values())
        f.compute_sum = compute_sum
    return f


# --------------------------------------------------------------------------------------------------
# Deltas: totals since the baseline, Prometheus's counter-reset rule

def test_deltas_first_sample_is_the_baseline_and_counts_from_zero():
    d = Deltas()
    d.update({k(REQUESTS, model_version="1", outcome="ok"): 500.0})
    assert d.total == {k(REQUESTS, model_version="1", outcome="ok"): 0.0}
    d.update({k(REQUESTS, model_version="1", outcome="ok"): 530.0})
    assert d.total[k(REQUESTS, model_version="1", outcome="ok")] == 30.0


def test_deltas_a_counter_reset_adds_the_new_value_not_a_negative_increase():
    key = k(REQUESTS, model_version="1", outcome="ok")
    d = Deltas()
    for value in (100.0, 140.0, 5.0, 12.0):  # Triton unloaded the last owner: restarted at 0, now 5
        d.update({key: value})
    assert d.total[key] == 40 + 5 + 7


def test_deltas_a_series_born_after_the_baseline_counts_whole_and_a_missing_one_keeps_its_total():
    old, new = k(REQUESTS, model_version="1", outcome="ok"), k(REQUESTS, model_version="2", outcome="error")
    d = Deltas()
    d.update({old: 10.0})
    d.update({old: 15.0, new: 3.0})  # the candidate's first errors arrive after the watcher started
    d.update({new: 4.0})  # a look where the old series is absent: its total stays
    assert d.total == {old: 5.0, new: 4.0}


# --------------------------------------------------------------------------------------------------
# Sources: NaN and empty are no data

class _FakePrometheus(PrometheusSource):
    def __init__(self, rows: dict[str, list[dict]]):
        super().__init__("127.0.0.1:1")
        self.rows, self.asked = rows, []

    def query(self, promql: str) -> list[dict]:
        self.asked.append(promql)
        name = promql.split("(")[-1].rstrip(")")
        return self.rows.get(name, [])


def test_prometheus_empty_results_are_no_data_not_zero():
    source = _FakePrometheus({})
    assert source.sample() == {}
    assert len(source.asked) == len(PrometheusSource.QUERIES)
    assert any(q.startswith("sum by (model_version,outcome)") for q in source.asked)
    c, s = figures_of({}, "2"), figures_of({}, "1")
    assert [x.state for x in judge(c, s, [], DS)] == [NO_DATA] * 4


def test_prometheus_nan_rows_are_dropped_and_numbers_kept():
    source = _FakePrometheus({REQUESTS: [
        {"metric": {"model_version": "2", "outcome": "ok"}, "value": [0, "NaN"]},
        {"metric": {"model_version": "1", "outcome": "ok"}, "value": [0, "42"]},
    ]})
    raw = source.sample()
    assert raw == {k(REQUESTS, model_version="1", outcome="ok"): 42.0}
    assert not any(math.isnan(v) for v in raw.values())
    assert figures_of(raw, "2").requests == 0 and figures_of(raw, "1").ok == 42


def test_prometheus_error_status_raises(monkeypatch):
    import io
    import json

    body = json.dumps({"status": "error", "error": "bad query"}).encode()
    monkeypatch.setattr(sg.urllib.request, "urlopen", lambda *a, **kw: _Closing(io.BytesIO(body)))
    with pytest.raises(RuntimeError, match="bad query"):
        PrometheusSource("http://127.0.0.1:1").query("up")


class _Closing:
    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self.stream

    def __exit__(self, *exc):
        return False


TRITON_TEXT = """\
# HELP gymops_laundry_requests_total requests
# TYPE gymops_laundry_requests_total counter
gymops_laundry_requests_total{model_version="1",outcome="ok"} 7
gymops_laundry_requests_total{model_version="2",outcome="error"} 2
# HELP nv_inference_request_success triton's own
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="laundry",version="1000000000"} 9
"""


def test_direct_source_keeps_only_the_models_own_series():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(TRITON_TEXT.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        raw = DirectSource(f"127.0.0.1:{server.server_port}").sample()
    finally:
        server.shutdown()
        server.server_close()
    assert raw == {k(REQUESTS, model_version="1", outcome="ok"): 7.0,
                   k(REQUESTS, model_version="2", outcome="error"): 2.0}


# --------------------------------------------------------------------------------------------------
# Figures per version

def test_figures_of_sums_per_version_and_skips_plus_inf_buckets():
    totals = {
        k(REQUESTS, model_version="2", outcome="ok"): 18, k(REQUESTS, model_version="2", outcome="error"): 2,
        k(REQUESTS, model_version="2", outcome="invalid"): 1, k(REQUESTS, model_version="1", outcome="ok"): 99,
        k(PREDICTIONS, model_version="2", label=DEFECTIVE): 5, k(PREDICTIONS, model_version="2", label="clean"): 13,
        k(COMPUTE + "_sum", model_version="2"): 0.18, k(COMPUTE + "_count", model_version="2"): 18,
        k(COMPUTE + "_bucket", model_version="2", le="0.01"): 10,
        k(COMPUTE + "_bucket", model_version="2", le="0.05"): 18,
        k(COMPUTE + "_bucket", model_version="2", le="+Inf"): 18,
    }
    f = figures_of(totals, "2")
    assert (f.ok, f.errors, f.invalid, f.requests) == (18, 2, 1, 20)  # invalid input is the client's fault
    assert (f.photos, f.defective) == (18, 5)
    assert f.buckets == {0.01: 10, 0.05: 18}
    assert f.mean_ms == pytest.approx(10.0)
    assert f.quantile_bound(0.5) == 0.01 and f.quantile_bound(0.9) == 0.05
    assert f.above(0.01) == 8
    assert figures_of(totals, "3").requests == 0


def test_shadow_agreement_counts_flips_per_class_and_none_without_photos():
    totals = {
        k(SHADOW, model_version="2", active_version="1", active_label="clean", candidate_label="clean"): 8,
        k(SHADOW, model_version="2", active_version="1", active_label=DEFECTIVE, candidate_label=DEFECTIVE): 1,
        k(SHADOW, model_version="2", active_version="1", active_label="clean", candidate_label=DEFECTIVE): 1,
        k(SHADOW, model_version="3", active_version="1", active_label="clean", candidate_label="clean"): 50,
    }
    out = shadow_agreement(totals, "2")
    assert out["photos"] == 10 and out["agreement"] == pytest.approx(0.9)
    assert out["flips"][f"clean->{DEFECTIVE}"] == 1
    assert shadow_agreement({}, "2") == {"photos": 0, "agreement": None, "flips": {}}


# --------------------------------------------------------------------------------------------------
# Errors: exact binomial against active rate + error_rate_limit, alpha per look

def test_errors_no_traffic_is_no_data_never_pass_or_fail():
    s = judge_errors(fig(ok=0), fig("1", ok=100), DS)
    assert (s.state, s.n, s.figures["rate"]) == (NO_DATA, 0, None)


def test_errors_below_min_requests_is_pending_and_at_min_requests_pass():
    assert judge_errors(fig(ok=DS.min_requests - 1), fig("1", ok=100), DS).state == PENDING
    s = judge_errors(fig(ok=DS.min_requests), fig("1", ok=100), DS)
    assert (s.state, s.n, s.figures["p_value"]) == (PASS, DS.min_requests, 1.0)


def test_errors_fail_exactly_where_the_binomial_p_crosses_alpha():
    from scipy.stats import binom

    # n = 20 against limit 0.01 (active had no errors): 3 errors p = 0.0010 (>= alpha 0.001, pass),
    # 4 errors p = 4.3e-5 (fail). The edge is in the count, not in a rate threshold.
    for errors, expected in ((2, PASS), (3, PASS), (4, FAIL)):
        s = judge_errors(fig(ok=20 - errors, errors=errors), fig("1", ok=1000), DS)
        assert s.figures["p_value"] == pytest.approx(float(binom.sf(errors - 1, 20, 0.01)))
        assert s.state == expected, (errors, s.figures)
        assert s.figures["limit"] == pytest.approx(0.01)


def test_errors_a_few_errors_fail_even_before_min_requests():
    s = judge_errors(fig(ok=2, errors=5), fig("1", ok=1000), DS)  # 5 of 7 at limit 0.01: p ~ 2e-9
    assert (s.state, s.n) == (FAIL, 7)


def test_errors_limit_follows_the_active_versions_own_rate():
    # the active errs 10 %: the candidate's 3 of 20 is within 0.11, not a failure
    s = judge_errors(fig(ok=17, errors=3), fig("1", ok=900, errors=100), DS)
    assert s.figures["limit"] == pytest.approx(0.11) and s.state == PASS
    assert judge_errors(fig(ok=17, errors=3), fig("1", ok=1000), DS).state == PASS  # p = 0.001, at alpha
    assert judge_errors(fig(ok=16, errors=4), fig("1", ok=1000), DS).state == FAIL


# --------------------------------------------------------------------------------------------------
# Latency: share of slow requests against the active's share + SLOW_MARGIN

FAST_BUCKETS = {0.005: 60, 0.01: 95, 0.025: 100, 0.1: 100, 1.0: 100}  # median bound 0.005 s


def test_latency_no_data_then_pending_until_the_active_has_min_requests():
    assert judge_latency(fig(), fig("1", buckets=FAST_BUCKETS), DS).state == NO_DATA
    small_active = {0.005: DS.min_requests - 1}
    s = judge_latency(fig(buckets={0.005: 30}), fig("1", buckets=small_active), DS)
    assert (s.state, s.n) == (PENDING, 30)


def test_latency_slow_bound_is_active_median_times_ratio_plus_slack():
    s = judge_latency(fig(buckets=FAST_BUCKETS), fig("1", buckets=FAST_BUCKETS), DS)
    # 5 ms x 1.5 + 5 ms = 12.5 ms -> the first bucket bound above it, 25 ms; 0 slow of 100
    assert s.figures["active_median_bound_ms"] == pytest.approx(5.0)
    assert s.figures["slow_above_ms"] == pytest.approx(25.0)
    assert (s.state, s.figures["slow"], s.figures["p_value"]) == (PASS, 0, 1.0)


def test_latency_a_slow_candidate_fails_and_a_borderline_one_does_not():
    slow = {0.005: 2, 0.01: 4, 0.025: 5, 0.1: 30, 1.0: 30}  # 25 of 30 above 25 ms
    s = judge_latency(fig(buckets=slow), fig("1", buckets=FAST_BUCKETS), DS)
    assert (s.state, s.n, s.figures["slow"]) == (FAIL, 30, 25)
    assert s.figures["slow_share_limit"] == pytest.approx(sg.SLOW_MARGIN)
    # 10 of 30 slow against a 0.2 limit: p ~ 0.06, a stall or two is not a rollback
    some = {0.005: 10, 0.01: 15, 0.025: 20, 0.1: 30, 1.0: 30}
    s = judge_latency(fig(buckets=some), fig("1", buckets=FAST_BUCKETS), DS)
    assert s.state == PASS and s.figures["slow"] == 10 and s.figures["p_value"] > DS.alpha


def test_latency_below_min_requests_passes_only_as_pending():
    s = judge_latency(fig(buckets={0.005: 5, 1.0: 5}), fig("1", buckets=FAST_BUCKETS), DS)
    assert (s.state, s.n) == (PENDING, 5)


# --------------------------------------------------------------------------------------------------
# Mix: Fisher's exact test AND a difference above mix_margin, both sides >= min_requests

def test_mix_no_data_and_pending_under_min_requests_on_either_side():
    assert judge_mix(fig(), fig("1", ok=100, defective=10), DS).state == NO_DATA
    assert judge_mix(fig(ok=19, defective=19), fig("1", ok=100, defective=10), DS).state == PENDING
    assert judge_mix(fig(ok=50, defective=45), fig("1", ok=19, defective=2), DS).state == PENDING


def test_mix_inverted_labels_fail_and_a_small_significant_shift_passes():
    s = judge_mix(fig(ok=40, defective=36), fig("1", ok=400, defective=40), DS)  # 0.90 vs 0.10
    assert (s.state, s.n) == (FAIL, 40) and s.figures["p_value"] < DS.alpha
    # 0.20 vs 0.10 on 2 000 photos each: p << alpha but within the 0.15 margin -> pass
    s = judge_mix(fig(ok=2000, defective=400), fig("1", ok=2000, defective=200), DS)
    assert s.state == PASS and s.figures["p_value"] < DS.alpha
    # 0.40 vs 0.10 on 20 photos: above the margin but p = 0.065 > alpha -> pass (too few to say)
    s = judge_mix(fig(ok=20, defective=8), fig("1", ok=20, defective=2), DS)
    assert s.state == PASS and s.figures["p_value"] > DS.alpha


# --------------------------------------------------------------------------------------------------
# Accuracy: Wald's SPRT 3 % vs 20 % errors (alpha = beta = 0.05), alert on the exact upper bound

def test_accuracy_no_verdicts_is_no_data():
    s = judge_accuracy([], DS)
    assert (s.state, s.n, s.alert) == (NO_DATA, 0, False)
    assert "accuracy" not in s.figures


def test_accuracy_sprt_accepts_after_16_right_verdicts_and_rejects_after_2_errors():
    # each right verdict adds log(0.80/0.97) = -0.193, the lower bound is log(0.05/0.95) = -2.944
    assert judge_accuracy([False] * 15, DS).state == PENDING
    s = judge_accuracy([False] * 16, DS)
    assert (s.state, s.n, s.figures["sprt_verdicts"]) == (PASS, 16, 16)
    # each error adds log(0.20/0.03) = 1.897, the upper bound is log(0.95/0.05) = 2.944
    assert judge_accuracy([True], DS).state == PENDING
    s = judge_accuracy([True, True], DS)
    assert (s.state, s.figures["sprt_verdicts"], s.figures["corrected"]) == (FAIL, 2, 2)


def test_accuracy_decision_is_the_first_crossing_in_arrival_order():
    s = judge_accuracy([False] * 16 + [True] * 5, DS)  # accepted at 16, later errors do not undo it
    assert s.state == PASS and s.figures["sprt_verdicts"] == 16 and s.n == 21
    s = judge_accuracy([True, False, True] + [False] * 30, DS)
    assert s.state == FAIL and s.figures["sprt_verdicts"] == 3


def test_accuracy_alert_when_the_exact_upper_bound_is_below_alert_accuracy():
    # 60 of 100 right: interval (0.50, 0.70) < 0.85 -> alert; 80 of 100: upper 0.87 -> no alert
    assert judge_accuracy([False] * 60 + [True] * 40, DS).alert is True
    s = judge_accuracy([False] * 80 + [True] * 20, DS)
    assert s.alert is False and s.figures["interval"][1] > DS.alert_accuracy
    assert s.figures["accuracy"] == pytest.approx(0.8)


def test_accuracy_thresholds_come_from_the_settings():
    strict = DS.replace(rollback_accuracy=0.95, good_error_rate=0.01)  # H1 error 0.05
    s = judge_accuracy([True], strict)
    assert s.figures["p1"] == pytest.approx(0.05) and s.figures["p0"] == pytest.approx(0.01)


def test_judge_orders_the_four_signals():
    names = [s.name for s in judge(fig(), fig("1"), [], DS)]
    assert names == ["errors", "latency", "mix", "accuracy"]
