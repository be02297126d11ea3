"""Per-modality recognition sub-networks: one segment in, segment logits and features out.

Layouts (adamml.layouts, without the batch's K dimension, which callers fold into N):

    visual  (N, T, C, H, W)   C = 3 (rgb), 2L (flow), 3L (rgbdiff)
    audio   (N, 1, F, S)      log spectrogram

Two families, named by ``BackboneSpec.family``:

- "resnet": the reference's TSN-like network. The torchvision ResNet's own stem and stages
  (``conv1 bn1 relu maxpool layer1..4``) run on the frames folded into the batch, with
  ``TemporalMaxPool`` after stages 1, 2 and 3 (T, ceil(T/2), ... frames: 8 -> 4 -> 2 -> 1);
  then global average pooling, the mean over the frames left, dropout and ``fc``.
- "framewise": MobileNetV2 / EfficientNet ``features`` on every frame, globally pooled and
  averaged over frames (no temporal pooling: these are the light audio nets and the
  EfficientNet pairing of the paper), then ``classifier = Sequential(Dropout, Linear)``.

Parameter names are torchvision's (``conv1.weight``, ``features.0.0.weight``, ``fc.weight``,
``classifier.1.weight``), so an ImageNet state dict loads without renaming.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange, reduce
from torch import nn

from adamml.config import ClipSettings, ModelConfig
from adamml.modalities.table import MODALITIES, check_modalities
from adamml.models.backbones import (
    BackboneSpec,
    check_weights_source,
    create_backbone,
    get_backbone_spec,
    load_pretrained,
)
from adamml.models.temporal import TemporalMaxPool


class RecognitionNet(nn.Module):
    """Base of the sub-networks: ``forward(x) -> (logits (N, C), features (N, D))``.

    ``features`` are the pooled, frame-averaged activations the classifier sees (before
    dropout), what feature-level fusion ("fc") uses.
    """

    def __init__(self, modality: str, num_classes: int, feature_dim: int, frames: int) -> None:
        super().__init__()
        self.modality = modality
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.frames = frames  # T for visual modalities, 1 for audio
        self.visual = MODALITIES[modality].visual

    def input_shape(self, clip: ClipSettings) -> tuple[int, ...]:
        """Shape of one sample (no batch): (T, C, H, W) visual, (1, F, S) audio."""
        return MODALITIES[self.modality].input_shape(clip)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) or audio (N, 1, F, S) -> (N*T, C, H, W), checking T."""
        if not self.visual:
            if x.dim() != 4:
                raise ValueError(f"{self.modality} input must be (N, 1, F, S), got {tuple(x.shape)}")
            return x
        if x.dim() != 5 or x.shape[1] != self.frames:
            raise ValueError(
                f"{self.modality} input must be (N, T={self.frames}, C, H, W), got {tuple(x.shape)}"
            )
        return rearrange(x, "n t c h w -> (n t) c h w")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(x)
        return self.classify(features), features


