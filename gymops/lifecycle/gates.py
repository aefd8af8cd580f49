"""The verification gates a candidate model must pass before it may be deployed.

- data: Great Expectations 1.x suites over the corrected tasks and over the training dataset's
  per-image manifest (``check_corrected_tasks``, ``check_training_dataset``);
- accuracy: validation and holdout accuracy, each class, each stated as k of n with its exact
  interval and pass mark, and better than the active model on the same holdout photos, paired
  (``accuracy_gate``; the rule is the README's "How a new model is judged");
- performance: latency, throughput and memory measured in a sandbox process, never on the
  production server (``performance_gate``).

Every gate returns a ``GateResult``; a failing one names each failed check with its value and
threshold, and ``failures_as_reasons`` turns them into the ModelVerificationFailedEvent reasons.
Thresholds (``gymops.settings.GateSettings``, GYMOPS_GATE_*) default to the design's.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from gymops.settings import GateSettings, quiet_tools
from gymops.ingest.events import DEFECTIVE, GOOD, LABELS, MAX_FUTURE_SKEW
from gymops.lifecycle.outbox import failure_reason
from gymops.lifecycle.statistics import (Estimate, PairedComparison, gate_sample_size, paired_comparison,
                                         pass_probability)
from gymops.ml.preprocess import IMAGE_SIZE

PHOTO_URL_PATTERN = r"^(?:file|s3)://"
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
CORRECTED_TASK_COLUMNS = ("task_id", "event_id", "photo_url", "final_result", "ai_result", "corrected",
                          "event_timestamp", "created")
MANIFEST_COLUMNS = ("split", "label", "decodable")


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    check: str
    value: Any
    threshold: Any
    message: str


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    figures: dict = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"gate": self.gate, "passed": self.passed, "figures": _plain(self.figures),
                "failures": [_plain(asdict(f)) for f in self.failures]}


def _result(gate: str, figures: dict, failures: list[Failure]) -> GateResult:
    return GateResult(gate, not failures, figures, failures)


def _plain(value):
    """JSON-friendly values: numpy scalars to Python, timestamps to ISO strings, sets to lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in (sorted(value, key=str) if isinstance(value, (set, frozenset)) else value)]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _plain(item())
        except (ValueError, TypeError):
            pass
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


def failures_as_reasons(results: Iterable[GateResult]) -> list[dict]:
    """[{gate, check, value, threshold, message}] of every failed check: the reasons of a
    ModelVerificationFailedEvent."""
    return [_plain(failure_reason(r.gate, f.check, f.value, f.threshold, f.message))
            for r in results for f in r.failures]


# -- Great Expectations -------------------------------------------------------------------------
_GX_LOCK = threading.Lock()
_GX: dict = {}


def _gx():
    """(gx, expectations module, a pandas batch definition) on one ephemeral context per process,
    with usage statistics and progress bars off."""
    with _GX_LOCK:
        if not _GX:
            quiet_tools()
            import great_expectations as gx
            import great_expectations.expectations as gxe
            from great_expectations.data_context.types.base import ProgressBarsConfig

            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            source = context.data_sources.add_pandas("gymops_verification")
            batch_def = source.add_dataframe_asset(name="frame").add_batch_definition_whole_dataframe("whole")
            _GX.update(gx=gx, gxe=gxe, batch_def=batch_def)
        return _GX["gx"], _GX["gxe"], _GX["batch_def"]


def _validate(gate: str, df, checks: list[tuple[str, Any, Any, str]], figures: dict,
              failures: list[Failure]) -> GateResult:
    """Run the expectations ``checks`` [(check name, expectation, threshold, what it means)] on
    ``df`` in one suite; each failed expectation becomes a Failure named after its check."""
    gx, _, batch_def = _gx()
    t0 = time.perf_counter()
    suite = gx.ExpectationSuite(name=f"{gate}-{time.time_ns()}")
    meaning = {}
    for check, expectation, threshold, what in checks:
        expectation.meta = {"check": check}
        suite.add_expectation(expectation)
        meaning[check] = (threshold, what)
    with _GX_LOCK:
        result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format="SUMMARY")
    for res in result.results:
        check = (res.expectation_config.meta or {}).get("check", res.expectation_config.type)
        threshold, what = meaning.get(check, (None, check))
        info = res.exception_info or {}
        raised = info.get("raised_exception") if isinstance(info, dict) else False
        if raised:
            failures.append(Failure(check, None, threshold,
                                    f"{what}: the check could not run ({info.get('exception_message')})"))
        elif not res.success:
            failures.append(_failure(check, res.result or {}, threshold, what))
    figures["checks"] = len(checks)
    figures["ge_seconds"] = round(time.perf_counter() - t0, 3)
    failures.sort(key=lambda f: [c[0] for c in checks].index(f.check) if f.check in meaning else -1)
    return _result(gate, figures, failures)


