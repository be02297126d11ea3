"""The stage driver: runs a schedule of epochs for a task, validates, keeps checkpoints.

It runs the same under ``python`` and ``torchrun``: a distributed sampler with ``set_epoch``,
one checkpoint dict per epoch, the epoch list of ``schedule.py`` so a killed run resumes at the
next epoch with identical results (every epoch reseeds from (seed, epoch), so nothing depends
on what ran before; the task's temperature, the optimisers and the gradient scaler come back
from the checkpoint). Two small functions hold the policy of a run: :func:`validation_due`
(which epochs are validated) and :func:`is_better` (which validated epoch is ``best.pt``).
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adamml.config import ExperimentConfig, save_config, to_dict
from adamml.data.loader import make_loader, set_loader_epoch
from adamml.runtime import runs
from adamml.runtime.checkpoint import load_checkpoint, rng_state, save_checkpoint
from adamml.runtime.distributed import (
    Runtime,
    barrier,
    broadcast_buffers,
    per_process_batch,
    sync_batchnorm,
)
from adamml.training.engine import (
    Task,
    TrainingInterrupted,
    evaluate,
    make_scaler,
    seed_everything,
    set_learning_rates,
    train_one_epoch,
    wrap_distributed,
)
from adamml.training.schedule import Phase, validates
from adamml.training.schedule import validation_due as schedule_validation_due


class EpochLogger:
    """One CSV row per epoch, and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = run_dir / "log.csv"
        self.enabled = enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self.writer = None

    def log(self, row: dict, step: int) -> None:
        if not self.enabled:
            return
        rows, fields = [], list(row)
        if self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fields = list(reader.fieldnames or [])
        if set(row) - set(fields) or not self.path.exists():
            # A column appears (a validated epoch after unvalidated ones): rewrite the file
            # under the union of the columns, so every value stays under its own header.
            fields += [k for k in row if k not in fields]
            with self.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields, restval="")
                writer.writeheader()
                writer.writerows(rows + [row])
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields, restval="").writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Each epoch's (and process's) random stream: a function of these only."""
    return seed * 1009 + epoch * 7919 + rank


def validation_due(cfg: ExperimentConfig, schedule: list[Phase], epoch: int) -> bool:
    """Validate every ``train.eval_every``-th (0: never) of the epochs that may be validated
    (stage 3: not the warm-up, and an alternating epoch after its policy pass, as the
    reference; ``schedule.validates``), and after the last one."""
    return schedule_validation_due(schedule, epoch, cfg.train.eval_every)


def selection_score(metrics: dict, task: Task | None = None) -> float:
    """What ranks checkpoints: the validation score (top-1, or mAP for multi-label sets), or
    the task's hooks' rule (training to a budget: the score within the budget)."""
    if not metrics:
        return -math.inf
    if task is not None and task.hooks is not None:
        return task.hooks.selection_score(metrics)
    return metrics.get("score", -math.inf)


def is_better(metrics: dict, best: float, task: Task | None = None) -> bool:
    """Whether the latest validation beats the best so far (then it becomes ``best.pt``)."""
    return selection_score(metrics, task) > best


@dataclass
class RunState:
    """What the driver carries from epoch to epoch (and back from ``last.pt``)."""

    epoch: int = 0  # epochs done
    best: float = -math.inf
    best_alternate: float = -math.inf  # stage 3: the best alternating epoch (the fine-tune's start)
    best_record: dict = field(default_factory=dict)  # the kept epoch's score, GFLOPs, selection rates
    metrics: dict = field(default_factory=dict)  # the latest validation
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    optimizer_block: str | None = None  # the schedule block the optimisers belong to
    stopped: bool = False  # the task's hooks ended the stage early (a validation plateau)


def _resume(task: Task, schedule: list[Phase], state: dict, scaler: torch.amp.GradScaler) -> RunState:
    task.model.load_state_dict(state["model"])
    if "task" in state:
        task.load_state_dict(state["task"])
    elif task.temperature is not None and "temperature" in state:  # checkpoints before "task"
        task.temperature.value = float(state["temperature"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    run = RunState(
        epoch=state["epoch"], best=state.get("best", -math.inf), metrics=state.get("metrics") or {},
        stopped=bool(state.get("stopped", False)),
        best_alternate=state.get("best_alternate", -math.inf), best_record=state.get("best_record", {}),
    )
    # (checkpoints written before Phase.segment became Phase.block say "optimizer_segment")
    saved_block = state.get("optimizer_block", state.get("optimizer_segment"))
    if run.epoch < len(schedule) and saved_block == schedule[run.epoch].block:
        phase = schedule[run.epoch]
        task.set_trainable(phase)
        run.optimizers = task.make_optimizers(phase)
        for name, opt in run.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        run.optimizer_block = phase.block
    return run


def _checkpoint(task: Task, run: RunState, scaler: torch.amp.GradScaler, cfg: ExperimentConfig, extra_state: dict | None) -> dict:
    return {
        "kind": task.kind,
        "epoch": run.epoch,
        "model": task.model.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in run.optimizers.items()},
        "optimizer_block": run.optimizer_block,
        "task": task.state_dict(),
        "scaler": scaler.state_dict(),
        "best": run.best,
        "best_alternate": run.best_alternate,
        "best_record": run.best_record,
        "metrics": run.metrics,
        "stopped": run.stopped,
        "config": to_dict(cfg),
        "rng": rng_state(),
        **(extra_state or {}),
    }


def _short(value):
    return round(value, 5) if isinstance(value, float) else value


def _reload_best_alternate(task: Task, run_dir: Path, runtime: Runtime) -> None:
    """The fine-tune starts from the best alternating epoch, weights and temperature, as the
    reference's; without one (alternating epochs not validated) it goes on from the last."""
    barrier()  # rank 0 wrote the file
    path = run_dir / runs.BEST_ALTERNATE
    if not path.exists():
        if runtime.is_main:
            print(f"{path}: no validated alternating epoch; the fine-tune goes on from the last one", flush=True)
        return
    state = load_checkpoint(path)
    task.model.load_state_dict(state["model"])
    tau = state.get("trained_temperature")
    if task.temperature is not None and tau is not None:
        task.temperature.value = float(tau)
    if runtime.is_main:
        print(f"fine-tune starts from {path} (epoch {state['epoch']}, temperature {tau})", flush=True)


