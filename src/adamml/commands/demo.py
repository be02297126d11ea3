"""``adamml demo``: generate, extract, train and evaluate on the embedded dataset (adamml.demo)."""

from __future__ import annotations

import argparse

from adamml.demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="working folder (dataset, cache, runs, results)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="extraction worker processes")
    parser.add_argument("--fresh", action="store_true", help="retrain even if checkpoints exist")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides: section.key=value")


def run(args: argparse.Namespace) -> int:
    return run_demo(
        args.out, seed=args.seed, workers=args.workers, fresh=args.fresh,
        progress=not args.no_progress, overrides=args.overrides,
    )
