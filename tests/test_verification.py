"""The verification gates: Great Expectations data checks, the accuracy gate and the sandboxed
performance gate on a real (tiny) ONNX model."""
import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from gymops.settings import ConfigError, GateSettings, Settings
from gymops.lifecycle.outbox import model_verification_failed
from gymops.lifecycle.gates import (GateResult, accuracy_gate, check_corrected_tasks,
                                 check_training_dataset, failures_as_reasons, performance_gate)

NOW = datetime.now(timezone.utc)


def tasks(n=20, defective=8):
    labels = ["defective"] * defective + ["good"] * (n - defective)
    ai = [("good" if lbl == "defective" else "defective") if i % 3 == 0 else lbl for i, lbl in enumerate(labels)]
    ts = [NOW - timedelta(hours=i + 1) for i in range(n)]
    return pd.DataFrame({
        "task_id": [f"TASK-{i}" for i in range(n)],
        "event_id": [f"evt-{i}" for i in range(n)],
        "photo_url": [f"s3://gym-photos/tasks/BR-1/{i}.jpg" if i % 2 else f"file:///photos/{i}.jpg" for i in range(n)],
        "final_result": labels,
        "ai_result": ai,
        "corrected": [a != f for a, f in zip(ai, labels)],
        "event_timestamp": ts,
        "created": [t + timedelta(seconds=2) for t in ts],
    })


def failed_checks(result: GateResult):
    return {f.check for f in result.failures}


def test_corrected_tasks_pass_quickly():
    check_corrected_tasks(tasks())  # first call pays the import
    t0 = time.perf_counter()
    result = check_corrected_tasks(tasks(200, 80))
    elapsed = time.perf_counter() - t0
    assert result.passed, result.failures
    assert result.figures["rows"] == 200 and result.figures["defective_rows"] == 80
    assert elapsed < 1.0, f"GE check took {elapsed:.2f} s"


def _corrupt(kind):
    df = tasks()
    if kind == "bad_label":
        df.loc[3, "final_result"] = "clean"
    elif kind == "missing_photo_url":
        df.loc[4, "photo_url"] = None
    elif kind == "bad_photo_scheme":
        df.loc[4, "photo_url"] = "http://example.com/x.jpg"
    elif kind == "future_timestamp":
        df.loc[5, "event_timestamp"] = NOW + timedelta(days=2)
    elif kind == "ancient_timestamp":
        df.loc[5, "created"] = datetime(1999, 12, 31, tzinfo=timezone.utc)
    elif kind == "unparseable_timestamp":
        df["event_timestamp"] = df["event_timestamp"].astype(object)
        df.loc[5, "event_timestamp"] = "yesterday-ish"
    elif kind == "duplicate_event_id":
        df.loc[6, "event_id"] = df.loc[7, "event_id"]
    elif kind == "null_task_id":
        df.loc[6, "task_id"] = None
    elif kind == "one_class_only":
        df["final_result"] = "good"
        df["ai_result"] = "good"
        df["corrected"] = False
    elif kind == "imbalanced":
        df = tasks(40, 2)
    elif kind == "corrected_inconsistent":
        df.loc[1, "corrected"] = not df.loc[1, "corrected"]
    return df


@pytest.mark.parametrize("kind, check", [
    ("bad_label", "final_result_label"),
    ("missing_photo_url", "photo_url_not_null"),
    ("bad_photo_scheme", "photo_url_scheme"),
    ("future_timestamp", "event_timestamp_range"),
    ("ancient_timestamp", "created_range"),
    ("unparseable_timestamp", "event_timestamp_not_null"),
    ("duplicate_event_id", "event_id_unique"),
    ("null_task_id", "task_id_not_null"),
    ("one_class_only", "classes_present"),
    ("imbalanced", "class_balance"),
    ("corrected_inconsistent", "corrected_consistent"),
])
def test_corrected_tasks_fail_naming_the_check(kind, check):
    result = check_corrected_tasks(_corrupt(kind))
    assert not result.passed
    assert check in failed_checks(result), result.failures
    failure = next(f for f in result.failures if f.check == check)
    assert failure.message and failure.threshold is not None
    reasons = failures_as_reasons([result])
    json.dumps(reasons)  # JSON-safe for the event
    assert {"gate": "data.corrected_tasks", "check": check} .items() <= next(
        r for r in reasons if r["check"] == check).items()


