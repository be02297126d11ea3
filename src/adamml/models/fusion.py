"""Late-fusion heads: segment outputs of the M recognition sub-networks -> video logits.

Every head has the same call::

    forward(segment_logits (B, K, M, C),
            features: list of M tensors (B, K, D_m) or None,
            mask: (B, K, M) float in {0, 1} or None (None = everything computed))
        -> video logits (B, C)

and the same rules for what the policy skipped (mask 0):

- a masked (segment, modality) pair contributes nothing, neither its logits nor its features
  (its values are ignored, so callers may leave zeros or garbage there);
- each segment is fused from the modalities selected on it; the video logits are the mean of
  the fused segment logits over the segments where at least one modality was selected
  (a segment with nothing selected is left out of the mean);
- a video with nothing selected on any segment gets all-zero logits, i.e. uniform
  probabilities.

The mask is used multiplicatively, so with the policy's straight-through decisions the
gradient reaches the policy through it.

``mode="reference"`` (``model.fusion_mode``) fuses as the reference code does instead:
segment logits = sum_m w_m * u_m * logits_m with no renormalisation over what ran (a lone
modality keeps only its share w_m), and the video logits are the mean over *all* K segments,
an empty segment counting with zero logits. The weighted head then has M-1 free weights
(initialised 1/M) and the last is 1 - their sum; "average" is w_m = 1/M.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def _check(
    segment_logits: torch.Tensor, mask: torch.Tensor | None, num_modalities: int
) -> torch.Tensor:
    if segment_logits.dim() != 4 or segment_logits.shape[2] != num_modalities:
        raise ValueError(
            f"segment logits must be (B, K, M={num_modalities}, C), got {tuple(segment_logits.shape)}"
        )
    if mask is None:
        return segment_logits.new_ones(segment_logits.shape[:3])
    if mask.shape != segment_logits.shape[:3]:
        raise ValueError(
            f"mask must be (B, K, M) = {tuple(segment_logits.shape[:3])}, got {tuple(mask.shape)}"
        )
    return mask.to(segment_logits.dtype)


def average_segments(fused: torch.Tensor, mask: torch.Tensor, *, zero_when_empty: bool = True) -> torch.Tensor:
    """(B, K, C) fused segment logits -> (B, C): mean over segments with any modality selected.

    A video with no selected segment gets zeros (uniform probabilities).

    Heads whose fused logits are already zero on an empty segment (every head built on
    masked logits) pass ``zero_when_empty``: the sum then stays linear in each decision, so
    the policy still gets a gradient telling it what switching a modality *on* would do.
    Multiplying by a 0/1 "segment used" factor instead would leave switched-off segments with
    no gradient at all, and a policy that drops everything could never recover.
    """
    used = mask.detach().amax(dim=2)  # (B, K) 1 where the segment has at least one modality
    count = used.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
    if not zero_when_empty:
        fused = fused * used.unsqueeze(-1)
    return fused.sum(dim=1) / count


def _weighted_segments(
    segment_logits: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per segment: sum_m w_m mask_m logit_m / sum_m w_m mask_m (weights (M, C) or (M, 1))."""
    w = weights.unsqueeze(0).unsqueeze(0) * mask.unsqueeze(-1)  # (B, K, M, C)
    norm = w.sum(dim=2)  # (B, K, C); 0 only where nothing was selected
    # Divide by 1 on empty segments (numerator 0) so no huge gradient reaches their mask.
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return (w * segment_logits).sum(dim=2) / norm


FUSION_MODES = ("normalised", "reference")


def _check_mode(mode: str) -> str:
    if mode not in FUSION_MODES:
        raise ValueError(f"model.fusion_mode must be one of {', '.join(FUSION_MODES)}, got {mode!r}")
    return mode


class UnimodalFusion(nn.Module):
    """One modality: its segment logits averaged over the segments where it ran (over all
    segments in reference mode)."""

    requires_features = False

    def __init__(
        self,
        modalities: list[str],
        num_classes: int,
        feature_dims: list[int] | None = None,
        mode: str = "normalised",
    ):
        super().__init__()
        if len(modalities) != 1:
            raise ValueError(f"unimodal fusion takes exactly one modality, got {modalities}")
        self.modalities = list(modalities)
        self.output_dim = num_classes
        self.mode = _check_mode(mode)

    def forward(self, segment_logits, features=None, mask=None):
        mask = _check(segment_logits, mask, 1)
        fused = segment_logits[:, :, 0] * mask
        if self.mode == "reference":
            return fused.mean(dim=1)
        return average_segments(fused, mask)


class _LateFusion(nn.Module):
    """Per segment: the selected modalities' logits mixed by ``weights()`` (renormalised over
    what ran), then averaged over segments; in reference mode neither renormalised nor left
    out when empty. Subclasses only say what the weights are."""

    requires_features = False

    def __init__(
        self,
        modalities: list[str],
        num_classes: int,
        feature_dims: list[int] | None = None,
        mode: str = "normalised",
    ):
        super().__init__()
        self.modalities = list(modalities)
        self.output_dim = num_classes
        self.mode = _check_mode(mode)

    def weights(self) -> torch.Tensor:
        """(M,) per-modality or (M, C) per-class weights."""
        raise NotImplementedError

    def forward(self, segment_logits, features=None, mask=None):
        mask = _check(segment_logits, mask, len(self.modalities))
        w = self.weights().to(segment_logits)
        if w.dim() == 1:
            w = w.unsqueeze(-1)  # (M, 1): the same weight for every class
        if self.mode == "reference":
            fused = (w.unsqueeze(0).unsqueeze(0) * mask.unsqueeze(-1) * segment_logits).sum(dim=2)
            return fused.mean(dim=1)
        return average_segments(_weighted_segments(segment_logits, mask, w), mask)


