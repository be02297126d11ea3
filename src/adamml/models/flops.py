"""Cost of a model configuration, counted from the real modules, and the GFLOPs of a video.

``adamml flops`` prints :func:`flops_report`; :func:`segment_costs` (GMACs per segment of each
sub-network and of the policy) and :func:`gflops_per_video` (what a video cost under its
decisions) are read by training, evaluation and prediction alike.

Counting rule: ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
multiply-add of convolutions and matrix products (nothing for batch norm, activations or
pooling). The field (and the AdaMML paper) calls multiply-adds "FLOPs" (ResNet-50 at 224^2 =
"4.1 GFLOPs"), so what we report as **GFLOPs is 1e9 multiply-adds (GMACs)**; ``--raw``
gives FlopCounterMode's own count (2 per multiply-add).

Modules are built on the ``meta`` device, so even ResNet-50 on 8x224^2 frames is counted
instantly: no memory is allocated and no arithmetic is done.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adamml.config import ClipSettings, ConfigError, ExperimentConfig, ModelConfig, _from_dict
from adamml.modalities.table import MODALITIES
from adamml.models.policy import build_policy
from adamml.models.recognition import build_recognition_net


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of one ``module(*inputs)`` call, inputs on module's device."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return int(counter.get_total_flops())


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds of one ``module(*inputs)`` call (what papers call FLOPs)."""
    return count_flops(module, *inputs) // 2


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return build().eval()


@dataclass
class ModuleCost:
    """Cost of one network for one segment: raw FLOPs (2 per multiply-add)."""

    name: str
    backbone: str
    input_shape: tuple[int, ...]
    flops: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


def recognition_cost(
    modality: str, backbone: str, clip: ClipSettings, num_classes: int, temporal_pool: bool = True
) -> ModuleCost:
    """One segment through the recognition sub-network of ``modality``."""
    net = _on_meta(
        lambda: build_recognition_net(
            modality, backbone, num_classes=num_classes, clip=clip, temporal_pool=temporal_pool
        )
    )
    shape = net.input_shape(clip)
    x = torch.empty((1, *shape), device="meta")
    return ModuleCost(modality, backbone, shape, count_flops(net, x))


