"""The reference code's checkpoints (IBM/AdaMML) as adamml checkpoints.

Two kinds of file, both ``{"state_dict": ...}`` with DataParallel's ``module.`` prefix:

- unimodal (``train_unimodal.py``): one ResNet (RGB, flow, RGB difference) or the sound
  MobileNetV2. Their keys are torchvision's (``conv1``, ``layer1.0.conv1``, ``fc``;
  ``features.0.0``, ``classifier.1``), as ours are: the map only drops the prefix.
- AdaMML (``train_adamml.py``): ``main_net.nets.<i>.*`` (the recognition networks, in the
  order of the reference's ``--modality`` without rgbdiff), ``main_net.lf_weights`` (the M-1
  free late-fusion weights of ``--learnable_lf_weights``), and the policy:
  ``policy_net.joint_net.nets.<j>.*`` (one MobileNetV2 per policy input, in the order of
  ``--modality`` without flow when rgbdiff stands in for it), ``policy_net.joint_net.joint``,
  ``policy_net.lstm`` and ``policy_net.fcs.<i>``. The policy's MobileNetV2 (``d-li14``'s) keeps
  each inverted residual's layers flat (``conv.0 .. conv.7``) and its last 1x1 convolution
  outside ``features`` (``conv.0``, ``conv.1``); torchvision nests them (``conv.0.0``,
  ``conv.1.1``, ``features.18``), and our extractors insert parameter-free temporal pools into
  ``features``, which shifts the block indices after them. All three are mapped here.

The adamml model must match: ``model.policy.joint: reference``, weighted fusion with
``model.fusion_mode: reference`` (or average), the modalities in the reference's order
("sound" is our "audio"), the full MobileNetV2 (no ``policy.blocks``, width 1). Every tensor
of the file must land on exactly one of the model's and every tensor of the model must be
filled: anything else is an error naming the keys.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from adamml.config import ExperimentConfig, to_dict
from adamml.errors import AdamMLError
from adamml.modalities.table import MODALITIES
from adamml.models.adamml import build_adamml
from adamml.models.build import unimodal_model_config
from adamml.models.multimodal import build_multimodal
from adamml.models.temporal import TemporalMaxPool


class ReferenceImportError(AdamMLError, ValueError):
    """A reference checkpoint does not fit the config's model; the message says where."""


