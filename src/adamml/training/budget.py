"""Training to a GFLOPs budget instead of hand-set cost weights (``adamml train --budget B``).

The budget B is AdaMML's target cost as a fraction of weighted fusion's GFLOPs per video (the
policy's own cost included, as the tables count it). The efficiency loss keeps the paper's
form, ``sum_k lambda_k * C_k``, with ``lambda_k = mu * c_k / sum_j c_j`` (c_k: the modality's
GFLOPs per segment), so a modality's weight follows its cost and one multiplier ``mu`` sets
how much cost matters. ``mu`` is the Lagrange multiplier of the constraint "cost <= B" and is
adapted by dual ascent while the policy trains: after every policy step it grows when the
batch ran over the budget and shrinks when under (multiplicatively, so it stays positive and
the step is scale-free).

Training draws decisions from the Gumbel-Softmax; validation takes the argmax, which runs
more or fewer modalities than the draws do. So the target the steps chase is rescaled after
every validated policy epoch by the measured ratio of training to validation spend: the
constraint that matters, and the one checked, is the validation split's.

Even so the argmax lands where it lands, often just outside the 10 % tolerance around the
budget (docs/own-data.md). So (``train.adamml.calibrate``, on by default) after each validated policy epoch the
policy's use thresholds are moved so that its mean cost on the validation split is the
budget, as ``adamml evaluate --budget`` does after the fact (adamml.models.thresholds): the fit
reads the policy's outputs only, never the labels. The epoch is then scored, and kept or not,
with those thresholds, which its checkpoint carries.
"""

from __future__ import annotations

import math

import torch

from adamml.evaluation.metrics import gather_by_index, mean_gflops, selection_rates
from adamml.models.flops import gflops_per_video
from adamml.models.thresholds import Thresholds, fit_thresholds, use_margins

TOLERANCE = 0.10  # a run meets its budget when validation GFLOPs are within 10 % of it