def _failure(check: str, result: dict, threshold, what: str) -> Failure:
    if "unexpected_count" in result:
        count, total = result["unexpected_count"], result.get("element_count")
        examples = [_plain(v) for v in (result.get("partial_unexpected_list") or [])[:5]]
        return Failure(check, count, threshold,
                       f"{what}: {count} of {total} rows fail (e.g. {', '.join(map(repr, examples)) or 'n/a'})")
    observed = _plain(result.get("observed_value"))
    return Failure(check, observed, threshold, f"{what}: observed {observed!r}")


def _frame(data):
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True)
    if isinstance(data, Mapping):
        for key in ("rows", "images", "items"):
            if key in data:
                return pd.DataFrame(list(data[key]))
        return pd.DataFrame(dict(data))
    return pd.DataFrame(list(data))


def _missing_columns(gate: str, df, required: tuple[str, ...]) -> GateResult | None:
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return None
    return _result(gate, {"rows": len(df)}, [Failure(
        "columns", sorted(df.columns.astype(str)), list(required),
        f"missing column(s) {', '.join(missing)} (required: {', '.join(required)})")])


def _timestamps(series):
    import pandas as pd

    return pd.to_datetime(series, utc=True, errors="coerce", format="mixed")


def check_corrected_tasks(df, thresholds: GateSettings | None = None, now: datetime | None = None) -> GateResult:
    """The data gate over the corrected tasks a training run reads: labels in {good, defective},
    photo URLs present and file:// or s3://, ids present, event ids unique, timestamps present and
    between 2000 and now (+ the events' clock-skew allowance), both classes each at least
    ``min_class_fraction`` of the rows (by final_result)."""
    import pandas as pd

    t = thresholds or GateSettings()
    gate = "data.corrected_tasks"
    df = _frame(df)
    missing = _missing_columns(gate, df, CORRECTED_TASK_COLUMNS)
    if missing:
        return missing
    now = now or datetime.now(timezone.utc)
    latest = pd.Timestamp(now + MAX_FUTURE_SKEW)
    earliest = pd.Timestamp(EARLIEST)
    frame = pd.DataFrame({
        "task_id": df["task_id"], "event_id": df["event_id"], "photo_url": df["photo_url"],
        "final_result": df["final_result"], "ai_result": df["ai_result"], "corrected": df["corrected"],
        # unparseable timestamps become NaT and fail the not-null checks
        "event_timestamp": _timestamps(df["event_timestamp"]), "created": _timestamps(df["created"]),
        "_defective": (df["final_result"] == DEFECTIVE).astype(float),
        # corrected must say whether the manager changed the AI's verdict
        "_corrected_consistent": df["corrected"].astype(object).eq(df["ai_result"] != df["final_result"]),
    })
    _, gxe, _ = _gx()
    labels = list(LABELS)
    f = t.min_class_fraction
    checks = [
        ("row_count", gxe.ExpectTableRowCountToBeBetween(min_value=1), ">= 1", "rows"),
        ("task_id_not_null", gxe.ExpectColumnValuesToNotBeNull(column="task_id"), "not null", "task_id is null"),
        ("event_id_not_null", gxe.ExpectColumnValuesToNotBeNull(column="event_id"), "not null", "event_id is null"),
        ("event_id_unique", gxe.ExpectColumnValuesToBeUnique(column="event_id"), "unique",
         "event_id is duplicated"),
        ("photo_url_not_null", gxe.ExpectColumnValuesToNotBeNull(column="photo_url"), "not null",
         "photo_url is missing"),
        ("photo_url_scheme", gxe.ExpectColumnValuesToMatchRegex(column="photo_url", regex=PHOTO_URL_PATTERN),
         PHOTO_URL_PATTERN, "photo_url is not file:// or s3://"),
        ("final_result_label", gxe.ExpectColumnValuesToBeInSet(column="final_result", value_set=labels), labels,
         "final_result is not a known label"),
        ("final_result_not_null", gxe.ExpectColumnValuesToNotBeNull(column="final_result"), "not null",
         "final_result is missing"),
        ("ai_result_label", gxe.ExpectColumnValuesToBeInSet(column="ai_result", value_set=labels), labels,
         "ai_result is not a known label"),
        ("corrected_consistent", gxe.ExpectColumnValuesToBeInSet(column="_corrected_consistent", value_set=[True]),
         "corrected == (ai_result != final_result)", "corrected disagrees with ai_result/final_result"),
        ("event_timestamp_not_null", gxe.ExpectColumnValuesToNotBeNull(column="event_timestamp"), "not null",
         "event_timestamp is missing or unparseable"),
        ("event_timestamp_range", gxe.ExpectColumnValuesToBeBetween(
            column="event_timestamp", min_value=earliest, max_value=latest),
         [earliest.isoformat(), latest.isoformat()], "event_timestamp is before 2000 or in the future"),
        ("created_not_null", gxe.ExpectColumnValuesToNotBeNull(column="created"), "not null",
         "created is missing or unparseable"),
        ("created_range", gxe.ExpectColumnValuesToBeBetween(column="created", min_value=earliest, max_value=latest),
         [earliest.isoformat(), latest.isoformat()], "created is before 2000 or in the future"),
        ("classes_present", gxe.ExpectColumnDistinctValuesToContainSet(column="final_result", value_set=labels),
         labels, "final_result must contain both classes"),
        ("class_balance", gxe.ExpectColumnMeanToBeBetween(column="_defective", min_value=f, max_value=1 - f),
         [f, 1 - f], f"the defective fraction must be within [{f:g}, {1 - f:g}] (each class >= {f:g})"),
    ]
    counts = df["final_result"].value_counts()
    figures = {"rows": len(df), **{f"{label}_rows": int(counts.get(label, 0)) for label in LABELS},
               "corrected_rows": int((df["corrected"] == True).sum())}  # noqa: E712 - object columns
    return _validate(gate, frame, checks, figures, [])


