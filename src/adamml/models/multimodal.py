"""Every chosen modality on every segment, then a fusion head: the unimodal and hand-designed
fusion baselines of the paper (the "compute everything" reference AdaMML is compared with)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from adamml.config import ClipSettings, ModelConfig
from adamml.models.execution import ExecutionPlan, run_many
from adamml.models.fusion import build_fusion
from adamml.models.recognition import build_recognition_nets


@dataclass
class FusionOutput:
    logits: torch.Tensor  # (B, C) video logits
    segment_logits: torch.Tensor  # (B, K, M, C)


class MultiModalNet(nn.Module):
    """Recognition sub-networks (one per modality) whose segment outputs a fusion head combines.

    With one modality and fusion "unimodal" this is a stage-1 network; with several it is a
    stage-2 fusion baseline. Input: a batch dict (adamml.layouts); output: FusionOutput.
    """

    def __init__(self, recognition: nn.ModuleDict, fusion: nn.Module, modalities: list[str]):
        super().__init__()
        self.modalities = list(modalities)
        self.recognition = recognition
        self.fusion = fusion
        # Micro-batching at inference (adamml.models.execution); None: one call per network.
        self.execution: ExecutionPlan | None = None

    def forward(self, batch: dict) -> FusionOutput:
        logits, features = [], []
        outputs = run_many(
            [(self.recognition[m], rearrange(batch[m], "b k ... -> (b k) ...")) for m in self.modalities],
            self.execution,
        )
        for modality, (seg_logits, seg_features) in zip(self.modalities, outputs, strict=True):
            b, k = batch[modality].shape[:2]
            logits.append(rearrange(seg_logits, "(b k) c -> b k c", b=b, k=k))
            features.append(rearrange(seg_features, "(b k) d -> b k d", b=b, k=k))
        segment_logits = torch.stack(logits, dim=2)  # (B, K, M, C)
        video_logits = self.fusion(segment_logits, features, None)
        return FusionOutput(logits=video_logits, segment_logits=segment_logits)


def build_multimodal(model_cfg: ModelConfig, clip: ClipSettings, fusion: str | None = None) -> MultiModalNet:
    recognition = build_recognition_nets(model_cfg, clip)
    name = fusion or model_cfg.fusion
    if len(model_cfg.modalities) == 1:
        name = "unimodal"
    head = build_fusion(
        name,
        model_cfg.modalities,
        model_cfg.num_classes,
        [recognition[m].feature_dim for m in model_cfg.modalities],
        model_cfg.fusion_mode,
    )
    return MultiModalNet(recognition, head, model_cfg.modalities)
