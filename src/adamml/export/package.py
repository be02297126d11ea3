"""``adamml export``: a trained checkpoint -> a portable folder (weights, config, model card).

``best.pt`` is a training checkpoint: optimiser states, RNG states, the run's progress, in a
torch pickle. What a user shares is the model: its weights as safetensors (no pickle, so
opening the file runs nothing), the settings that turn a video into its inputs, the class
names, the policy's fitted thresholds and what the model costs and scores, as JSON. The
layout and its checks are in :mod:`adamml.export.format`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from adamml.export.format import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    PackageError,
    read_config,
    sha256_file,
)
from adamml.export.onnx import export_graphs
from adamml.export.quantize import quantize_folder
from adamml.models.build import LoadedModel, model_from_state
from adamml.models.flops import modality_costs
from adamml.models.fusion import UnimodalFusion, _LateFusion
from adamml.runtime.checkpoint import load_checkpoint
from adamml.runtime.runs import BEST, find_stage_checkpoints
from adamml.version import __version__

# Checkpoint entries that only resume training: never exported.
TRAINING_STATE = ("optimizers", "optimizer_block", "scaler", "rng")
FORMATS = ("safetensors", "onnx")


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint file, a stage folder (its best.pt) or a run folder (its last stage's
    best.pt: AdaMML when it was trained)."""
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise PackageError(f"{path}: no such checkpoint or run folder")
    if (path / CONFIG_FILE).is_file() and not (path / BEST).is_file():
        raise PackageError(f"{path}: an export folder already; export a checkpoint (best.pt) or a run folder")
    if (path / BEST).is_file():
        return path / BEST
    found = find_stage_checkpoints(path)
    if not found:
        raise PackageError(f"{path}: no {BEST} in it or in its stage folders (is it a training run?)")
    return found[-1]


