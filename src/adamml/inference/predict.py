"""``adamml predict``: classify video files with a trained model, running only what the policy picks.

Any file PyAV reads works, with or without an audio track (a missing track gives the
all-zero spectrogram the model was trained to expect, with a warning), at any size and length.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from adamml.data.datasets import VideoDataset
from adamml.data.types import VideoDecodeError, VideoEntry
from adamml.inference.pipeline import STAGES, Prediction, Predictor
from adamml.inference.windows import run_windowed
from adamml.modalities.table import MODALITIES
from adamml.models.build import input_modalities, model_from_checkpoint
from adamml.models.execution import PRECISIONS, ExecutionPlan
from adamml.models.flops import gflops_per_video, segment_costs
from adamml.models.thresholds import Budget, fit_thresholds, parse_budget


def load_predictor(checkpoint: str | Path):
    model, kind, model_cfg, cfg, state = model_from_checkpoint(checkpoint)
    class_names = state.get("class_names")
    if class_names is None:
        class_names = [str(i) for i in range(model_cfg.num_classes)]
    return model, kind, model_cfg, cfg, list(class_names)


def training_flow_method(cfg) -> str:
    """The optical flow a model was trained on: ``data.decode.flow`` of its config; a model
    trained from precomputed flow images (the official frame-folder layout, no method in the
    config) saw the reference's TV-L1."""
    return cfg.data.decode.flow or "tvl1"


def prediction_dataset(
    videos: list[str | Path], kind: str, model_cfg, cfg, class_names: list[str], flow: str | None = None
):
    """The evaluation samples of ``videos`` for a model: decoded straight from the files,
    keeping only the frames a sample reads. Needs no model, so decoding can run elsewhere
    (a Ray task) than the network. A flow model computes flow with ``flow``, by default the
    method it was trained with."""
    decode = cfg.data.decode
    needed = input_modalities(kind, model_cfg)
    if any(MODALITIES[m].reads == "flow" for m in needed):
        decode = dataclasses.replace(decode, flow=flow or training_flow_method(cfg))
    entries = [VideoEntry(path=Path(v), labels=[0], source=str(v)) for v in videos]
    return VideoDataset(
        entries, class_names, modalities=needed, clip=cfg.data.clip, decode=decode,
        train=False, cache=None, num_segments=cfg.data.eval_segments, stream=True,
    )


def planned(bundle, device: str = "cpu") -> tuple[tuple, ExecutionPlan]:
    """``load_predictor``'s bundle with its model prepared under ``device``'s execution plan
    (a copy: folded, channels_last, on the device), and the plan, for :func:`predict_samples`."""
    model, *rest = bundle
    plan = ExecutionPlan.for_device(device)
    return (plan.prepare(model), *rest), plan


@torch.no_grad()
def predict_samples(samples: list[dict], bundle, *, topk: int = 5, device: str = "cpu",
                    plan: ExecutionPlan | None = None) -> list[Prediction]:
    """Run the model on a batch of :func:`prediction_dataset` samples (only the sub-networks
    the policy selects, for AdaMML); one :class:`Prediction` per sample. ``plan``: the
    execution plan the bundle's model was prepared under (:func:`planned`), if any."""
    model, kind, model_cfg, cfg, class_names = bundle
    costs = segment_costs(model_cfg, cfg.data.clip)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in default_collate(samples).items()}
    with plan.context() if plan is not None else contextlib.nullcontext():
        if kind == "adamml":
            out = model(batch, mode="conditional")
        else:  # a fixed network runs every modality on every segment, and has no policy
            out = model(batch)
    if kind == "adamml":
        decisions = out.decisions.cpu().numpy()
        policy_cost = costs["policy"]
    else:
        k = batch[model_cfg.modalities[0]].shape[1]
        decisions = np.ones((len(samples), k, len(model_cfg.modalities)))
        policy_cost = 0.0
    gflops = gflops_per_video(decisions, [costs[m] for m in model_cfg.modalities], policy_cost)
    probs = torch.softmax(out.logits.float(), dim=-1).cpu()
    scores, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
    return [
        Prediction(
            video=str(sample["video"]),
            top=[(class_names[j], float(v)) for v, j in zip(scores[b].tolist(), idx[b].tolist(), strict=True)],
            segments=[[m for m, d in zip(model_cfg.modalities, row, strict=True) if d > 0.5] for row in decisions[b]],
            gflops=gflops[b],
            audio_missing=bool(sample.get("audio_missing", False)),
        )
        for b, sample in enumerate(samples)
    ]