def test_corrected_tasks_details():
    result = check_corrected_tasks(_corrupt("one_class_only"))
    assert {"classes_present", "class_balance"} <= failed_checks(result)
    dup = check_corrected_tasks(_corrupt("duplicate_event_id"))
    assert "evt-7" in next(f for f in dup.failures if f.check == "event_id_unique").message
    assert failed_checks(dup) == {"event_id_unique"}
    missing = check_corrected_tasks(tasks().drop(columns=["photo_url"]))
    assert failed_checks(missing) == {"columns"} and "photo_url" in missing.failures[0].message
    assert failed_checks(check_corrected_tasks(tasks(0, 0))) >= {"row_count"}


def manifest(splits=("train", "val", "holdout"), per=6):
    rows = []
    for split in splits:
        for i in range(per):
            label = "defective" if i % 2 else "good"
            rows.append({"split": split, "label": label, "decodable": True, "task_id": f"{split}-{i // 2}",
                         "photo": f"file:///ds/{split}/{i}.jpg"})
    return rows


def test_training_dataset_checks():
    ok = check_training_dataset(manifest(), required_splits=["train", "val", "holdout"])
    assert ok.passed, ok.failures
    assert ok.figures["per_split"]["val"] == {"defective": 3, "good": 3}
    assert check_training_dataset(pd.DataFrame(manifest())).passed
    assert check_training_dataset({"rows": manifest()}).passed

    rows = manifest()
    rows[2]["decodable"] = False
    bad = check_training_dataset(rows)
    assert failed_checks(bad) == {"decodable"} and "file:///ds/train/2.jpg" in bad.failures[0].message

    rows = [r for r in manifest() if not (r["split"] == "val" and r["label"] == "defective")]
    bad = check_training_dataset(rows)
    assert "classes_per_split" in failed_checks(bad) and "val" in bad.figures["splits_missing_class"]

    rows = manifest()
    rows[0]["label"] = "unknown"
    assert "label_in_set" in failed_checks(check_training_dataset(rows))

    rows = manifest()
    rows[0]["task_id"] = "val-0"  # the same task in train and val: leakage
    assert "task_single_split" in failed_checks(check_training_dataset(rows))

    assert "splits_present" in failed_checks(check_training_dataset(manifest(("train", "val")),
                                                                     required_splits=["train", "val", "holdout"]))
    rows = manifest(per=20)
    for r in rows:
        r["label"] = "good"
    for r in rows[:1] + rows[20:22] + rows[40:42]:  # 5 of 60
        r["label"] = "defective"
    assert failed_checks(check_training_dataset(rows)) == {"class_balance"}
    assert failed_checks(check_training_dataset([{"split": "train", "label": "good"}])) == {"columns"}


