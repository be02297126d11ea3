"""The policy's decision thresholds, and one trained model at many cost points by moving them.

The trained policy uses modality m on a segment when its probability of "use" p exceeds 0.5
(argmax). Here the threshold moves, per modality, with one knob lambda and the modality's
cost: use m iff ``logit(p) > lambda * cost_m / max_cost``. lambda = 0 is the trained policy;
a larger lambda skips more, and skips costly modalities first (a unit of RGB must be more
certain than a unit of audio to be worth its cost). Every decision is monotone in lambda, so
the average cost is too, and the lambda that meets a budget on a set of videos is found
exactly by sorting the (video, segment, modality) units by ``logit(p) / relative cost``.

Budgets are written ``0.5`` or ``50%`` (a fraction of weighted fusion's GFLOPs: every
modality on every segment, no policy) or ``12.3G`` (GFLOPs, i.e. 1e9 multiply-adds, per video).
The policy itself always runs; its cost is part of the budget.

The thresholds belong with the policy whose outputs they read: training fits them to a
budget after each policy epoch, evaluation sweeps them, and prediction applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from adamml.errors import AdamMLError


class BudgetError(AdamMLError, ValueError):
    """A budget that cannot be parsed or met; the message says what and why."""


@dataclass(frozen=True)
class Budget:
    """``value`` is a fraction of fusion's GFLOPs (``unit="fraction"``) or GFLOPs per video."""

    value: float
    unit: str  # "fraction" | "gflops"

    def gflops(self, fusion_gflops: float) -> float:
        """GFLOPs per video this budget allows, given weighted fusion's GFLOPs per video."""
        return self.value * fusion_gflops if self.unit == "fraction" else self.value

    def __str__(self) -> str:
        return f"{100 * self.value:g}%" if self.unit == "fraction" else f"{self.value:g}G"


def parse_budget(text: str) -> Budget:
    """``0.5`` / ``50%`` -> a fraction of fusion's GFLOPs; ``12.3G`` -> GFLOPs per video."""
    raw = str(text).strip()
    try:
        if raw[-1:] in ("G", "g"):
            value, unit = float(raw[:-1]), "gflops"
        elif raw.endswith("%"):
            value, unit = float(raw[:-1]) / 100, "fraction"
        else:
            value, unit = float(raw), "fraction"
    except ValueError:
        raise BudgetError(
            f"budget {text!r}: write a fraction of fusion's GFLOPs (0.5 or 50%) or GFLOPs per video (12.3G)"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget {text!r}: must be a positive number")
    if unit == "fraction" and value > 1:
        raise BudgetError(
            f"budget {text!r}: a fraction of fusion's GFLOPs must be at most 1 (100%); "
            f"for GFLOPs per video write {raw}G"
        )
    return Budget(value, unit)


def use_margins(policy_logits: torch.Tensor) -> torch.Tensor:
    """(..., 2) policy logits -> (...) ``logit(p_use)`` = use - skip, exact where p saturates."""
    return (policy_logits[..., 1] - policy_logits[..., 0]).double()


@dataclass(frozen=True)
class Thresholds:
    """Per-modality thresholds on ``logit(p_use)``: use m iff margin > ``margins[m]``."""

    modalities: tuple[str, ...]
    margins: tuple[float, ...]
    lam: float

    @classmethod
    def from_lambda(cls, lam: float, modalities: list[str], costs: list[float]) -> Thresholds:
        top = max(costs)
        return cls(tuple(modalities), tuple(lam * c / top for c in costs), float(lam))

    def probabilities(self) -> dict[str, float]:
        """The same thresholds on p_use (0.5 everywhere for the trained policy)."""
        return {m: 1.0 / (1.0 + math.exp(-max(min(t, 700.0), -700.0))) for m, t in zip(self.modalities, self.margins, strict=True)}

    def decide(self, margins: torch.Tensor) -> torch.Tensor:
        """(B, K, M) margins -> (B, K, M) float decisions in {0, 1}."""
        t = torch.tensor(self.margins, dtype=margins.dtype, device=margins.device)
        return (margins > t).float()

    def __str__(self) -> str:
        return ", ".join(f"{m} p>{p:.4f}" for m, p in self.probabilities().items())


def fit_thresholds(
    margins: torch.Tensor, costs: list[float], policy_cost: float, budget_gflops: float, modalities: list[str]
) -> Thresholds:
    """Thresholds whose average cost over the videos of ``margins`` (N, K, M) is the largest
    that does not exceed ``budget_gflops`` per video (costs: GFLOPs per segment of each
    modality and of the policy). Units with equal scores are never split, so the cost met is
    the closest one the set allows from below."""
    if margins.dim() != 3 or margins.shape[-1] != len(costs):
        raise ValueError(f"margins must be (N, K, M={len(costs)}), got {tuple(margins.shape)}")
    n, k, m = margins.shape
    spare = n * (budget_gflops - policy_cost * k)  # what the modalities may spend, all videos
    if spare < 0:
        raise BudgetError(
            f"budget {budget_gflops:.4g} GFLOPs per video is below the policy's own cost "
            f"({policy_cost * k:.4g} GFLOPs for {k} segments)"
        )
    top = max(costs)
    relative = torch.tensor([c / top for c in costs], dtype=torch.float64)
    unit_cost = torch.tensor(costs, dtype=torch.float64).expand(n, k, m).reshape(-1)
    scores = (margins.double().cpu() / relative).reshape(-1)
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, spent = scores[order], unit_cost[order].cumsum(0)
    total = len(sorted_scores)
    # Cut points: take the first `cut` units; a cut may not separate equal scores.
    ends = torch.cat([
        (sorted_scores[:-1] > sorted_scores[1:]).nonzero().flatten() + 1,
        torch.tensor([total], dtype=torch.long),
    ])
    affordable = ends[spent[ends - 1] <= spare * (1 + 1e-12)]
    cut = int(affordable.max()) if len(affordable) else 0
    if cut == 0:
        lam = float(sorted_scores[0]) + 1.0 if total else 0.0
    elif cut == total:
        lam = float(sorted_scores[-1]) - 1.0
    else:
        lam = (float(sorted_scores[cut - 1]) + float(sorted_scores[cut])) / 2
    return Thresholds.from_lambda(lam, modalities, costs)