def make_predictor(model_bundle, *, device: str = "cpu", plan: ExecutionPlan | None = None) -> Predictor:
    """A Predictor (the staged pipeline) from ``load_predictor``'s bundle."""
    model, kind, model_cfg, cfg, class_names = model_bundle
    return Predictor(model, kind, model_cfg, cfg, class_names, device=device, plan=plan)


def predict_videos(
    videos: list[str | Path],
    checkpoint: str | Path,
    *,
    topk: int = 5,
    device: str = "cpu",
    model_bundle=None,
    predictor: Predictor | None = None,
    budget: Budget | None = None,
) -> list[Prediction]:
    """Predict each video, running only what the policy picks.

    ``budget``: the policy's thresholds are fitted so the mean cost over *these* videos meets
    it (all videos are decoded and decided first, then finished; their inputs stay in memory).
    """
    predictor = predictor or make_predictor(model_bundle or load_predictor(checkpoint), device=device)
    if budget is None or predictor.kind != "adamml":
        return [predictor.run(v, topk=topk) for v in videos]
    prepared = [predictor.prepare(v) for v in videos]
    margins = torch.cat([predictor.decide(p) for p in prepared])
    costs = predictor.costs
    modalities = list(predictor.model_cfg.modalities)
    per_seg = [costs[m] for m in modalities]
    fusion = sum(per_seg) * margins.shape[1]
    thresholds = fit_thresholds(margins, per_seg, costs["policy"], budget.gflops(fusion), modalities)
    return [predictor.finish(p, thresholds, topk) for p in prepared]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--checkpoint", required=True, help="a trained model (e.g. runs/x/adamml/best.pt)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="long videos: classify each window of this many seconds (K segments each), "
                        "read once with bounded memory; a timeline per video")
    parser.add_argument("--timeline", default=None, metavar="PNG_OR_DIR",
                        help="with --window: plot the timeline (top classes over time, which modalities ran)")
    parser.add_argument("--profile", action="store_true",
                        help="print seconds per stage (decode, modalities, policy, flow, networks)")
    parser.add_argument("--budget", metavar="B",
                        help="move the policy's thresholds so the mean cost over the given videos meets B: "
                        "0.5 or 50%% of weighted fusion's GFLOPs, or 12.3G GFLOPs per video")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: autocast (CPUs with bf16, GPUs)")


def run(args: argparse.Namespace) -> int:
    missing = [v for v in args.videos if not Path(v).is_file()]
    if missing:
        print(f"adamml predict: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    bundle = load_predictor(args.checkpoint)
    if args.window is not None:
        return run_windowed(args, bundle)
    budget = parse_budget(args.budget) if args.budget else None
    plan = ExecutionPlan.for_device(args.device, precision=args.precision)
    predictor = make_predictor(bundle, device=args.device, plan=plan)
    predictions, failures = [], []
    # One call for all videos under a budget (its thresholds are fitted on them together).
    groups = [args.videos] if budget is not None else [[v] for v in args.videos]
    for group in groups:
        try:
            with warnings.catch_warnings():
                if args.json:
                    warnings.simplefilter("ignore")
                predictions += predict_videos(group, args.checkpoint, topk=args.topk, predictor=predictor, budget=budget)
        except VideoDecodeError as exc:
            failures.append({"video": group[0] if len(group) == 1 else ", ".join(group), "error": str(exc)})
    if args.json:
        print(json.dumps({"predictions": [asdict(p) for p in predictions], "failures": failures}, indent=2))
    else:
        for p in predictions:
            print(f"{p.video}{'  (no audio track)' if p.audio_missing else ''}")
            for name, score in p.top:
                print(f"  {100 * score:6.2f}%  {name}")
            used = "  ".join(f"{i + 1}:{'+'.join(s) or '-'}" for i, s in enumerate(p.segments))
            print(f"  segments  {used}")
            print(f"  GFLOPs    {p.gflops:.4f} (multiply-adds)")
            if args.profile:
                stages = "  ".join(f"{s} {p.seconds.get(s, 0.0):.3f}" for s in STAGES)
                print(f"  seconds   {stages}  total {sum(p.seconds.values()):.3f}"
                      + (f"  ({p.flow_fields} flow fields)" if p.flow_fields else ""))
        for f in failures:
            print(f"{f['video']}: FAILED: {f['error']}", file=sys.stderr)
    return 1 if failures else 0