def test_gate_settings_from_the_environment():
    assert Settings.from_env({}).gates == GateSettings()
    t = GateSettings()
    assert (t.val_accuracy, t.holdout_accuracy, t.class_accuracy, t.noninferiority_margin, t.latency_ms, t.memory_mb,
            t.throughput_rps, t.perf_requests, t.min_class_fraction) == (0.90, 0.88, 0.90, 0.03, 200, 2048, 50, 1000, 0.1)
    assert (t.decision_margin, t.decision_power, t.decision_alpha) == (0.05, 0.99, 0.05)
    t = Settings.from_env({"GYMOPS_GATE_VAL_ACCURACY": "0.95", "GYMOPS_GATE_PERF_REQUESTS": "200",
                           "GYMOPS_GATE_NONINFERIORITY_MARGIN": "0.01", "GYMOPS_GATE_LATENCY_MS": ""}).gates
    assert (t.val_accuracy, t.perf_requests, t.noninferiority_margin, t.latency_ms) == (0.95, 200, 0.01, 200)
    for var, raw in [("GYMOPS_GATE_VAL_ACCURACY", "high"), ("GYMOPS_GATE_HOLDOUT_ACCURACY", "1.5"),
                     ("GYMOPS_GATE_PERF_REQUESTS", "10.5"), ("GYMOPS_GATE_LATENCY_MS", "0"),
                     ("GYMOPS_GATE_MEMORY_MB", "nan"), ("GYMOPS_GATE_MIN_CLASS_FRACTION", "0.7"),
                     ("GYMOPS_GATE_NONINFERIORITY_MARGIN", "-0.04"), ("GYMOPS_GATE_DECISION_ALPHA", "0")]:
        with pytest.raises(ConfigError, match=var):
            Settings.from_env({var: raw})


def metrics(good_right, good_n, defective_right, defective_n):
    """classification_metrics' shape, from counts: confusion [[tn, fp], [fn, tp]]."""
    tn, fp, tp, fn = good_right, good_n - good_right, defective_right, defective_n - defective_right
    n = good_n + defective_n
    return {"accuracy": (tn + tp) / n, "per_class_accuracy": {"good": tn / good_n, "defective": tp / defective_n},
            "confusion": [[tn, fp], [fn, tp]], "n": n}


def candidate(good=(130, 134), defective=(130, 134), val=(57, 60, 38, 40)):
    return {"val": metrics(*val), "holdout": metrics(*good, *defective)}


def _sf(k, n, p):
    """P(X >= k), X ~ Binomial(n, p), summed exactly (independent of scipy)."""
    from math import comb

    return sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_pass_mark_against_closed_binomial_forms():
    from gymops.lifecycle.gates import holdout_target, pass_mark

    # The README's sizing rule: 0.90 +- 0.05 at 99%/5% -> 134 photos, pass mark 121.
    assert holdout_target(GateSettings()) == 134
    assert pass_mark(134, 0.90, 0.05, 0.05) == 121
    assert _sf(121, 134, 0.85) <= 0.05 < _sf(120, 134, 0.85) and _sf(121, 134, 0.95) >= 0.99
    # 25 photos: a 0.85 model gets all 25 with 0.85**25 = 0.017, 24+ with 0.093: only 25/25 passes.
    assert pass_mark(25, 0.90, 0.05, 0.05) == 25
    assert _sf(25, 25, 0.85) == pytest.approx(0.85 ** 25) and _sf(24, 25, 0.85) > 0.05
    # Many photos: the design's threshold is the stricter one (0.88 * 268 = 235.8 -> 236).
    assert pass_mark(268, 0.88, 0.05, 0.05) == 236
    assert pass_mark(3, 0.90, 0.05, 0.05) == 4  # 3 photos can never show it


