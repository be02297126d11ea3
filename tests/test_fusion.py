"""Fusion heads: masking, empty segments, empty videos, learnable weights."""

from __future__ import annotations

import pytest
import torch

from adamml.models.fusion import FUSIONS, build_fusion

B, K, M, C = 2, 3, 2, 5
DIMS = [6, 4]
MODS = ["rgb", "audio"]
MULTI = ["average", "weighted", "classwise", "fc"]


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, M, C, generator=g)
    features = [torch.randn(B, K, d, generator=g) for d in DIMS]
    return logits, features


def _head(name: str):
    torch.manual_seed(0)
    head = build_fusion(name, MODS, C, DIMS)
    head.eval()
    with torch.no_grad():  # make learned weights unequal so masking bugs would show
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return head


def test_the_table_lists_every_fusion():
    assert set(FUSIONS) == {"unimodal", "average", "weighted", "classwise", "fc"}


@pytest.mark.parametrize("name", MULTI)
def test_no_mask_means_everything_selected(name):
    head = _head(name)
    logits, features = _inputs()
    out = head(logits, features, None)
    assert out.shape == (B, C)
    torch.testing.assert_close(out, head(logits, features, torch.ones(B, K, M)))


@pytest.mark.parametrize("name", MULTI)
def test_masked_pairs_contribute_nothing(name):
    head = _head(name)
    logits, features = _inputs()
    mask = torch.tensor([[[1, 0], [0, 1], [1, 1]], [[0, 1], [1, 0], [1, 0]]], dtype=torch.float32)
    out = head(logits, features, mask)
    garbage_logits = torch.where(mask.bool().unsqueeze(-1), logits, torch.full_like(logits, 1e3))
    garbage_features = [
        torch.where(mask[..., m : m + 1].bool(), f, torch.full_like(f, -77.0))
        for m, f in enumerate(features)
    ]
    torch.testing.assert_close(head(garbage_logits, garbage_features, mask), out)


@pytest.mark.parametrize("name", MULTI)
def test_a_segment_with_nothing_selected_is_left_out_of_the_mean(name):
    head = _head(name)
    logits, features = _inputs()
    mask = torch.ones(B, K, M)
    mask[:, 1] = 0  # segment 1 skipped entirely
    out = head(logits, features, mask)
    keep = [0, 2]
    expected = head(logits[:, keep], [f[:, keep] for f in features], torch.ones(B, len(keep), M))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", MULTI + ["unimodal"])
def test_a_video_with_nothing_selected_gets_zero_logits(name):
    mods = MODS[:1] if name == "unimodal" else MODS
    head = build_fusion(name, mods, C, DIMS[: len(mods)]).eval()
    logits, features = _inputs()
    logits, features = logits[:, :, : len(mods)], features[: len(mods)]
    mask = torch.ones(B, K, len(mods))
    mask[1] = 0
    out = head(logits, features, mask)
    assert torch.equal(out[1], torch.zeros(C))
    assert out[0].abs().sum() > 0
    torch.testing.assert_close(out[1].softmax(-1), torch.full((C,), 1 / C))


def test_average_is_the_mean_over_selected_modalities_then_segments():
    head = build_fusion("average", MODS, C)
    logits, _ = _inputs()
    mask = torch.ones(B, K, M)
    mask[0, 0, 1] = 0  # video 0, segment 0: rgb only
    out = head(logits, None, mask)
    seg = logits.mean(dim=2)
    seg[0, 0] = logits[0, 0, 0]
    torch.testing.assert_close(out, seg.mean(dim=1))


def test_unimodal_averages_the_segments_where_it_ran():
    head = build_fusion("unimodal", ["audio"], C)
    logits, _ = _inputs()
    logits = logits[:, :, :1]
    mask = torch.tensor([[[1.0], [0.0], [1.0]], [[1.0], [1.0], [1.0]]])
    out = head(logits, None, mask)
    torch.testing.assert_close(out[0], logits[0, [0, 2], 0].mean(dim=0))
    torch.testing.assert_close(out[1], logits[1, :, 0].mean(dim=0))


def test_unimodal_takes_exactly_one_modality():
    with pytest.raises(ValueError, match="exactly one modality"):
        build_fusion("unimodal", MODS, C)


def test_weighted_weights_are_positive_sum_to_one_and_start_equal():
    head = build_fusion("weighted", MODS, C)
    torch.testing.assert_close(head.weights(), torch.tensor([0.5, 0.5]))
    logits, _ = _inputs()
    torch.testing.assert_close(head(logits), logits.mean(dim=(1, 2)))


def test_a_lone_selected_modality_keeps_its_logit_scale_under_weighted_fusion():
    head = _head("weighted")
    logits, _ = _inputs()
    mask = torch.zeros(B, K, M)
    mask[..., 1] = 1  # audio only
    torch.testing.assert_close(head(logits, None, mask), logits[:, :, 1].mean(dim=1))


@pytest.mark.parametrize("name", ["weighted", "classwise", "fc"])
def test_fusion_parameters_are_learned(name):
    head = build_fusion(name, MODS, C, DIMS)
    head.train()
    logits, features = _inputs()
    target = torch.tensor([1, 3])
    params = [p for p in head.parameters()]
    assert params
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1.0)
    loss = torch.nn.functional.cross_entropy(head(logits, features, None), target)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=True))


