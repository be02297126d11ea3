"""AdaMML: a policy picks, per segment, which recognition sub-networks run; late fusion of
what ran gives the video prediction (docs/method.md; reference ``models/adamml.py``).

Unlike the reference, which runs every sub-network and masks the outputs, evaluation here
really skips: in "conditional" mode each sub-network runs once on just the (video, segment)
pairs selected for it, so time falls with the selection rate (docs/method.md, "Where adamml
goes past the reference").

What "nothing selected" gives is the fusion head's rule (adamml.models.fusion): with
``model.fusion_mode: normalised`` a segment with no modality selected is left out of the
average over segments; with ``reference`` (the paper configs) it counts with zero logits, as
in the reference. Either way a video with nothing selected anywhere gets all-zero logits (a
uniform prediction).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from adamml.config import ClipSettings, ModelConfig
from adamml.models.execution import ExecutionPlan, run_many
from adamml.models.fusion import build_fusion
from adamml.models.policy import PolicyNetwork, build_policy
from adamml.models.recognition import build_recognition_nets

MODES = ("masked", "conditional")


@dataclass
class AdaMMLOutput:
    """logits: (B, C) video logits; decisions: (B, K, M) float in {0, 1};
    segment_logits: (B, K, M, C), zero where a pair was not selected;
    policy_logits: (B, K, M, 2), None when decisions were given from outside;
    probs: (B, K, M) the policy's probability of "use", None likewise;
    all_segment_logits: (B, K, M, C) every pair's logits, selected or not (masked mode only,
    where every pair runs; what the policy's guidance loss reads), else None."""

    logits: torch.Tensor
    decisions: torch.Tensor
    segment_logits: torch.Tensor
    policy_logits: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    all_segment_logits: torch.Tensor | None = None


