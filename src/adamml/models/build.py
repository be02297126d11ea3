"""Build the network of a training stage, from a config or from a checkpoint.

Training, evaluation and inference all rebuild models here, so none of them needs another's
code to read a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from adamml.config import ClipSettings, ExperimentConfig, ModelConfig, _from_dict, config_from_dict
from adamml.modalities.table import input_modalities as modality_inputs
from adamml.models.adamml import build_adamml
from adamml.models.backbones import PretrainedWeightsError, read_state_dict
from adamml.models.multimodal import build_multimodal
from adamml.runtime.checkpoint import CheckpointError, load_checkpoint


def build_model(kind: str, model_cfg: ModelConfig, clip: ClipSettings) -> nn.Module:
    """kind "unimodal" / "fusion": a :class:`MultiModalNet`; "adamml": an :class:`AdaMML`."""
    if kind == "adamml":
        return build_adamml(model_cfg, clip)
    return build_multimodal(model_cfg, clip, fusion=model_cfg.fusion)


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, str, ModelConfig, ExperimentConfig, dict]:
    """Rebuild the network a checkpoint was trained as, with its weights.

    Returns (model in eval mode, kind, its model config, the run's config, the raw state).
    """
    state = load_checkpoint(path)
    for key in ("kind", "model", "config"):
        if key not in state:
            raise CheckpointError(f"{path}: not an adamml training checkpoint (no {key!r} entry)")
    cfg = config_from_dict(state["config"], f"{path}: config")
    model_cfg = _from_dict(ModelConfig, state.get("model_config") or state["config"]["model"], "model")
    kind = state["kind"]
    model = build_model(kind, model_cfg, cfg.data.clip)
    model.load_state_dict(state["model"])
    model.eval()
    return model, kind, model_cfg, cfg, state


def input_modalities(kind: str, model_cfg: ModelConfig) -> list[str]:
    """The tensors a stage's model needs from the dataset (AdaMML's policy looks at rgbdiff
    for flow; see :func:`adamml.modalities.table.input_modalities`)."""
    return modality_inputs(model_cfg.modalities, flow_proxy=model_cfg.policy.flow_proxy, policy=kind == "adamml")


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
