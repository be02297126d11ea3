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
from adamml.models.multimodal import build_multimodal
from adamml.runtime.checkpoint import load_checkpoint


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
            raise ValueError(f"{path}: not an adamml training checkpoint (no {key!r} entry)")
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
