"""Build the network of a training stage, from a config or from a checkpoint.

Training, evaluation and inference all rebuild models here, so none of them needs another's
code to read a checkpoint.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from adamml.config import ClipSettings, ExperimentConfig, ModelConfig, _from_dict, config_from_dict
from adamml.errors import AdamMLError
from adamml.modalities.table import input_modalities as modality_inputs
from adamml.models.backbones import PretrainedWeightsError, read_state_dict
from adamml.runtime.checkpoint import CheckpointError, load_checkpoint
from adamml.runtime.runs import Stage, stage


def build_model(kind: str, model_cfg: ModelConfig, clip: ClipSettings) -> nn.Module:
    """The network of a stage, by the stage table's builder: a :class:`MultiModalNet` for
    "unimodal" / "fusion", an :class:`AdaMML` for "adamml"."""
    module, function = stage(kind).builder.split(":")
    return getattr(importlib.import_module(module), function)(model_cfg, clip)


@dataclass
class ModelSpec:
    """What a trained model needs from its inputs, without the network (small to pickle: the
    decode tasks of a Ray pipeline carry it)."""

    kind: str
    model_cfg: ModelConfig
    cfg: ExperimentConfig
    class_names: list[str]

    @property
    def stage(self) -> Stage:
        return stage(self.kind)

    @property
    def modalities(self) -> list[str]:
        return list(self.model_cfg.modalities)

    def input_modalities(self) -> list[str]:
        return input_modalities(self.kind, self.model_cfg)


@dataclass
class LoadedModel(ModelSpec):
    """A trained network with what it was trained as: its stage, configs and class names."""

    network: nn.Module = field(default=None, repr=False)  # type: ignore[assignment]
    source: str = ""
    state: dict[str, Any] = field(default_factory=dict, repr=False)  # the checkpoint, weights dropped

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.kind, self.model_cfg, self.cfg, self.class_names)


def model_from_state(state: dict[str, Any], where: str | Path) -> LoadedModel:
    """Rebuild the network of a checkpoint dict (``load_checkpoint``'s, or an exported
    package's), with its weights, in eval mode."""
    for key in ("kind", "model", "config"):
        if key not in state:
            raise CheckpointError(f"{where}: not an adamml training checkpoint (no {key!r} entry)")
    cfg = config_from_dict(state["config"], f"{where}: config")
    model_cfg = _from_dict(ModelConfig, state.get("model_config") or state["config"]["model"], "model")
    kind = state["kind"]
    try:
        stage(kind)
    except AdamMLError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    model = build_model(kind, model_cfg, cfg.data.clip)
    model.load_state_dict(state["model"])
    model.eval()
    names = state.get("class_names")
    names = [str(i) for i in range(model_cfg.num_classes)] if names is None else [str(n) for n in names]
    rest = {k: v for k, v in state.items() if k not in ("model", "optimizer", "optimizers", "scheduler", "schedulers")}
    return LoadedModel(kind, model_cfg, cfg, names, network=model, source=str(where), state=rest)


def model_from_checkpoint(path: str | Path) -> LoadedModel:
    """Rebuild the network a training checkpoint was trained as, with its weights."""
    return model_from_state(load_checkpoint(path), path)


def input_modalities(kind: str, model_cfg: ModelConfig) -> list[str]:
    """The tensors a stage's model needs from the dataset (AdaMML's policy looks at rgbdiff
    for flow; see :func:`adamml.modalities.table.input_modalities`)."""
    return modality_inputs(model_cfg.modalities, flow_proxy=model_cfg.policy.flow_proxy,
                           policy=stage(kind).adaptive)


def load_unimodal(recognition: nn.ModuleDict, modality: str, path: str | Path, state: dict | None = None) -> None:
    """Initialise ``recognition[modality]`` from a stage-1 checkpoint.

    The checkpoint's "model" state dict is that of a unimodal model (a bare RecognitionNet, or
    a MultiModalNet whose keys start with "recognition.<modality>."); ``state`` is that dict
    when the caller has read the file already, else the file is read as weights. Loading is
    strict: every tensor must fit (a stage-1 net trained for another class count is an
    error), and the error names the file and the keys.
    """
    if modality not in recognition:
        raise ValueError(
            f"{path}: cannot load a {modality!r} network: the model's modalities are "
            f"{', '.join(recognition)}"
        )
    state = read_state_dict(path) if state is None else state
    prefix = f"recognition.{modality}."
    if any(key.startswith(prefix) for key in state):
        state = {key[len(prefix) :]: v for key, v in state.items() if key.startswith(prefix)}
    net = recognition[modality]
    own = net.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    wrong = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(own[key].shape)})"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    if unexpected or missing or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(wrong[:6]))
        if missing:
            parts.append("missing from the file: " + ", ".join(missing[:6]))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected[:6]))
        raise PretrainedWeightsError(
            f"{path}: not a stage-1 {modality!r} checkpoint for this model "
            f"({'; '.join(parts)}); check model.backbones, num_classes and the clip settings"
        )
    net.load_state_dict(state)


def unimodal_model_config(model_cfg: ModelConfig, modality: str) -> ModelConfig:
    """The config of one modality's network alone (stage 1 trains it; an imported one fills it)."""
    if modality not in model_cfg.backbones:
        raise ValueError(
            f"modality {modality!r} has no backbone in the config (model.backbones has "
            f"{', '.join(model_cfg.backbones)})"
        )
    cfg = copy.deepcopy(model_cfg)
    cfg.modalities = [modality]
    cfg.backbones = {modality: model_cfg.backbones[modality]}
    return cfg
