"""``adamml export --format onnx``: one ONNX graph per component, and manifest.json.

A model whose point is to skip compute cannot be one graph: ``If`` nodes either lose the
skipping or run slowly on some runtimes. So each component is its own graph, with a dynamic
batch (the number of selected segments), and an orchestrator (adamml.runners.onnx) runs only
what the policy selects:

- ``policy_<source>``: each policy extractor, (N, T', C, S, S) crops (resized to the
  policy's resolution inside the graph) or (N, 1, F, S) spectrograms -> (N, D) features;
- ``policy_step``: one LSTM step, the features of each source + the previous step's logits
  + (h, c) -> the decisions' logits (N, M, 2) + (h, c);
- ``recognition_<modality>``: each recognition network, (N, ...) -> logits, features;
- the late fusion is a handful of weights, written to manifest.json.

Graphs are traced from the folded, unfused model (batch norms folded into the convolutions
as the execution plan does; no oneDNN-only fused modules), in the standard layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from adamml.data.datasets import policy_frame_subsets
from adamml.export.format import MANIFEST_FILE, PackageError, sha256_file
from adamml.modalities.table import MODALITIES
from adamml.models.adamml import AdaMML
from adamml.models.build import input_modalities
from adamml.models.execution import CPU_PIXELS_PER_CALL, ExecutionPlan
from adamml.models.temporal import TemporalMaxPool

EXPORT_BATCH = 2  # traced with 2 segments, run with any number


class _PolicyExtractor(nn.Module):
    """A visual policy extractor with its resize to the policy's resolution, as
    ``PolicyNetwork.policy_inputs`` does it, so the runtime hands over crops as they are."""

    def __init__(self, extractor: nn.Module, resolution: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        if x.shape[-2:] != (self.resolution, self.resolution):
            y = F.interpolate(rearrange(x, "n t c h w -> (n t) c h w"), size=(self.resolution, self.resolution),
                              mode="bilinear", align_corners=False)
            x = rearrange(y, "(n t) c h w -> n t c h w", t=t)
        return self.extractor(x)


class _FrameGatherMaxPool(nn.Module):
    """TemporalMaxPool as frame gathers and an elementwise max, for the graphs.

    The same values: each output frame is the max of the frames its window covers, and a
    window's padded position reads the nearest real frame instead (one the window holds
    anyway, so the max is unchanged). ``MaxPool3d`` between transposes runs fast in fp32, but
    onnxruntime runs an 8-bit 3D max pool in a plain loop (a third of the INT8 ResNet's
    time); gathers and a max need no transposes and stay fast in either precision."""

    def __init__(self, pool: TemporalMaxPool) -> None:
        super().__init__()
        self.frames = pool.frames
        (kernel, _, _), (stride, _, _), (pad, _, _) = pool.pool.kernel_size, pool.pool.stride, pool.pool.padding
        starts = [stride * t - pad for t in range(pool.out_frames)]
        self.windows = [[min(max(s + j, 0), self.frames - 1) for s in starts] for j in range(kernel)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(-1, self.frames, *x.shape[1:])
        out = y[:, self.windows[0]]
        for window in self.windows[1:]:
            out = torch.maximum(out, y[:, window])
        return out.reshape(-1, *x.shape[1:])


def _graph_friendly(model: nn.Module) -> nn.Module:
    """Swap the modules whose traced form runs slowly on the runtimes for equivalent ones."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, TemporalMaxPool):
                setattr(module, child_name, _FrameGatherMaxPool(child))
    return model