class RandomPolicy:
    """The random-policy baseline: each modality is used on a segment with probability
    ``rates[modality]`` (independent Bernoulli draws), from a seeded generator so that a
    baseline run can be repeated. Set the rates to a learned policy's selection rates to
    compare at equal cost."""

    def __init__(self, rates: dict[str, float], seed: int = 0):
        for name, rate in rates.items():
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"random policy rate for {name!r} must be in [0, 1], got {rate}")
        self.rates = {k: float(v) for k, v in rates.items()}
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self,
        batch_size: int,
        num_segments: int,
        modalities: Sequence[str],
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Decisions (batch_size, num_segments, M) in the order of ``modalities``."""
        missing = [m for m in modalities if m not in self.rates]
        if missing:
            raise KeyError(
                f"random policy has no rate for {', '.join(missing)} (rates given for "
                f"{', '.join(self.rates) or 'nothing'})"
            )
        p = torch.tensor([self.rates[m] for m in modalities]).expand(batch_size, num_segments, -1)
        # Drawn on the CPU generator so the same seed gives the same decisions on any device.
        return torch.bernoulli(p, generator=self.generator).to(device)


class AdaMML(nn.Module):
    """Policy + one recognition sub-network per modality + a late-fusion head.

    Input: a batch dict (adamml.layouts): "rgb" (B, K, T, 3, H, W), "audio" (B, K, 1, F, S),
    "flow"/"rgbdiff" (B, K, T, C, H, W), whichever the modalities and the policy need.
    """

    def __init__(
        self,
        *,
        policy: PolicyNetwork,
        recognition: nn.ModuleDict,
        fusion: nn.Module,
        modalities: Sequence[str],
    ):
        super().__init__()
        self.modalities = list(modalities)
        missing = [m for m in self.modalities if m not in recognition]
        if missing:
            raise ValueError(f"no recognition network for {', '.join(missing)}")
        if list(policy.modalities) != self.modalities:
            raise ValueError(
                f"policy decides about {policy.modalities}, model modalities are {self.modalities}"
            )
        self.policy = policy
        self.recognition = recognition
        self.fusion = fusion
        # Micro-batching at inference (adamml.models.execution); None: one call per network.
        self.execution: ExecutionPlan | None = None

    # ---- forward -------------------------------------------------------------------------

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        temperature: float = 1.0,
        mode: str | None = None,
        decisions: torch.Tensor | None = None,
        sample: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> AdaMMLOutput:
        """Decide, run what was decided, fuse.

        mode: "masked" runs every sub-network on every segment and multiplies by the decisions
            (training: gradients reach the policy through the straight-through decisions);
            "conditional" runs each sub-network once on only the selected pairs. Default:
            masked in train mode, conditional in eval mode.
        decisions: (B, K, M) to force (fixed baselines, random policies, tests); the policy
            is then not run at all.
        sample: Gumbel noise on (default: in train mode only; evaluation is argmax).
        temperature: the Gumbel-Softmax temperature the trainer anneals.
        """
        mode = mode or ("masked" if self.training else "conditional")
        if mode not in MODES:
            raise ValueError(f"unknown AdaMML mode {mode!r}: expected one of {', '.join(MODES)}")
        inputs = self._recognition_inputs(batch)
        b, k = inputs[0].shape[:2]
        policy_logits = probs = None
        if decisions is None:
            out = self.policy(
                self.policy.policy_inputs(batch),
                temperature=temperature,
                sample=self.training if sample is None else sample,
                generator=generator,
            )
            decisions, policy_logits, probs = out.decisions, out.logits, out.probs
        else:
            expected = (b, k, len(self.modalities))
            if tuple(decisions.shape) != expected:
                raise ValueError(
                    f"decisions must be (B, K, M) = {expected} for modalities "
                    f"{self.modalities}, got {tuple(decisions.shape)}"
                )
            decisions = decisions.to(device=inputs[0].device, dtype=inputs[0].dtype)

        # Every sub-network's input first, then one run_many: under the execution plan the
        # micro-batches of all modalities share the worker threads.
        flat = [rearrange(x, "b k ... -> (b k) ...") for x in inputs]
        index: list[torch.Tensor | None] = [None] * len(flat)  # None: every segment
        if mode == "conditional":
            for i in range(len(self.modalities)):
                selected = rearrange(decisions[:, :, i], "b k -> (b k)").nonzero(as_tuple=True)[0]
                if selected.numel() < b * k:  # all selected: no copy in, no scatter out
                    index[i] = selected
        todo = [i for i, idx in enumerate(index) if idx is None or idx.numel()]
        calls = [(self.recognition[self.modalities[i]], flat[i] if index[i] is None else flat[i][index[i]]) for i in todo]
        outputs = run_many(calls, self.execution)
        results = dict(zip(todo, outputs, strict=True))
        logits, features = [], []
        for i, modality in enumerate(self.modalities):
            seg_logits, seg_features = self._scatter(self.recognition[modality], flat[i], index[i], results.get(i))
            logits.append(rearrange(seg_logits, "(b k) c -> b k c", b=b, k=k))
            features.append(rearrange(seg_features, "(b k) d -> b k d", b=b, k=k))
        segment_logits = torch.stack(logits, dim=2)  # (B, K, M, C)
        # The decisions enter once, in the fusion head, so each is a linear factor there and its
        # straight-through gradient says what using the modality would change (see fusion).
        video_logits = self.fusion(segment_logits, features, decisions)
        return AdaMMLOutput(
            logits=video_logits,
            decisions=decisions,
            segment_logits=segment_logits * decisions.detach()[..., None],
            policy_logits=policy_logits,
            probs=probs,
            all_segment_logits=segment_logits if mode == "masked" else None,
        )

    def _recognition_inputs(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise KeyError(
                f"batch has no {', '.join(missing)} tensor; the model's modalities are "
                f"{', '.join(self.modalities)} and the batch has {', '.join(sorted(batch))}"
            )
        inputs = [batch[m] for m in self.modalities]
        shapes = {tuple(x.shape[:2]) for x in inputs}
        if len(shapes) != 1:
            raise ValueError(
                "modalities disagree on (batch, segments): "
                + ", ".join(f"{m} {tuple(x.shape[:2])}" for m, x in zip(self.modalities, inputs, strict=True))
            )
        return inputs

    @staticmethod
    def _scatter(
        net: nn.Module, x: torch.Tensor, index: torch.Tensor | None, out: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A sub-network's (logits, features) for all (B*K) segments.

        ``index`` None (masked, or every segment selected): every segment went through the
        network; the fusion head applies the decisions. Otherwise only the selected segments
        ``index`` did, in one batch; zeros elsewhere. The fusion head multiplies by the decisions, so
        straight-through gradients reach the policy in both modes.
        """
        if index is None:
            return out
        logits = x.new_zeros(x.shape[0], net.num_classes)
        features = x.new_zeros(x.shape[0], net.feature_dim)
        if out is not None:
            sel_logits, sel_features = out
            logits = logits.index_copy(0, index, sel_logits.to(logits.dtype))
            features = features.index_copy(0, index, sel_features.to(features.dtype))
        return logits, features

    # ---- parameters and freezing (the trainer alternates two optimisers) ---------------

    def recognition_parameters(self) -> Iterator[nn.Parameter]:
        """Recognition sub-networks and the fusion weights (trained together, SGD)."""
        yield from self.recognition.parameters()
        yield from self.fusion.parameters()

    def policy_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.policy.parameters()

    def freeze_policy(self) -> None:
        _set_requires_grad(self.policy_parameters(), False)

    def unfreeze_policy(self) -> None:
        _set_requires_grad(self.policy_parameters(), True)

    def freeze_recognition(self) -> None:
        _set_requires_grad(self.recognition_parameters(), False)

    def unfreeze_recognition(self) -> None:
        _set_requires_grad(self.recognition_parameters(), True)


def _set_requires_grad(params: Iterator[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def build_adamml(model_cfg: ModelConfig, clip: ClipSettings) -> AdaMML:
    """AdaMML from a config: recognition nets (random or pretrained weights from
    ``model_cfg.pretrained``), the fusion head named by ``model_cfg.fusion``, a fresh policy."""
    recognition = build_recognition_nets(model_cfg, clip)
    fusion = build_fusion(
        model_cfg.fusion,
        list(model_cfg.modalities),
        model_cfg.num_classes,
        [recognition[m].feature_dim for m in model_cfg.modalities],
        model_cfg.fusion_mode,
    )
    return AdaMML(
        policy=build_policy(model_cfg, clip),
        recognition=recognition,
        fusion=fusion,
        modalities=model_cfg.modalities,
    )
