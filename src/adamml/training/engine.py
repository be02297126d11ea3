"""The training loop shared by the three stages of the recipe.

A plain loop in the torchvision-references style that runs the same under ``python`` and
``torchrun``: a distributed sampler with ``set_epoch``, one checkpoint dict per epoch, the
epoch list of ``schedule.py`` so a killed run resumes at the next epoch with identical
results (every epoch reseeds from (seed, epoch), so nothing depends on what ran before).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from adamml.config import ExperimentConfig, save_config, to_dict
from adamml.data.loader import make_loader, set_loader_epoch
from adamml.runtime.checkpoint import load_checkpoint, rng_state, save_checkpoint
from adamml.runtime.distributed import Runtime, all_reduce_sum
from adamml.training.loss import adamml_loss, classification_loss, is_correct
from adamml.training.schedule import Phase


class TrainingInterrupted(RuntimeError):
    """Raised by the fault-injection hook (tests simulate a kill mid-epoch with it)."""


def multistep_lr(base: float, milestones: list[int], epoch: int) -> float:
    """MultiStepLR(gamma=0.1) as a pure function of the epoch: nothing to restore on resume."""
    return base * (0.1 ** sum(epoch >= m for m in milestones))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def move_to(batch: dict, device: torch.device) -> dict:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


def progress_bar(desc: str, total: int):
    """A bar that is told about each step and never touches the loader: wrapping the loader
    (tqdm.auto's bar starts an iterator of its own) would change what the run does."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def steps_per_epoch(loader: DataLoader, max_steps: int | None) -> int:
    return len(loader) if max_steps is None else min(len(loader), max_steps)


def uses_fp16(runtime: Runtime, precision: str) -> bool:
    """fp16 autocast (which needs a gradient scaler): asked for, or "auto" without bf16."""
    if runtime.device.type != "cuda" or precision == "32":
        return False
    return precision == "16" or (precision == "auto" and not torch.cuda.is_bf16_supported())


def autocast(runtime: Runtime, precision: str):
    """Mixed precision on GPU (bf16 where supported, else fp16); full precision on CPU."""
    if runtime.device.type != "cuda" or precision == "32":
        return torch.autocast(device_type=runtime.device.type, enabled=False)
    if uses_fp16(runtime, precision):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def optimisation_step(
    task: Task,
    model: nn.Module,
    batch: dict,
    phase: Phase,
    temperature: float,
    optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    precision: str,
) -> StepResult:
    """One training step: the task's loss under autocast, scaled backward, and a step of the
    optimisers this phase trains."""
    with autocast(runtime, precision):
        result = task.step(model, batch, phase, temperature)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    scaler.scale(result.loss).backward()
    for name, opt in optimizers.items():
        if phase.trains in ("all", name):
            scaler.step(opt)
    scaler.update()
    return result


@dataclass
class StepResult:
    loss: torch.Tensor
    logits: torch.Tensor
    decisions: torch.Tensor | None = None
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class Task:
    """What differs between stages: the model, how a step computes its loss, the optimisers."""

    kind: str  # "unimodal" | "fusion" | "adamml"
    model: nn.Module
    modalities: list[str]
    step: Callable[[nn.Module, dict, Phase, float], StepResult]
    make_optimizers: Callable[[Phase], dict[str, torch.optim.Optimizer]]
    phase_lrs: Callable[[Phase], dict[str, float]]
    set_trainable: Callable[[Phase], None] = lambda phase: None
    # Called after model.train() each epoch: put frozen parts in eval mode (no dropout noise,
    # no batch-norm statistics drifting while their weights are fixed).
    set_modes: Callable[[Phase], None] = lambda phase: None


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
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train_task(
    task: Task,
    schedule: list[Phase],
    cfg: ExperimentConfig,
    train_set,
    val_set,
    runtime: Runtime,
    run_dir: Path,
    *,
    evaluate: Callable[[nn.Module, DataLoader, float], dict] | None = None,
    resume: bool = False,
    extra_state: dict | None = None,
    fault_after_steps: int | None = None,
) -> dict:
    """Run ``schedule`` for ``task``; checkpoint ``run_dir/last.pt`` after every epoch.

    Returns the last validation metrics. ``fault_after_steps`` raises TrainingInterrupted
    after that many optimiser steps of this call (a kill, for tests: nothing is saved then).
    """
    tcfg = cfg.train
    run_dir = Path(run_dir)
    model = task.model.to(runtime.device)
    start = 0
    temperature = tcfg.adamml.temperature
    best = -math.inf
    optimizers: dict[str, torch.optim.Optimizer] = {}
    opt_block = None
    last_path = run_dir / "last.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        start = state["epoch"]
        temperature = state.get("temperature", temperature)
        best = state.get("best", best)
        if start < len(schedule):
            opt_block = schedule[start].block
            # (checkpoints written before Phase.segment became Phase.block say "optimizer_segment")
            if state.get("optimizer_block", state.get("optimizer_segment")) == opt_block:
                task.set_trainable(schedule[start])
                optimizers = task.make_optimizers(schedule[start])
                for name, opt in optimizers.items():
                    opt.load_state_dict(state["optimizers"][name])
            else:
                opt_block = None
        if runtime.is_main:
            print(f"resumed {last_path} at epoch {start}/{len(schedule)}", flush=True)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = EpochLogger(run_dir, runtime.is_main)
    train_loader = make_loader(train_set, tcfg.batch_size, runtime, train=True, seed=tcfg.seed, num_workers=cfg.data.num_workers)
    val_loader = make_loader(val_set, tcfg.batch_size, runtime, train=False, seed=tcfg.seed, num_workers=cfg.data.num_workers) if val_set is not None else None
    scaler = torch.amp.GradScaler("cuda", enabled=uses_fp16(runtime, tcfg.precision))
    metrics: dict = {}
    steps_done = 0
    for epoch in range(start, len(schedule)):
        phase = schedule[epoch]
        seed_everything(tcfg.seed * 1009 + epoch * 7919 + runtime.rank)
        task.set_trainable(phase)
        if phase.block != opt_block:
            optimizers = task.make_optimizers(phase)
            opt_block = phase.block
        wrapped: nn.Module = model
        if runtime.distributed:
            wrapped = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        lrs = task.phase_lrs(phase)
        for name, opt in optimizers.items():
            for group in opt.param_groups:
                group["lr"] = lrs[name] * group.get("lr_scale", 1.0)
        set_loader_epoch(train_loader, epoch, tcfg.seed)
        model.train()
        task.set_modes(phase)
        totals = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
        sel_totals = torch.zeros(len(task.modalities), dtype=torch.float64)
        sel_count = 0
        started = time.time()
        bar = None
        if runtime.is_main and tcfg.progress:
            bar = progress_bar(f"{task.kind} {epoch + 1}/{len(schedule)} {phase.block}:{phase.trains}",
                               steps_per_epoch(train_loader, tcfg.max_steps_per_epoch))
        for i, batch in enumerate(train_loader):
            if tcfg.max_steps_per_epoch is not None and i >= tcfg.max_steps_per_epoch:
                break
            batch = move_to(batch, runtime.device)
            result = optimisation_step(task, wrapped, batch, phase, temperature, optimizers, scaler, runtime, tcfg.precision)
            steps_done += 1
            if fault_after_steps is not None and steps_done >= fault_after_steps:
                raise TrainingInterrupted(f"fault injected after {steps_done} steps")
            n = batch["label"].shape[0]
            correct = is_correct(result.logits.float(), batch, cfg.data.multi_label).sum().item()
            totals += torch.tensor([result.loss.item() * n, correct, n], dtype=torch.float64)
            if result.decisions is not None:
                sel_totals += result.decisions.detach().float().mean(dim=1).sum(dim=0).cpu().double()
                sel_count += n
            if bar is not None:
                bar.update()
                post = {"loss": f"{totals[0] / totals[2]:.3f}", "acc": f"{100 * totals[1] / totals[2]:.1f}"}
                if sel_count:
                    for m, r in zip(task.modalities, sel_totals / sel_count, strict=True):
                        post[m] = f"{100 * r:.0f}%"
                bar.set_postfix(post)
        if bar is not None:
            bar.close()
        all_reduce_sum(totals)
        if sel_count:
            all_reduce_sum(sel_totals)
            sel_n = all_reduce_sum(torch.tensor([float(sel_count)], dtype=torch.float64)).item()
        row: dict = {
            "epoch": epoch + 1,
            "block": phase.block,
            "trains": phase.trains,
            "lr": ",".join(f"{k}={v:.2g}" for k, v in lrs.items()),
            "train_loss": round(float(totals[0] / max(totals[2], 1)), 5),
            "train_acc": round(float(100 * totals[1] / max(totals[2], 1)), 3),
        }
        if sel_count:
            for m, r in zip(task.modalities, (sel_totals / sel_n).tolist(), strict=True):
                row[f"train_sel_{m}"] = round(100 * r, 2)
        if task.kind == "adamml":
            row["temperature"] = round(temperature, 5)
            temperature *= tcfg.adamml.temperature_decay
        is_last = epoch == len(schedule) - 1
        if evaluate is not None and val_loader is not None and (is_last or _eval_due(cfg, epoch)):
            metrics = evaluate(model, val_loader, temperature)
            row.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
        row["seconds"] = round(time.time() - started, 2)
        score = metrics.get("score", -math.inf) if metrics else -math.inf
        improved = score > best
        best = max(best, score)
        if runtime.is_main:
            logger.log(row, epoch + 1)
            state = {
                "kind": task.kind,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "optimizer_block": opt_block,
                "temperature": temperature,
                "best": best,
                "metrics": metrics,
                "config": to_dict(cfg),
                "rng": rng_state(),
                **(extra_state or {}),
            }
            save_checkpoint(state, last_path)
            if improved or is_last and not (run_dir / "best.pt").exists():
                save_checkpoint(state, run_dir / "best.pt")
            msg = " ".join(f"{k}={v}" for k, v in row.items())
            print(f"[{task.kind}] {msg}", flush=True)
    logger.close()
    return metrics


def _eval_due(cfg: ExperimentConfig, epoch: int) -> bool:
    every = cfg.train.eval_every
    return every > 0 and (epoch + 1) % every == 0


def segment_loss_step(multi_label: bool):
    """Step for stage 1/2 networks: cross-entropy on the fused video logits."""

    def step(model: nn.Module, batch: dict, phase: Phase, temperature: float) -> StepResult:
        out = model(batch)
        return StepResult(loss=classification_loss(out.logits, batch, multi_label), logits=out.logits)

    return step


def adamml_step(cost_weights: torch.Tensor, gamma: float, multi_label: bool):
    """Step for stage 3: masked execution, CE always, the efficiency loss when the policy trains."""

    def step(model: nn.Module, batch: dict, phase: Phase, temperature: float) -> StepResult:
        out = model(batch, temperature=temperature, mode="masked")
        parts = adamml_loss(out.logits, out.decisions, batch, cost_weights.to(out.logits.device), gamma, multi_label)
        loss = parts.total if phase.trains == "policy" else parts.classification
        return StepResult(loss=loss, logits=out.logits, decisions=out.decisions)

    return step
