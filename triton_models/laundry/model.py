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
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
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


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


def _load_preprocess(version_dir: Path):
    """The preprocess.py of this version folder as a private module object (see the docstring)."""
    path = version_dir / "preprocess.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a version folder must hold its preprocessing "
                                "(write it with gymops.serving.control.write_version)")
    name = f"_laundry_v{version_dir.name}_preprocess_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _invalid(message: str) -> "pb_utils.InferenceResponse":
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if int(np.__version__.split(".")[0]) >= 2:
            # The stub of Triton 2.51 predates numpy 2: under it every input tensor silently arrives
            # as its first element repeated. gymops.serving puts numpy 1.x first on the stubs' path.
            raise RuntimeError(f"numpy {np.__version__} in the Python backend stub corrupts tensors; "
                               "start the server with gymops.serving (gymops serving setup)")
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
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
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if self.input_name not in names_in or self.output_name not in names_out:
            raise ValueError(f"{onnx_path}: expected input {self.input_name!r} and output {self.output_name!r}, "
                             f"found inputs {names_in} and outputs {names_out}")
        # Warm up (the first run allocates and plans) and check the contract before serving anything:
        # a model that cannot run or answers in the wrong shape fails its load, the old one keeps serving.
        max_batch = max(1, int(config.get("max_batch_size", 1)))
        for batch in sorted({1, max_batch}):
            out = self._run(np.zeros((batch, 3, self.image_size, self.image_size), dtype=np.float32))
            if out.shape != (batch, 2) or not np.all(np.isfinite(out)):
                raise ValueError(f"{onnx_path}: output {self.output_name!r} must be finite (batch, 2), "
                                 f"got {out.dtype} {out.shape}")
        pb_utils.Logger.log_info(f"laundry {args['model_version']} ({self.model_version}) ready: "
                                 f"{onnx_path.name}, intra_op_threads={options.intra_op_num_threads}, "
                                 f"pid {os.getpid()}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float32)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        images: list[np.ndarray] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, rows)
        for i, request in enumerate(requests):
            photos = pb_utils.get_input_tensor_by_name(request, "photo").as_numpy().reshape(-1)
            if len(photos) == 0:
                responses[i] = _invalid("no photo in the request")
                continue
            first = len(images)
            try:
                for j, photo in enumerate(photos):
                    try:
                        images.append(self._preprocess(photo, self.image_size))
                    except ValueError as exc:
                        raise ValueError(f"photo {j}: {exc}") from None
            except ValueError as exc:
                del images[first:]
                responses[i] = _invalid(str(exc))
                continue
            spans.append((i, first, len(photos)))
        if images:
            probabilities = self._run(np.stack(images))
            labels = np.array([self.labels[k].encode() for k in probabilities.argmax(axis=1)], dtype=object)
            version = self.model_version.encode()
            for i, first, rows in spans:
                p = probabilities[first:first + rows]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("label", labels[first:first + rows].reshape(rows, 1)),
                    pb_utils.Tensor("probabilities", np.ascontiguousarray(p)),
                    pb_utils.Tensor("model_version", np.array([version] * rows, dtype=object).reshape(rows, 1)),
                ])
        return responses

    def finalize(self) -> None:
        self.session = None
