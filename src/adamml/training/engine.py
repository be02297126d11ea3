"""One epoch of training and one validation pass, shared by every stage of the recipe.

Split as torchvision's references split theirs: :func:`train_one_epoch` runs the optimiser
over the loader once, :func:`evaluate` scores the model on the validation loader, and the
stage driver (:mod:`adamml.training.driver`) decides which epochs run, when to validate and
what to keep. What differs between stages lives in a :class:`Task`: the model, the loss of a
step, the optimisers, what trains in each phase, and (stage 3) the policy's temperature.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from adamml.config import ExperimentConfig, ModelConfig
from adamml.evaluation.evaluate import evaluate_model
from adamml.models.execution import usable_precision
from adamml.runtime.distributed import Runtime, all_reduce_sum
from adamml.training.loss import adamml_loss, classification_loss, guidance_loss, is_correct
from adamml.training.schedule import Phase, decays_temperature


class TrainingInterrupted(RuntimeError):
    """Raised by the fault-injection hook (tests simulate a kill mid-epoch with it)."""


def multistep_lr(base: float, milestones: list[int], epoch: int) -> float:
    """MultiStepLR(gamma=0.1) as a pure function of the epoch: nothing to restore on resume."""
    return base * (0.1 ** sum(epoch >= m for m in milestones))


def seed_everything(seed: int) -> None:
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
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def steps_per_epoch(loader: DataLoader, max_steps: int | None) -> int:
    return len(loader) if max_steps is None else min(len(loader), max_steps)


def uses_fp16(runtime: Runtime, precision: str) -> bool:
    """fp16 autocast (which needs a gradient scaler): asked for, or "auto" without bf16."""
    if runtime.device.type != "cuda" or precision == "32":
        return False
    return precision == "16" or (precision == "auto" and not torch.cuda.is_bf16_supported())


def autocast(runtime: Runtime, precision: str):
    """Mixed precision on GPU (bf16 where supported, else fp16); full precision on CPU, or bf16
    where asked and the CPU has it natively (else fp32, said in one line)."""
    if runtime.device.type == "cpu" and precision == "bf16":
        native = usable_precision(runtime.device, precision) == "bf16"
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=native)
    if runtime.device.type != "cuda" or precision == "32":
        return torch.autocast(device_type=runtime.device.type, enabled=False)
    if uses_fp16(runtime, precision):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def make_scaler(runtime: Runtime, precision: str) -> torch.amp.GradScaler:
    """The gradient scaler fp16 needs (a no-op otherwise); its state goes into checkpoints."""
    return torch.amp.GradScaler("cuda", enabled=uses_fp16(runtime, precision))


def wrap_distributed(model: nn.Module, runtime: Runtime) -> nn.Module:
    """DDP under torchrun (gradients averaged over processes); the model itself otherwise."""
    if not runtime.distributed:
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
        find_unused_parameters=True,
    )


@dataclass
class Temperature:
    """The Gumbel-Softmax temperature of the policy's decisions, annealed as training goes.

    State of the task like its weights: saved in checkpoints and restored on resume.
    """

    value: float
    decay: float = 1.0

    def step(self) -> None:
        self.value *= self.decay

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@dataclass
class StepResult:
    loss: torch.Tensor
    logits: torch.Tensor
    decisions: torch.Tensor | None = None
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class Task:
    """What differs between stages: the model, how a step computes its loss, the optimisers."""

    kind: str  # "unimodal" | "fusion" | "adamml" | "policy_pretrain"
    model: nn.Module
    modalities: list[str]
    step: Callable[[nn.Module, dict, Phase], StepResult]
    make_optimizers: Callable[[Phase], dict[str, torch.optim.Optimizer]]
    phase_lrs: Callable[[Phase], dict[str, float]]
    set_trainable: Callable[[Phase], None] = lambda phase: None
    # Called after model.train() each epoch: put frozen parts in eval mode (no dropout noise,
    # no batch-norm statistics drifting while their weights are fixed).
    set_modes: Callable[[Phase], None] = lambda phase: None
    model_cfg: ModelConfig | None = None  # what evaluation scores (None: no validation)
    temperature: Temperature | None = None  # stage 3: read by ``step``
    # A stage's additions to the run (adamml.training.hooks): plateau stop, GFLOPs budget.
    hooks: Any = None

    def after_step(self, phase: Phase, result: StepResult) -> None:
        """After each optimiser step (the budget's dual ascent reads the decisions)."""
        if self.hooks is not None:
            self.hooks.after_step(phase, result)

    def end_epoch(self, phase: Phase) -> None:
        """After each training epoch: the temperature anneals after each alternating epoch's
        policy pass, as the reference's (20 decays for 20 alternating epochs)."""
        if self.temperature is not None and decays_temperature(phase):
            self.temperature.step()

    def state_dict(self) -> dict:
        """The task's own state beside its weights (the checkpoint's ``task`` entry)."""
        state = {"temperature": self.temperature.state_dict()} if self.temperature is not None else {}
        if self.hooks is not None:
            state["hooks"] = self.hooks.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.temperature is not None and "temperature" in state:
            self.temperature.load_state_dict(state["temperature"])
        if self.hooks is not None and "hooks" in state:
            self.hooks.load_state_dict(state["hooks"])


def set_learning_rates(task: Task, phase: Phase, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
    """The phase's base rate of each optimiser, times each parameter group's ``lr_scale``."""
    lrs = task.phase_lrs(phase)
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            group["lr"] = lrs[name] * group.get("lr_scale", 1.0)
    return lrs


def optimisation_step(
    task: Task,
    model: nn.Module,
    batch: dict,
    phase: Phase,
    optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    precision: str,
) -> StepResult:
    """One training step: the task's loss under autocast, scaled backward, and a step of the
    optimisers this phase trains."""
    with autocast(runtime, precision):
        result = task.step(model, batch, phase)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    scaler.scale(result.loss).backward()
    for name, opt in optimizers.items():
        if phase.trains in ("all", name):
            scaler.step(opt)
    scaler.update()
    return result


@dataclass
class EpochStats:
    """A training epoch's sums (over the processes of a distributed run): loss, correct
    videos, and (stage 3) the fraction of segments each modality ran on."""

    loss_sum: float = 0.0  # loss times videos
    correct: float = 0.0
    videos: float = 0.0
    selection: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.videos, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.videos, 1)

    def row(self) -> dict:
        """The epoch's training columns of log.csv."""
        row: dict = {
            "train_loss": round(self.loss, 5),
            "train_acc": round(100 * self.correct / max(self.videos, 1), 3),
        }
        for m, r in self.selection.items():
            row[f"train_sel_{m}"] = round(100 * r, 2)
        return row


def train_one_epoch(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    phase: Phase,
    optimizers: dict[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    *,
    precision: str = "32",
    multi_label: bool = False,
    max_steps: int | None = None,
    progress: str | None = None,
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    """One pass of ``phase`` over ``loader``; ``model`` is ``task.model`` or its DDP wrapper.

    progress: the bar's title (None: no bar, as on other ranks). after_step runs after every
    optimiser step (the fault-injection hook of the tests).
    """
    task.model.train()
    task.set_modes(phase)
    totals = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
    sel_totals = torch.zeros(len(task.modalities), dtype=torch.float64)
    sel_count = 0
    bar = progress_bar(progress, steps_per_epoch(loader, max_steps)) if progress else None
    for i, batch in enumerate(loader):
        if max_steps is not None and i >= max_steps:
            break
        batch = move_to(batch, runtime.device)
        result = optimisation_step(task, model, batch, phase, optimizers, scaler, runtime, precision)
        task.after_step(phase, result)
        if after_step is not None:
            after_step()
        n = batch["label"].shape[0]
        correct = is_correct(result.logits.float(), batch, multi_label).sum().item()
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
    stats = EpochStats(*totals.tolist())
    if sel_count:
        all_reduce_sum(sel_totals)
        sel_n = all_reduce_sum(torch.tensor([float(sel_count)], dtype=torch.float64)).item()
        stats.selection = dict(zip(task.modalities, (sel_totals / sel_n).tolist(), strict=True))
    return stats


def validates_sampled(task: Task, cfg: ExperimentConfig) -> bool:
    """Whether validation takes the policy's decisions as Gumbel samples (the reference's
    validation, ``train.adamml.val_decisions: sampled``) instead of the argmax. A run trained
    to a budget validates at its fitted thresholds, which only deterministic decisions use."""
    a = cfg.train.adamml
    return task.kind == "adamml" and a.val_decisions == "sampled" and a.budget is None


# The validation draws' seed, beside train.seed: the same noise at every validation of a run,
# so epochs are compared on the same draws (the reference draws afresh each time, unseeded).
VALIDATION_SEED_OFFSET = 7_777_777


def evaluate(task: Task, loader: DataLoader, cfg: ExperimentConfig, runtime: Runtime) -> dict:
    """The validation metrics of the task's model (fractions; ``score`` ranks checkpoints)."""
    if task.model_cfg is None:
        raise ValueError(f"the {task.kind} task has no model config to evaluate with")
    sample = validates_sampled(task, cfg)
    seed = cfg.train.seed + VALIDATION_SEED_OFFSET + 1_009 * runtime.rank
    return evaluate_model(task.model, loader, task.kind, task.model_cfg, cfg, runtime, sample=sample, seed=seed).metrics


def segment_loss_step(multi_label: bool, loss: str = "ce"):
    """Step for stage 1/2 networks: ``train.loss`` on the fused video logits."""

    def step(model: nn.Module, batch: dict, phase: Phase) -> StepResult:
        out = model(batch)
        return StepResult(loss=classification_loss(out.logits, batch, multi_label, loss), logits=out.logits)

    return step


def adamml_step(cost_weights: torch.Tensor, gamma: float, multi_label: bool, temperature: Temperature, loss: str = "ce",
                guidance: float = 0.0):
    """Step for stage 3: masked execution at the task's temperature, CE always, the efficiency
    loss (and the guidance loss, with a weight) when the policy trains."""

    def step(model: nn.Module, batch: dict, phase: Phase) -> StepResult:
        out = model(batch, temperature=temperature.value, mode="masked")
        parts = adamml_loss(out.logits, out.decisions, batch, cost_weights.to(out.logits.device), gamma, multi_label, loss)
        total = parts.total if phase.trains == "policy" else parts.classification
        if phase.trains == "policy" and guidance > 0 and out.policy_logits is not None:
            total = total + guidance * guidance_loss(out.policy_logits, out.all_segment_logits, batch, multi_label)
        return StepResult(loss=total, logits=out.logits, decisions=out.decisions)

    return step