def check_training_dataset(manifest, thresholds: GateSettings | None = None,
                           required_splits: Iterable[str] | None = None) -> GateResult:
    """The data gate over a training dataset's manifest, one row per image: ``split``, ``label``,
    ``decodable`` (bool) and optionally ``task_id`` and a path column (``photo``/``path``/``uri``).

    Every photo decodable, labels in {good, defective}, both classes present in every split (and
    every ``required_splits`` split present), each class at least ``min_class_fraction`` of the
    images, and, with task_id, no task in more than one split (no leakage between splits).
    ``manifest`` may be a DataFrame, a list of row dicts, {"rows": [...]}, or a dict of columns."""
    import pandas as pd

    t = thresholds or GateSettings()
    gate = "data.training_dataset"
    df = _frame(manifest)
    missing = _missing_columns(gate, df, MANIFEST_COLUMNS)
    if missing:
        return missing
    path_col = next((c for c in ("photo", "path", "uri", "photo_url", "image") if c in df.columns), None)
    ident = df[path_col].astype(str) if path_col else df.index.map(lambda i: f"row {i}")
    per_split = df.groupby("split", dropna=False)["label"].agg(lambda s: set(s) & set(LABELS))
    splits_missing_class = sorted(str(s) for s, present in per_split.items() if present != set(LABELS))
    decodable = df["decodable"].map(lambda v: v is True or str(v).lower() in ("true", "1", "1.0"))
    frame = pd.DataFrame({
        "split": df["split"], "label": df["label"],
        "_undecodable_photo": ident.where(~decodable),
        "_defective": (df["label"] == DEFECTIVE).astype(float),
        "_split_missing_class": df["split"].astype(str).where(df["split"].astype(str).isin(splits_missing_class)),
    })
    _, gxe, _ = _gx()
    labels = list(LABELS)
    f = t.min_class_fraction
    checks = [
        ("row_count", gxe.ExpectTableRowCountToBeBetween(min_value=1), ">= 1", "images"),
        ("decodable", gxe.ExpectColumnValuesToBeNull(column="_undecodable_photo"), "every photo decodable",
         "photos that cannot be decoded"),
        ("label_in_set", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels), labels,
         "label is not a known label"),
        ("label_not_null", gxe.ExpectColumnValuesToNotBeNull(column="label"), "not null", "label is missing"),
        ("split_not_null", gxe.ExpectColumnValuesToNotBeNull(column="split"), "not null", "split is missing"),
        ("classes_per_split", gxe.ExpectColumnValuesToBeNull(column="_split_missing_class"),
         "both classes in every split", "splits without both classes"),
        ("class_balance", gxe.ExpectColumnMeanToBeBetween(column="_defective", min_value=f, max_value=1 - f),
         [f, 1 - f], f"the defective fraction must be within [{f:g}, {1 - f:g}] (each class >= {f:g})"),
    ]
    if required_splits:
        required = sorted(set(required_splits))
        checks.append(("splits_present", gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=required),
                       required, "required splits"))
    if "task_id" in df.columns:
        spread = df.groupby("task_id")["split"].transform("nunique")
        frame["_task_in_several_splits"] = df["task_id"].astype(str).where(spread > 1)
        checks.append(("task_single_split", gxe.ExpectColumnValuesToBeNull(column="_task_in_several_splits"),
                       "each task in one split", "tasks whose photos are in more than one split"))
    counts = df.groupby(["split", "label"]).size()
    figures = {"images": len(df), "undecodable": int((~decodable).sum()),
               "per_split": {str(s): {str(lbl): int(n) for lbl, n in counts[s].items()}
                             for s in counts.index.get_level_values(0).unique()},
               "splits_missing_class": splits_missing_class}
    return _validate(gate, frame, checks, figures, [])


