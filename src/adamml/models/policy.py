"""The AdaMML policy: a light network that decides, per segment, which modalities to compute.

docs/method.md, "Architecture"; reference ``models/policy_net.py``. Per-modality MobileNetV2 feature extractors look at *cheap* inputs (a few
low-resolution RGB frames, the spectrogram, RGB differences in place of optical flow), a joint
MLP mixes their features, an LSTM cell carries context from segment to segment (fed with the
previous step's decision logits), and one 2-way head per modality says skip (0) or use (1).
Decisions are hard {0, 1} samples drawn with Gumbel-Softmax; the straight-through estimator
lets the recognition loss and the cost penalty train the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from adamml.config import ClipSettings, ModelConfig
from adamml.data.sampling import policy_frame_indices
from adamml.modalities.table import MODALITIES, policy_source
from adamml.models.backbones import (
    BACKBONES,
    adapt_first_conv,
    check_weights_source,
    create_backbone,
    get_backbone_spec,
    load_state,
    read_weights,
)
from adamml.models.execution import ExecutionPlan, run_many
from adamml.models.temporal import TemporalMaxPool
from adamml.models.thresholds import ALLOCATIONS, quota_decisions, use_margins


@dataclass(frozen=True)
class ExtractorChoice:
    """What the policy's extractor for one source is built from (see :func:`policy_extractor`)."""

    backbone: str
    width_mult: float
    blocks: int | None  # feature blocks kept (None: all)
    # The audio sub-network's own backbone (or policy.audio_backbone): it can start from the
    # stage-1 audio network, cut or not (a cut one takes that network's first blocks).
    own_audio: bool = False

    @property
    def whole(self) -> bool:
        """Full width and every block: the extractor is the backbone's whole trunk."""
        return self.width_mult == 1.0 and self.blocks is None


def policy_extractor(model: ModelConfig, source: str) -> ExtractorChoice:
    """The one rule for the policy's extractor of ``source`` ("rgb", "audio", "rgbdiff", ...),
    read by ``build_policy``, the config checks (adamml.config_files) and ``--plan``.

    The audio extractor takes policy.audio_backbone, else the audio network's backbone, when
    that is framewise (so it can start from the stage-1 audio network), at full width with
    policy.audio_blocks; otherwise it is policy.backbone like the visual extractors, with
    policy.audio_blocks when given. Visual extractors: policy.backbone, width_mult, blocks.
    """
    policy = model.policy
    if source == "audio":
        own = policy.audio_backbone or model.backbones.get("audio", "")
        if own in BACKBONES and BACKBONES[own].framewise:
            return ExtractorChoice(own, 1.0, policy.audio_blocks, own_audio=True)
        blocks = policy.audio_blocks if policy.audio_blocks is not None else policy.blocks
        return ExtractorChoice(policy.backbone, policy.width_mult, blocks)
    return ExtractorChoice(policy.backbone, policy.width_mult, policy.blocks)


@dataclass
class PolicyOutput:
    """decisions: float (B, K, M) in {0, 1} (1 = use), straight-through when hard in training;
    logits: (B, K, M, 2) raw head outputs (index 1 = use);
    probs: (B, K, M) softmax probability of "use" (no noise, temperature 1)."""

    decisions: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor


def frame_selector(indices: list[int]) -> slice | list[int]:
    """Evenly spaced indices as a slice: indexing with it is a view, where a list of indices
    copies the frames (at paper size 24 MB per video, whose fresh pages cost more than the
    resize that follows; docs/inference.md)."""
    steps = {b - a for a, b in zip(indices, indices[1:], strict=False)}
    if indices and len(steps) <= 1 and min(steps, default=1) > 0:
        step = steps.pop() if steps else 1
        return slice(indices[0], indices[-1] + 1, step)
    return list(indices)


