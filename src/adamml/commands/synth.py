"""``adamml synth``: write the embedded synthetic audio-visual dataset (adamml.data.synth)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adamml.data.synth import generate_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder to write the dataset into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--duration-s", type=float, default=4.0, help="seconds per video")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=64, help="frame height and width (even)")
    parser.add_argument("--sample-rate", type=int, default=16_000)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 4)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    try:
        info = generate_dataset(
            args.out_dir, seed=args.seed, train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, duration_s=args.duration_s, fps=args.fps,
            size=args.size, sample_rate=args.sample_rate, workers=args.workers,
            progress=args.progress,
        )
    except ValueError as exc:
        print(f"adamml synth: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}: {v}" for k, v in info.counts.items())
    print(
        f"wrote {info.written} videos ({info.skipped} already there) to {info.out_dir} "
        f"[{counts}; {len(info.classes)} classes]"
    )
    return 0
