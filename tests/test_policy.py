"""The AdaMML policy network: shapes, Gumbel-Softmax decisions, gradients, determinism, LSTM."""

from __future__ import annotations

import pytest
import torch

from adamml.config import ClipSettings, ModelConfig, PolicyConfig
from adamml.models.policy import (
    ExtractorChoice,
    FrameFeatures,
    PolicyNetwork,
    build_policy,
    frame_selector,
    gumbel_decisions,
    policy_extractor,
    policy_frame_indices,
)
from adamml.models.temporal import TemporalMaxPool

B, K, T, H = 2, 3, 4, 32
CLIP = ClipSettings(num_segments=K, frames_per_segment=T, stack_length=2, crop_size=H)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(modalities: list[str], **policy) -> ModelConfig:
    pcfg = dict(backbone="mobilenet_v2_tiny", frames=4, resolution=24, joint_dim=32, hidden_size=16)
    pcfg.update(policy)
    return ModelConfig(
        modalities=modalities,
        backbones={m: "resnet_tiny" for m in modalities} | {"audio": "mobilenet_v2_tiny"},
        num_classes=5,
        policy=PolicyConfig(**pcfg),
    )


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rgb": torch.randn(B, K, T, 3, H, H, generator=g),
        "audio": torch.randn(B, K, 1, 32, 32, generator=g),
        "rgbdiff": torch.randn(B, K, T, 3 * CLIP.stack_length, H, H, generator=g),
        "flow": torch.randn(B, K, T, 2 * CLIP.stack_length, H, H, generator=g),
    }