def test_threshold_checks_state_k_n_interval_and_pass_mark():
    ok = accuracy_gate(candidate(good=(121, 134), defective=(125, 134)))
    assert ok.passed, ok.failures
    g = ok.figures["class_accuracy.good"]
    assert (g["k"], g["n"], g["pass_mark"], g["threshold"]) == (121, 134, 121, 0.90)
    assert g["ci_low"] < 121 / 134 < g["ci_high"] and g["pass_if_above"] >= 0.99 and g["pass_if_below"] <= 0.05
    one_short = accuracy_gate(candidate(good=(120, 134)))
    assert failed_checks(one_short) == {"class_accuracy.good"}
    assert "120/134" in one_short.failures[0].message and "121 of 134 needed" in one_short.failures[0].message
    # 22 of 25 (0.88) fails the class check; so would 24 of 25 (0.96): 25 photos cannot tell 0.96 from 0.85
    assert failed_checks(accuracy_gate(candidate(defective=(24, 25)))) == {"class_accuracy.defective"}
    # validation is read by its estimate alone (it also chose the epoch): 54/60 + 36/40 = 0.90 passes
    assert accuracy_gate(candidate(val=(54, 60, 36, 40))).passed
    assert failed_checks(accuracy_gate(candidate(val=(54, 60, 35, 40)))) == {"val_accuracy"}
    # overall 0.88: 236 of 268 needed
    low = accuracy_gate(candidate(good=(121, 134), defective=(114, 134)), thresholds=GateSettings(class_accuracy=0.8))
    assert failed_checks(low) == {"holdout_accuracy"} and low.figures["holdout_accuracy"]["pass_mark"] == 236
    missing = accuracy_gate({"validation": metrics(57, 60, 38, 40)})
    assert failed_checks(missing) == {"holdout_accuracy", "class_accuracy.good", "class_accuracy.defective"}
    assert "missing" in missing.failures[0].message


def _answers(n, challenger_only, champion_only, both_wrong=3):
    """Per-photo right/wrong of two models on n photos with the given discordant counts."""
    a = [True] * n
    b = [True] * n
    i = 0
    for _ in range(challenger_only):
        b[i] = False; i += 1
    for _ in range(champion_only):
        a[i] = False; i += 1
    for _ in range(both_wrong):
        a[i] = b[i] = False; i += 1
    return a, b


def test_champion_comparison_is_paired_with_a_margin():
    from gymops.lifecycle.gates import compare_with_champion

    # 6 photos only the challenger gets right, none the other way: p = 0.5**6, the 90% exact lower
    # bound of the discordant share is 0.05**(1/6) = 0.607 -> difference >= (2*0.607-1)*6/300 = +0.0043
    cmp = compare_with_champion("1.0.0", 2, *_answers(300, 6, 0))
    assert cmp.overall.p_better == pytest.approx(0.5 ** 6)
    assert cmp.overall.ci_low == pytest.approx((2 * 0.05 ** (1 / 6) - 1) * 6 / 300, abs=1e-6)
    assert accuracy_gate(candidate(), cmp).passed
    # 2 vs 8: change -0.02; the lower bound of 2/10 (90%) p solves P(X >= 2 | 10, p) = 0.05
    worse = compare_with_champion("1.0.0", 2, *_answers(300, 2, 8))
    p = worse.overall.ci_low * 300 / 10 / 2 + 0.5
    assert _sf(2, 10, p) == pytest.approx(0.05, abs=1e-6)
    result = accuracy_gate(candidate(), worse)
    assert failed_checks(result) == {"better_than_champion.overall"} and "non-inferiority" in result.failures[0].message
    # the same with a margin of 0.04: -0.031 is inside it
    assert accuracy_gate(candidate(), worse, GateSettings(noninferiority_margin=0.04)).passed
    # equal models (4 vs 4 discordant of 300): inside the margin, passes
    assert accuracy_gate(candidate(), compare_with_champion("1.0.0", 2, *_answers(300, 4, 4))).passed
    # significantly worse on the photos confirmed since the champion was trained fails, even when
    # non-inferior overall: 0 vs 5 discordant there, exact one-sided p = 0.5**5 = 0.031 <= 0.05
    a, b = _answers(300, 5, 5)
    newest = [False] * 5 + [True] * 5 + [True] * 50 + [False] * 240  # the newest 55 hold the champion's 5 wins
    nw = compare_with_champion("1.0.0", 2, a, b, newest)
    assert nw.newest.n == 55 and (nw.newest.challenger_only, nw.newest.champion_only) == (0, 5)
    assert nw.newest.p_worse == pytest.approx(0.5 ** 5)
    result_newest = accuracy_gate(candidate(), nw)
    assert failed_checks(result_newest) == {"better_than_champion.newest"}
    assert "p = 0.0312" in result_newest.failures[0].message
    # 0 vs 4 is p = 0.0625: not significant, passes; so does 0 vs 1 (one photo decides nothing)
    for wins in (4, 1):
        mask = [False] * 5 + [True] * wins + [False] * (5 - wins) + [True] * 50 + [False] * 240
        few = compare_with_champion("1.0.0", 2, a, b, mask)
        assert few.newest.champion_only == wins and few.newest.p_worse == pytest.approx(0.5 ** wins)
        assert accuracy_gate(candidate(), few).passed
    # ties pass (a retrain with nothing new to learn is not held back by chance)
    tie = compare_with_champion("1.0.0", 2, a, b, [True] * 2 + [False] * 3 + [True] * 2 + [False] * 293)
    assert (tie.newest.challenger_only, tie.newest.champion_only) == (2, 2) and accuracy_gate(candidate(), tie).passed
    # with alpha 0.10, 0 vs 4 (p = 0.0625) fails
    assert not accuracy_gate(candidate(), compare_with_champion(
        "1.0.0", 2, a, b, [False] * 5 + [True] * 4 + [False] + [True] * 50 + [False] * 240),
        GateSettings(decision_alpha=0.10)).passed
    # the reasons an event carries
    payload = model_verification_failed("laundry", "1.2.0", failures_as_reasons([result]), "run-1")
    [reason] = payload["reasons"]
    assert reason["check"] == "better_than_champion.overall" and reason["threshold"] == -0.03