def gumbel_decisions(
    logits: torch.Tensor,
    *,
    temperature: float,
    hard: bool = True,
    sample: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(..., 2) logits -> (...,) "use" decisions.

    Our own Gumbel-Softmax rather than ``F.gumbel_softmax`` because evaluation with sampling
    must be repeatable from a recorded seed (a ``generator``). ``sample=False`` drops the noise
    (deterministic argmax); ``hard=True`` returns {0, 1} with the straight-through gradient of
    the relaxed softmax at ``temperature``.
    """
    if temperature <= 0:
        raise ValueError(f"Gumbel-Softmax temperature must be > 0, got {temperature}")
    scores = logits
    if sample:
        # Gumbel(0, 1) = -log(Exp(1)); exponential_ takes a generator, unlike F.gumbel_softmax.
        # Drawn on the generator's device, so a CPU generator also seeds a CUDA model.
        device = generator.device if generator is not None else logits.device
        noise = torch.empty(logits.shape, dtype=logits.dtype, device=device)
        noise = noise.exponential_(generator=generator).log().neg().to(logits.device)
        scores = logits + noise
    soft = F.softmax(scores / temperature, dim=-1)
    if not hard:
        return soft[..., 1]
    one_hot = F.one_hot(scores.argmax(dim=-1), num_classes=2).to(soft.dtype)
    return (one_hot - soft.detach() + soft)[..., 1]


class FrameFeatures(nn.Module):
    """MobileNetV2 features of a few frames, pooled over time: (N, T, C, H, W) -> (N, D).

    As in the reference, temporal max pooling (kernel 3, stride 2) sits inside the network,
    before the last two spatially down-sampling blocks, so 4 frames become 2 and then 1 and the
    deep (costly) layers see fewer frames. Frames left after that are max-pooled at the end.
    """

    def __init__(self, trunk: nn.Module, frames: int, output_dim: int):
        super().__init__()
        self.frames = frames
        blocks = list(trunk.features)
        strided = [i for i, b in enumerate(blocks) if getattr(b, "stride", 1) == 2]
        pool_at = set(strided[-2:]) if frames > 1 else set()
        layers: list[nn.Module] = []
        t = frames
        for i, block in enumerate(blocks):
            if i in pool_at and t > 1:
                pool = TemporalMaxPool(t, kernel=3, stride=2)
                layers.append(pool)
                t = pool.out_frames
            layers.append(block)
        self.features = nn.Sequential(*layers)
        self.frames_out = t
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        if t != self.frames:
            raise ValueError(f"policy extractor built for {self.frames} frames, got {t}")
        y = self.features(rearrange(x, "n t c h w -> (n t) c h w"))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return rearrange(y, "(n t) d -> n t d", n=n).amax(dim=1)


class SpectrogramFeatures(nn.Module):
    """MobileNetV2 features of the segment's log spectrogram: (N, 1, F, S) -> (N, D)."""

    def __init__(self, trunk: nn.Module, output_dim: int):
        super().__init__()
        self.features = trunk.features
        self.output_dim = output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class PolicyNetwork(nn.Module):
    """Per-segment modality selection with an LSTM over segments.

    ``modalities`` (M, the recognition modalities, in the model's order) get one decision each;
    ``sources`` maps each to the input the policy looks at ("flow" -> "rgbdiff" by default).
    One extractor per distinct source, so flow and rgbdiff share one when both are modalities.
    """

    def __init__(
        self,
        *,
        modalities: list[str],
        sources: dict[str, str],
        extractors: nn.ModuleDict,
        joint_dim: int,
        hidden_size: int,
        frame_indices: list[int],
        resolution: int,
        pretrained: list[str] | None = None,
        joint: str = "adamml",
        allocation: str = "threshold",
    ):
        super().__init__()
        if joint not in ("adamml", "reference"):
            raise ValueError(f"policy joint head {joint!r}: expected adamml or reference")
        if allocation not in ALLOCATIONS:
            raise ValueError(f"policy allocation {allocation!r}: expected {' or '.join(ALLOCATIONS)}")
        self.joint_kind = joint
        self.allocation = allocation  # how fits to a budget share it out (model.policy.allocation)
        # Sources whose extractor started from given weights (model.policy.pretrained); the
        # stage-3 set-up leaves them as they are instead of copying stage-1 networks in.
        self.pretrained_sources = list(pretrained or [])
        self.modalities = list(modalities)
        self.sources = dict(sources)
        self.extractors = extractors
        self.frame_indices = list(frame_indices)
        self._frames = frame_selector(self.frame_indices)
        self.resolution = int(resolution)
        # Micro-batching at inference (adamml.models.execution); None: one call per extractor.
        self.execution: ExecutionPlan | None = None
        if joint == "reference":
            self._reference_joint(joint_dim)
        else:
            self._adamml_joint(joint_dim)
        num = len(self.modalities)
        self.lstm = nn.LSTMCell(joint_dim + 2 * num, hidden_size)
        self.heads = nn.ModuleDict({m: nn.Linear(hidden_size, 2) for m in self.modalities})
        # Deterministic decisions use m iff logit(p_use) > use_thresholds[m] (0: the argmax).
        # Training to a budget fits them on the validation split so the kept policy lands on
        # the budget (adamml.training.budget); a buffer, so every checkpoint carries its own.
        self.register_buffer("use_thresholds", torch.zeros(num))
        # Per-video quotas (segments of each modality every video uses; 0: none), fitted with
        # the thresholds under model.policy.allocation "quota" (adamml.models.thresholds).
        self.register_buffer("use_quota", torch.zeros(num))

    def _reference_joint(self, joint_dim: int) -> None:
        """The reference's head (``JointMobileNetV2.joint``): the extractors' features
        concatenated, Linear -> ReLU -> Linear -> ReLU, no normalisation."""
        width = sum(e.output_dim for e in self.extractors.values())
        self.joint = nn.Sequential(
            nn.Linear(width, joint_dim), nn.ReLU(inplace=True),
            nn.Linear(joint_dim, joint_dim), nn.ReLU(inplace=True),
        )

    def _adamml_joint(self, joint_dim: int) -> None:
        extractors = self.extractors
        # Each source's features are layer-normalised before they are joined: the extractors
        # differ in scale by orders of magnitude (a stage-1 audio net vs a fresh RGB net), and
        # unnormalised inputs drove the joint MLP into values that saturate the LSTM gates, after
        # which the policy gave the same answer for every video.
        self.feature_norms = nn.ModuleDict({s: nn.LayerNorm(e.output_dim) for s, e in extractors.items()})
        # The joint MLP's first layer is one projection per source, each layer-normalised, then
        # summed. One layer over the concatenation gives each source a share in proportion to
        # its width, at initialisation and again under Adam (a step moves every weight by about
        # the learning rate, so a 1280-wide audio input outgrows a 16-wide visual one): the
        # policy then ignored what it saw. Normalising each projection keeps the shares equal.
        self.joint_inputs = nn.ModuleDict({
            s: nn.Sequential(nn.Linear(e.output_dim, joint_dim), nn.LayerNorm(joint_dim))
            for s, e in extractors.items()
        })
        # LayerNorm before the LSTM: the joint layers grow fast under Adam (wide fan-in), and
        # inputs of growing size saturate the LSTM gates, after which every video gets the
        # same decision.
        self.joint = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Linear(joint_dim, joint_dim),
            nn.ReLU(inplace=True),
            nn.LayerNorm(joint_dim),
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the thresholds existed decide by the argmax.
        state_dict.setdefault(prefix + "use_thresholds", torch.zeros_like(self.use_thresholds))
        state_dict.setdefault(prefix + "use_quota", torch.zeros_like(self.use_quota))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_thresholds(self, thresholds) -> None:
        """Decide from now on by ``thresholds`` (adamml.models.thresholds.Thresholds): their
        margins and quotas go into the buffers a checkpoint carries."""
        self.use_thresholds.copy_(torch.tensor(thresholds.margins, dtype=self.use_thresholds.dtype))
        quota = thresholds.quota or (0,) * len(self.modalities)
        self.use_quota.copy_(torch.tensor(quota, dtype=self.use_quota.dtype))

    @property
    def quota(self) -> tuple[int, ...]:
        if self.use_quota.is_meta:  # FLOP counting runs on meta tensors: no values to read
            return (0,) * len(self.modalities)
        return tuple(int(round(float(q))) for q in self.use_quota)

    def decide(self, margins: torch.Tensor, whole_videos: bool = True) -> torch.Tensor:
        """(B, K, M) margins (logit of "use") -> (B, K, M) deterministic {0, 1} decisions: the
        thresholds, and each video's quota of best segments (``whole_videos=False``, a
        stream's segments as they come: the thresholds alone)."""
        decisions = (margins > self.use_thresholds.to(margins)).float()
        if whole_videos and margins.dim() == 3 and any(self.quota):
            decisions = torch.maximum(decisions, quota_decisions(margins, self.quota))
        return decisions

    def policy_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The cheap inputs, keyed by source, from a batch in the adamml.layouts layout.

        Visual (B, K, T, C, H, W) -> every other frame, resized to the policy resolution:
        (B, K, T', C, r, r). Audio (B, K, 1, F, S) is used as it is. A source that comes
        with ``batch[source + "_frames"]`` holds those frames of each segment only (datasets
        compute a policy-only input, the RGB difference for flow, on the policy's frames).
        """
        out = {}
        for source in self.extractors:
            if source not in batch:
                raise KeyError(
                    f"the policy needs batch[{source!r}] (it decides about "
                    f"{', '.join(m for m, s in self.sources.items() if s == source)}); "
                    f"the batch has {', '.join(sorted(batch))}"
                )
            x = batch[source]
            if MODALITIES[source].visual:
                given = batch.get(f"{source}_frames")
                if given is None:
                    x = x[:, :, self._frames]
                else:  # computed on some frames only: they must be the policy's
                    held = {tuple(row) for row in torch.as_tensor(given).reshape(x.shape[0], -1).tolist()}
                    if held != {tuple(self.frame_indices)}:
                        raise ValueError(f"batch[{source!r}] holds frames {sorted(held)} of each segment; "
                                         f"the policy reads frames {self.frame_indices}")
                b, k, t = x.shape[:3]
                if x.shape[-2:] != (self.resolution, self.resolution):
                    x = F.interpolate(
                        rearrange(x, "b k t c h w -> (b k t) c h w"),
                        size=(self.resolution, self.resolution),
                        mode="bilinear",
                        align_corners=False,
                    )
                    x = rearrange(x, "(b k t) c h w -> b k t c h w", b=b, k=k, t=t)
            out[source] = x
        return out

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        *,
        temperature: float,
        hard: bool = True,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> PolicyOutput:
        """inputs: from :meth:`policy_inputs`, each (B, K, ...). Returns a PolicyOutput."""
        feats = []
        b, k = next(iter(inputs.values())).shape[:2]
        # All extractors in one run_many: their micro-batches share the plan's worker threads.
        extracted = run_many(
            [(extractor, rearrange(inputs[source], "b k ... -> (b k) ...")) for source, extractor in self.extractors.items()],
            self.execution,
        )
        if self.joint_kind == "reference":
            joined = rearrange(torch.cat(extracted, dim=-1), "(b k) d -> b k d", b=b, k=k)
            joint = self.joint(joined)  # (B, K, joint_dim)
        else:
            for source, y in zip(self.extractors, extracted, strict=True):
                y = self.feature_norms[source](y)
                feats.append(self.joint_inputs[source](rearrange(y, "(b k) d -> b k d", b=b, k=k)))
            joint = self.joint(torch.stack(feats).sum(dim=0))  # (B, K, joint_dim)

        num = len(self.modalities)
        prev = joint.new_zeros(b, 2 * num)  # previous step's logits; none before segment 0
        state = None
        all_logits = []
        for t in range(k):
            h, c = self.lstm(torch.cat([joint[:, t], prev], dim=-1), state)
            state = (h, c)
            step = torch.stack([self.heads[m](h) for m in self.modalities], dim=1)  # (B, M, 2)
            all_logits.append(step)
            prev = step.flatten(1)
        logits = torch.stack(all_logits, dim=1)  # (B, K, M, 2)
        scores = logits
        if not sample:
            # The argmax of (skip, use - threshold): use iff logit(p_use) > threshold.
            shift = torch.stack([torch.zeros_like(self.use_thresholds), self.use_thresholds], dim=-1)
            scores = logits - shift.to(logits)
        decisions = gumbel_decisions(
            scores, temperature=temperature, hard=hard, sample=sample, generator=generator
        )
        if not sample and any(self.quota):  # the whole video is at hand: its quotas too
            decisions = torch.maximum(decisions, quota_decisions(use_margins(logits), self.quota).to(decisions))
        return PolicyOutput(decisions=decisions, logits=logits, probs=logits.softmax(-1)[..., 1])

    def joint_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the LSTM reads per segment: inputs from :meth:`policy_inputs`, each (B, K, ...)
        -> (B, K, joint_dim). :meth:`forward` computes the same before its loop; a stream
        calls it on one segment (K = 1) and hands the result to :meth:`step`."""
        b, k = next(iter(inputs.values())).shape[:2]
        extracted = run_many(
            [(extractor, rearrange(inputs[source], "b k ... -> (b k) ...")) for source, extractor in self.extractors.items()],
            self.execution,
        )
        if self.joint_kind == "reference":  # as forward: the features concatenated
            return self.joint(rearrange(torch.cat(extracted, dim=-1), "(b k) d -> b k d", b=b, k=k))
        feats = [self.joint_inputs[s](rearrange(self.feature_norms[s](y), "(b k) d -> b k d", b=b, k=k))
                 for s, y in zip(self.extractors, extracted, strict=True)]
        return self.joint(torch.stack(feats).sum(dim=0))

    def step(
        self,
        features: torch.Tensor,
        state: PolicyState | None = None,
        *,
        temperature: float = 1.0,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[PolicyOutput, PolicyState]:
        """One segment of a stream: ``features`` (B, joint_dim) from :meth:`joint_features`,
        ``state`` what the previous segment's call returned (None at the first). Returns the
        segment's PolicyOutput (K = 1; deterministic decisions apply ``use_thresholds``) and
        the state for the next segment. K steps give what :meth:`forward` gives on the K
        segments at once (without noise)."""
        b = features.shape[0]
        if state is None:
            prev, hidden = features.new_zeros(b, 2 * len(self.modalities)), None
        else:
            prev, hidden = state.prev, (state.h, state.c)
        h, c = self.lstm(torch.cat([features, prev], dim=-1), hidden)
        logits = torch.stack([self.heads[m](h) for m in self.modalities], dim=1)  # (B, M, 2)
        scores = logits
        if not sample:  # as forward: use iff logit(p_use) > threshold
            shift = torch.stack([torch.zeros_like(self.use_thresholds), self.use_thresholds], dim=-1)
            scores = logits - shift.to(logits)
        decisions = gumbel_decisions(scores, temperature=temperature, sample=sample, generator=generator)
        out = PolicyOutput(decisions=decisions[:, None], logits=logits[:, None], probs=logits.softmax(-1)[:, None, :, 1])
        return out, PolicyState(h=h, c=c, prev=logits.flatten(1))


@dataclass
class PolicyState:
    """What the policy carries from one segment to the next: the LSTM cell's (h, c), each
    (B, hidden), and the segment's decision logits flattened, (B, 2M), its next input."""

    h: torch.Tensor
    c: torch.Tensor
    prev: torch.Tensor


def _policy_backbone(
    name: str, width_mult: float, in_channels: int, blocks: int | None = None
) -> tuple[nn.Module, int]:
    """A framewise trunk from the backbone table (random weights) and its feature width.

    ``width_mult`` other than 1 rebuilds the family at that width (``BackboneSpec.at_width``:
    the table holds MobileNetV2 at widths 1.0 and 0.25 only); ``blocks`` keeps the first N
    blocks of its ``features``.
    """
    spec = get_backbone_spec(name)
    if not spec.framewise:
        raise ValueError(
            f"policy backbone {name!r} is a {spec.family} network: the policy needs a light "
            "framewise one (mobilenet_v2, mobilenet_v2_tiny, efficientnet_b0, efficientnet_lite0)"
        )
    if width_mult != 1.0:
        if spec.at_width is None:
            raise ValueError(f"policy.width_mult applies to MobileNetV2 only, not {name!r} (it has no width knob)")
        net = spec.at_width(width_mult)
        if in_channels != 3:
            adapt_first_conv(net, in_channels, inflate=False)
    else:
        net = create_backbone(name, in_channels)
    if blocks is None:
        return net, int(getattr(net, "last_channel", spec.feature_dim))
    total = len(net.features)
    if not 1 <= blocks <= total:
        raise ValueError(f"policy.blocks must be between 1 and {total} for {name!r}, got {blocks}")
    net.features = net.features[:blocks]
    convs = [m for m in net.features.modules() if isinstance(m, nn.Conv2d)]
    return net, int(convs[-1].out_channels)


def policy_weight_sources(model_cfg: ModelConfig) -> dict[str, str]:
    """``model.policy.pretrained`` as {source: weights}: a single string applies to every
    extractor the policy has."""
    pretrained = model_cfg.policy.pretrained
    sources = {policy_source(m, model_cfg.policy.flow_proxy) for m in model_cfg.modalities}
    if isinstance(pretrained, str):
        return {s: pretrained for s in sources} if pretrained else {}
    unknown = sorted(set(pretrained) - sources)
    if unknown:
        raise ValueError(
            f"model.policy.pretrained: no policy extractor for {', '.join(unknown)} "
            f"(the policy looks at {', '.join(sorted(sources))})"
        )
    return {s: w for s, w in pretrained.items() if w}


def build_policy(model_cfg: ModelConfig, clip: ClipSettings) -> PolicyNetwork:
    """The policy for ``model_cfg.modalities``; extractors start from
    ``model.policy.pretrained`` where it names weights, random otherwise."""
    pcfg = model_cfg.policy
    for proxied in (m for m in MODALITIES.values() if m.proxy):  # a bad choice fails here
        policy_source(proxied.name, pcfg.flow_proxy)
    sources = {m: policy_source(m, pcfg.flow_proxy) for m in model_cfg.modalities}
    weights = policy_weight_sources(model_cfg)
    indices = policy_frame_indices(clip.frames_per_segment, pcfg.frames)
    extractors = nn.ModuleDict()
    for source in dict.fromkeys(sources.values()):
        modality = MODALITIES[source]
        in_channels = modality.channels(clip)
        choice = policy_extractor(model_cfg, source)
        name = choice.backbone
        net, dim = _policy_backbone(name, choice.width_mult, in_channels, choice.blocks)
        if source in weights:
            check_weights_source(weights[source], name, f"model.policy.pretrained.{source}")
            # Loaded into the (possibly cut) trunk: the blocks cut off are left unused.
            _load_trunk(net, weights[source], rescale=model_cfg.inflation != "reference")
        if modality.visual:
            extractors[source] = FrameFeatures(net, len(indices), dim)
        else:
            extractors[source] = SpectrogramFeatures(net, dim)
    return PolicyNetwork(
        modalities=list(model_cfg.modalities),
        sources=sources,
        extractors=extractors,
        joint_dim=pcfg.joint_dim,
        hidden_size=pcfg.hidden_size,
        frame_indices=indices,
        resolution=pcfg.resolution,
        pretrained=sorted(weights),
        joint=pcfg.joint,
        allocation=pcfg.allocation,
    )


def _load_trunk(net: nn.Module, source: str, *, rescale: bool = True) -> None:
    """Load ImageNet-style weights into a policy trunk; blocks cut off (``policy.blocks``)
    are left out of the file's tensors."""
    kept = len(net.features)
    state = {
        k: v
        for k, v in read_weights(source).items()
        if not k.startswith("features.") or int(k.split(".")[1]) < kept
    }
    load_state(net, state, source, rescale=rescale)
