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
    assert (t.val_accuracy, t.holdout_accuracy, t.class_accuracy, t.min_improvement, t.latency_ms, t.memory_mb,
            t.throughput_rps, t.perf_requests, t.min_class_fraction) == (0.90, 0.88, 0.90, 0.0, 200, 2048, 50, 1000, 0.1)
    t = Settings.from_env({"GYMOPS_GATE_VAL_ACCURACY": "0.95", "GYMOPS_GATE_PERF_REQUESTS": "200",
                           "GYMOPS_GATE_MIN_IMPROVEMENT": "0.01", "GYMOPS_GATE_LATENCY_MS": ""}).gates
    assert (t.val_accuracy, t.perf_requests, t.min_improvement, t.latency_ms) == (0.95, 200, 0.01, 200)
    for var, raw in [("GYMOPS_GATE_VAL_ACCURACY", "high"), ("GYMOPS_GATE_HOLDOUT_ACCURACY", "1.5"),
                     ("GYMOPS_GATE_PERF_REQUESTS", "10.5"), ("GYMOPS_GATE_LATENCY_MS", "0"),
                     ("GYMOPS_GATE_MEMORY_MB", "nan"), ("GYMOPS_GATE_MIN_CLASS_FRACTION", "0.7")]:
        with pytest.raises(ConfigError, match=var):
            Settings.from_env({var: raw})


def metrics(acc, good, defective):
    return {"accuracy": acc, "per_class_accuracy": {"good": good, "defective": defective}, "f1": acc, "auc": 0.97,
            "confusion": [[45, 3], [2, 50]]}


def candidate(val=0.93, holdout=0.92, good=0.93, defective=0.91):
    return {"val": metrics(val, 0.94, 0.92), "holdout": metrics(holdout, good, defective)}


def test_accuracy_gate_rules():
    ok = accuracy_gate(candidate(), champion_holdout_accuracy=0.90)
    assert ok.passed and ok.figures["improvement"] == pytest.approx(0.02)
    assert accuracy_gate(candidate(), None).passed  # the first model has no champion
    assert failed_checks(accuracy_gate(candidate(val=0.89))) == {"val_accuracy"}
    assert failed_checks(accuracy_gate(candidate(holdout=0.87))) == {"holdout_accuracy"}
    assert failed_checks(accuracy_gate(candidate(defective=0.85))) == {"class_accuracy.defective"}
    assert failed_checks(accuracy_gate(candidate(good=0.80))) == {"class_accuracy.good"}
    same = accuracy_gate(candidate(holdout=0.92), champion_holdout_accuracy=0.92)
    assert failed_checks(same) == {"better_than_champion"}
    assert "does not beat the active model" in same.failures[0].message
    worse = accuracy_gate(candidate(holdout=0.91), champion_holdout_accuracy=0.95)
    assert failed_checks(worse) == {"better_than_champion"}
    margin = GateSettings(min_improvement=0.01)
    assert failed_checks(accuracy_gate(candidate(holdout=0.925), 0.92, margin)) == {"better_than_champion"}
    assert accuracy_gate(candidate(holdout=0.935), 0.92, margin).passed
    missing = accuracy_gate({"validation": metrics(0.95, 0.95, 0.95)})
    assert failed_checks(missing) == {"holdout_accuracy", "class_accuracy.good", "class_accuracy.defective"}
    assert "missing" in missing.failures[0].message
    payload = model_verification_failed("laundry", "1.2.0", failures_as_reasons([same, ok]), "run-1")
    assert payload["reasons"] == [{"gate": "accuracy", "check": "better_than_champion", "value": 0.92,
                                   "threshold": 0.92, "message": same.failures[0].message}]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.head = torch.nn.Linear(32, 2)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
            return torch.softmax(self.head(x), dim=1)

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.manual_seed(0)
    torch.onnx.export(Tiny().eval(), torch.randn(1, 3, 224, 224), str(path), dynamo=False,
                      input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}})
    return path


SAMPLES = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)


def test_performance_gate_measures_in_a_sandbox(tiny_onnx):
    result = performance_gate(tiny_onnx, SAMPLES, GateSettings(), throughput_seconds=1.0)
    assert result.passed, result.failures
    f = result.figures
    print("perf figures:", json.dumps(f))
    assert f["requests"] == 1000 and f["output_shape"] == [1, 2]
    assert 0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"] and 0 < f["mean_latency_ms"] < 200
    assert f["throughput_rps"] > 50 and 20 < f["peak_memory_mb"] < 2048


def test_performance_gate_fails_on_thresholds(tiny_onnx):
    strict = GateSettings(latency_ms=0.0001, throughput_rps=1e9, memory_mb=1, perf_requests=50)
    result = performance_gate(tiny_onnx, SAMPLES[:2], strict, throughput_seconds=0.2)
    assert failed_checks(result) == {"mean_latency_ms", "throughput_rps", "peak_memory_mb"}
    assert "exceeds 0.0001 ms" in next(f for f in result.failures if f.check == "mean_latency_ms").message
    assert failures_as_reasons([result])[0]["gate"] == "performance"


def test_performance_gate_reports_a_model_that_cannot_load(tmp_path, tiny_onnx):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    result = performance_gate(broken, SAMPLES[:1], GateSettings(perf_requests=10), throughput_seconds=0.1)
    assert failed_checks(result) == {"sandbox.load"}
    assert "cannot be loaded" in result.failures[0].message
    assert failed_checks(performance_gate(tmp_path / "absent.onnx", SAMPLES[:1])) == {"sandbox.load"}
    t0 = time.monotonic()
    slow = performance_gate(tiny_onnx, SAMPLES[:1], GateSettings(perf_requests=10), throughput_seconds=60,
                            timeout_s=1.5)
    assert failed_checks(slow) == {"sandbox.timeout"} and "1.5 s" in slow.failures[0].message
    assert time.monotonic() - t0 < 10
    with pytest.raises(ValueError, match="float32"):
        performance_gate(tiny_onnx, SAMPLES.astype(np.float64))
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 224\)"):
        performance_gate(tiny_onnx, SAMPLES[:, :, :100])
