"""The 2D backbones the recognition sub-networks are cut from, by name.

A plain table of entry points (timm's habit): a config names a backbone, ``BACKBONES`` says
how to build it. Every entry is a torchvision constructor called with ``weights=None``;
nothing is ever downloaded. Pretrained weights come from a local file through
``load_pretrained``.

Costs (multiply-adds for one 3x224x224 image, FlopCounterMode / 2; see docs/flops.md; the
tiny variants exist so tests and the CPU demo run the same code paths in seconds, and at
the 32x32 crops they are used with they cost a few MMACs):

    resnet18            1.81 G      resnet_tiny          0.89 G  (BasicBlock, [1, 1, 1, 1])
    resnet50            4.09 G      mobilenet_v2_tiny    0.037 G (width 0.25)
    mobilenet_v2        0.30 G
    efficientnet_b0     0.39 G
    efficientnet_b3     0.96 G (at 224; its native size is 300)

First-conv adaptation (``adapt_first_conv``): flow stacks (2L channels), RGB-difference
stacks (3L) and spectrograms (1 channel) reuse RGB kernels by averaging them over the 3
input channels and replicating the mean over the new channels, as TSN and the reference do.
We also rescale by ``3 / in_channels`` (``rescale=True``, the default) so that an input that
is the same in every channel gives exactly the response the RGB kernel gives to a grey image:
activations keep their magnitude whatever the number of channels. ``rescale=False`` is the
reference's rule (plain mean, no rescaling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from adamml.errors import AdamMLError


@dataclass(frozen=True)
class BackboneSpec:
    """One entry of the backbone table.

    family: "resnet" (TSN-like network with temporal pooling between stages) or
        "framewise" (a ``features`` trunk run on each frame, features averaged over frames).
    feature_dim: channels of the last feature map (what the classifier sees).
    classifier_prefix: state-dict prefix of the torchvision classifier, skipped when
        a checkpoint's class count differs.
    at_width: builds the family at another width multiplier (``model.policy.width_mult``);
        None when the family has no width knob.
    """

    name: str
    family: str
    constructor: Callable[[], nn.Module]
    feature_dim: int
    classifier_prefix: str
    description: str = ""
    at_width: Callable[[float], nn.Module] | None = None

    @property
    def framewise(self) -> bool:
        """A ``features`` trunk run on each frame: what the policy's extractors are cut from."""
        return self.family == "framewise"


def _mobilenet_v2(width_mult: float) -> nn.Module:
    return tvm.mobilenet_v2(weights=None, width_mult=width_mult)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        "resnet18", "resnet", lambda: tvm.resnet18(weights=None), 512, "fc.", "ResNet-18"
    ),
    "resnet50": BackboneSpec(
        "resnet50", "resnet", lambda: tvm.resnet50(weights=None), 2048, "fc.", "ResNet-50"
    ),
    "mobilenet_v2": BackboneSpec(
        "mobilenet_v2",
        "framewise",
        lambda: tvm.mobilenet_v2(weights=None),
        1280,
        "classifier.1.",
        "MobileNetV2 (width 1.0)",
        at_width=_mobilenet_v2,
    ),
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0",
        "framewise",
        lambda: tvm.efficientnet_b0(weights=None),
        1280,
        "classifier.1.",
        "EfficientNet-B0",
    ),
    "efficientnet_b3": BackboneSpec(
        "efficientnet_b3",
        "framewise",
        lambda: tvm.efficientnet_b3(weights=None),
        1536,
        "classifier.1.",
        "EfficientNet-B3",
    ),
    # Tiny CPU variants of the same families: tests and the demo.
    "resnet_tiny": BackboneSpec(
        "resnet_tiny",
        "resnet",
        lambda: tvm.ResNet(BasicBlock, [1, 1, 1, 1]),
        512,
        "fc.",
        "ResNet with one BasicBlock per stage (a shallow ResNet-18)",
    ),
    "mobilenet_v2_tiny": BackboneSpec(
        "mobilenet_v2_tiny",
        "framewise",
        lambda: tvm.mobilenet_v2(weights=None, width_mult=0.25),
        1280,
        "classifier.1.",
        "MobileNetV2 at width 0.25",
        at_width=_mobilenet_v2,
    ),
}


class PretrainedWeightsError(AdamMLError, ValueError):
    """A weights file is missing, unreadable or does not fit the model; the message says which."""


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}: expected one of {', '.join(sorted(BACKBONES))}"
        ) from None


def create_backbone(name: str, in_channels: int = 3) -> nn.Module:
    """The torchvision model with randomly initialised weights and ``in_channels`` inputs."""
    model = get_backbone_spec(name).constructor()
    if in_channels != 3:
        adapt_first_conv(model, in_channels, inflate=False)
    return model