def fit(
    task: Task,
    schedule: list[Phase],
    cfg: ExperimentConfig,
    train_set,
    val_set,
    runtime: Runtime,
    run_dir: Path,
    *,
    resume: bool = False,
    extra_state: dict | None = None,
    fault_after_steps: int | None = None,
) -> dict:
    """Run ``schedule`` for ``task``; checkpoint ``run_dir/last.pt`` after every epoch and
    ``best.pt`` when a validation improves (or at the end, if none was kept).

    Returns the kept (best) epoch's record: its score, GFLOPs, selection rates and epoch
    (the last validation metrics if none was kept). ``fault_after_steps`` raises TrainingInterrupted
    after that many optimiser steps of this call (a kill, for tests: nothing is saved then).
    """
    tcfg = cfg.train
    run_dir = Path(run_dir)
    model = task.model.to(runtime.device)
    scaler = make_scaler(runtime, tcfg.precision)
    last_path = run_dir / "last.pt"
    run = RunState()
    if resume and last_path.exists():
        run = _resume(task, schedule, load_checkpoint(last_path), scaler)
        if runtime.is_main:
            print(f"resumed {last_path} at epoch {run.epoch}/{len(schedule)}", flush=True)
        if run.stopped:
            if runtime.is_main:
                print(f"{last_path}: stage stopped at epoch {run.epoch} on a validation plateau", flush=True)
            return run.best_record or run.metrics
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = EpochLogger(run_dir, runtime.is_main)
    loader_args = {"runtime": runtime, "seed": tcfg.seed, "num_workers": cfg.data.num_workers}
    batch = per_process_batch(tcfg.batch_size, runtime.world_size)  # train.batch_size is global
    train_loader = make_loader(train_set, batch, train=True, **loader_args)
    val_loader = make_loader(val_set, batch, train=False, **loader_args) if val_set is not None else None
    if runtime.distributed and tcfg.sync_bn and not sync_batchnorm(model, runtime.device, runtime.distributed):
        if runtime.is_main:
            print("train.sync_bn: PyTorch synchronises batch norm on GPUs only; "
                  "each CPU process keeps its own statistics", flush=True)
    steps_done = 0

    def count_step() -> None:
        nonlocal steps_done
        steps_done += 1
        if fault_after_steps is not None and steps_done >= fault_after_steps:
            raise TrainingInterrupted(f"fault injected after {steps_done} steps")

    for epoch in range(run.epoch, len(schedule)):
        phase = schedule[epoch]
        if phase.block == "finetune" and phase.block_epoch == 0:
            _reload_best_alternate(task, run_dir, runtime)
        seed_everything(epoch_seed(tcfg.seed, epoch, runtime.rank))
        task.set_trainable(phase)
        if phase.block != run.optimizer_block:
            run.optimizers = task.make_optimizers(phase)
            run.optimizer_block = phase.block
        lrs = set_learning_rates(task, phase, run.optimizers)
        set_loader_epoch(train_loader, epoch, tcfg.seed)
        started = time.time()
        title = f"{task.kind} {epoch + 1}/{len(schedule)} {phase.block}:{phase.trains}"
        stats = train_one_epoch(
            task, wrap_distributed(model, runtime), train_loader, phase, run.optimizers, scaler, runtime,
            precision=tcfg.precision, multi_label=cfg.data.multi_label, max_steps=tcfg.max_steps_per_epoch,
            progress=title if runtime.is_main and tcfg.progress else None, after_step=count_step,
        )
        row: dict = {
            "epoch": epoch + 1,
            "block": phase.block,
            "trains": phase.trains,
            "lr": ",".join(f"{k}={v:.2g}" for k, v in lrs.items()),
            **stats.row(),
        }
        trained_temperature = None
        if task.temperature is not None:
            trained_temperature = task.temperature.value
            row["temperature"] = round(trained_temperature, 5)
        task.end_epoch(phase)
        validated = val_loader is not None and task.model_cfg is not None and validation_due(cfg, schedule, epoch)
        metrics: dict = {}
        if validated:
            broadcast_buffers(task.model)  # every shard scored with rank 0's (the saved) model
            hooks = task.hooks
            run.metrics = hooks.validate(task, val_loader, cfg, runtime) if hooks else evaluate(task, val_loader, cfg, runtime)
            row.update({f"val_{k}": v for k, v in run.metrics.items() if isinstance(v, int | float)})
            if validates(phase):  # only such epochs may be kept (never the warm-up)
                metrics = run.metrics
        if task.hooks is not None:  # may add log columns; True ends the stage (before the cap)
            run.stopped = task.hooks.after_epoch(phase, run.metrics if validated else {}, row) and epoch < len(schedule) - 1
        row["seconds"] = round(time.time() - started, 2)
        improved = is_better(metrics, run.best, task)
        run.best = max(run.best, selection_score(metrics, task))
        improved_alternate = phase.block == "alternate" and is_better(metrics, run.best_alternate, task)
        if phase.block == "alternate":
            run.best_alternate = max(run.best_alternate, selection_score(metrics, task))
        if improved:
            # What the kept model costs, beside what it scores.
            run.best_record = {"epoch": epoch + 1, "block": phase.block, "temperature": trained_temperature} | {
                k: v for k, v in metrics.items() if k in ("score", "gflops") or k.startswith(("selection_", "threshold_"))
            }
        run.epoch = epoch + 1
        if runtime.is_main:
            logger.log(row, epoch + 1)
            state = _checkpoint(task, run, scaler, cfg, extra_state)
            save_checkpoint(state, last_path)
            if improved or epoch == len(schedule) - 1 and not (run_dir / runs.BEST).exists():
                save_checkpoint(state, run_dir / runs.BEST)
            if improved_alternate:
                save_checkpoint(state | {"trained_temperature": trained_temperature}, run_dir / runs.BEST_ALTERNATE)
            print(f"[{task.kind}] " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if improved:
                print(f"[{task.kind}] best " + " ".join(f"{k}={_short(v)}" for k, v in run.best_record.items()), flush=True)
        if run.stopped:
            if runtime.is_main:
                print(f"[{task.kind}] stopping after epoch {epoch + 1} of {len(schedule)}: the validation "
                      "score has stopped improving (train.unimodal.patience)", flush=True)
            break
    logger.close()
    # The kept checkpoint's figures (what evaluate and the summary report), not the last epoch's.
    return run.best_record or run.metrics