class AverageFusion(_LateFusion):
    """Plain mean of the selected modalities' logits on each segment (reference mode: 1/M
    each, whatever ran)."""

    def weights(self) -> torch.Tensor:
        m = len(self.modalities)
        return torch.full((m,), 1.0 / m) if self.mode == "reference" else torch.ones(m)


class _FreeWeights(_LateFusion):
    """Learned weights of shape (M, *extra).

    normalised: softmax over modalities of M free logits (start equal); every weight
    positive, the sum 1, renormalised over what ran on each segment, so a lone modality keeps
    its logit scale. reference: M-1 free weights initialised 1/M and the last = 1 - their sum
    (it can go negative), as the reference's ``--learnable_lf_weights``.
    """

    def __init__(self, modalities, num_classes, feature_dims=None, mode="normalised", extra=()):
        super().__init__(modalities, num_classes, feature_dims, mode)
        m = len(self.modalities)
        if self.mode == "reference":
            self.free = nn.Parameter(torch.full((m - 1, *extra), 1.0 / m))
        else:
            self.alpha = nn.Parameter(torch.zeros(m, *extra))

    def weights(self) -> torch.Tensor:
        if self.mode == "reference":
            last = 1.0 - self.free.sum(dim=0, keepdim=True)
            return torch.cat([self.free, last], dim=0)
        return self.alpha.softmax(dim=0)


class WeightedFusion(_FreeWeights):
    """Learned per-modality weights (M,), summing to 1 (see ``_FreeWeights`` for the two modes)."""

    def __init__(self, modalities, num_classes, feature_dims=None, mode="normalised"):
        super().__init__(modalities, num_classes, feature_dims, mode)


class ClasswiseFusion(_FreeWeights):
    """Learned per-modality, per-class weights (M, C); each class's column sums to 1. (The
    reference never creates them; its reference-mode form is ours by analogy.)"""

    def __init__(self, modalities, num_classes, feature_dims=None, mode="normalised"):
        super().__init__(modalities, num_classes, feature_dims, mode, extra=(num_classes,))


class FCFusion(nn.Module):
    """The paper's "Fusion*": an MLP on the concatenated features of each segment.

    Features (B, K, D_m) of skipped modalities are zeroed before concatenation, so the head
    sees "not computed" as zeros; as for every head, segments with nothing selected are left
    out. Layout: concat over m -> (B, K, sum D_m) -> Linear, ReLU, Dropout, Linear -> (B, K, C).
    """

    requires_features = True

    def __init__(
        self,
        modalities: list[str],
        num_classes: int,
        feature_dims: list[int],
        mode: str = "normalised",
        hidden_dim: int = 512,
        dropout: float = 0.5,
    ):
        super().__init__()
        # The reference has no working FC fusion; both modes fuse as described above.
        self.mode = _check_mode(mode)
        if feature_dims is None or len(feature_dims) != len(modalities):
            raise ValueError(
                f"fc fusion needs one feature size per modality ({len(modalities)}), got {feature_dims}"
            )
        self.modalities = list(modalities)
        self.output_dim = num_classes
        self.feature_dims = list(feature_dims)
        self.head = nn.Sequential(
            nn.Linear(sum(feature_dims), hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, segment_logits, features=None, mask=None):
        mask = _check(segment_logits, mask, len(self.modalities))
        if features is None or len(features) != len(self.modalities):
            raise ValueError("fc fusion needs the segment features of every modality")
        for f, d in zip(features, self.feature_dims, strict=True):
            if f.shape[-1] != d or f.shape[:2] != mask.shape[:2]:
                raise ValueError(f"feature of shape {tuple(f.shape)}, expected (B, K, {d})")
        joint = torch.cat([f * mask[:, :, m : m + 1] for m, f in enumerate(features)], dim=-1)
        b = joint.shape[0]
        fused = rearrange(self.head(rearrange(joint, "b k d -> (b k) d")), "(b k) c -> b k c", b=b)
        return average_segments(fused, mask, zero_when_empty=False)  # the head's bias is not


FUSIONS: dict[str, type[nn.Module]] = {
    "unimodal": UnimodalFusion,
    "average": AverageFusion,
    "weighted": WeightedFusion,
    "classwise": ClasswiseFusion,
    "fc": FCFusion,
}


def build_fusion(
    name: str,
    modalities: list[str],
    num_classes: int,
    feature_dims: list[int] | None = None,
    mode: str = "normalised",
) -> nn.Module:
    """A fusion head by name (``FUSIONS``); ``feature_dims`` are needed by "fc" only; ``mode``
    is ``model.fusion_mode`` (normalised | reference)."""
    try:
        cls = FUSIONS[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}: expected one of {', '.join(FUSIONS)}") from None
    return cls(list(modalities), num_classes, feature_dims, mode)
