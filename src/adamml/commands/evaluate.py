"""``adamml evaluate``: score checkpoints the way the paper reports them (accuracy, mAP,
selection rates, GFLOPs per video), with budgets, a sweep, plots and the collapse warnings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adamml.evaluation.evaluate import PROTOCOLS, evaluate_run
from adamml.evaluation.health import checkpoint_context, collapse_warnings
from adamml.models.execution import PRECISIONS
from adamml.models.thresholds import parse_budget
from adamml.runtime.distributed import setup, teardown
from adamml.runtime.runs import find_stage_checkpoints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", default=[], help="a checkpoint (repeatable)")
    parser.add_argument("--run-dir", help="a training output dir: evaluates every stage's best.pt")
    parser.add_argument("--data", help="dataset root (default: the one the model was trained on)")
    parser.add_argument("--split", help="split to evaluate (default: the config's val split)")
    parser.add_argument("--out", help="write results.csv/json/txt and plots here")
    parser.add_argument("--no-random-policy", action="store_true", help="skip the random-policy baseline")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="deterministic",
        help="AdaMML's decisions: deterministic (argmax, default), paper (sampled as the "
        "reference's test, averaged over --draws) or both",
    )
    parser.add_argument("--sample", action="store_true", help="the same as --protocol both")
    parser.add_argument("--seed", type=int, default=0, help="seed for --sample and random policies")
    parser.add_argument("--draws", type=int, default=1,
                        help="passes averaged for sampled decisions and random policies (default 1)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    parser.add_argument("--budget", action="append", default=[], metavar="B",
                        help="also score AdaMML with its policy's thresholds moved so the mean cost meets B: "
                        "0.5 or 50%% of weighted fusion's GFLOPs, or 12.3G GFLOPs per video (repeatable)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: autocast (CPUs with bf16 instructions, GPUs)")
    parser.add_argument("--sweep", action="store_true",
                        help="write budget_sweep.csv/png to --out: accuracy vs GFLOPs over budgets, "
                        "with a random policy at the same rates")


def run(args: argparse.Namespace) -> int:
    checkpoints = [Path(p) for p in args.checkpoint]
    if args.run_dir:
        found = find_stage_checkpoints(Path(args.run_dir))
        if not found:
            print(f"{args.run_dir}: no <stage>/best.pt checkpoints found", file=sys.stderr)
            return 2
        checkpoints += found
    if not checkpoints:
        print("give --checkpoint CKPT (repeatable) or --run-dir DIR", file=sys.stderr)
        return 2
    budgets = [parse_budget(b) for b in args.budget]
    if args.sweep and not args.out:
        print("--sweep writes its curve to --out DIR: give --out", file=sys.stderr)
        return 2
    runtime = setup()
    try:
        results, table = evaluate_run(
            checkpoints, data_root=args.data, split=args.split, runtime=runtime,
            random_policy=not args.no_random_policy, sample=args.sample, seed=args.seed, draws=args.draws,
            protocol=args.protocol,
            out_dir=Path(args.out) if args.out else None, batch_size=args.batch_size,
            plots=not args.no_plots, budgets=budgets, sweep=args.sweep, precision=args.precision,
            progress=not args.no_progress,
        )
    finally:
        teardown()
    if runtime.is_main:
        print(table)
        for line in collapse_warnings(results, **checkpoint_context(checkpoints)):
            print(f"WARNING: {line}")
        if args.out:
            print(f"results written to {args.out}/")
    return 0
