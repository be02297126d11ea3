"""The oracle at a given cost: the best per-segment choice of modalities given every
network's segment logits, with the labels in hand. It bounds what any policy over these
recognition networks and this fusion head could reach at that spend, so the distance from
the learned policy to it says whether the policy or the networks are what is missing.

For each video, every decision mask (K segments x M modalities) is scored through the
model's own fusion head (exactly, when there are at most ``2 ** EXACT_BITS`` masks; with more,
greedily: the pair that raises the true class's margin most per GFLOP is added until the
video is right); the video's price is the cheapest mask that classifies it correctly. Over
the set, the cheapest videos are bought first until the budget (mean GFLOPs per video) is
spent, which maximises the number right at that budget. Single-label top-1 only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

EXACT_BITS = 12


@dataclass
class OraclePoint:
    accuracy: float  # percent of videos right
    gflops: float  # mean recognition GFLOPs per video it spent
    rates: dict[str, float]  # percent of segments per modality


def _all_masks(k: int, m: int) -> torch.Tensor:
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=k * m)))
    return bits.view(-1, k, m)


def _fused(model, segment_logits: torch.Tensor, features: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Fused logits (P, C) of one video (segment logits (K, M, C)) under P masks."""
    p = masks.shape[0]
    seg = segment_logits.unsqueeze(0).expand(p, -1, -1, -1)
    feats = [f.unsqueeze(0).expand(p, -1, -1) for f in features]
    with torch.inference_mode():
        return model.fusion(seg, feats, masks).float()


def _greedy_mask(model, segment_logits, features, label: int, costs: torch.Tensor) -> torch.Tensor | None:
    k, m = segment_logits.shape[:2]
    mask = torch.zeros(k, m)
    for _ in range(k * m):
        candidates = (mask == 0).nonzero()
        trials = mask.unsqueeze(0).repeat(len(candidates), 1, 1)
        trials[torch.arange(len(candidates)), candidates[:, 0], candidates[:, 1]] = 1.0
        logits = _fused(model, segment_logits, features, trials)
        right = logits.argmax(dim=1) == label
        if right.any():
            cheapest = (trials * costs).sum(dim=(1, 2)).masked_fill(~right, float("inf")).argmin()
            return trials[cheapest]
        others = logits.clone()
        others[:, label] = -float("inf")
        gain = (logits[:, label] - others.max(dim=1).values) / costs[candidates[:, 1]]
        mask = trials[gain.argmax()]
    return None


def cheapest_correct(model, data, costs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video: the price (GFLOPs) of its cheapest correct mask (inf where none is) and that
    mask (N, K, M)."""
    n, k, m = data.segment_logits.shape[:3]
    cost = torch.tensor(costs, dtype=torch.float32)
    exact = k * m <= EXACT_BITS
    masks = _all_masks(k, m) if exact else None
    prices = torch.full((n,), float("inf"))
    chosen = torch.zeros(n, k, m)
    for i in range(n):
        seg, feats, label = data.segment_logits[i], [f[i] for f in data.features], int(data.labels[i])
        if exact:
            right = _fused(model, seg, feats, masks).argmax(dim=1) == label
            right &= masks.flatten(1).any(dim=1)  # nothing selected is a guess, not a prediction
            if right.any():
                spend = (masks * cost).sum(dim=(1, 2)).masked_fill(~right, float("inf"))
                best = int(spend.argmin())
                prices[i], chosen[i] = spend[best], masks[best]
        else:
            mask = _greedy_mask(model, seg, feats, label, cost)
            if mask is not None:
                prices[i], chosen[i] = float((mask * cost).sum()), mask
    return prices, chosen


def oracle_point(model, data, costs: list[float], gflops_per_video: float) -> OraclePoint:
    """The most videos the oracle gets right spending at most ``gflops_per_video`` on the
    recognition networks on average."""
    prices, chosen = cheapest_correct(model, data, costs)
    n = len(prices)
    order = torch.argsort(prices)
    spent, bought = 0.0, torch.zeros(n, dtype=torch.bool)
    for i in order.tolist():
        price = float(prices[i])
        if price == float("inf") or spent + price > gflops_per_video * n + 1e-9:
            break
        spent += price
        bought[i] = True
    used = chosen * bought[:, None, None]
    modalities = list(model.modalities)
    return OraclePoint(
        accuracy=100.0 * float(bought.float().mean()), gflops=spent / max(n, 1),
        rates={mod: 100.0 * float(used[..., j].mean()) for j, mod in enumerate(modalities)},
    )
