"""The whole method in miniature, end to end, on 2 CPU cores (``adamml demo``).

generate the embedded dataset -> extract modalities -> stage 1 unimodal networks -> stage 2
weighted fusion -> stage 3 AdaMML -> evaluate everything (with a random policy at AdaMML's
rates) -> paper-style table and plots. Every figure printed is measured by this run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from adamml.config import config_from_dict
from adamml.config_files import load_config, save_config
from adamml.data.cache import VideoCache
from adamml.data.catalog import discover
from adamml.data.extract import extract_videos
from adamml.data.synth import generate_dataset
from adamml.evaluation.evaluate import evaluate_run
from adamml.runtime import runs
from adamml.runtime.checkpoint import load_checkpoint
from adamml.runtime.distributed import Runtime
from adamml.training.schedule import adamml_schedule
from adamml.training.stages import run_recipe

DEMO_CONFIG = "demo"
DEMO_DRAWS = 5  # passes averaged for the sampled-decision and random-policy rows


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run_demo(
    out: str | Path, *, seed: int = 0, workers: int = 2, fresh: bool = False, progress: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
) -> int:
    """The whole demo into ``out`` (dataset, cache, runs, results), reporting each step as it
    goes; 0 when it ran through, 1 when a video failed to extract."""
    out = Path(out)
    data_root = out / "data"
    run_dir = out / "runs"
    results_dir = out / "results"
    overrides = [
        f"data.root={data_root}",
        f"train.output_dir={run_dir}",
        f"train.seed={seed}",
        *([] if progress else ["train.progress=false"]),
        *overrides,
    ]
    cfg = load_config(DEMO_CONFIG, overrides)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    timings: dict[str, float] = {}
    t_all = time.time()

    t = time.time()
    _say(f"1/5 generating the embedded dataset in {data_root}")
    info = generate_dataset(data_root, seed=seed, progress=progress)
    timings["generate"] = time.time() - t
    _say(
        f"    {sum(info.counts.values())} videos ({', '.join(f'{n} {k}' for k, n in info.counts.items())}), "
        f"{len(info.classes)} classes; {info.written} written, {info.skipped} already there"
    )

    t = time.time()
    _say(f"2/5 extracting modalities ({', '.join(cfg.model.modalities)}) with {workers} workers")
    cache = VideoCache(data_root / "cache", cfg.data.decode)
    for split in (cfg.data.train_split, cfg.data.val_split):
        entries, _ = discover(data_root, split)
        report = extract_videos(entries, cache, workers=workers, progress=progress)
        _say(f"    {split}: {report.done} extracted, {report.skipped} already cached, {len(report.failed)} failed")
        if report.failed:
            for path, message in report.failed:
                _say(f"    FAILED {path}: {message}")
            return 1
    timings["extract"] = time.time() - t

    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "demo_config.yaml")
    runtime = Runtime()
    for number, stage in enumerate(runs.STAGES, 1):
        label = f"{number + 2}/5 stage {number}: {runs.STAGE_TABLE[stage].title}"
        t = time.time()
        _say(label)
        done = _stage_done(run_dir, stage, cfg)
        if done:
            _say("    already trained (use --fresh to retrain)")
        else:
            run_recipe(cfg, runtime, stage=stage, resume=True)
        timings[stage] = time.time() - t

    t = time.time()
    _say("evaluating every method on the validation split")
    results, table = evaluate_run(
        runs.find_stage_checkpoints(run_dir), runtime=runtime, random_policy=True, seed=seed,
        sample=True, draws=DEMO_DRAWS, out_dir=results_dir, progress=progress,
    )
    timings["evaluate"] = time.time() - t
    timings["total"] = time.time() - t_all
    print()
    print(table)
    print()
    _summarise(results)
    _say("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    _say(f"table, CSV, JSON and plots in {results_dir}/")
    return 0


def _stage_done(run_dir: Path, stage: str, cfg) -> bool:
    folders = [run_dir / name for name in runs.STAGE_TABLE[stage].folder_names(cfg.model.modalities, cfg.model.fusion)]
    return all((folder / runs.BEST).exists() and _finished(folder) for folder in folders)


def _finished(stage_path: Path) -> bool:
    """A stage is finished when its last checkpoint is at the end of its schedule."""
    last = stage_path / runs.LAST
    if not last.exists():
        return False
    state = load_checkpoint(last)
    cfg = config_from_dict(state["config"], "config")
    row = runs.STAGE_TABLE[state["kind"]]
    schedule = getattr(cfg.train, row.schedule)
    total = len(adamml_schedule(schedule)) if row.adaptive else schedule.epochs
    return state["epoch"] >= total


def _summarise(results: list) -> None:
    """Say plainly whether the miniature reproduces the paper's claim, from the measured rows:
    for each way of taking the policy's decisions (argmax, and sampled as the reference does),
    against weighted fusion and the random policy at that row's own rates."""
    fusion = next((r for r in results if r.method.endswith("fusion")), None)
    if fusion is None:
        return
    for i, ada in enumerate(results):
        if not ada.method.startswith("AdaMML"):
            continue
        rnd = results[i + 1] if i + 1 < len(results) and results[i + 1].method.startswith("Random policy") else None
        ratio = ada.gflops / fusion.gflops if fusion.gflops else float("nan")
        checks = [
            (f"accuracy {ada.accuracy:.2f}% >= {fusion.method} {fusion.accuracy:.2f}%", ada.accuracy >= fusion.accuracy),
            (f"GFLOPs {ada.gflops:.4f} = {100 * ratio:.1f}% of {fusion.method} ({fusion.gflops:.4f}) <= 60%", ratio <= 0.60),
        ]
        if rnd is not None:
            checks.append((f"{ada.accuracy:.2f}% > random policy at its rates {rnd.accuracy:.2f}%", ada.accuracy > rnd.accuracy))
        for text, ok in checks:
            _say(f"{'yes' if ok else 'NO '}  {ada.method}: {text}")