def calibrate_batch_norm(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Set BN running statistics from one batch: a freshly initialised network in eval mode
    otherwise scales its activations towards zero and every input looks the same."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(inputs, temperature=1.0)


@pytest.fixture(scope="module")
def policy() -> PolicyNetwork:
    torch.manual_seed(0)
    net = build_policy(tiny_cfg(["rgb", "audio"]), CLIP)
    calibrate_batch_norm(net, net.policy_inputs(tiny_batch(seed=99)))
    return net


def test_output_shapes_and_binary_decisions(policy: PolicyNetwork) -> None:
    policy.train()
    out = policy(policy.policy_inputs(tiny_batch()), temperature=5.0)
    assert out.decisions.shape == (B, K, 2)
    assert out.logits.shape == (B, K, 2, 2)
    assert out.probs.shape == (B, K, 2)
    assert set(out.decisions.unique().tolist()) <= {0.0, 1.0}
    assert torch.all((out.probs >= 0) & (out.probs <= 1))
    torch.testing.assert_close(out.probs, out.logits.softmax(-1)[..., 1])


def test_policy_inputs_take_every_other_frame_at_policy_resolution(policy: PolicyNetwork) -> None:
    batch = tiny_batch()
    inputs = policy.policy_inputs(batch)
    assert set(inputs) == {"rgb", "audio"}
    assert inputs["rgb"].shape == (B, K, 2, 3, 24, 24)  # frames 0 and 2 of 4
    assert inputs["audio"] is batch["audio"]
    # Frame 2 of the clip becomes policy frame 1: a constant frame stays that constant.
    batch["rgb"][:, :, 2] = 0.75
    assert torch.allclose(policy.policy_inputs(batch)["rgb"][:, :, 1], torch.tensor(0.75))
    assert policy_frame_indices(8, 4) == [0, 2, 4, 6]
    assert policy_frame_indices(8, 2) == [0, 2]
    assert policy_frame_indices(1, 4) == [0]


@pytest.mark.parametrize("indices", [[0, 2, 4, 6], [1, 3], [5], [0, 1, 3]])
def test_frame_selector_picks_the_same_frames_as_the_indices(indices: list[int]) -> None:
    frames = torch.randn(2, 3, 8, 3, 5, 5)
    chosen = frames[:, :, frame_selector(indices)]
    assert torch.equal(chosen, frames[:, :, indices])
    # Evenly spaced frames are a view (no copy of the clip); others are gathered.
    assert isinstance(frame_selector(indices), slice) == (indices != [0, 1, 3])


def test_flow_is_decided_from_rgb_differences_never_from_flow() -> None:
    policy = build_policy(tiny_cfg(["rgb", "flow"]), CLIP)
    assert policy.sources == {"rgb": "rgb", "flow": "rgbdiff"}
    batch = tiny_batch()
    del batch["flow"]  # flow is not even needed to decide about it
    inputs = policy.policy_inputs(batch)
    assert set(inputs) == {"rgb", "rgbdiff"}
    assert inputs["rgbdiff"].shape == (B, K, 2, 3 * CLIP.stack_length, 24, 24)
    out = policy.eval()(inputs, temperature=1.0, sample=False)
    assert out.decisions.shape == (B, K, 2)


def test_flow_and_rgbdiff_modalities_share_one_extractor() -> None:
    policy = build_policy(tiny_cfg(["rgb", "flow", "rgbdiff"]), CLIP)
    assert list(policy.extractors) == ["rgb", "rgbdiff"]
    assert list(policy.heads) == ["rgb", "flow", "rgbdiff"]


def test_missing_policy_input_names_what_is_needed(policy: PolicyNetwork) -> None:
    batch = tiny_batch()
    del batch["audio"]
    with pytest.raises(KeyError, match="audio"):
        policy.policy_inputs(batch)


def test_rgb_extractor_pools_time_inside_the_network() -> None:
    policy = build_policy(tiny_cfg(["rgb"], frames=4), ClipSettings(frames_per_segment=8))
    extractor = policy.extractors["rgb"]
    assert isinstance(extractor, FrameFeatures)
    pools = [m for m in extractor.modules() if isinstance(m, TemporalMaxPool)]
    assert [p.frames for p in pools] == [4, 2]  # 4 frames -> 2 -> 1, as in the reference
    assert extractor.frames_out == 1


def test_straight_through_gradients_reach_every_policy_part(policy: PolicyNetwork) -> None:
    policy.train()
    policy.zero_grad()
    out = policy(policy.policy_inputs(tiny_batch()), temperature=5.0, hard=True)
    weights = torch.arange(1.0, 1.0 + out.decisions.numel()).view_as(out.decisions)
    (out.decisions * weights).sum().backward()
    for part in (policy.heads, policy.lstm, policy.joint, policy.joint_inputs, policy.extractors["rgb"], policy.extractors["audio"]):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), type(part).__name__
    policy.zero_grad()


def test_hard_samples_do_not_depend_on_temperature_but_relaxation_does() -> None:
    logits = torch.randn(4096, 2, generator=torch.Generator().manual_seed(1))
    hard = [
        gumbel_decisions(logits, temperature=tau, generator=torch.Generator().manual_seed(7))
        for tau in (5.0, 0.1)
    ]
    assert torch.equal(hard[0], hard[1])  # the argmax of logits + noise is the same sample
    soft = {
        tau: gumbel_decisions(logits, temperature=tau, hard=False, generator=torch.Generator().manual_seed(7))
        for tau in (5.0, 1.0, 0.1)
    }
    # Lower temperature -> the relaxed sample is closer to the hard one-hot sample.
    gaps = {tau: (s - hard[0]).abs().mean().item() for tau, s in soft.items()}
    assert gaps[0.1] < gaps[1.0] < gaps[5.0]
    assert gaps[0.1] < 0.05