def find_first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """Name and module of the first ``nn.Conv2d`` in registration (= forward) order."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d layer to adapt")


def inflate_conv_weight(
    weight: torch.Tensor, in_channels: int, *, rescale: bool = True
) -> torch.Tensor:
    """(O, 3, kh, kw) RGB kernel -> (O, in_channels, kh, kw): mean over inputs, replicated.

    With ``rescale`` the result is multiplied by ``weight.shape[1] / in_channels`` so the sum
    over input channels (the response to a channel-constant input) is unchanged.
    """
    mean = weight.mean(dim=1, keepdim=True)
    if rescale:
        mean = mean * (weight.shape[1] / in_channels)
    return mean.expand(-1, in_channels, -1, -1).contiguous()


def _new_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def adapt_first_conv(
    model_or_conv: nn.Module, in_channels: int, *, inflate: bool = True, rescale: bool = True
) -> nn.Module:
    """Give a model (or a single conv) a first convolution with ``in_channels`` inputs.

    inflate=True derives the new kernel from the existing one (``inflate_conv_weight``: use it
    once pretrained RGB weights are in); inflate=False gives a freshly initialised conv
    (Kaiming normal, fan-out, as torchvision initialises its models). A conv passed in is
    returned replaced; a model is modified in place and returned.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if isinstance(model_or_conv, nn.Conv2d):
        conv, parent, attr = model_or_conv, None, ""
    else:
        name, conv = find_first_conv(model_or_conv)
        parent_name, _, attr = name.rpartition(".")
        parent = model_or_conv.get_submodule(parent_name) if parent_name else model_or_conv
    if conv.groups != 1:
        raise ValueError("the first convolution is grouped; cannot change its input channels")
    if conv.in_channels == in_channels:
        return model_or_conv
    new = _new_conv(conv, in_channels)
    with torch.no_grad():
        if inflate:
            new.weight.copy_(inflate_conv_weight(conv.weight, in_channels, rescale=rescale))
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            new.bias.copy_(conv.bias)
    if parent is None:
        return new
    setattr(parent, attr, new)
    return model_or_conv


_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: a bare state dict or a checkpoint dict.

    A checkpoint stores it under "model" or "state_dict"; "module." (DataParallel/DDP) and
    "_orig_mod." (torch.compile) prefixes are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: weights file not found (give a local file path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise PretrainedWeightsError(
            f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(
            f"{path}: expected a state dict of tensors (or a dict with a 'model' or "
            f"'state_dict' entry), found {type(obj).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    *,
    prefix: str = "",
    classifier_prefixes: tuple[str, ...] = ("fc.", "classifier.1."),
    rescale: bool = True,
) -> list[str]:
    """Load a local weights file into ``model``; return the checkpoint keys skipped.

    prefix: only checkpoint keys under it are used, with it removed (e.g. "rgb." to take one
    sub-network out of a multi-modal checkpoint). The first convolution is inflated when the
    checkpoint has 3 input channels and the model another number; classifier tensors whose
    class count differs are skipped (a new head is trained). Any other missing, unexpected
    or mismatched tensor is an error naming the file and the keys.
    """
    state = read_state_dict(path)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise PretrainedWeightsError(f"{path}: no tensor under prefix {prefix!r}")
    own = model.state_dict()
    first_conv = find_first_conv(model)[0] + ".weight"
    skipped: list[str] = []
    mismatched: list[str] = []
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            if key.startswith(classifier_prefixes):
                skipped.append(key)
                continue
            mismatched.append(f"{key} (not in the model)")
            continue
        target = own[key]
        if value.shape == target.shape:
            to_load[key] = value
        elif (
            key == first_conv
            and value.dim() == 4
            and value.shape[1] == 3
            and (value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:])
        ):
            to_load[key] = inflate_conv_weight(value, target.shape[1], rescale=rescale)
        elif key.startswith(classifier_prefixes):
            skipped.append(key)
        else:
            mismatched.append(f"{key} (file {tuple(value.shape)}, model {tuple(target.shape)})")
    missing = [
        k
        for k in own
        if k not in to_load
        and not k.startswith(classifier_prefixes)
        and not k.endswith("num_batches_tracked")
    ]
    if mismatched or missing:
        parts = []
        if mismatched:
            parts.append(
                "mismatched: " + ", ".join(mismatched[:8]) + (" ..." if len(mismatched) > 8 else "")
            )
        if missing:
            parts.append(
                "missing from the file: "
                + ", ".join(missing[:8])
                + (" ..." if len(missing) > 8 else "")
            )
        raise PretrainedWeightsError(
            f"{path}: weights do not fit {type(model).__name__} ({'; '.join(parts)}); "
            "check the backbone name and modality, or pass prefix= for a sub-network"
        )
    model.load_state_dict(to_load, strict=False)
    return skipped