class _PolicyStep(nn.Module):
    """One segment of ``PolicyNetwork.forward`` after the extractors: the joint head (per-source
    norms and projections, or the reference's concatenation), the LSTM cell, the heads."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.sources = list(policy.extractors)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.policy
        *feats, prev, h, c = args
        if p.joint_kind == "reference":  # the reference's head: the features side by side
            joint = p.joint(torch.cat(feats, dim=-1))
        else:
            joint = torch.stack([p.joint_inputs[s](p.feature_norms[s](f)) for s, f in zip(self.sources, feats, strict=True)]).sum(dim=0)
            joint = p.joint(joint)
        h, c = p.lstm(torch.cat([joint, prev], dim=-1), (h, c))
        logits = torch.stack([p.heads[m](h) for m in p.modalities], dim=1)
        return logits, h, c


def _export(net: nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str],
            path: Path, opset: int) -> None:
    dynamic = {name: {0: "n"} for name in inputs + outputs}
    with torch.no_grad():
        torch.onnx.export(net, example, str(path), opset_version=opset, dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)


def pipeline_settings(kind: str, model_cfg: Any, clip: Any) -> dict[str, Any]:
    """What the staged predictor derives from the model config (adamml.inference.pipeline),
    stated outright so the runtime needs none of the config code."""

    needed = input_modalities(kind, model_cfg)
    defer_flow = "flow" in needed and not (kind == "adamml" and model_cfg.policy.flow_proxy == "flow")
    frame_subsets = policy_frame_subsets(model_cfg, clip, needed)
    return {
        "inputs": [m for m in needed if not (defer_flow and m == "flow")],
        "defer_flow": defer_flow,
        "frame_subsets": frame_subsets,
        "sampling_stack_length": clip.stack_length if any(MODALITIES[m].stacked for m in needed) else 0,
        "segment_span_without_stack": (clip.frames_per_segment - 1) * clip.frame_stride + 1,
        "visual": {m: MODALITIES[m].visual for m in needed},
        "pixels_per_call": CPU_PIXELS_PER_CALL,
    }


def export_graphs(model: nn.Module, config: dict[str, Any], folder: str | Path, *, model_cfg: Any, cfg: Any,
                  opset: int = 17) -> dict[str, Any]:
    """Write one graph per component of ``model`` (built from ``model_cfg``, of the run
    ``cfg``; ``config``: config.json's content) into ``folder`` and manifest.json."""

    folder = Path(folder)
    kind = config["kind"]
    clip = cfg.data.clip
    fusion = config["fusion"]
    if fusion is None:
        raise PackageError(f"fusion {model_cfg.fusion!r} is a network over features: the ONNX export handles late "
                           "fusions (unimodal, average, weighted, classwise); export this model as safetensors")
    model = _graph_friendly(ExecutionPlan(device="cpu", channels_last=False, fuse_pointwise=False).prepare(model))
    graphs: dict[str, dict[str, Any]] = {}

    def write(name: str, net: nn.Module, example: tuple, inputs: list[str], outputs: list[str], role: dict) -> None:
        path = folder / f"{name}.onnx"
        _export(net.eval(), example, inputs, outputs, path, opset)
        graphs[name] = {"file": path.name, "sha256": sha256_file(path), **role,
                        "inputs": {n: ["n", *x.shape[1:]] for n, x in zip(inputs, example, strict=True)},
                        "outputs": outputs}

    for m in model_cfg.modalities:
        x = torch.randn(EXPORT_BATCH, *MODALITIES[m].input_shape(clip))
        write(f"recognition_{m}", model.recognition[m], (x,), ["x"], ["logits", "features"],
              {"role": "recognition", "modality": m})
    policy: dict[str, Any] | None = None
    if isinstance(model, AdaMML):
        p = model.policy
        feats = []
        for source, extractor in p.extractors.items():
            if MODALITIES[source].visual:
                x = torch.randn(EXPORT_BATCH, *MODALITIES[source].input_shape(clip, frames=len(p.frame_indices)))
                net = _PolicyExtractor(extractor, p.resolution)
            else:
                x = torch.randn(EXPORT_BATCH, *MODALITIES[source].input_shape(clip))
                net = extractor
            write(f"policy_{source}", net, (x,), ["x"], ["features"], {"role": "policy_extractor", "source": source})
            feats.append(torch.randn(EXPORT_BATCH, extractor.output_dim))
        m = len(p.modalities)
        state = [torch.zeros(EXPORT_BATCH, 2 * m), torch.zeros(EXPORT_BATCH, p.lstm.hidden_size), torch.zeros(EXPORT_BATCH, p.lstm.hidden_size)]
        write("policy_step", _PolicyStep(p), (*feats, *state), [f"features_{s}" for s in p.extractors] + ["previous", "h", "c"],
              ["logits", "h_out", "c_out"], {"role": "policy_step"})
        policy = {"modalities": list(p.modalities), "sources": dict(p.sources), "extractors": list(p.extractors),
                  "frame_indices": list(p.frame_indices), "resolution": p.resolution, "hidden_size": p.lstm.hidden_size,
                  "thresholds": p.use_thresholds.double().tolist(), "quota": list(p.quota)}
    import onnx  # onnx: the `export` extra, only for --format onnx

    manifest = {
        "opset": opset,
        "onnx_version": onnx.__version__,
        "graphs": graphs,
        "normalisation": {m: MODALITIES[m].normalisation for m in MODALITIES},
        "policy": policy,
        "fusion": fusion,
        "pipeline": pipeline_settings(kind, model_cfg, clip),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
