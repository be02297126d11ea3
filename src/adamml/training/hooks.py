"""What a stage adds to the training loop without the loop knowing the stage: stopping on a
validation plateau (stage 1) and training to a GFLOPs budget (stage 3).

When a task has hooks (``Task.hooks``), ``train_one_epoch`` calls ``after_step(phase,
result)`` after each optimiser step, and the stage driver (:func:`adamml.training.driver.fit`)
calls ``validate(task, loader, cfg, runtime)`` for each validation, ``after_epoch(phase,
metrics, row)`` after each epoch (it may add log columns, and returns True to stop the stage)
and ``selection_score(metrics)`` to choose ``best.pt``; their
``state_dict`` is part of the task's, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import math

import torch

from adamml.runtime.distributed import all_reduce_sum
from adamml.training.budget import calibrate_policy, decision_metrics, validation_margins
from adamml.training.engine import evaluate


class StageHooks:
    """No-op defaults."""

    def after_step(self, phase, result) -> None:
        pass

    def after_epoch(self, phase, metrics: dict, row: dict) -> bool:
        return False

    def selection_score(self, metrics: dict) -> float:
        return metrics.get("score", -math.inf) if metrics else -math.inf

    def validate(self, task, loader, cfg, runtime) -> dict:
        """The validation metrics of the epoch (a stage may score its model its own way)."""
        return evaluate(task, loader, cfg, runtime)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PlateauStop(StageHooks):
    """Stop when the validation score has not improved for ``patience`` validated epochs
    (the schedule's length is the cap). Epochs without validation do not count, nor do epochs
    while the best score is still under ``floor`` (twice chance): a network trained from
    scratch often sits at chance for several epochs before it starts to learn, and stopping it
    there is exactly the failure this rule is for.

    A plateau while a learning-rate step is still ahead takes that step now instead of
    stopping (and the count starts again): on small validation sets the score wanders by
    several points, and a network stopped before its rate was lowered has often not learned
    yet (docs/own-data.md). ``milestones``
    are the stage's lr steps (0-based epochs, as ``multistep_lr`` reads them), moved earlier
    as steps are taken; the task reads its rates from them."""

    def __init__(self, patience: int, floor: float = 0.0, milestones: list[int] | None = None) -> None:
        self.patience = int(patience)
        self.floor = float(floor)
        self.milestones = sorted(int(m) for m in (milestones or []))
        self.best = -math.inf
        self.waited = 0

    def after_epoch(self, phase, metrics: dict, row: dict) -> bool:
        if not metrics or "score" not in metrics or self.patience <= 0:
            return False
        if metrics["score"] > self.best:
            self.best, self.waited = metrics["score"], 0
        elif self.best >= self.floor:
            self.waited += 1
        row["epochs_without_improvement"] = self.waited
        row["lr_step_taken_early"] = 0
        if self.waited < self.patience:
            return False
        upcoming = [i for i, m in enumerate(self.milestones) if m > phase.block_epoch + 1]
        if not upcoming:
            return True
        self.milestones[upcoming[0]] = phase.block_epoch + 1  # the next epoch runs at the lower rate
        self.waited = 0
        row["lr_step_taken_early"] = 1
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "waited": self.waited, "milestones": list(self.milestones)}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.waited = float(state["best"]), int(state["waited"])
        # In place: the task's learning rates read this very list.
        self.milestones[:] = [int(m) for m in state.get("milestones", self.milestones)]


class BudgetHook(StageHooks):
    """Dual ascent on the cost weights during policy epochs (adamml.training.budget), the
    policy's thresholds fitted to the budget at each validation, and ``best.pt`` = the most
    accurate epoch within the budget."""

    def __init__(self, controller, segments: int, calibrate: bool = True, allocation: str = "threshold") -> None:
        self.controller = controller
        self.segments = segments
        self.calibrate = calibrate
        self.allocation = allocation  # model.policy.allocation: how the fit shares out the budget

    def after_step(self, phase, result) -> None:
        if phase.trains == "policy" and result.decisions is not None:
            # Every rank takes the same step: the spent cost is averaged over processes.
            spent = torch.tensor([self.controller.spent(result.decisions), 1.0], dtype=torch.float64)
            all_reduce_sum(spent)
            self.controller.observe_cost(float(spent[0] / spent[1]))

    def after_epoch(self, phase, metrics: dict, row: dict) -> bool:
        if phase.trains == "policy" and metrics and "gflops" in metrics:
            self.controller.observe_validation(metrics, self.segments)
        row["cost_weights"] = self.controller.describe()
        if metrics and "gflops" in metrics:
            row["budget_fraction"] = round(self.controller.fraction(metrics, self.segments), 4)
        return False

    def validate(self, task, loader, cfg, runtime) -> dict:
        """With ``calibrate``: one pass of the policy over the split gives its margins, hence
        the argmax's GFLOPs and selection rates (``argmax_*``: what the policy learned, read
        by the controller) and the thresholds fitted to the budget; then one evaluation at
        those thresholds ranks the epoch, and its checkpoint keeps them. Without: the argmax
        evaluated."""
        policy = task.model.policy
        policy.use_thresholds.zero_()
        policy.use_quota.zero_()
        if not self.calibrate:
            return evaluate(task, loader, cfg, runtime)
        margins = validation_margins(task.model, loader, runtime)
        argmax = decision_metrics(policy.decide(margins), self.controller, list(policy.modalities))  # thresholds 0
        thresholds = calibrate_policy(task.model, loader, self.controller, runtime, margins=margins, allocation=self.allocation)
        metrics = evaluate(task, loader, cfg, runtime)
        metrics |= {f"argmax_{k}": v for k, v in argmax.items()}
        metrics |= {f"threshold_{m}": round(p, 6) for m, p in thresholds.probabilities().items()}
        return metrics

    def selection_score(self, metrics: dict) -> float:
        if not metrics or "gflops" not in metrics:
            return -math.inf
        return self.controller.selection_score(metrics, self.segments)

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)