def read_reference_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a reference checkpoint, ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceImportError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign file
        raise ReferenceImportError(
            f"{path}: not readable as tensors and plain data ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ReferenceImportError(f"{path}: expected the reference's {{'state_dict': ...}} of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def is_adamml_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("main_net.", "policy_net.")) for k in state)


# d-li14's flat inverted-residual layers -> torchvision's nested ones, by expansion.
_FLAT_TO_NESTED = {
    True: {"0": "0.0", "1": "0.1", "3": "1", "4": "2"},  # expand ratio 1: dw, bn, (relu), pw, bn
    False: {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"},
}


def policy_trunk_key(key: str, last_block: int) -> str:
    """A key of the reference policy's MobileNetV2 -> the torchvision MobileNetV2 key.

    ``last_block`` is the index of torchvision's final 1x1 block (18 for MobileNetV2), which
    the reference keeps outside ``features`` as ``conv``.
    """
    if key.startswith("conv."):  # conv_1x1_bn: conv.0 (conv), conv.1 (bn)
        return f"features.{last_block}.{key[len('conv.'):]}"
    match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
    if match is None:
        return key  # features.0.0 / features.0.1: the stem, the same in both
    block, layer, rest = match.groups()
    nested = _FLAT_TO_NESTED[int(block) == 1].get(layer)
    if nested is None:
        raise ReferenceImportError(f"policy extractor key {key!r}: no such layer in a MobileNetV2 block")
    return f"features.{block}.conv.{nested}.{rest}"


def extractor_index_map(features: nn.Sequential) -> dict[int, int]:
    """Trunk block index -> index in an extractor's ``features`` (temporal pools skipped)."""
    out, trunk = {}, 0
    for i, layer in enumerate(features):
        if isinstance(layer, TemporalMaxPool):
            continue
        out[trunk] = i
        trunk += 1
    return out


def _into_extractor(key: str, index: dict[int, int]) -> str:
    head, block, rest = key.split(".", 2)
    return f"{head}.{index[int(block)]}.{rest}"


def map_adamml_state(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The reference AdaMML tensors under our :class:`AdaMML` model's keys."""
    policy = model.policy
    if getattr(policy, "joint_kind", "adamml") != "reference":
        raise ReferenceImportError("the reference's policy needs model.policy.joint: reference")
    modalities = list(model.modalities)
    sources = list(policy.extractors)  # one per distinct policy input, in modality order
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("main_net.nets."):
            i, rest = key[len("main_net.nets."):].split(".", 1)
            if int(i) >= len(modalities):
                unknown.append(key)
                continue
            out[f"recognition.{modalities[int(i)]}.{rest}"] = value
        elif key == "main_net.lf_weights":
            if "fusion.free" not in own:
                raise ReferenceImportError(
                    "the file has learned late-fusion weights (main_net.lf_weights): use "
                    "model.fusion: weighted with model.fusion_mode: reference"
                )
            out["fusion.free"] = value
        elif key.startswith("policy_net.joint_net.nets."):
            j, rest = key[len("policy_net.joint_net.nets."):].split(".", 1)
            if int(j) >= len(sources):
                unknown.append(key)
                continue
            extractor = policy.extractors[sources[int(j)]]
            trunk_key = policy_trunk_key(rest, last_block=_last_block(extractor))
            out[f"policy.extractors.{sources[int(j)]}.{_into_extractor(trunk_key, extractor_index_map(extractor.features))}"] = value
        elif key.startswith("policy_net.joint_net.joint."):
            out[f"policy.joint.{key[len('policy_net.joint_net.joint.'):]}"] = value
        elif key.startswith("policy_net.lstm."):
            out[f"policy.{key[len('policy_net.'):]}"] = value
        elif key.startswith("policy_net.fcs."):
            i, rest = key[len("policy_net.fcs."):].split(".", 1)
            if int(i) >= len(modalities):
                unknown.append(key)
                continue
            out[f"policy.heads.{modalities[int(i)]}.{rest}"] = value
        else:
            unknown.append(key)
    if "fusion.free" in own and "fusion.free" not in out:  # no --learnable_lf_weights: 1/M each
        out["fusion.free"] = torch.full_like(own["fusion.free"], 1.0 / len(modalities))
    out.setdefault("policy.use_thresholds", torch.zeros_like(own["policy.use_thresholds"]))
    out.setdefault("policy.use_quota", torch.zeros_like(own["policy.use_quota"]))  # the reference has no quotas
    _check_fit(out, own, unknown)
    return out


def _last_block(extractor: nn.Module) -> int:
    return sum(not isinstance(layer, TemporalMaxPool) for layer in extractor.features) - 1


def map_unimodal_state(state: Mapping[str, torch.Tensor], model: nn.Module, modality: str) -> dict[str, torch.Tensor]:
    """A reference unimodal network under our :class:`MultiModalNet`'s keys."""
    out = {f"recognition.{modality}.{k}": v for k, v in state.items()}
    _check_fit(out, model.state_dict(), [])
    return out


def _check_fit(mapped: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], unknown: list[str]) -> None:
    extra = sorted(set(mapped) - set(own)) + unknown
    missing = sorted(set(own) - set(mapped))
    wrong = [f"{k} (file {tuple(mapped[k].shape)}, model {tuple(own[k].shape)})"
             for k in own if k in mapped and mapped[k].shape != own[k].shape]
    if extra or missing or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(wrong[:4]))
        if missing:
            parts.append(f"{len(missing)} model tensors not in the file: " + ", ".join(missing[:4]))
        if extra:
            parts.append(f"{len(extra)} file tensors with no place in the model: " + ", ".join(extra[:4]))
        raise ReferenceImportError(
            "; ".join(parts) + " (check the config's modalities and their order, backbones, "
            "num_classes, clip settings and model.policy)"
        )


def infer_modality(state: Mapping[str, torch.Tensor], cfg: ExperimentConfig) -> str:
    """The modality a unimodal reference network was trained on, from its first convolution's
    input channels and the config's modalities."""
    first = state.get("conv1.weight", state.get("features.0.0.weight"))
    if first is None:
        raise ReferenceImportError("neither conv1.weight (ResNet) nor features.0.0.weight (MobileNetV2) in the file")
    channels = first.shape[1]
    fits = [m for m in cfg.model.modalities if MODALITIES[m].channels(cfg.data.clip) == channels]
    if len(fits) != 1:
        raise ReferenceImportError(
            f"a network with {channels} input channels: "
            + (f"ambiguous among {', '.join(fits)}" if fits else f"none of {', '.join(cfg.model.modalities)} has that many")
            + "; name it with --modality"
        )
    return fits[0]


def _bare(model_cfg):
    """The model config as saved: starts that only matter before training are dropped, so the
    checkpoint rebuilds without any ImageNet file."""
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.pretrained = {}
    model_cfg.policy.pretrained = {}
    return model_cfg


def import_reference(
    path: str | Path, cfg: ExperimentConfig, *, modality: str | None = None
) -> tuple[dict, str]:
    """An adamml checkpoint (as training writes) from a reference checkpoint; returns the
    checkpoint and its kind ("unimodal" or "adamml")."""

    state = read_reference_state(path)
    cfg = copy.deepcopy(cfg)
    cfg.model = _bare(cfg.model)
    try:
        if is_adamml_state(state):
            model = build_adamml(cfg.model, cfg.data.clip)
            mapped, kind, model_cfg = map_adamml_state(state, model), "adamml", cfg.model
        else:
            modality = modality or infer_modality(state, cfg)
            model_cfg = unimodal_model_config(cfg.model, modality)
            model = build_multimodal(model_cfg, cfg.data.clip)
            mapped, kind = map_unimodal_state(state, model, modality), "unimodal"
    except ReferenceImportError as exc:
        raise ReferenceImportError(f"{path}: {exc}") from None
    model.load_state_dict(mapped)
    checkpoint = {
        "kind": kind,
        "epoch": 0,
        "model": model.state_dict(),
        "config": to_dict(cfg),
        "model_config": to_dict(model_cfg),
        "metrics": {},
        "imported_from": str(path),
    }
    return checkpoint, kind

