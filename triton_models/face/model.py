"""Triton Python backend of the face model: encoded face chip in, embedding + model_version out.

Per request: "photo" (TYPE_STRING [1], JPEG/PNG bytes of a face chip) -> "embedding" (FP32 [128],
L2-normalised) and "model_version" (the semver in this version folder's metadata.json). Triton's
dynamic batcher hands several requests to one execute(); the whole batch runs in one onnxruntime
call. A photo that cannot be decoded fails its own request (INVALID_ARG) and nothing else.

Why the matching is NOT here: verify/identify need the gallery of the version that embedded the probe,
and the gallery changes with every enrolment; keeping it in the Access service's process
(gymops/face/matching.py) lets one numpy matmul search it (0.1 ms at 10^4 members) with no Triton
reload per enrolment, while this model stays a pure function of its version folder.

Version folder (gymops.serving.control.write_version), nothing taken from the project checkout:
    <N>/model.onnx      input "image" float32 (B, 3, 150, 150), output "embedding" (B, 128) raw
    <N>/metadata.json   {"version": "1.0.0", "threshold": 0.9, "embedding_dim": 128, ...}
    <N>/model.py        this file;   <N>/preprocess.py   gymops/face/preprocess.py, both snapshotted
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from pathlib import Path

# The stub's embedded interpreter ignores PYTHONPATH; apply it by hand BEFORE numpy is imported (the
# server puts a numpy 1.x directory first on it: gymops/serving/stubenv.py).
for _entry in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)

import numpy as np  # noqa: E402

import triton_python_backend_utils as pb_utils  # noqa: E402


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


def _load_preprocess(version_dir: Path):
    """This version folder's preprocess.py as a private module (never the checkout's gymops)."""
    path = version_dir / "preprocess.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a version folder must hold its preprocessing")
    name = f"_face_v{version_dir.name}_preprocess_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if int(np.__version__.split(".")[0]) >= 2:
            raise RuntimeError(f"numpy {np.__version__} in the Python backend stub corrupts tensors; "
                               "start the server with gymops.serving (gymops serving setup)")
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        meta = json.loads((version_dir / "metadata.json").read_text())
        self.model_version = str(meta["version"])
        self.pre = _load_preprocess(version_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_param(config, "intra_op_threads", "2"))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", _param(config, "allow_spinning", "0"))
        self.session = ort.InferenceSession(str(version_dir / meta.get("onnx_file", "model.onnx")), options,
                                            providers=["CPUExecutionProvider"])
        pb_utils.Logger.log_info(f"face {args['model_version']} ({self.model_version}) ready, pid {os.getpid()}")

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        rows, images = [], []
        for i, request in enumerate(requests):
            photos = pb_utils.get_input_tensor_by_name(request, "photo").as_numpy().reshape(-1)
            try:
                if len(photos) != 1:
                    raise ValueError(f"one photo per request, got {len(photos)}")
                images.append(self.pre.preprocess(bytes(photos[0])))
                rows.append(i)
            except Exception as exc:  # noqa: BLE001 - the caller's photo, not the model
                err = pb_utils.TritonError(f"undecodable face photo: {exc}",
                                           getattr(pb_utils.TritonError, "INVALID_ARG", None))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=err)
        if rows:
            raw = self.session.run(["embedding"], {"image": np.stack(images).astype(np.float32)})[0]
            embeddings = self.pre.normalise(raw).astype(np.float32)
            version = np.array([self.model_version.encode()], dtype=object)
            for k, i in enumerate(rows):
                if not np.isfinite(embeddings[k]).all():
                    err = pb_utils.TritonError("non-finite embedding")
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=err)
                    continue
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("embedding", embeddings[k:k + 1]),
                    pb_utils.Tensor("model_version", version.reshape(1, 1))])
        return responses

    def finalize(self) -> None:
        self.session = None