# -- accuracy -----------------------------------------------------------------------------------
def _number(metrics: Mapping | None, *path: str) -> float | None:
    value: Any = metrics
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def estimates(metrics: Mapping | None) -> dict[str, Estimate] | None:
    """Right answers of n, overall and per class, read from a metrics dict's confusion matrix
    [[tn, fp], [fn, tp]] (gymops.ml.evaluate.classification_metrics): the counts every accuracy
    figure of a gate is stated with. None without a confusion matrix."""
    confusion = metrics.get("confusion") if isinstance(metrics, Mapping) else None
    try:
        (tn, fp), (fn, tp) = [[int(v) for v in row] for row in confusion]
    except (TypeError, ValueError):
        return None
    return {"overall": Estimate(tn + tp, tn + fp + fn + tp), GOOD: Estimate(tn, tn + fp),
            DEFECTIVE: Estimate(tp, fn + tp)}


def pass_mark(n: int, threshold: float, margin: float, alpha: float) -> int:
    """The fewest right answers of ``n`` with which a threshold check passes: the estimate reaches
    the threshold (the design's figure), AND a model ``margin`` below the threshold would get that
    many with probability <= ``alpha``. On a holdout of the README's size (gate_sample_size: 134
    photos for 0.90 +- 0.05 at 99%/5%) the two coincide (121); on fewer photos the second is the
    stricter one, so a small holdout costs power, never the stated false-pass rate. Above n (the
    value n + 1) when no count of n photos can satisfy both."""
    k = math.ceil(threshold * n - 1e-9)
    low = max(threshold - margin, 0.0)
    while k <= n and pass_probability(low, n, k) > alpha:
        k += 1
    return k


def threshold_check(estimate: Estimate, threshold: float, t: GateSettings, guarded: bool = True) -> dict:
    """The figures of one threshold check: k, n, the estimate and its 95% exact interval, the
    threshold, the pass mark, and the chance a model ``decision_margin`` above (below) the
    threshold passes with this n. ``guarded`` False: the pass mark is the threshold alone (the
    validation check, whose photos also chose the epoch: a training sanity check, not the
    deployment decision)."""
    n = estimate.n
    mark = pass_mark(n, threshold, t.decision_margin, t.decision_alpha) if guarded else math.ceil(threshold * n - 1e-9)
    above, below = min(threshold + t.decision_margin, 1.0), max(threshold - t.decision_margin, 0.0)
    return {**estimate.as_dict(), "threshold": threshold, "pass_mark": mark,
            "pass_if_above": round(pass_probability(above, n, mark), 4) if n else 0.0,
            "pass_if_below": round(pass_probability(below, n, mark), 4) if n else 0.0,
            "passed": n > 0 and estimate.k >= mark}


@dataclass(frozen=True)
class ChampionComparison:
    """The active model (champion) against the candidate (challenger), each photo of the CURRENT
    holdout version judged by both: ``overall`` on all of it, ``newest`` on the photos set aside
    since the champion was trained (confirmed after its data: where its corrections live; None
    when there are none)."""
    champion_version: str
    holdout_version: int
    overall: PairedComparison
    newest: PairedComparison | None = None

    def as_dict(self) -> dict:
        return {"champion_version": self.champion_version, "holdout_version": self.holdout_version,
                "overall": self.overall.as_dict(), "newest": self.newest.as_dict() if self.newest else None}