def policy_cost(model_cfg: ModelConfig, clip: ClipSettings) -> ModuleCost | None:
    """One segment (one LSTM step) through the policy network."""
    # Counting needs no weights (and must not need the ImageNet package).
    bare = dataclasses.replace(model_cfg, policy=dataclasses.replace(model_cfg.policy, pretrained={}))
    policy = _on_meta(lambda: build_policy(bare, clip))
    inputs = {}
    shapes = []
    for source in policy.extractors:
        shape = MODALITIES[source].input_shape(clip, frames=len(policy.frame_indices), size=policy.resolution)
        shapes.append(shape)
        inputs[source] = torch.empty((1, 1, *shape), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        policy(inputs, temperature=1.0, sample=False)
    counts = counter.get_flop_counts()
    root = type(policy).__name__
    parts = {}
    for name, ops in counts.items():
        prefix = f"{root}."
        if name.startswith(prefix) and name.count(".") == 2 and ".extractors." in name:
            parts[name.split(".")[-1]] = sum(ops.values())
    total = int(counter.get_total_flops())
    parts["joint+lstm+heads"] = total - sum(parts.values())
    return ModuleCost(
        "policy", model_cfg.policy.backbone, tuple(shapes[0]) if shapes else (), total, parts
    )


def modality_costs(model_cfg: ModelConfig, clip: ClipSettings) -> dict[str, float]:
    """GMACs for one segment: each recognition modality, plus "policy" (0.0 if unavailable)."""
    out = {
        m: recognition_cost(
            m, model_cfg.backbones[m], clip, model_cfg.num_classes, model_cfg.temporal_pool
        ).gmacs
        for m in model_cfg.modalities
    }
    pc = policy_cost(model_cfg, clip)
    out["policy"] = pc.gmacs if pc is not None else 0.0
    return out


@functools.lru_cache(maxsize=32)
def _costs_cached(model_cfg_json: str, clip_json: str) -> dict[str, float]:
    model_cfg = _from_dict(ModelConfig, json.loads(model_cfg_json), "model")
    clip = _from_dict(ClipSettings, json.loads(clip_json), "clip")
    return modality_costs(model_cfg, clip)


def segment_costs(model_cfg: ModelConfig, clip: ClipSettings) -> dict[str, float]:
    """GMACs per segment of each recognition sub-network and of the policy ("policy"),
    counted once per configuration (every evaluation, training budget and prediction asks)."""
    return _costs_cached(
        json.dumps(dataclasses.asdict(model_cfg), sort_keys=True),
        json.dumps(dataclasses.asdict(clip), sort_keys=True),
    )


def gflops_per_video(
    decisions: torch.Tensor | np.ndarray | Sequence, modality_gflops: Sequence[float], policy_gflops: float = 0.0
) -> list[float]:
    """GFLOPs (multiply-adds) of each video: sum over segments of policy + used sub-networks.

    decisions: (N, K, M) in {0, 1}; modality_gflops: per-segment cost of each of the M
    sub-networks; policy_gflops: per-segment cost of the policy (paid on every segment).
    """
    if isinstance(decisions, torch.Tensor):
        decisions = decisions.detach().to("cpu", torch.float64).numpy()
    try:
        d = np.asarray(decisions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"decisions: expected a tensor or array of numbers, got {type(decisions)!r}") from exc
    if d.ndim != 3:
        raise ValueError(f"decisions: expected shape (N, K, M), got {d.shape}")
    costs = np.asarray(modality_gflops, dtype=np.float64)
    if costs.shape != (d.shape[2],):
        raise ValueError(
            f"decisions must be (N, K, M={costs.size}) for {costs.size} modality costs, got {d.shape}"
        )
    per_segment = d @ costs + float(policy_gflops)  # (N, K)
    return [float(v) for v in per_segment.sum(axis=1)]


def flops_report(cfg: ExperimentConfig, segments: int | None = None) -> dict:
    """Everything ``adamml flops`` prints, as data: raw FLOPs per segment and per video."""
    clip = cfg.data.clip
    model_cfg = cfg.model
    k = segments or cfg.data.eval_segments or clip.num_segments
    rows = []
    for m in model_cfg.modalities:
        if m not in model_cfg.backbones:
            raise ConfigError(f"model.backbones has no entry for modality {m!r}")
        c = recognition_cost(
            m, model_cfg.backbones[m], clip, model_cfg.num_classes, model_cfg.temporal_pool
        )
        rows.append(
            {
                "name": m,
                "backbone": c.backbone,
                "input_shape": list(c.input_shape),
                "per_segment": c.flops,
                "per_video": c.flops * k,
            }
        )
    pc = policy_cost(model_cfg, clip)
    policy = None
    if pc is not None:
        policy = {
            "name": "policy",
            "backbone": pc.backbone,
            "per_segment": pc.flops,
            "per_video": pc.flops * k,
            "parts_per_segment": pc.parts,
        }
    all_modalities = sum(r["per_video"] for r in rows)
    return {
        "config": cfg.name,
        "segments": k,
        "modalities": rows,
        "policy": policy,
        "all_modalities_per_video": all_modalities,
        "adamml_max_per_video": all_modalities + (policy["per_video"] if policy else 0),
    }


def _fmt(flops: int, raw: bool) -> str:
    if raw:
        return f"{flops:,d}"
    g = flops / 2e9
    return f"{g:.2f}" if g >= 1 else f"{g:.4f}"


def format_report(report: dict, raw: bool = False) -> str:
    unit = "FLOPs (2 per multiply-add)" if raw else "GFLOPs (= 1e9 multiply-adds)"
    k = report["segments"]
    lines = [f"{report['config']}: {unit}, {k} segments per video", ""]
    header = f"{'network':<26} {'backbone':<18} {'input (one segment)':<22} {'per segment':>16} {'per video':>18}"
    lines += [header, "-" * len(header)]
    for r in report["modalities"]:
        shape = "x".join(str(s) for s in r["input_shape"])
        lines.append(
            f"{r['name']:<26} {r['backbone']:<18} {shape:<22} {_fmt(r['per_segment'], raw):>16} {_fmt(r['per_video'], raw):>18}"
        )
    p = report["policy"]
    if p is not None:
        lines.append(
            f"{'policy':<26} {p['backbone']:<18} {'':<22} {_fmt(p['per_segment'], raw):>16} {_fmt(p['per_video'], raw):>18}"
        )
        for name, flops in p["parts_per_segment"].items():
            lines.append(
                f"{'  ' + name:<26} {'':<18} {'':<22} {_fmt(flops, raw):>16} {_fmt(flops * k, raw):>18}"
            )
    lines.append("-" * len(header))
    names = "+".join(r["name"] for r in report["modalities"])
    lines.append(
        f"{'fusion, every modality':<26} {names:<18} {'':<22} {'':>16} {_fmt(report['all_modalities_per_video'], raw):>18}"
    )
    if p is not None:
        lines.append(
            f"{'AdaMML, all selected':<26} {'':<18} {'':<22} {'':>16} {_fmt(report['adamml_max_per_video'], raw):>18}"
        )
    return "\n".join(lines)


def to_gmacs(obj):
    """Raw FLOPs ints under cost keys of a :func:`flops_report` -> GMACs floats (its JSON without --raw)."""
    keys = {"per_segment", "per_video", "all_modalities_per_video", "adamml_max_per_video"}
    if isinstance(obj, dict):
        return {
            k: (
                v / 2e9
                if k in keys and isinstance(v, int)
                else {n: f / 2e9 for n, f in v.items()}
                if k == "parts_per_segment"
                else to_gmacs(v)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [to_gmacs(v) for v in obj]
    return obj
