"""Live AdaMML: the policy stepped segment by segment, the segment clock, back-pressure and
the budget held over time."""

from __future__ import annotations

import pytest
import torch

from adamml.config import ClipSettings, ModelConfig, PolicyConfig
from adamml.models.policy import build_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def _calibrated_policy(clip: ClipSettings, batch: dict[str, torch.Tensor]):
    torch.manual_seed(0)
    cfg = ModelConfig(modalities=["rgb", "audio"], backbones={"rgb": "resnet_tiny", "audio": "mobilenet_v2_tiny"},
                      num_classes=5, policy=PolicyConfig(backbone="mobilenet_v2_tiny", frames=2, resolution=24,
                                                         joint_dim=32, hidden_size=16))
    policy = build_policy(cfg, clip)
    for m in policy.modules():  # batch-norm statistics from the batch: random nets otherwise say the same
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    policy.train()
    with torch.no_grad():
        policy(policy.policy_inputs(batch), temperature=1.0)
    return policy.eval()


def test_policy_stepped_k_times_equals_forward_over_k_segments() -> None:
    clip = ClipSettings(num_segments=6, frames_per_segment=4, stack_length=0, crop_size=24)
    g = torch.Generator().manual_seed(1)
    batch = {"rgb": torch.randn(3, 6, 4, 3, 24, 24, generator=g), "audio": torch.randn(3, 6, 1, 32, 32, generator=g)}
    policy = _calibrated_policy(clip, batch)
    inputs = policy.policy_inputs(batch)
    with torch.no_grad():
        margins = policy(inputs, temperature=1.0, sample=False).logits.diff(dim=-1)[..., 0]
        # Thresholds on, at each modality's median margin: they must apply per step too.
        policy.use_thresholds.copy_(margins.flatten(0, 1).median(dim=0).values)
        whole = policy(inputs, temperature=1.0, sample=False)
        features = policy.joint_features(inputs)
        state, steps = None, []
        for k in range(6):
            out, state = policy.step(features[:, k], state)
            steps.append(out)
    logits = torch.cat([o.logits for o in steps], dim=1)
    torch.testing.assert_close(logits, whole.logits, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([o.decisions for o in steps], dim=1), whole.decisions)
    torch.testing.assert_close(torch.cat([o.probs for o in steps], dim=1), whole.probs, rtol=0, atol=1e-6)
    assert 0 < whole.decisions.mean() < 1  # both kinds of decision occur, so the thresholds mattered


def test_policy_stepped_on_one_segment_at_a_time_matches_forward_up_to_rounding() -> None:
    """A stream extracts each segment's features on its own (batch B, not B x K): the same
    function, so equal up to the rounding of differently sized convolutions."""
    from numerics import assert_same_function

    clip = ClipSettings(num_segments=4, frames_per_segment=4, stack_length=0, crop_size=24)
    g = torch.Generator().manual_seed(2)
    batch = {"rgb": torch.randn(2, 4, 4, 3, 24, 24, generator=g), "audio": torch.randn(2, 4, 1, 32, 32, generator=g)}
    policy = _calibrated_policy(clip, batch)
    inputs = policy.policy_inputs(batch)
    with torch.no_grad():
        whole = policy(inputs, temperature=1.0, sample=False)
        state, logits = None, []
        for k in range(4):
            out, state = policy.step(policy.joint_features({s: x[:, k : k + 1] for s, x in inputs.items()})[:, 0], state)
            logits.append(out.logits)
    assert_same_function(torch.cat(logits, dim=1), whole.logits)