def compare_with_champion(champion_version: str, holdout_version: int, challenger_right, champion_right,
                          newest_mask=None) -> ChampionComparison:
    """Paired comparisons (McNemar, exact) of two models' per-photo answers on the same holdout,
    overall and on the photos ``newest_mask`` marks. The 90% two-sided interval's lower bound is
    a one-sided 95% bound: the non-inferiority test."""
    a, b = [bool(x) for x in challenger_right], [bool(x) for x in champion_right]
    overall = paired_comparison(a, b, confidence=0.90)
    newest = None
    if newest_mask is not None and any(newest_mask):
        keep = [bool(m) for m in newest_mask]
        newest = paired_comparison([x for x, m in zip(a, keep) if m], [y for y, m in zip(b, keep) if m], 0.90)
    return ChampionComparison(champion_version, holdout_version, overall, newest)


def accuracy_gate(candidate: Mapping, champion: ChampionComparison | None = None,
                  thresholds: GateSettings | None = None) -> GateResult:
    """candidate: {"val": metrics, "holdout": metrics} ("validation" is accepted for "val"), each
    metrics with its confusion matrix (classification_metrics); the holdout metrics are the
    candidate's on the current holdout version, the one ``champion`` was compared on.

    Threshold checks, each stated as k of n with its exact interval and pass mark (``pass_mark``):
    validation >= val_accuracy (the estimate alone); holdout >= holdout_accuracy and each class >=
    class_accuracy (the estimate, and a model decision_margin below passes <= decision_alpha).
    With a champion (the active model), "better than the active model" is, on the same photos:
    non-inferior overall (the one-sided 95% lower bound of challenger - champion above
    -noninferiority_margin), and not significantly worse on the photos confirmed since the
    champion was trained: it fails when, of the photos there that only one model gets right, so
    few are the challenger's that two equally accurate models would split them that unevenly with
    probability <= decision_alpha (McNemar's exact one-sided test). A point estimate there (right
    alone on fewer) decides on one photo: an equal retrain failed it 1 time in 3 (bench/decision)."""
    t = thresholds or GateSettings()
    gate = "accuracy"
    val = candidate.get("val", candidate.get("validation")) if isinstance(candidate, Mapping) else None
    holdout = candidate.get("holdout") if isinstance(candidate, Mapping) else None
    failures: list[Failure] = []
    figures: dict = {}

    def check(name: str, metrics, part: str, threshold: float, what: str, guarded: bool = True) -> None:
        found = estimates(metrics)
        if found is None or found[part].n == 0:
            figures[name] = None
            failures.append(Failure(name, None, threshold, f"{what} is missing from the candidate's metrics"))
            return
        est = found[part]
        fig = figures[name] = threshold_check(est, threshold, t, guarded)
        if not fig["passed"]:
            low, high = est.interval
            needed = (f"{fig['pass_mark']} of {est.n} needed" if fig["pass_mark"] <= est.n
                      else f"{est.n} photos cannot show it")
            failures.append(Failure(name, est.value, threshold,
                                    f"{what} {est.value:.4f} ({est.k}/{est.n}, 95% CI {low:.3f}-{high:.3f}) is below "
                                    f"{threshold:.4f}: {needed}"))

    check("val_accuracy", val, "overall", t.val_accuracy, "validation accuracy", guarded=False)
    check("holdout_accuracy", holdout, "overall", t.holdout_accuracy, "holdout accuracy")
    for label in (GOOD, DEFECTIVE):
        check(f"class_accuracy.{label}", holdout, label, t.class_accuracy, f"holdout accuracy of class {label}")
    figures["champion"] = champion.as_dict() if champion else None
    if champion is not None:
        o = champion.overall
        if not o.ci_low > -t.noninferiority_margin:
            failures.append(Failure(
                "better_than_champion.overall", round(o.ci_low, 6), -t.noninferiority_margin,
                f"against {champion.champion_version} on the same {o.n} holdout photos: change {o.difference:+.4f} "
                f"(challenger alone right on {o.challenger_only}, champion alone on {o.champion_only}); its one-sided "
                f"95% lower bound {o.ci_low:+.4f} is not above -{t.noninferiority_margin:g} (non-inferiority)"))
        figures["champion"]["overall"]["passed"] = o.ci_low > -t.noninferiority_margin
        nw = champion.newest
        if nw is not None and nw.p_worse <= t.decision_alpha:
            failures.append(Failure(
                "better_than_champion.newest", round(nw.p_worse, 6), t.decision_alpha,
                f"on the {nw.n} holdout photos confirmed since {champion.champion_version} was trained the challenger "
                f"is significantly worse: right alone on {nw.challenger_only}, the champion alone on "
                f"{nw.champion_only} (change {nw.difference:+.4f}; exact one-sided p = {nw.p_worse:.4f} <= "
                f"{t.decision_alpha:g})"))
        if nw is not None:
            figures["champion"]["newest"]["passed"] = nw.p_worse > t.decision_alpha
    return _result(gate, figures, failures)


