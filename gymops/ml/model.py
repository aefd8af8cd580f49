"""The laundry model: a frozen ImageNet backbone TRUNK plus small trainable defect HEADS, one per
feature map, their probabilities averaged (gymops/ml/train.py's docstring says why), and the
configuration that defines a training (``TrainConfig``: what makes two trainings the same).
Features are extracted once per image (``extract_features``) so training only runs the heads."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gymops.ml.backbones import build_backbone
from gymops.ml.preprocess import normalise

FEATURE_LAYERS = {"efficientnet_lite0": "stage4,stage5,stage6", "resnet50": "layer3"}


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    seed: int = 0
    backbone: str = "efficientnet_lite0"
    weights_path: str | None = None  # None: the package's EfficientNet-Lite0 weights
    num_threads: int = 2
    # One head per layer, their probabilities averaged. efficientnet_lite0: stage1..stage7 (auto:
    # stage4,stage5,stage6); resnet50: layer1..layer4 (auto: layer3). Comma-separated.
    feature_layer: str = "auto"
    head_hidden: int = 64
    head_layers: int = 2  # per-position layers before pooling (1: a linear detector)
    dropout: float = 0.2
    weight_decay: float = 1e-4
    class_weighting: bool = True  # classes weighted to count equally in the loss
    defective_weight: float = 1.5  # and a missed defect costs this many false alarms
    calibrate_threshold: bool = False  # on a ~30-photo validation split it costs more than it gains
    checkpoint_every: int = 5
    feature_batch: int = 32

    def resolved_layer(self) -> str:
        return FEATURE_LAYERS[self.backbone] if self.feature_layer == "auto" else self.feature_layer

    def resolved_layers(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.resolved_layer().split(",") if x.strip())

    def fingerprint(self) -> str:
        """What makes two trainings the same (num_threads and checkpoint cadence excluded)."""
        d = asdict(self)
        for k in ("num_threads", "checkpoint_every", "feature_batch"):
            d.pop(k)
        d["feature_layer"] = self.resolved_layer()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# Model pieces


_LITE0_STAGE_ENDS = {"stage1": 1, "stage2": 3, "stage3": 5, "stage4": 8, "stage5": 11, "stage6": 15, "stage7": 16}


class Trunk(nn.Module):
    """The frozen part of a backbone, up to the deepest of ``layers``: images -> one feature map
    (N, C, H, W) per layer, in the order given."""

    def __init__(self, backbone: nn.Module, name: str, layers: Sequence[str] | str):
        super().__init__()
        layers = (layers,) if isinstance(layers, str) else tuple(layers)
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"feature layers must be distinct and at least one, got {list(layers)}")
        self.name, self.layers = name, layers
        if name == "efficientnet_lite0":
            unknown = [l for l in layers if l not in _LITE0_STAGE_ENDS]
            if unknown:
                raise ValueError(f"unknown EfficientNet-Lite0 layer {unknown[0]!r} (expected {sorted(_LITE0_STAGE_ENDS)})")
            ends = [_LITE0_STAGE_ENDS[l] for l in layers]
            self.stem = nn.Sequential(backbone._conv_stem, backbone._bn0, nn.ReLU6())
            self.body = nn.Sequential(*backbone._blocks[:max(ends)])
            self.channels = tuple(backbone._blocks[n - 1]._bn2.num_features for n in ends)
        elif name == "resnet50":
            names = ["layer1", "layer2", "layer3", "layer4"]
            unknown = [l for l in layers if l not in names]
            if unknown:
                raise ValueError(f"unknown ResNet-50 layer {unknown[0]!r} (expected {names})")
            ends = [names.index(l) + 1 for l in layers]
            self.stem = nn.Sequential(backbone.conv1, backbone.bn1, nn.ReLU(), backbone.maxpool)
            self.body = nn.Sequential(*[getattr(backbone, l) for l in names[:max(ends)]])
            self.channels = tuple(self.body[n - 1][-1].bn3.num_features for n in ends)
        else:
            raise ValueError(f"unknown backbone {name!r}")
        self._taps = ends  # a map is taken after this many body modules
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Trunk":
        return super().train(False)  # always frozen: BatchNorm keeps its ImageNet statistics

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        taken: dict[int, torch.Tensor] = {}
        for i, module in enumerate(self.body, start=1):
            x = module(x)
            if i in self._taps:
                taken[i] = x
        return tuple(taken[n] for n in self._taps)


class DefectHead(nn.Module):
    """Per-position detector on a feature map (a small MLP applied at every position, as 1x1
    convolutions), pooled by average and max, then a linear layer."""

    def __init__(self, channels: int, hidden: int = 64, dropout: float = 0.2, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {layers}")
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))
        self.register_buffer("logit_bias", torch.zeros(2))  # threshold calibration, folded in
        convs: list[nn.Module] = [nn.Conv2d(channels, hidden, 1)]
        for _ in range(layers - 1):
            convs += [nn.ReLU(), nn.Conv2d(hidden, hidden, 1)]
        self.proj = nn.Sequential(*convs)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, 2)

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.copy_(std.reshape(self.std.shape).clamp_min(1e-5))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.proj((fmap - self.mean) / self.std))
        z = self.dropout(z)
        pooled = torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)
        return self.fc(pooled) + self.logit_bias


class HeadEnsemble(nn.Module):
    """One DefectHead per trunk map; the output is the log of their mean probabilities (so a
    softmax of it is the mean). Each head is trained on its own loss (``member_logits``)."""

    def __init__(self, channels: Sequence[int], hidden: int = 64, dropout: float = 0.2, layers: int = 2):
        super().__init__()
        self.heads = nn.ModuleList(DefectHead(c, hidden, dropout, layers) for c in channels)
        self.register_buffer("logit_bias", torch.zeros(2))  # threshold calibration, folded in

    def member_logits(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != len(self.heads):
            raise ValueError(f"{len(self.heads)} heads but {len(maps)} feature maps")
        return [head(m) for head, m in zip(self.heads, maps)]

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        probs = torch.stack([torch.softmax(z, dim=1) for z in self.member_logits(maps)]).mean(dim=0)
        return torch.log(probs.clamp_min(1e-12)) + self.logit_bias


class LaundryNet(nn.Module):
    """The served model: images (N, 3, S, S) float32, normalised -> probabilities [good, defective]."""

    def __init__(self, trunk: Trunk, head: HeadEnsemble):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.trunk(image)), dim=1)


# ----------------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def extract_features(trunk: nn.Module, arrays: np.ndarray, batch: int = 32,
                     progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, ...]:
    """float32 feature maps of ``arrays`` (one array per trunk layer): uint8 (N, S, S, 3) resized RGB
    (normalised here) or float32 (N, 3, S, S) model input. The trunk runs in eval mode, ``batch``
    images at a time."""
    trunk.eval()
    out: list[np.ndarray] | None = None
    n = len(arrays)
    for i in range(0, n, batch):
        chunk = np.asarray(arrays[i:i + batch])
        x = normalise(chunk) if chunk.dtype == np.uint8 else np.asarray(chunk, dtype=np.float32)
        maps = trunk(torch.from_numpy(np.ascontiguousarray(x)))
        maps = (maps,) if isinstance(maps, torch.Tensor) else maps
        if out is None:
            out = [np.empty((n, *m.shape[1:]), dtype=np.float32) for m in maps]
        for o, m in zip(out, maps):
            o[i:i + len(m)] = m.numpy()
        if progress:
            progress(min(i + batch, n), n)
    if out is None:
        raise ValueError("no images to extract features from")
    return tuple(out)


def build_model(cfg: TrainConfig) -> tuple[Trunk, HeadEnsemble]:
    backbone = build_backbone(cfg.backbone, Path(cfg.weights_path) if cfg.weights_path else None)
    trunk = Trunk(backbone, cfg.backbone, cfg.resolved_layers())
    return trunk, HeadEnsemble(trunk.channels, cfg.head_hidden, cfg.dropout, cfg.head_layers)
