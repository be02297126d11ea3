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

With ``allocation: quota`` (model.policy) a fit also gives each modality a per-video quota:
every video uses its ``round(rate x K)`` best-ranked segments of the modality (rate: the
share the plain fit selects; rounded down where the quotas alone would pass the budget),
and the thresholds, refitted, share out what is left of the budget. Global thresholds give
one video three segments that show the same thing and another none; where every class needs
each modality on at least one segment, the quota is what makes a budget of half of fusion's
enough (docs/own-data.md).

The thresholds belong with the policy whose outputs they read: training fits them to a
budget after each policy epoch, evaluation sweeps them, and prediction applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from adamml.config import POLICY_ALLOCATIONS
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


ALLOCATIONS = POLICY_ALLOCATIONS


def quota_decisions(margins: torch.Tensor, quota) -> torch.Tensor:
    """(B, K, M) {0, 1}: each video's ``quota[m]`` segments of modality m with the largest
    margins (ties: the earlier segment)."""
    out = torch.zeros(margins.shape, dtype=torch.float32, device=margins.device)
    k = margins.shape[1]
    for j, q in enumerate(int(q) for q in quota):
        if q > 0:
            top = margins[:, :, j].argsort(dim=1, descending=True, stable=True)[:, : min(q, k)]
            out[:, :, j].scatter_(1, top, 1.0)
    return out


@dataclass(frozen=True)
class Thresholds:
    """Per-modality thresholds on ``logit(p_use)``: use m iff margin > ``margins[m]``, or the
    segment is one of the video's ``quota[m]`` best for m (no quota: empty or zeros)."""

    modalities: tuple[str, ...]
    margins: tuple[float, ...]
    lam: float
    quota: tuple[int, ...] = ()

    @classmethod
    def from_lambda(cls, lam: float, modalities: list[str], costs: list[float], quota: tuple[int, ...] = ()) -> Thresholds:
        top = max(costs)
        return cls(tuple(modalities), tuple(lam * c / top for c in costs), float(lam), tuple(quota))

    def probabilities(self) -> dict[str, float]:
        """The same thresholds on p_use (0.5 everywhere for the trained policy)."""
        return {m: 1.0 / (1.0 + math.exp(-max(min(t, 700.0), -700.0))) for m, t in zip(self.modalities, self.margins, strict=True)}

    def decide(self, margins: torch.Tensor, whole_videos: bool = True) -> torch.Tensor:
        """(B, K, M) margins -> (B, K, M) float decisions in {0, 1}. ``whole_videos=False``
        (segments of a stream as they come): the thresholds alone."""
        t = torch.tensor(self.margins, dtype=margins.dtype, device=margins.device)
        decisions = (margins > t).float()
        if whole_videos and any(self.quota):
            decisions = torch.maximum(decisions, quota_decisions(margins, self.quota))
        return decisions

    def __str__(self) -> str:
        text = ", ".join(f"{m} p>{p:.4f}" for m, p in self.probabilities().items())
        if any(self.quota):
            text += "; per video at least " + ", ".join(f"{q} {m}" for m, q in zip(self.modalities, self.quota, strict=True))
        return text


def fit_thresholds(
    margins: torch.Tensor, costs: list[float], policy_cost: float, budget_gflops: float, modalities: list[str],
    allocation: str = "threshold",
) -> Thresholds:
    """Thresholds whose average cost over the videos of ``margins`` (N, K, M) is the largest
    that does not exceed ``budget_gflops`` per video (costs: GFLOPs per segment of each
    modality and of the policy). Units with equal scores are never split, so the cost met is
    the closest one the set allows from below. ``allocation="quota"``: with per-video quotas
    from the plain fit's rates, the thresholds refitted on what the quotas leave."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    plain = _fit(margins, costs, policy_cost, budget_gflops, modalities, None)
    if allocation == "threshold":
        return plain
    k = margins.shape[1]
    wanted = [float(r) * k for r in plain.decide(margins).mean(dim=(0, 1))]  # segments per video
    quota = [int(math.floor(w + 0.5)) for w in wanted]
    spare = budget_gflops - policy_cost * k
    while sum(q * c for q, c in zip(quota, costs, strict=True)) > spare * (1 + 1e-12):
        # Over the budget: take back the quota furthest above what the plain fit spends.
        j = max((j for j, q in enumerate(quota) if q > 0), key=lambda j: (quota[j] - wanted[j], costs[j]))
        quota[j] -= 1
    if not any(quota):
        return plain
    return _fit(margins, costs, policy_cost, budget_gflops, modalities, tuple(quota))


def _fit(margins, costs, policy_cost, budget_gflops, modalities, quota) -> Thresholds:
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
    scores = margins.double().cpu() / relative
    if quota is not None:  # the quotas' units are bought first, whatever their score
        scores = scores.masked_fill(quota_decisions(margins.cpu(), quota).bool(), math.inf)
    scores = scores.reshape(-1)
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
    finite = sorted_scores[torch.isfinite(sorted_scores)]
    if cut == total:
        lam = (float(finite[-1]) if len(finite) else 0.0) - 1.0
    elif cut == 0 or not math.isfinite(float(sorted_scores[cut - 1])):  # nothing beyond the quotas
        lam = float(sorted_scores[cut]) + 1.0 if total else 0.0
    else:
        lam = (float(sorted_scores[cut - 1]) + float(sorted_scores[cut])) / 2
    if not math.isfinite(lam):  # every finite unit above it: skip all of them
        lam = (float(finite[0]) + 1.0) if len(finite) else 0.0
    return Thresholds.from_lambda(lam, modalities, costs, quota or ())