def holdout_target(t: GateSettings) -> int:
    """Photos per class the holdout grows to (the README's sizing rule): enough that on the class
    threshold a model decision_margin above passes with >= decision_power and one below with <=
    decision_alpha (134 for 0.90 +- 0.05 at 99%/5%)."""
    return gate_sample_size(t.class_accuracy, t.decision_margin, t.decision_power, t.decision_alpha).n


# -- performance --------------------------------------------------------------------------------
def performance_gate(onnx_path, sample_inputs, thresholds: GateSettings | None = None, threads: int = 2,
                     concurrency: int = 2, throughput_seconds: float = 2.0, warmup: int = 10,
                     timeout_s: float = 300.0) -> GateResult:
    """Latency, throughput and memory of an ONNX model measured by onnxruntime in a sandbox child
    process (gymops.lifecycle.sandbox), never on the production server: ``perf_requests`` sequential
    single-image requests (mean/p50/p99 latency), then ``concurrency`` callers for
    ``throughput_seconds`` (requests/s), and the child's peak RSS. sample_inputs: float32
    (N, 3, 224, 224), cycled through. A model that cannot load, crashes or times out fails the gate
    with the reason."""
    import numpy as np

    from gymops.lifecycle.sandbox import run_sandbox

    t = thresholds or GateSettings()
    gate = "performance"
    inputs = np.asarray(sample_inputs)
    if inputs.ndim != 4 or inputs.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE) or len(inputs) == 0:
        raise ValueError(f"sample_inputs must be (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) with N >= 1, got {inputs.shape}")
    if inputs.dtype != np.float32:
        raise ValueError(f"sample_inputs must be float32, got {inputs.dtype}")
    if not os.path.isfile(onnx_path):
        return _result(gate, {}, [Failure("sandbox.load", str(onnx_path), "a readable ONNX file",
                                          f"no model file at {onnx_path}")])
    report = run_sandbox(onnx_path, inputs, requests=t.perf_requests, warmup=warmup,
                         throughput_seconds=throughput_seconds, concurrency=concurrency, threads=threads,
                         timeout_s=timeout_s)
    figures = {**report.figures, "sandbox_seconds": round(report.wall_s, 2)}
    if not report.ok:
        detail = f"; output: {report.output_tail.strip()[-500:]}" if report.output_tail.strip() else ""
        return _result(gate, figures, [Failure(f"sandbox.{report.stage}", None, None,
                                               f"{report.error}{detail}")])
    failures = []
    mean, rps, peak = figures["mean_latency_ms"], figures["throughput_rps"], figures["peak_memory_mb"]
    if mean > t.latency_ms:
        failures.append(Failure("mean_latency_ms", mean, t.latency_ms,
                                f"mean latency {mean:.3f} ms over {t.perf_requests} requests exceeds {t.latency_ms:g} ms"))
    if peak > t.memory_mb:
        failures.append(Failure("peak_memory_mb", peak, t.memory_mb,
                                f"peak memory {peak:.1f} MB exceeds {t.memory_mb:g} MB"))
    if rps < t.throughput_rps:
        failures.append(Failure("throughput_rps", rps, t.throughput_rps,
                                f"throughput {rps:.1f} req/s is below {t.throughput_rps:g} req/s"))
    return _result(gate, figures, failures)


__all__ = [
    "Failure", "GateResult", "GateSettings", "check_corrected_tasks",
    "check_training_dataset", "accuracy_gate", "performance_gate", "failures_as_reasons", "ChampionComparison",
    "compare_with_champion", "estimates", "pass_mark", "threshold_check", "holdout_target",
]