class TSNResNet(RecognitionNet):
    """A torchvision ResNet with temporal max pooling after stages 1-3 (the reference's net)."""

    def __init__(
        self,
        resnet: nn.Module,
        *,
        modality: str,
        num_classes: int,
        frames: int,
        temporal_pool: bool = True,
        dropout: float = 0.5,
    ) -> None:
        feature_dim = resnet.fc.in_features
        super().__init__(modality, num_classes, feature_dim, frames)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        t = frames
        pools = []
        for _ in range(3):
            if temporal_pool and t > 1:
                pool = TemporalMaxPool(t, kernel=3, stride=2)
                t = pool.out_frames
                pools.append(pool)
            else:
                pools.append(nn.Identity())
        self.pool1, self.pool2, self.pool3 = pools
        self.frames_out = t  # frames layer4 sees
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor, parallel: Callable | None = None) -> torch.Tensor:
        """``parallel(fn, y)``, when given, computes the frame-wise ``fn(y)`` (frames in y's
        first dimension) in parts at once and concatenates them (the execution plan's worker
        threads); the temporal pools between the stages see all frames."""
        run = parallel or (lambda fn, y: fn(y))
        n = x.shape[0]
        y = self.pool1(run(self._stem_and_layer1, self._fold(x)))
        y = self.pool2(run(self.layer2, y))
        y = self.pool3(run(self.layer3, y))
        y = run(self.layer4, y)
        return reduce(y, "(n t) d h w -> n d", "mean", n=n)

    def _stem_and_layer1(self, y: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(y)))))

    def forward_split(self, x: torch.Tensor, parallel: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x)`` with each frame-wise stage's frames split by ``parallel`` (see
        forward_features): one segment spread over several workers, same result."""
        features = self.forward_features(x, parallel)
        return self.classify(features), features

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class FramewiseNet(RecognitionNet):
    """A 2D ``features`` trunk (MobileNetV2, EfficientNet) on each frame, averaged over frames."""

    def __init__(
        self,
        trunk: nn.Module,
        *,
        modality: str,
        num_classes: int,
        frames: int,
        feature_dim: int,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(modality, num_classes, feature_dim, frames)
        self.features = trunk.features
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = self.features(self._fold(x))
        return reduce(y, "(n t) d h w -> n d", "mean", n=n)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


def _tsn_resnet(model: nn.Module, spec: BackboneSpec, *, temporal_pool: bool, **common) -> RecognitionNet:
    return TSNResNet(model, temporal_pool=temporal_pool, **common)


def _framewise(model: nn.Module, spec: BackboneSpec, *, temporal_pool: bool, **common) -> RecognitionNet:
    return FramewiseNet(model, feature_dim=int(getattr(model, "last_channel", spec.feature_dim)), **common)


# BackboneSpec.family -> how a backbone of that family becomes a recognition network.
FAMILIES: dict[str, Callable[..., RecognitionNet]] = {"resnet": _tsn_resnet, "framewise": _framewise}


def build_recognition_net(
    modality: str,
    backbone: str,
    *,
    num_classes: int,
    clip: ClipSettings,
    temporal_pool: bool = True,
    dropout: float = 0.5,
    pretrained: str | None = None,
    inflation: str = "rescaled",
) -> RecognitionNet:
    """The sub-network for one modality, random weights unless ``pretrained`` names a file.

    ``pretrained`` is a weights source: a local file (torchvision state dict, or our
    checkpoint of this sub-network), ``imagenet:efficientnet_lite0`` or
    ``torchvision:<model>.<weights>``; RGB first-conv weights are inflated for
    flow/rgbdiff/audio inputs (``inflation``: "rescaled", or "reference": the reference's
    plain mean over the RGB kernels) and a classifier with another class count is left
    freshly initialised.
    """
    spec = get_backbone_spec(backbone)
    check_modalities([modality])
    if pretrained:
        check_weights_source(pretrained, backbone, f"model.pretrained.{modality}")
    in_channels = MODALITIES[modality].channels(clip)
    frames = MODALITIES[modality].frames(clip)
    model = create_backbone(backbone, in_channels)
    net = FAMILIES[spec.family](
        model, spec, modality=modality, num_classes=num_classes, frames=frames,
        temporal_pool=temporal_pool, dropout=dropout,
    )
    if pretrained:
        load_pretrained(net, pretrained, rescale=inflation != "reference")
    return net


def build_recognition_nets(model_cfg: ModelConfig, clip: ClipSettings) -> nn.ModuleDict:
    """One sub-network per ``model_cfg.modalities`` entry, keyed and ordered by modality."""
    nets = nn.ModuleDict()
    for modality in check_modalities(model_cfg.modalities):
        if modality not in model_cfg.backbones:
            raise ValueError(
                f"model.backbones has no entry for modality {modality!r} "
                f"(it has {', '.join(model_cfg.backbones) or 'none'})"
            )
        nets[modality] = build_recognition_net(
            modality,
            model_cfg.backbones[modality],
            num_classes=model_cfg.num_classes,
            clip=clip,
            temporal_pool=model_cfg.temporal_pool,
            dropout=model_cfg.dropout,
            pretrained=model_cfg.pretrained.get(modality) or None,
            inflation=model_cfg.inflation,
        )
    return nets
