"""``adamml predict``: classify video files with a trained model, running only what the policy picks.

Any file PyAV reads works, with or without an audio track (a missing track gives the
all-zero spectrogram the model was trained to expect, with a warning), at any size and length.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from adamml.data.datasets import VideoDataset
from adamml.data.types import VideoDecodeError, VideoEntry
from adamml.evaluation.evaluate import segment_costs
from adamml.evaluation.metrics import gflops_per_video
from adamml.modalities.table import MODALITIES
from adamml.models.build import input_modalities, model_from_checkpoint


@dataclass
class Prediction:
    video: str
    top: list[tuple[str, float]]  # (class name, probability), best first
    segments: list[list[str]]  # modalities that ran in each segment
    gflops: float
    audio_missing: bool


def load_predictor(checkpoint: str | Path):
    model, kind, model_cfg, cfg, state = model_from_checkpoint(checkpoint)
    class_names = state.get("class_names")
    if class_names is None:
        class_names = [str(i) for i in range(model_cfg.num_classes)]
    return model, kind, model_cfg, cfg, list(class_names)


def prediction_dataset(videos: list[str | Path], kind: str, model_cfg, cfg, class_names: list[str]):
    """The evaluation samples of ``videos`` for a model: decoded straight from the files,
    keeping only the frames a sample reads. Needs no model, so decoding can run elsewhere
    (a Ray task) than the network."""
    decode = cfg.data.decode
    needed = input_modalities(kind, model_cfg)
    if any(MODALITIES[m].reads == "flow" for m in needed) and decode.flow is None:
        decode = dataclasses.replace(decode, flow="dis")
    entries = [VideoEntry(path=Path(v), labels=[0], source=str(v)) for v in videos]
    return VideoDataset(
        entries, class_names, modalities=needed, clip=cfg.data.clip, decode=decode,
        train=False, cache=None, num_segments=cfg.data.eval_segments, stream=True,
    )


@torch.no_grad()
def predict_samples(samples: list[dict], bundle, *, topk: int = 5, device: str = "cpu") -> list[Prediction]:
    """Run the model on a batch of :func:`prediction_dataset` samples (only the sub-networks
    the policy selects, for AdaMML); one :class:`Prediction` per sample."""
    model, kind, model_cfg, cfg, class_names = bundle
    costs = segment_costs(model_cfg, cfg.data.clip)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in default_collate(samples).items()}
    if kind == "adamml":
        out = model(batch, mode="conditional")
        decisions = out.decisions.cpu().numpy()
        policy_cost = costs["policy"]
    else:  # a fixed network runs every modality on every segment, and has no policy
        out = model(batch)
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


def predict_videos(
    videos: list[str | Path],
    checkpoint: str | Path,
    *,
    topk: int = 5,
    device: str = "cpu",
    model_bundle=None,
) -> list[Prediction]:
    bundle = model_bundle or load_predictor(checkpoint)
    model, kind, model_cfg, cfg, class_names = bundle
    model.to(device).eval()
    dataset = prediction_dataset(videos, kind, model_cfg, cfg, class_names)
    results = []
    for i, video in enumerate(videos):
        (prediction,) = predict_samples([dataset[i]], bundle, topk=topk, device=device)
        prediction.video = str(video)
        results.append(prediction)
    return results


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


def run(args: argparse.Namespace) -> int:
    missing = [v for v in args.videos if not Path(v).is_file()]
    if missing:
        print(f"adamml predict: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    bundle = load_predictor(args.checkpoint)
    if args.window is not None:
        from adamml.inference.windows import run_windowed

        return run_windowed(args, bundle)
    predictions, failures = [], []
    for video in args.videos:
        try:
            with warnings.catch_warnings():
                if args.json:
                    warnings.simplefilter("ignore")
                predictions += predict_videos([video], args.checkpoint, topk=args.topk, device=args.device, model_bundle=bundle)
        except VideoDecodeError as exc:
            failures.append({"video": video, "error": str(exc)})
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
        for f in failures:
            print(f"{f['video']}: FAILED: {f['error']}", file=sys.stderr)
    return 1 if failures else 0