def _plain(value: Any) -> Any:
    """JSON-ready: tensors become numbers or lists, tuples lists; None where JSON has no form."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | bool | int | float | type(None)):
        return value
    return str(value)


def package_config(state: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """config.json's content: the checkpoint without weights and training state, plus what
    a runtime needs stated outright (decode and clip settings, GFLOPs, thresholds)."""

    loaded = model_from_package(state, where=checkpoint)
    model, kind, model_cfg, cfg = loaded.network, loaded.kind, loaded.model_cfg, loaded.cfg
    thresholds = state["model"].get("policy.use_thresholds")
    quota = state["model"].get("policy.use_quota")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adamml_version": __version__,
        "kind": kind,
        "modalities": list(model_cfg.modalities),
        "class_names": list(state.get("class_names") or [str(i) for i in range(model_cfg.num_classes)]),
        "thresholds": dict(zip(model_cfg.modalities, thresholds.tolist(), strict=True)) if thresholds is not None else None,
        # each video's best segments per modality used whatever the thresholds (model.policy.allocation)
        "quota": dict(zip(model_cfg.modalities, (int(q) for q in quota.tolist()), strict=True)) if quota is not None else None,
        "gflops_per_segment": modality_costs(model_cfg, cfg.data.clip),
        "fusion": fusion_parameters(model.fusion, model_cfg.fusion),
        "segments": cfg.data.eval_segments or cfg.data.clip.num_segments,
        "flow_method": cfg.data.decode.flow or "tvl1",
        "decode": _plain(vars(cfg.data.decode)),
        "clip": _plain(vars(cfg.data.clip)),
        "source": {"file": checkpoint.name, "sha256": sha256_file(checkpoint), "bytes": checkpoint.stat().st_size},
        # The checkpoint's own entries (config, model config, metrics, best record, epoch...).
        "checkpoint": _plain({k: v for k, v in state.items() if k not in TRAINING_STATE and k != "model"}),
    }


def fusion_parameters(fusion: nn.Module, name: str) -> dict[str, Any] | None:
    """A late-fusion head as data: its kind, mode and per-modality (or per-class) weights."""

    mode = getattr(fusion, "mode", "normalised")
    if isinstance(fusion, UnimodalFusion):
        return {"name": name, "mode": mode, "weights": None}
    if isinstance(fusion, _LateFusion):
        with torch.no_grad():
            return {"name": name, "mode": mode, "weights": fusion.weights().double().tolist()}
    return None  # a network over features ("fc"): its weights are in model.safetensors


def export_package(source: str | Path, to: str | Path, *, format: str = "safetensors",
                   license: str = "apache-2.0", opset: int = 17, quantize: str | None = None,
                   calibrate: str | Path | None = None, keep_fp32: Sequence[str] | None = None) -> Path:
    """Write the folder ``to`` from a checkpoint or run folder; ``format`` "onnx" adds one
    graph per component (adamml.export.onnx). Returns the folder.

    ``license`` goes into the model card's metadata (the weights' licence is their owner's
    choice; the default is the package's own). ``quantize`` "int8" (with ``format`` "onnx")
    quantises the graphs, calibrated on the videos ``calibrate`` names, but for those in
    ``keep_fp32`` (None: the policy's; adamml.export.quantize)."""

    if format not in FORMATS:
        raise PackageError(f"unknown export format {format!r}: expected one of {', '.join(FORMATS)}")
    if quantize is not None and (quantize != "int8" or format != "onnx" or calibrate is None):
        raise PackageError("--quantize int8 quantises ONNX graphs: give --format onnx and --calibrate VIDEOS")
    checkpoint = resolve_checkpoint(source)
    state = load_checkpoint(checkpoint)
    config = package_config(state, checkpoint)
    out = Path(to)
    if out.exists() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise PackageError(f"{out}: exists and is not an export folder; give a new or empty folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().clone() for k, v in state["model"].items()}
    save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "adamml_version": __version__})
    config["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    if format == "onnx":

        loaded = model_from_package(state, where=checkpoint)
        export_graphs(loaded.network, config, tmp, model_cfg=loaded.model_cfg, cfg=loaded.cfg, opset=opset)
        if quantize:

            quantize_folder(tmp, calibrate, keep_fp32)
    card = model_card(config, license=license)
    if format == "onnx":
        card += (f"\n## ONNX\n\nOne graph per component, listed with their inputs and SHA-256 in {MANIFEST_FILE}; "
                 'run them without torch: `adamml.load(folder, runtime="onnx")`.\n')
    (tmp / CARD_FILE).write_text(card)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def read_package(folder: str | Path) -> dict[str, Any]:
    """The in-memory checkpoint of an export folder, as :func:`load_checkpoint` gives for
    ``best.pt`` less its training state: weights from safetensors (never unpickled)."""

    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise PackageError(f"{folder}: no {WEIGHTS_FILE} (an incomplete export folder)")
    if config.get("weights_sha256") and sha256_file(weights) != config["weights_sha256"]:
        raise PackageError(f"{weights}: SHA-256 does not match {CONFIG_FILE} (the weights were changed after export)")
    try:
        model = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise PackageError(f"{weights}: unreadable ({exc})") from None
    return {**config["checkpoint"], "kind": config["kind"], "model": model, "class_names": config["class_names"]}


def model_from_package(source: str | Path | dict[str, Any], *, where: str | Path = "export") -> LoadedModel:
    """The trained network of an export folder or of :func:`read_package`'s dict, rebuilt as
    ``model_from_checkpoint`` rebuilds a checkpoint's."""

    state = source if isinstance(source, dict) else read_package(source)
    where = source if not isinstance(source, dict) else where
    return model_from_state(state, where)


def _metric_rows(config: dict[str, Any]) -> list[tuple[str, float]]:
    metrics = config["checkpoint"].get("metrics") or {}
    keep = ("top1", "top5", "mAP", "mean_class_acc", "score", "gflops")
    return [(k, float(metrics[k])) for k in keep if isinstance(metrics.get(k), int | float)]


def model_card(config: dict[str, Any], *, license: str = "apache-2.0") -> str:
    """README.md with the metadata block model hubs read (library, task, license, metrics)."""
    cfg = config["checkpoint"].get("config", {})
    dataset = (cfg.get("data") or {}).get("dataset") or "custom"
    name = cfg.get("name") or "adamml-model"
    metrics = _metric_rows(config)
    record = config["checkpoint"].get("best_record") or {}
    rates = {k.removeprefix("selection_"): v for k, v in {**(config["checkpoint"].get("metrics") or {}), **record}.items()
             if k.startswith("selection_") and isinstance(v, int | float)}
    lines = ["---", "library_name: adamml", "pipeline_tag: video-classification", f"license: {license}",
             "tags:", "- video-classification", "- adamml", *[f"- {m}" for m in config["modalities"]]]
    if metrics:
        lines += ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: video-classification",
                  "    dataset:", f"      name: {dataset}", f"      type: {dataset}", "      split: validation", "    metrics:"]
        for key, value in metrics:
            lines += [f"    - type: {key}", f"      value: {value:.6g}", f"      name: validation {key}"]
    lines += ["---", "", f"# {name}", "",
              f"An adamml {config['kind']} model ({', '.join(config['modalities'])}; {len(config['class_names'])} classes), "
              f"exported by adamml {config['adamml_version']} from `{config['source']['file']}` "
              f"(SHA-256 `{config['source']['sha256'][:16]}...`).", "",
              "```python", "import adamml", "", 'model = adamml.load("path/to/this/folder")',
              'print(model.predict("video.mp4"))', "```", "",
              "or `adamml predict --checkpoint path/to/this/folder video.mp4`.", "", "## Cost", "",
              "GFLOPs are multiply-adds, per segment:", "", "| network | GFLOPs |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in config["gflops_per_segment"].items()]
    if metrics or rates:
        lines += ["", "## Validation", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics]
        lines += [f"| selection rate {k} | {v:.3f} |" for k, v in rates.items()]
    if config.get("thresholds"):
        lines += ["", "Fitted policy thresholds (use a modality where logit(p_use) exceeds them): "
                  + ", ".join(f"{k} {v:.4g}" for k, v in config["thresholds"].items()) + "."]
    lines += ["", "## Classes", "", ", ".join(config["class_names"]), ""]
    return "\n".join(lines) + "\n"