SAMPLES = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)


def test_performance_gate_measures_in_a_sandbox(tiny_classifier_onnx):
    result = performance_gate(tiny_classifier_onnx, SAMPLES, GateSettings(), throughput_seconds=1.0)
    assert result.passed, result.failures
    f = result.figures
    print("perf figures:", json.dumps(f))
    assert f["requests"] == 1000 and f["output_shape"] == [1, 2]
    assert 0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"] and 0 < f["mean_latency_ms"] < 200
    assert f["throughput_rps"] > 50 and 20 < f["peak_memory_mb"] < 2048


def test_performance_gate_fails_on_thresholds(tiny_classifier_onnx):
    strict = GateSettings(latency_ms=0.0001, throughput_rps=1e9, memory_mb=1, perf_requests=50)
    result = performance_gate(tiny_classifier_onnx, SAMPLES[:2], strict, throughput_seconds=0.2)
    assert failed_checks(result) == {"mean_latency_ms", "throughput_rps", "peak_memory_mb"}
    assert "exceeds 0.0001 ms" in next(f for f in result.failures if f.check == "mean_latency_ms").message
    assert failures_as_reasons([result])[0]["gate"] == "performance"


def test_performance_gate_reports_a_model_that_cannot_load(tmp_path, tiny_classifier_onnx):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    result = performance_gate(broken, SAMPLES[:1], GateSettings(perf_requests=10), throughput_seconds=0.1)
    assert failed_checks(result) == {"sandbox.load"}
    assert "cannot be loaded" in result.failures[0].message
    assert failed_checks(performance_gate(tmp_path / "absent.onnx", SAMPLES[:1])) == {"sandbox.load"}
    t0 = time.monotonic()
    slow = performance_gate(tiny_classifier_onnx, SAMPLES[:1], GateSettings(perf_requests=10), throughput_seconds=60,
                            timeout_s=1.5)
    assert failed_checks(slow) == {"sandbox.timeout"} and "1.5 s" in slow.failures[0].message
    assert time.monotonic() - t0 < 10
    with pytest.raises(ValueError, match="float32"):
        performance_gate(tiny_classifier_onnx, SAMPLES.astype(np.float64))
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 224\)"):
        performance_gate(tiny_classifier_onnx, SAMPLES[:, :, :100])
