"""The AdaMML objective: classification loss plus the paper's efficiency loss (docs/method.md, "Loss").

    L = CE(P(V), y) + sum_k lambda_k * C_k,
    C_k = (|U_k|_0 / C)^2  if the video is classified correctly,  gamma  otherwise,

with U_k the decisions of modality k over the C segments of a video. "Correct" is the top-1
prediction equal to the label (for multi-label sets: the top-1 prediction is one of the
labels), detached. The squared usage is differentiable through the straight-through Gumbel
decisions, so a correct video pushes the policy to use fewer segments; a wrong one costs the
constant gamma, which gives no gradient to the policy but makes the loss honest.

The guidance loss (``train.adamml.guidance``, not in the paper) gives the policy a target per
decision: how much the segment's own prediction by that modality tells about the label. The
paper's loss only says, per video, whether the prediction was right; where every class needs
two modalities and each is informative on some segments only, that signal is too weak for
the policy to find the segments that matter.
"""

from __future__ import annotations

import math
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


def guidance_targets(all_segment_logits: torch.Tensor, batch: dict, multi_label: bool = False) -> torch.Tensor:
    """(B, K, M) in [0, 1]: 1 - CE / log C of each pair's own prediction, the share of the
    label's uncertainty that the segment's prediction by that modality removes (0: no better
    than a uniform guess; 1: certain and right). Multi-label: the probability of any label."""
    log_probs = all_segment_logits.detach().float().log_softmax(dim=-1)  # (B, K, M, C)
    num_classes = log_probs.shape[-1]
    if multi_label:
        hot = batch["multi_hot"].to(log_probs.device) > 0  # (B, C)
        masked = log_probs.masked_fill(~hot[:, None, None, :], float("-inf"))
        log_true = masked.logsumexp(dim=-1)
    else:
        label = batch["label"].to(log_probs.device)
        index = label[:, None, None, None].expand(*log_probs.shape[:3], 1)
        log_true = log_probs.gather(-1, index).squeeze(-1)
    return (1.0 + log_true / math.log(num_classes)).clamp(0.0, 1.0)


def guidance_loss(policy_logits: torch.Tensor, all_segment_logits: torch.Tensor, batch: dict, multi_label: bool = False) -> torch.Tensor:
    """Binary cross-entropy of the policy's "use" logit (B, K, M) against ``guidance_targets``:
    its probabilities come to rank the segments by what they tell, which is what the fitted
    thresholds cut at a budget (adamml.models.thresholds)."""
    use_logit = (policy_logits[..., 1] - policy_logits[..., 0]).float()
    target = guidance_targets(all_segment_logits, batch, multi_label)
    return F.binary_cross_entropy_with_logits(use_logit, target)


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
