"""``adamml predict``: classify video files with a trained model, running only what the policy picks.

Files one by one (text or ``--json``), the windows of long videos (``--window``), or a corpus
into JSON lines with a resumable manifest (``--out``, in this process or on Ray). Every path
goes through :func:`adamml.load` and its :class:`~adamml.api.Model`; this module only parses,
checks the options against each other, prints and picks the exit code. The library is
imported inside the functions that use it, so building the parser (``adamml --help``) imports
neither torch nor PyAV.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import adamml
from adamml.api import checkpoint_digest, resolve_checkpoint
from adamml.commands import live as live_command
from adamml.data.types import VideoDecodeError
from adamml.errors import AdamMLError
from adamml.inference.windows import format_timeline, plot_timeline
from adamml.models.thresholds import BudgetError, parse_budget
from adamml.results import STAGES
from adamml.scale.batch import expand_videos, local_records, predict_to_jsonl
from adamml.scale.predict import ray_records
from adamml.scale.runtime import import_ray

PRECISIONS = ("fp32", "bf16")  # adamml.models.execution's, without importing torch for --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="*", metavar="VIDEO_OR_DIR_OR_LIST",
                        help="video files; with --out also folders and list files (.txt/.csv)")
    parser.add_argument("--checkpoint", required=True,
                        help="a trained model: a checkpoint (runs/x/adamml/best.pt) or a run folder (its best one)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when there is one)")
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
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="onnx: run an export folder's graphs without torch (adamml export --format onnx)")
    live = parser.add_argument_group("a live stream (see docs/live.md)")
    live.add_argument("--live", metavar="SOURCE", default=None,
                      help="rtsp:// or http(s):// URL, /dev/videoN, a growing file, or - (standard input): "
                      "one line (or --json object) per segment as it arrives")
    live.add_argument("--mode", nargs="+", default=["carry"], metavar="MODE",
                      help="carry (the policy's state runs through the stream) or window N (restarts every N segments)")
    live.add_argument("--running", type=int, default=10, metavar="N", help="segments in the running video-level score")
    live.add_argument("--max-lag", type=float, default=None, metavar="S",
                      help="drop segments the model would reach more than S seconds behind the stream")
    live.add_argument("--record", metavar="PNG", help="write the live timeline at the end")
    live.add_argument("--pace", type=float, default=None, metavar="X", help="replay a finished file at X times real time")
    live.add_argument("--follow-idle", type=float, default=3.0, metavar="S",
                      help="a growing file has ended once it has not grown for S seconds")
    live.add_argument("--format", default=None, help="the container format when it cannot be probed (mpegts, matroska)")
    live_command.add_stream_options(live)
    batch = parser.add_argument_group("a corpus into JSON lines (see docs/scale-out.md)")
    batch.add_argument("--out", type=Path, default=None,
                       help="write one JSON line per video here; resumable, with a manifest beside it")
    batch.add_argument("--engine", default="local", choices=("local", "ray"),
                       help="local (default) or ray (Ray Data; `pip install 'adamml[ray]'`); ray needs --out")
    batch.add_argument("--address", default=None, help="ray: a running cluster (default: RAY_ADDRESS, else start a local Ray)")
    batch.add_argument("--batch-size", type=int, default=8, help="ray: videos per model call (default 8)")
    batch.add_argument("--actors", type=int, default=None, help="ray: model replicas (default: one per GPU, else one per CPU)")
    batch.add_argument("--manifest", type=Path, default=None, help="per-video status file (default: OUT with .manifest.jsonl)")
    batch.add_argument("--retry-failed", action="store_true", help="redo videos an earlier run recorded as failed")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")


def option_problems(args: argparse.Namespace) -> list[str]:
    """Every option that is wrong or cannot be honoured with the others, one line each."""

    problems, wrong = [], set()  # an option already said to be wrong gets no second line
    if args.live is not None:
        for flag, value in (("VIDEO", args.videos), ("--out", args.out), ("--window", args.window),
                            ("--profile", args.profile), ("--runtime onnx", args.runtime == "onnx")):
            if value:
                problems.append(f"--live reads one stream; {flag} is for files: give one of them")
        return problems
    if not args.videos:
        problems.append("give one or more videos (or --live SOURCE)")
    if args.runtime == "onnx":
        for flag, value in (("--out", args.out), ("--window", args.window), ("--budget", args.budget),
                            ("--precision bf16", args.precision != "fp32")):
            if value is not None and value is not False:
                problems.append(f"--runtime onnx predicts files one by one with the exported thresholds; "
                                f"{flag} needs the torch runtime")
    if args.budget is not None:
        try:
            parse_budget(args.budget)
        except BudgetError as exc:
            problems.append(f"--budget: {exc}")
            wrong.add("budget")
    if args.window is not None and not (math.isfinite(args.window) and args.window > 0):
        problems.append(f"--window must be a positive number of seconds, got {args.window}")
        wrong.add("window")
    if args.topk < 1:
        problems.append(f"--topk must be at least 1, got {args.topk}")
    if args.timeline is not None and args.window is None:
        problems.append("--timeline plots the windows of --window SECONDS: give --window")
    if args.out is None:
        if args.engine != "local":
            problems.append(f"--engine {args.engine} writes JSON lines: give --out predictions.jsonl")
        return problems
    # --out streams one line per video, resumably: nothing that needs every video at once.
    if args.budget is not None and "budget" not in wrong:
        problems.append("--budget fits the thresholds over all the videos of one call, which --out (resumable, "
                        "one video at a time) cannot do: run without --out, or train to a budget")
    if args.window is not None and "window" not in wrong:
        problems.append("--window gives a timeline per video, which --out's JSON lines do not hold: run without --out")
    if args.profile:
        problems.append("--profile prints per-video timings, which --out does not: run without --out")
    if args.json:
        problems.append("--json prints one document; --out writes JSON lines already: give one of them")
    if args.batch_size < 1:
        problems.append(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.actors is not None and args.actors < 1:
        problems.append(f"--actors must be at least 1, got {args.actors}")
    return problems


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return args.device
    import torch  # only when a model runs: `adamml --help` stays fast

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    problems = option_problems(args)
    if problems:
        for line in problems:
            print(f"adamml predict: {line}", file=sys.stderr)
        return 2
    if args.live is not None:
        args.source, args.device, args.topk = args.live, args.device or "cpu", args.topk
        return live_command.run(args)
    if args.out is not None:
        return _run_batch(args)
    missing = [v for v in args.videos if not Path(v).is_file()]
    if missing:
        print(f"adamml predict: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.runtime == "onnx":
        return _run_onnx(args)

    model = adamml.load(args.checkpoint, device=_device(args), budget=args.budget, precision=args.precision)
    if args.window is not None:
        return _run_windows(args, model)
    failures: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        if args.json:
            warnings.simplefilter("ignore")
        if model.budget is not None:  # fitted over the videos that decode, together
            predictions = model.predict(args.videos, topk=args.topk, failures=failures)
        else:  # one at a time: one video's inputs in memory
            predictions = [p for v in args.videos for p in model.predict([v], topk=args.topk, failures=failures)]
    return _print_predictions(args, predictions, failures)


def _run_onnx(args: argparse.Namespace) -> int:
    """``--runtime onnx``: an export folder's graphs, file by file, without torch."""
    model = adamml.load(args.checkpoint, runtime="onnx")
    predictions, failures = [], []
    try:
        for video in args.videos:
            try:
                predictions.append(model.predict(video, topk=args.topk))
            except AdamMLError as exc:
                failures.append((video, " ".join(str(exc).split())))
    finally:
        model.close()
    return _print_predictions(args, predictions, failures)


