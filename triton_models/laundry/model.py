"""Triton Python backend of the laundry model: encoded photo in, verdict out.

Per request: "photo" (TYPE_STRING [1], JPEG/PNG bytes) -> "label" ("good"/"defective"),
"probabilities" (FP32 [2], order good, defective) and "model_version" (the semver in this version
folder's metadata.json). Triton's dynamic batcher hands several requests to one execute() call;
every photo is decoded and preprocessed with THE shared preprocessing (gymops/ml/preprocess.py, the
code the training data went through, as copied into this version folder) and the whole batch runs in
one onnxruntime call. A photo that cannot be decoded fails its own request (INVALID_ARG) and nothing
else.

Version folder (written atomically by gymops.serving.control.write_version), everything the version
runs, nothing taken from the project checkout:
    <N>/model.onnx      input "image" float32 (B, 3, 224, 224), output "probabilities" (B, 2) softmax
    <N>/metadata.json   {"version": "1.2.0", "labels": ["good", "defective"], "image_size": 224, ...}
    <N>/model.py        this file, snapshotted when the version was written
    <N>/preprocess.py   gymops/ml/preprocess.py, snapshotted when the version was written
so a version always runs the code it was verified with: a rollback serves yesterday's weights with
yesterday's preprocessing, bit for bit (tests/test_deploy.py checks it).

The preprocessing is loaded from its file under a name unique to this version folder and instance,
and never registered in sys.modules or found through sys.path: two versions loaded at once (each
instance is its own stub process, but nothing here relies on that) can never pick up each other's,
nor the checkout's gymops package that the server's PYTHONPATH may also hold.

Config parameters (string values): intra_op_threads, inter_op_threads, allow_spinning ("0"/"1").

Canary and shadow (README "Progressive delivery"). A CANARY folder (written by gymops.deploy.canary)
holds two complete version folders, stable/ and candidate/, and a metadata.json with "role":
"canary", "canary_fraction" and "shadow_fraction". The public name then serves both from ONE stub:
each request is answered by the candidate with probability canary_fraction, else by the stable
version; of the requests the stable version answers, shadow_fraction are also run through the
candidate and only the agreement is recorded (shadow: canary_fraction 0). Every answer carries the
model_version that produced it. Why in-process routing and not BLS to a pinned version: a BLS hop
is another stub round trip per request (server #7622: 32 ms through BLS against 6.3 ms through an
ensemble); two onnxruntime sessions in one stub cost only the second model's memory (measured in
BENCHMARKS.md "Progressive delivery"). The split is a property of the folder, so starting, promoting
and aborting a canary are all the ordinary zero-failure swap.

Live signals, counted HERE per model_version with pb_utils.MetricFamily on Triton's metrics endpoint,
because Triton's own nv_inference_request_failure counts a Python-backend error response as a
SUCCESS (server #7713, open; #8143: reason=OTHER) and labels by the folder number, which in a canary
holds two model versions:
    gymops_laundry_requests_total{model_version, outcome}   outcome ok | error | invalid (bad photo:
                                                            the caller's fault, not the model's)
    gymops_laundry_predictions_total{model_version, label}  the prediction mix (defective rate)
    gymops_laundry_compute_seconds{model_version}           histogram: preprocessing + inference
    gymops_laundry_shadow_total{model_version, active_version, active_label, candidate_label}
A model answering non-finite probabilities fails THAT request with an error (counted), instead of
returning argmax(NaN) = "good".
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import uuid
from pathlib import Path

# The stub's embedded interpreter ignores PYTHONPATH; apply it by hand BEFORE numpy is imported: the
# server puts a numpy 1.x directory first on it (gymops/serving/stubenv.py explains why).
for _entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

import numpy as np  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402

DEFAULT_LABELS = ("good", "defective")
COMPUTE_BUCKETS = [0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


def _load_preprocess(version_dir: Path):
    """The preprocess.py of this version folder as a private module object (see the docstring)."""
    path = version_dir / "preprocess.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a version folder must hold its preprocessing "
                                "(write it with gymops.serving.control.write_version)")
    name = f"_laundry_v{version_dir.parent.name}_{version_dir.name}_preprocess_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error(message: str, code_name: str) -> "pb_utils.InferenceResponse":
    code = getattr(pb_utils.TritonError, code_name, None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _invalid(message: str) -> "pb_utils.InferenceResponse":
    return _error(message, "INVALID_ARG")


class _Metrics:
    """The custom metric families (see the docstring); None-safe when the API is missing."""

    def __init__(self):
        family = getattr(pb_utils, "MetricFamily", None)
        self._children: dict = {}
        if family is None:
            self.enabled = False
            return
        self.enabled = True
        self.requests = family("gymops_laundry_requests_total",
                               "Requests answered per model_version and outcome (ok, error, invalid)",
                               family.COUNTER)
        self.predictions = family("gymops_laundry_predictions_total",
                                  "Photos classified per model_version and label", family.COUNTER)
        self.compute = family("gymops_laundry_compute_seconds",
                              "Preprocessing + inference seconds per request and model_version",
                              family.HISTOGRAM)
        self.shadow = family("gymops_laundry_shadow_total",
                             "Mirrored photos per candidate model_version and (active_label, candidate_label)",
                             family.COUNTER)

    def _child(self, fam, labels: dict, **kwargs):
        key = (id(fam), tuple(sorted(labels.items())))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = fam.Metric(labels=labels, **kwargs)
        return child

    def count(self, version: str, outcome: str, n: int = 1) -> None:
        if self.enabled and n:
            self._child(self.requests, {"model_version": version, "outcome": outcome}).increment(n)

    def predicted(self, version: str, label: str, n: int) -> None:
        if self.enabled and n:
            self._child(self.predictions, {"model_version": version, "label": label}).increment(n)

    def seconds(self, version: str, value: float, n: int) -> None:
        if self.enabled:
            child = self._child(self.compute, {"model_version": version}, buckets=COMPUTE_BUCKETS)
            for _ in range(n):
                child.observe(value)

    def mirrored(self, version: str, active: str, active_label: str, candidate_label: str, n: int) -> None:
        if self.enabled and n:
            self._child(self.shadow, {"model_version": version, "active_version": active,
                                      "active_label": active_label, "candidate_label": candidate_label}).increment(n)

    def close(self) -> None:
        self._children.clear()  # the Metric objects must go before their families (backend rule)


class _Route:
    """One model version: its ONNX session, its labels and its own preprocessing."""

    def __init__(self, version_dir: Path, config: dict, max_batch: int):
        self._preprocess = _load_preprocess(version_dir).preprocess
        meta = json.loads((version_dir / "metadata.json").read_text())
        self.model_version = str(meta["version"])
        self.labels = tuple(meta.get("labels", DEFAULT_LABELS))
        if len(self.labels) != 2:
            raise ValueError(f"metadata.json labels must be two (good, defective), got {self.labels}")
        self.image_size = int(meta.get("image_size", 224))
        self.input_name = meta.get("input_name", "image")
        self.output_name = meta.get("output_name", "probabilities")

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_param(config, "intra_op_threads", "2"))
        options.inter_op_num_threads = int(_param(config, "inter_op_threads", "1"))
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", _param(config, "allow_spinning", "0"))
        onnx_path = version_dir / meta.get("onnx_file", "model.onnx")
        self.onnx_path = onnx_path
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if self.input_name not in names_in or self.output_name not in names_out:
            raise ValueError(f"{onnx_path}: expected input {self.input_name!r} and output {self.output_name!r}, "
                             f"found inputs {names_in} and outputs {names_out}")
        # Warm up (the first run allocates and plans) and check the contract before serving anything:
        # a model that cannot run or answers in the wrong shape fails its load, the old one keeps serving.
        for batch in sorted({1, max_batch}):
            out = self._run(np.zeros((batch, 3, self.image_size, self.image_size), dtype=np.float32))
            if out.shape != (batch, 2) or not np.all(np.isfinite(out)):
                raise ValueError(f"{onnx_path}: output {self.output_name!r} must be finite (batch, 2), "
                                 f"got {out.dtype} {out.shape}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float32)

    def classify(self, items: list) -> tuple[list, list]:
        """items: [(request index, photos)] -> ([(index, response)], [(index, labels or None)]),
        the whole group in one onnxruntime call."""
        out: list = []
        labels_of: list = []
        images: list[np.ndarray] = []
        spans: list[tuple[int, int, int]] = []
        for i, photos in items:
            first = len(images)
            try:
                for j, photo in enumerate(photos):
                    try:
                        images.append(self._preprocess(photo, self.image_size))
                    except ValueError as exc:
                        raise ValueError(f"photo {j}: {exc}") from None
            except ValueError as exc:
                del images[first:]
                out.append((i, _invalid(str(exc))))
                labels_of.append((i, "invalid"))
                continue
            spans.append((i, first, len(photos)))
        if not images:
            return out, labels_of
        try:
            probabilities = self._run(np.stack(images))
        except Exception as exc:  # noqa: BLE001 -- the model failed: these requests fail, counted
            for i, _, _ in spans:
                out.append((i, _error(f"laundry {self.model_version}: inference failed: {exc}", "INTERNAL")))
                labels_of.append((i, None))
            return out, labels_of
        version = self.model_version.encode()
        for i, first, rows in spans:
            p = probabilities[first:first + rows]
            if p.shape != (rows, 2) or not np.all(np.isfinite(p)):
                out.append((i, _error(f"laundry {self.model_version}: the model answered non-finite "
                                      "probabilities", "INTERNAL")))
                labels_of.append((i, None))
                continue
            names = [self.labels[k] for k in p.argmax(axis=1)]
            out.append((i, pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("label", np.array([n.encode() for n in names], dtype=object).reshape(rows, 1)),
                pb_utils.Tensor("probabilities", np.ascontiguousarray(p)),
                pb_utils.Tensor("model_version", np.array([version] * rows, dtype=object).reshape(rows, 1)),
            ])))
            labels_of.append((i, names))
        return out, labels_of


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if int(np.__version__.split(".")[0]) >= 2:
            # The stub of Triton 2.51 predates numpy 2: under it every input tensor silently arrives
            # as its first element repeated. gymops.serving puts numpy 1.x first on the stubs' path.
            raise RuntimeError(f"numpy {np.__version__} in the Python backend stub corrupts tensors; "
                               "start the server with gymops.serving (gymops serving setup)")
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        meta = json.loads((version_dir / "metadata.json").read_text())
        max_batch = max(1, int(config.get("max_batch_size", 1)))
        self.canary = meta.get("role") == "canary"
        if self.canary:
            self.stable = _Route(version_dir / meta.get("stable_dir", "stable"), config, max_batch)
            self.candidate = _Route(version_dir / meta.get("candidate_dir", "candidate"), config, max_batch)
            self.canary_fraction = float(meta.get("canary_fraction", 0.0))
            self.shadow_fraction = float(meta.get("shadow_fraction", 0.0))
            self._rng = np.random.default_rng()
        else:
            self.stable = _Route(version_dir, config, max_batch)
            self.candidate = None
            self.canary_fraction = self.shadow_fraction = 0.0
        self.model_version = self.stable.model_version
        self.metrics = _Metrics()
        what = (f"canary {self.candidate.model_version} at {self.canary_fraction:.0%}, shadow "
                f"{self.shadow_fraction:.0%}, over {self.stable.model_version}") if self.canary else self.model_version
        pb_utils.Logger.log_info(f"laundry {args['model_version']} ({what}) ready: "
                                 f"{self.stable.onnx_path.name}, intra_op_threads={self.stable.threads}, "
                                 f"pid {os.getpid()}")

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        stable_items: list = []
        candidate_items: list = []
        mirrored: list = []
        draws = self._rng.random((len(requests), 2)) if self.canary else None
        for i, request in enumerate(requests):
            photos = pb_utils.get_input_tensor_by_name(request, "photo").as_numpy().reshape(-1)
            if len(photos) == 0:
                responses[i] = _invalid("no photo in the request")
                continue
            if self.canary and draws[i, 0] < self.canary_fraction:
                candidate_items.append((i, photos))
            else:
                stable_items.append((i, photos))
                if self.canary and draws[i, 1] < self.shadow_fraction:
                    mirrored.append((i, photos))
        stable_labels = self._serve(self.stable, stable_items, responses)
        if candidate_items:
            self._serve(self.candidate, candidate_items, responses)
        if mirrored:
            self._shadow(mirrored, stable_labels)
        return responses

    def _serve(self, route: _Route, items: list, responses: list) -> dict:
        if not items:
            return {}
        started = time.perf_counter()
        out, labels_of = route.classify(items)
        seconds = time.perf_counter() - started
        for i, response in out:
            responses[i] = response
        counts = {"ok": 0, "error": 0, "invalid": 0}
        mix: dict[str, int] = {}
        for _, names in labels_of:
            if names == "invalid":
                counts["invalid"] += 1
            elif names is None:
                counts["error"] += 1
            else:
                counts["ok"] += 1
                for name in names:
                    mix[name] = mix.get(name, 0) + 1
        m, version = self.metrics, route.model_version
        for outcome, n in counts.items():
            m.count(version, outcome, n)
        for label, n in mix.items():
            m.predicted(version, label, n)
        m.seconds(version, seconds, counts["ok"] + counts["error"])
        return {i: names for i, names in labels_of if isinstance(names, list)}

    def _shadow(self, mirrored: list, stable_labels: dict) -> None:
        """Mirrored requests through the candidate: only the agreement is recorded, nothing returned.
        A candidate failure here is counted (outcome error) and never reaches the caller."""
        items = [(i, photos) for i, photos in mirrored if i in stable_labels]
        if not items:
            return
        started = time.perf_counter()
        try:
            _, labels_of = self.candidate.classify(items)
        except Exception:  # noqa: BLE001 -- a shadow must never fail the answered request
            self.metrics.count(self.candidate.model_version, "error", len(items))
            return
        seconds = time.perf_counter() - started
        pairs: dict[tuple[str, str], int] = {}
        errors = ok = 0
        for i, names in labels_of:
            if not isinstance(names, list):
                errors += names is None
                continue
            ok += 1
            for active_label, candidate_label in zip(stable_labels[i], names):
                pairs[(active_label, candidate_label)] = pairs.get((active_label, candidate_label), 0) + 1
        cand, active = self.candidate.model_version, self.stable.model_version
        self.metrics.count(cand, "error", errors)
        for (a, c), n in pairs.items():
            self.metrics.mirrored(cand, active, a, c, n)
        self.metrics.seconds(cand, seconds, ok + errors)

    def finalize(self) -> None:
        self.metrics.close()
        self.stable = self.candidate = None
