"""ONNX export of the laundry model, checked against PyTorch with onnxruntime.

Input "image": float32 (batch, 3, size, size), normalised by ``gymops.ml.preprocess``;
output "probabilities": float32 (batch, 2), softmax over [good, defective]. Batch is dynamic.
Uses the TorchScript exporter (``dynamo=False``; the dynamo one needs onnxscript and takes ~6 s).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gymops.ml.preprocess import normalise

from gymops.settings import quiet_tools  # noqa: E402

quiet_tools()  # before onnxruntime/albumentations are imported

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
TOLERANCE = 1e-4


class ExportMismatch(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the tolerance."""


def _photo_like(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Normalised inputs that look like photos (smooth colour fields with edges), not white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    from PIL import Image

    imgs = np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC)) for s in small])
    return normalise(imgs)


def export_onnx(model: nn.Module, path: Path | str, size: int = 224, samples: np.ndarray | None = None,
                tolerance: float = TOLERANCE, threads: int = 2) -> float:
    """Export ``model`` (images -> probabilities) to ``path``; return the max |onnxruntime - torch|
    over random inputs, photo-like inputs and ``samples`` (float32 NCHW or uint8 NHWC real images,
    optional). Raises ExportMismatch above ``tolerance``; the file is then not left at ``path``."""
    from gymops.ml.evaluate import onnx_session

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    model = model.eval()
    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic (the size is fixed)
        torch.onnx.export(
            model, (dummy,), str(tmp), dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    try:
        import onnx

        onnx.checker.check_model(str(tmp))
        sess = onnx_session(tmp, threads)
        checks = [np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32),
                  _photo_like(4, size)]
        if samples is not None and len(samples):
            s = np.asarray(samples[:16])
            checks.append(normalise(s) if s.dtype == np.uint8 else s.astype(np.float32))
        worst = 0.0
        for x in checks:
            for batch in (x[:1], x):  # batch 1 and a larger one: the batch axis is dynamic
                ours = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})[0]
                with torch.no_grad():
                    ref = model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()
                worst = max(worst, float(np.abs(ours - ref).max()))
        if worst > tolerance:
            raise ExportMismatch(f"onnxruntime differs from PyTorch by {worst:.3g} (> {tolerance:g})")
        os.replace(tmp, path)
        return worst
    finally:
        tmp.unlink(missing_ok=True)
