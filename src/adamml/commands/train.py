"""``adamml train``: run a stage of the recipe (or all of it) from a YAML config.

``adamml train --data ROOT`` is enough for a folder of one's own videos: the shipped
``default`` config, the class count from the data, a validation split carved out of train when
there is none, missing caches extracted first (see adamml.training.prepare). Works the same
under ``python`` and ``torchrun --nproc-per-node N`` (one or many nodes).
"""

from __future__ import annotations

import argparse
import os

from adamml.config import check_choice
from adamml.config_files import load_config
from adamml.models.backbones import require_torchvision_weights
from adamml.models.fusion import FUSIONS
from adamml.runtime.distributed import setup, teardown
from adamml.runtime.runs import STAGES
from adamml.training.driver import own_run_folder
from adamml.training.plan import format_plan, start_lines, without_torchvision_starts
from adamml.training.prepare import describe_recipe, prepare_run, write_summary
from adamml.training.run import run_verdict
from adamml.training.stages import run_recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default",
                        help="YAML file or name of a shipped config (default: default, the recipe for your own videos)")
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--modality", help="stage unimodal: train only this modality")
    parser.add_argument("--fusion", help="stage fusion: average | weighted | classwise | fc")
    parser.add_argument("--resume", action="store_true", help="continue from <stage dir>/last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the stages again: their earlier folders are moved to <output>/replaced/<time>/")
    parser.add_argument("--data", help="dataset root (overrides data.root)")
    parser.add_argument("--output", help="output dir (overrides train.output_dir)")
    parser.add_argument("--budget", type=float, default=None, metavar="B",
                        help="train AdaMML to B x weighted fusion's GFLOPs (0 < B <= 1): cost weights adapted "
                        "while the policy trains, the kept checkpoint the most accurate within the budget")
    parser.add_argument("--workers", type=int, default=None, help="processes extracting missing caches (default: every core)")
    parser.add_argument(
        "--plan", action="store_true",
        help="print the resolved recipe (per epoch: what trains, learning rates, temperature, "
        "batch per process, where each stage starts) and exit without reading data",
    )
    parser.add_argument(
        "--allow-random-start", action="store_true",
        help="start the networks whose config names torchvision weights from random weights "
        "instead (train a paper config from scratch; the run summary says so)",
    )
    parser.add_argument("--nproc", type=int, default=None,
                        help="with --plan: processes to plan for (default: WORLD_SIZE or 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI): train.progress=false")
    parser.add_argument("overrides", nargs="*", help="config overrides: section.key=value (before, between or after the options)")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.output:
        overrides.append(f"train.output_dir={args.output}")
    if args.budget is not None:
        overrides.append(f"train.adamml.budget={args.budget}")
    if args.no_progress:
        overrides.append("train.progress=false")
    cfg = load_config(args.config, overrides)  # checked whole: a wrong name fails here, not mid-run
    if args.fusion is not None:
        check_choice("--fusion", args.fusion, [f for f in FUSIONS if f != "unimodal"])
    if args.modality is not None:
        check_choice("--modality", args.modality, cfg.model.modalities)
    starts: list[str] = []
    if args.allow_random_start:
        cfg, starts = without_torchvision_starts(cfg)
    if args.plan:
        nproc = args.nproc or int(os.environ.get("WORLD_SIZE", "1"))
        print(format_plan(cfg, nproc))
        return 0
    require_torchvision_weights(cfg.model)  # a missing file stops here, before any data is read
    runtime = setup()
    try:
        with own_run_folder(cfg, runtime, stage=args.stage, modality=args.modality, fusion=args.fusion,
                            resume=args.resume, overwrite=args.overwrite) as moved:
            cfg, lines = prepare_run(cfg, runtime, config_name=args.config, workers=args.workers,
                                     progress=cfg.train.progress)
            recipe = describe_recipe(cfg, cfg.train.adamml.budget) + starts + start_lines(cfg)
            if runtime.is_main:
                for line in recipe:
                    print(f"[adamml] {line}", flush=True)
                write_summary(cfg, moved + lines + recipe)
            results = run_recipe(cfg, runtime, stage=args.stage, modality=args.modality, fusion=args.fusion,
                                 resume=args.resume)
    finally:
        teardown()
    if runtime.is_main:
        for name, metrics in results.items():
            score = metrics.get("score")
            kept = f" (kept epoch {metrics['epoch']})" if "epoch" in metrics else ""
            print(f"{name}: val score {100 * score:.2f}%{kept}" if score is not None else f"{name}: done")
        if "adamml" in results:
            lines = run_verdict(cfg)
            for line in lines:
                print(f"[adamml] {line}", flush=True)
            write_summary(cfg, lines, append=True)
    return 0