def test_classwise_weights_are_per_modality_and_class():
    head = build_fusion("classwise", MODS, C)
    w = head.weights()
    assert w.shape == (M, C)
    torch.testing.assert_close(w.sum(dim=0), torch.ones(C))


@pytest.mark.parametrize("name", MULTI)
def test_gradient_reaches_straight_through_decisions_and_stays_finite(name):
    head = _head(name)
    logits, features = _inputs()
    mask = torch.ones(B, K, M)
    mask[0, 1] = 0
    mask[1, :, 0] = 0
    mask.requires_grad_(True)
    head(logits, features, mask).pow(2).sum().backward()
    assert mask.grad is not None
    assert torch.isfinite(mask.grad).all()
    assert mask.grad.abs().sum() > 0


def test_fc_fusion_needs_features():
    head = build_fusion("fc", MODS, C, DIMS)
    logits, _ = _inputs()
    with pytest.raises(ValueError, match="needs the segment features"):
        head(logits, None, None)


def test_unknown_fusion_and_bad_shapes_are_named():
    with pytest.raises(ValueError, match="expected one of unimodal, average"):
        build_fusion("concat", MODS, C)
    head = build_fusion("average", MODS, C)
    with pytest.raises(ValueError, match=r"mask must be \(B, K, M\)"):
        head(torch.zeros(B, K, M, C), None, torch.ones(B, K))
    with pytest.raises(ValueError, match=r"\(B, K, M=2, C\)"):
        head(torch.zeros(B, K, 3, C))


@pytest.mark.parametrize("name", ["average", "weighted", "classwise"])
def test_switched_off_modality_still_gets_a_gradient_telling_the_policy_to_use_it(name):
    # If nothing is selected, the policy must still learn that switching a helpful modality on
    # lowers the loss; a dead zone here lets a policy that drops everything never recover.
    torch.manual_seed(0)
    head = build_fusion(name, ["rgb", "audio"], 3, [4, 4])
    logits = torch.zeros(1, 2, 2, 3)
    logits[:, :, 0, 0] = 8.0  # rgb votes strongly for class 0 ...
    logits[:, :, 1, 0] = 1.0  # ... audio only weakly
    for mask_value in (0.0, 1.0):
        mask = torch.full((1, 2, 2), mask_value)
        mask[0, 0, 0] = 0.0  # rgb off on segment 0 (every decision off when mask_value is 0)
        mask.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(head(logits, None, mask), torch.tensor([0]))
        loss.backward()
        assert mask.grad[0, 0, 0] < 0, (name, mask_value)  # turning rgb on would help


def test_reference_mode_is_the_reference_formula_with_empty_segments_in_the_mean():
    head = build_fusion("weighted", ["rgb", "audio", "flow"], C, mode="reference")
    # M-1 = 2 free weights initialised 1/M; the last is 1 - their sum.
    assert head.free.shape == (2,)
    torch.testing.assert_close(head.weights(), torch.full((3,), 1 / 3))
    with torch.no_grad():
        head.free.copy_(torch.tensor([0.7, 0.5]))  # last weight 1 - 1.2 = -0.2
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, K, 3, C, generator=g)
    mask = torch.tensor(
        [[[1, 0, 1], [0, 0, 0], [0, 1, 0]], [[1, 1, 1], [1, 0, 0], [0, 0, 0]]], dtype=torch.float32
    )
    w = [0.7, 0.5, -0.2]
    expected = torch.stack([
        sum(sum(w[m] * mask[b, k, m] * logits[b, k, m] for m in range(3)) for k in range(K)) / K
        for b in range(B)
    ])
    torch.testing.assert_close(head(logits, None, mask), expected)


def test_reference_mode_does_not_renormalise_a_lone_modality():
    logits = torch.randn(1, 2, M, C)
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    ref = build_fusion("weighted", MODS, C, mode="reference")
    ours = build_fusion("weighted", MODS, C)
    torch.testing.assert_close(ref(logits, None, mask), 0.5 * logits[0, :, 0].mean(0, keepdim=True))
    torch.testing.assert_close(ours(logits, None, mask), logits[0, :, 0].mean(0, keepdim=True))


def test_reference_average_fusion_divides_by_every_modality():
    logits = torch.randn(1, 1, M, C)
    out = build_fusion("average", MODS, C, mode="reference")(logits, None, torch.tensor([[[0.0, 1.0]]]))
    torch.testing.assert_close(out, logits[0, :, 1] / 2)


def test_unknown_fusion_mode_names_the_key():
    with pytest.raises(ValueError, match="model.fusion_mode"):
        build_fusion("weighted", MODS, C, mode="softmax")


def test_paper_configs_fuse_like_the_reference():
    from adamml.config_files import load_config

    for name in ("kinetics_sounds_rgb_audio", "activitynet_rgb_audio", "kinetics_sounds_rgb_flow_audio"):
        assert load_config(name).model.fusion_mode == "reference"