class BudgetController:
    """Cost weights adapted so that the learned policy meets ``budget`` x fusion's GFLOPs.

    modality_costs: GFLOPs per segment of each recognition network, in the model's modality
    order; policy_cost: the policy's GFLOPs per segment. ``weights`` is the tensor the
    training step reads (updated in place).
    """

    def __init__(self, budget: float, modality_costs: list[float], policy_cost: float, *,
                 mu: float = 1.0, step: float = 0.05, bounds: tuple[float, float] = (1e-3, 1e3)) -> None:
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1] (a fraction of weighted fusion's GFLOPs), got {budget}")
        self.budget = float(budget)
        self.costs = torch.tensor(modality_costs, dtype=torch.float64)
        self.fusion = float(self.costs.sum())  # per segment
        self.policy_cost = float(policy_cost)
        # Per segment, the recognition networks may spend this much (the policy runs anyway).
        self.target = self.budget * self.fusion - self.policy_cost
        if self.target <= 0:
            raise ValueError(
                f"budget {budget:g} is below the policy's own cost ({self.policy_cost:.4f} of "
                f"{self.fusion:.4f} GFLOPs per segment): raise the budget or use a lighter policy"
            )
        self.mu = float(mu)
        self.step = float(step)
        self.bounds = bounds
        self.correction = 1.0  # training target = target * correction (train/validation gap)
        self.weights = torch.zeros(len(modality_costs), dtype=torch.float32)
        self._epoch_cost = 0.0
        self._epoch_steps = 0
        self._sync()

    def _sync(self) -> None:
        self.weights.copy_((self.mu * self.costs / self.fusion).float())

    def spent(self, decisions: torch.Tensor) -> float:
        """Recognition GFLOPs per segment of (B, K, M) decisions."""
        rates = decisions.detach().float().mean(dim=(0, 1)).cpu().double()
        return float((rates * self.costs).sum())

    def observe_step(self, decisions: torch.Tensor) -> None:
        """After a policy step: one dual-ascent step on ``mu`` from the batch's decisions."""
        self.observe_cost(self.spent(decisions))

    def observe_cost(self, cost: float) -> None:
        """One dual-ascent step on ``mu`` from a batch's recognition GFLOPs per segment."""
        self._epoch_cost += cost
        self._epoch_steps += 1
        goal = self.target * self.correction
        self.mu = min(max(self.mu * math.exp(self.step * (cost / goal - 1.0)), self.bounds[0]), self.bounds[1])
        self._sync()

    def observe_validation(self, metrics: dict, segments: int) -> None:
        """After a validated policy epoch: the training target becomes the budget's target
        times the measured ratio of the epoch's training spend (sampled decisions) to
        validation's (argmax: ``metrics['argmax_gflops']`` per video when the epoch was
        calibrated, else ``metrics['gflops']``).

        Without it, when the draws run a modality far more often than the argmax, validation
        sits under the budget while the steps, chasing the plain target, keep raising the
        weights until the policy runs almost nothing."""
        if not self._epoch_steps or "gflops" not in metrics:
            return
        val = max(metrics.get("argmax_gflops", metrics["gflops"]) / segments - self.policy_cost, 1e-9)
        train = self._epoch_cost / self._epoch_steps
        self.correction = min(max(train / val, 0.25), 4.0)
        self._epoch_cost, self._epoch_steps = 0.0, 0

    def fraction(self, metrics: dict, segments: int) -> float:
        """Validation GFLOPs as a fraction of fusion's (per video: both over ``segments``)."""
        return metrics["gflops"] / (segments * self.fusion)

    def selection_score(self, metrics: dict, segments: int) -> float:
        """For keeping the best checkpoint: the score (in [0, 1]) when within the budget
        (+10 %), so any epoch within it beats every epoch over it. Over it, the least excess
        counted in whole points of fusion's GFLOPs wins, then the higher score: a policy that
        keeps the same selection for several epochs (the same excess) keeps its best one."""
        excess = self.fraction(metrics, segments) - self.budget * (1 + TOLERANCE)
        if excess <= 0:
            return metrics["score"]
        return -(math.ceil(excess * 100) + 1.0 - min(max(metrics["score"], 0.0), 1.0)) / 100

    def state_dict(self) -> dict:
        return {"budget": self.budget, "mu": self.mu, "correction": self.correction,
                "epoch_cost": self._epoch_cost, "epoch_steps": self._epoch_steps}

    def load_state_dict(self, state: dict) -> None:
        self.mu, self.correction = float(state["mu"]), float(state["correction"])
        self._epoch_cost, self._epoch_steps = float(state["epoch_cost"]), int(state["epoch_steps"])
        self._sync()

    def describe(self) -> str:
        return ", ".join(f"{w:.3g}" for w in self.weights.tolist())


@torch.inference_mode()
def validation_margins(model, loader, runtime) -> torch.Tensor:
    """(N, K, M) policy margins (logit of "use") of every video of ``loader``, in dataset
    order, gathered from all processes (a distributed sampler's padding counted once)."""
    was_training = model.training
    model.eval()
    indices, margins = [], []
    for batch in loader:
        batch = {k: (v.to(runtime.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out = model.policy(model.policy.policy_inputs(batch), temperature=1.0, sample=False)
        margins.append(use_margins(out.logits.float()).cpu())
        indices.append(batch["index"].cpu())
    model.train(was_training)
    records = gather_by_index({"indices": torch.cat(indices).numpy(), "margins": torch.cat(margins).numpy()})
    return torch.from_numpy(records["margins"])


def decision_metrics(decisions: torch.Tensor, controller: BudgetController, modalities: list[str]) -> dict:
    """GFLOPs per video and selection rates of (N, K, M) deterministic decisions, without
    running the recognition networks: a calibrated validation reads the argmax's figures
    from the policy pass that fits the thresholds, then evaluates once, at the thresholds."""
    decisions = decisions.double()
    out = {"gflops": mean_gflops(gflops_per_video(decisions, controller.costs.tolist(), controller.policy_cost))}
    out |= {f"selection_{m}": rate for m, rate in zip(modalities, selection_rates(decisions), strict=True)}
    return out


def calibrate_policy(model, loader, controller: BudgetController, runtime,
                     margins: torch.Tensor | None = None, allocation: str = "threshold") -> Thresholds:
    """Set the policy's use thresholds so that its mean cost over ``loader``'s videos is the
    largest within ``controller.budget`` (adamml.models.thresholds.fit_thresholds); ``margins``:
    :func:`validation_margins` of that loader when already at hand."""
    if margins is None:
        margins = validation_margins(model, loader, runtime)
    k = margins.shape[1]
    thresholds = fit_thresholds(margins, controller.costs.tolist(), controller.policy_cost,
                                controller.budget * controller.fusion * k, list(model.policy.modalities), allocation)
    model.policy.set_thresholds(thresholds)
    return thresholds
