"""The AdaMML objective: classification loss plus the paper's efficiency loss (docs/method.md, "Loss").

    L = CE(P(V), y) + sum_k lambda_k * C_k,
    C_k = (|U_k|_0 / C)^2  if the video is classified correctly,  gamma  otherwise,

with U_k the decisions of modality k over the C segments of a video. "Correct" is the top-1
prediction equal to the label (for multi-label sets: the top-1 prediction is one of the
labels), detached. The squared usage is differentiable through the straight-through Gumbel
decisions, so a correct video pushes the policy to use fewer segments; a wrong one costs the
constant gamma, which gives no gradient to the policy but makes the loss honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adamml.config import LOSSES


@dataclass
class LossParts:
    total: torch.Tensor
    classification: torch.Tensor
    efficiency: torch.Tensor


def classification_loss(
    logits: torch.Tensor, batch: dict, multi_label: bool = False, loss: str = "ce"
) -> torch.Tensor:
    """``train.loss``: "ce" (the reference, every dataset) is cross-entropy; on a multi-label
    set its target is the video's labels as a uniform distribution (the plain cross-entropy
    for a video with one label). "bce": binary cross-entropy over classes (multi-label sets)."""
    if loss not in LOSSES:
        raise ValueError(f"train.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if multi_label:
        target = batch["multi_hot"].to(logits.dtype)
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target / target.sum(dim=1, keepdim=True).clamp(min=1.0))
    if loss == "bce":
        raise ValueError("train.loss: bce needs a multi-label dataset (data.multi_label: true)")
    return F.cross_entropy(logits, batch["label"])


def is_correct(logits: torch.Tensor, batch: dict, multi_label: bool = False) -> torch.Tensor:
    """(B,) bool: the top-1 prediction is (one of) the label(s)."""
    top1 = logits.detach().argmax(dim=-1)
    if multi_label:
        return batch["multi_hot"].gather(1, top1[:, None]).squeeze(1) > 0
    return top1 == batch["label"]


def efficiency_loss(
    decisions: torch.Tensor,
    correct: torch.Tensor,
    cost_weights: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """Mean over videos of sum_k lambda_k * C_k.

    decisions: (B, K, M) in {0, 1} (straight-through, so differentiable); correct: (B,) bool;
    cost_weights: (M,) lambda_k in the model's modality order.
    """
    usage = decisions.sum(dim=1) / decisions.shape[1]  # (B, M): |U_k|_0 / C
    per_modality = torch.where(correct[:, None], usage**2, torch.full_like(usage, float(gamma)))
    return (per_modality * cost_weights.to(per_modality)).sum(dim=-1).mean()


def adamml_loss(
    logits: torch.Tensor,
    decisions: torch.Tensor,
    batch: dict,
    cost_weights: torch.Tensor,
    gamma: float,
    multi_label: bool = False,
    loss: str = "ce",
) -> LossParts:
    ce = classification_loss(logits, batch, multi_label, loss)
    eff = efficiency_loss(decisions, is_correct(logits, batch, multi_label), cost_weights, gamma)
    return LossParts(total=ce + eff, classification=ce, efficiency=eff)