def _print_predictions(args: argparse.Namespace, predictions, failures: list[tuple[str, str]]) -> int:
    """The predictions as text or one JSON document; the failures named; exit 1 if any."""
    if args.json:
        print(json.dumps({"predictions": [asdict(p) for p in predictions],
                          "failures": [{"video": v, "error": e} for v, e in failures]}, indent=2))
    else:
        for p in predictions:
            print("\n".join(format_prediction(p, profile=args.profile)))
        for video, error in failures:
            print(f"{video}: FAILED: {error}", file=sys.stderr)
    return 1 if failures else 0


def format_prediction(p, *, profile: bool = False) -> list[str]:
    """Text lines of one prediction for the terminal."""
    lines = [f"{p.video}{'  (no audio track)' if p.audio_missing else ''}"]
    lines += [f"  {100 * score:6.2f}%  {name}" for name, score in p.top]
    used = "  ".join(f"{i + 1}:{'+'.join(s) or '-'}" for i, s in enumerate(p.segments))
    lines.append(f"  segments  {used}")
    lines.append(f"  GFLOPs    {p.gflops:.4f} (multiply-adds)")
    if profile:
        stages = "  ".join(f"{s} {p.seconds.get(s, 0.0):.3f}" for s in STAGES)
        lines.append(f"  seconds   {stages}  total {sum(p.seconds.values()):.3f}"
                     + (f"  ({p.flow_fields} flow fields)" if p.flow_fields else ""))
    return lines


def _run_windows(args: argparse.Namespace, model) -> int:
    """``--window``: a timeline per video, as text or JSON, and PNGs."""

    timelines, failures = [], []
    for video in args.videos:
        try:
            with warnings.catch_warnings():
                if args.json:
                    warnings.simplefilter("ignore")
                timeline = model.predict_windows(video, args.window, topk=args.topk)
        except VideoDecodeError as exc:
            failures.append({"video": video, "error": str(exc)})
            continue
        timelines.append(timeline)
        if args.timeline:
            target = Path(args.timeline)
            if not (target.suffix.lower() == ".png" and len(args.videos) == 1):
                target = target / f"{Path(video).stem}.timeline.png"
            plot_timeline(timeline, model.class_names, target)
            if not args.json:
                print(f"timeline plot: {target}")
    if args.json:
        print(json.dumps({"timelines": [t.to_json() for t in timelines], "failures": failures}, indent=2))
    else:
        for t in timelines:
            print("\n".join(format_timeline(t)))
        for f in failures:
            print(f"{f['video']}: FAILED: {f['error']}", file=sys.stderr)
    return 1 if failures else 0


def _run_batch(args: argparse.Namespace) -> int:
    """``--out``: JSON lines and a manifest that records the checkpoint and the options."""

    videos = expand_videos(args.videos)
    checkpoint = resolve_checkpoint(args.checkpoint)
    run_info = {"checkpoint_sha256": checkpoint_digest(checkpoint), "topk": args.topk, "precision": args.precision}
    if args.engine == "ray":

        import_ray()  # fail before anything is written when the extra is missing

        def produce(todo: list[str]):
            return ray_records(todo, checkpoint, topk=args.topk, batch_size=args.batch_size,
                               actors=args.actors, address=args.address, precision=args.precision)
    else:

        model = adamml.load(checkpoint, device=_device(args), precision=args.precision)

        def produce(todo: list[str]):
            return local_records(todo, model, topk=args.topk)

    print(f"{len(videos)} videos -> {args.out}", file=sys.stderr)
    report = predict_to_jsonl(videos, args.out, produce, manifest=args.manifest, retry_failed=args.retry_failed,
                              progress=not args.no_progress, run=run_info)
    print(report.summary())
    return 1 if report.failed else 0