def test_gumbel_sampling_follows_the_softmax_probabilities() -> None:
    logits = torch.tensor([0.0, 1.0]).expand(20000, 2)
    use = gumbel_decisions(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert abs(use.mean().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 0.02


def test_evaluation_is_deterministic_argmax(policy: PolicyNetwork) -> None:
    policy.eval()
    inputs = policy.policy_inputs(tiny_batch())
    with torch.no_grad():
        torch.manual_seed(1)
        a = policy(inputs, temperature=5.0, sample=False)
        torch.manual_seed(2)
        b = policy(inputs, temperature=0.5, sample=False)
    assert torch.equal(a.decisions, b.decisions)
    assert torch.equal(a.decisions, (a.logits[..., 1] > a.logits[..., 0]).float())


def test_deterministic_decisions_follow_the_use_thresholds_and_sampling_ignores_them() -> None:
    torch.manual_seed(0)
    net = build_policy(tiny_cfg(["rgb", "audio"]), CLIP)
    calibrate_batch_norm(net, net.policy_inputs(tiny_batch(seed=99)))
    net.eval()
    inputs = net.policy_inputs(tiny_batch())
    with torch.no_grad():
        plain = net(inputs, temperature=1.0, sample=False)
        margins = plain.logits[..., 1] - plain.logits[..., 0]
        # A threshold between the two lowest margins of each modality: one segment flips.
        low = margins.flatten(0, 1).sort(dim=0).values[:2].mean(dim=0)
        net.use_thresholds.copy_(low)
        moved = net(inputs, temperature=1.0, sample=False)
        sampled = net(inputs, temperature=1.0, generator=torch.Generator().manual_seed(5)).decisions
        decided = net.decide(margins)
        net.use_thresholds.zero_()
        sampled_plain = net(inputs, temperature=1.0, generator=torch.Generator().manual_seed(5)).decisions
    torch.testing.assert_close(moved.logits, plain.logits)  # the outputs are the same ...
    assert torch.equal(moved.decisions, (margins > low).float())  # ... only the cut moved
    assert moved.decisions.sum(dim=(0, 1)).tolist() == [B * K - 1] * 2  # each skips its lowest only
    assert torch.equal(decided, moved.decisions)
    assert torch.equal(sampled, sampled_plain)  # training draws are not shifted


def test_a_checkpoint_without_thresholds_loads_as_the_argmax() -> None:
    torch.manual_seed(0)
    net = build_policy(tiny_cfg(["rgb", "audio"]), CLIP)
    state = {k: v for k, v in net.state_dict().items() if k != "use_thresholds"}
    net.use_thresholds.fill_(3.0)
    net.load_state_dict(state)  # strict: the missing key is filled in, not an error
    assert torch.equal(net.use_thresholds, torch.zeros(2))
    assert torch.equal(net.decide(torch.tensor([[0.5, -0.5]])), torch.tensor([[1.0, 0.0]]))


def test_seeded_sampling_is_reproducible(policy: PolicyNetwork) -> None:
    policy.eval()
    inputs = policy.policy_inputs(tiny_batch())

    def draw(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return policy(
                inputs, temperature=1.0, sample=True, generator=torch.Generator().manual_seed(seed)
            ).decisions

    assert torch.equal(draw(3), draw(3))
    zero = torch.zeros(256, 2)
    a = gumbel_decisions(zero, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = gumbel_decisions(zero, temperature=1.0, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a, b)


def test_lstm_carries_earlier_segments_forward_and_never_backward(policy: PolicyNetwork) -> None:
    policy.eval()
    batch = tiny_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["rgb"][:, 0] = torch.randn_like(changed["rgb"][:, 0]) * 3
    changed["audio"][:, 0] = torch.randn_like(changed["audio"][:, 0]) * 3
    with torch.no_grad():
        a = policy(policy.policy_inputs(batch), temperature=1.0, sample=False).logits
        b = policy(policy.policy_inputs(changed), temperature=1.0, sample=False).logits
        late = {k: v.clone() for k, v in batch.items()}
        late["rgb"][:, -1] = 0.0
        c = policy(policy.policy_inputs(late), temperature=1.0, sample=False).logits
    assert not torch.allclose(a[:, -1], b[:, -1])  # later segments see segment 0's change
    torch.testing.assert_close(a[:, :-1], c[:, :-1])  # no segment sees the future


def test_zero_temperature_is_rejected() -> None:
    with pytest.raises(ValueError, match="temperature"):
        gumbel_decisions(torch.zeros(2, 2), temperature=0.0)


def test_non_framewise_policy_backbone_is_rejected() -> None:
    with pytest.raises(ValueError, match="framewise"):
        build_policy(tiny_cfg(["rgb"], backbone="resnet_tiny"), CLIP)


def test_blocks_keep_the_first_feature_blocks_of_the_visual_extractor() -> None:
    full = build_policy(tiny_cfg(["rgb", "audio"], backbone="mobilenet_v2", width_mult=0.5), CLIP)
    short = build_policy(tiny_cfg(["rgb", "audio"], backbone="mobilenet_v2", width_mult=0.5, blocks=7), CLIP)
    # MobileNetV2 block 6 ends the 32-channel stage: 16 channels at width 0.5.
    assert short.extractors["rgb"].output_dim == 16
    assert full.extractors["rgb"].output_dim == 1280
    # The audio extractor is the audio network's own MobileNetV2 and is not cut.
    assert short.extractors["audio"].output_dim == full.extractors["audio"].output_dim
    n_short = sum(p.numel() for p in short.extractors["rgb"].parameters())
    n_full = sum(p.numel() for p in full.extractors["rgb"].parameters())
    assert n_short < n_full / 10
    out = short(short.policy_inputs(tiny_batch()), temperature=1.0)
    assert out.decisions.shape == (B, K, 2)
    with pytest.raises(ValueError, match="policy.blocks must be between 1 and 19"):
        build_policy(tiny_cfg(["rgb"], backbone="mobilenet_v2", blocks=40), CLIP)


def test_no_source_can_drown_the_others_by_growing_its_projection(policy: PolicyNetwork) -> None:
    """Each source's projection is layer-normalised: scaling one (what Adam does to a wide
    input) leaves the policy's output unchanged, so a narrow visual source keeps its say."""
    policy.eval()
    inputs = policy.policy_inputs(tiny_batch())
    with torch.no_grad():
        before = policy(inputs, temperature=1.0, sample=False).logits
        linear = policy.joint_inputs["audio"][0]
        saved = (linear.weight.clone(), linear.bias.clone())
        linear.weight.mul_(100.0)
        linear.bias.mul_(100.0)
        after = policy(inputs, temperature=1.0, sample=False).logits
        linear.weight.copy_(saved[0])
        linear.bias.copy_(saved[1])
        # and the visual input still moves the decisions
        other = dict(inputs, rgb=policy.policy_inputs(tiny_batch(seed=5))["rgb"])
        moved = policy(other, temperature=1.0, sample=False).logits
    assert torch.allclose(before, after, atol=1e-4)
    assert not torch.allclose(before, moved, atol=1e-4)


def test_one_rule_picks_each_extractor_and_build_policy_follows_it() -> None:
    # The audio network's own framewise backbone, at full width, cut to audio_blocks.
    cfg = tiny_cfg(["rgb", "audio"], width_mult=0.5, blocks=3, audio_blocks=2)
    assert policy_extractor(cfg, "audio") == ExtractorChoice("mobilenet_v2_tiny", 1.0, 2, own_audio=True)
    assert policy_extractor(cfg, "rgb") == ExtractorChoice("mobilenet_v2_tiny", 0.5, 3)
    policy = build_policy(cfg, CLIP)
    assert len(policy.extractors["audio"].features) == 2
    # An audio network that is not framewise (a ResNet): the policy's backbone, width and
    # audio_blocks; it cannot start from the stage-1 audio network.
    cfg.backbones["audio"] = "resnet_tiny"
    choice = policy_extractor(cfg, "audio")
    assert choice == ExtractorChoice("mobilenet_v2_tiny", 0.5, 2) and not choice.whole
    assert len(build_policy(cfg, CLIP).extractors["audio"].features) == 2
    cfg.policy.audio_blocks = None
    assert policy_extractor(cfg, "audio").blocks == 3  # the visual cut then applies
