"""Backbone table, first-conv adaptation and loading local pretrained weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from adamml.config import ClipSettings
from adamml.models.backbones import (
    BACKBONES,
    PretrainedWeightsError,
    adapt_first_conv,
    create_backbone,
    find_first_conv,
    inflate_conv_weight,
    load_pretrained,
    read_state_dict,
)
from adamml.models.recognition import build_recognition_net

CLIP = ClipSettings(
    num_segments=2, frames_per_segment=2, stack_length=2, crop_size=32, audio_frames=32, n_fft=63
)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_table_entry_builds_with_a_first_conv_of_three_channels(name):
    with torch.device("meta"):
        model = create_backbone(name)
    _, conv = find_first_conv(model)
    assert conv.in_channels == 3
    assert BACKBONES[name].family in ("resnet", "framewise")


def test_unknown_backbone_names_the_valid_ones():
    with pytest.raises(ValueError, match="resnet_tiny"):
        create_backbone("resnet51")


@pytest.mark.parametrize("in_channels", [1, 10, 15])
def test_inflated_conv_on_channel_constant_input_matches_rgb_conv_on_grey(in_channels):
    torch.manual_seed(0)
    rgb = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    new = adapt_first_conv(rgb, in_channels)
    assert new.weight.shape == (8, in_channels, 3, 3)
    grey = torch.randn(2, 1, 9, 9)
    expected = rgb(grey.expand(-1, 3, -1, -1))
    got = new(grey.expand(-1, in_channels, -1, -1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_reference_rule_without_rescale_is_the_plain_channel_mean():
    w = torch.randn(4, 3, 7, 7)
    out = inflate_conv_weight(w, 10, rescale=False)
    torch.testing.assert_close(out[:, 5], w.mean(dim=1))
    torch.testing.assert_close(out[:, 0], out[:, 9])


def test_adapt_first_conv_replaces_the_stem_of_a_model_in_place():
    model = tvm.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=5).eval()
    same = adapt_first_conv(model, 10, inflate=False)
    assert same is model
    assert model.conv1.in_channels == 10 and model.conv1.out_channels == 64
    assert model(torch.randn(1, 10, 32, 32)).shape == (1, 5)


def test_mobilenet_first_conv_inside_a_sequential_is_found_and_replaced():
    model = create_backbone("mobilenet_v2_tiny", in_channels=1)
    assert model.features[0][0].in_channels == 1


def _tsn_flow_net(num_classes: int = 7):
    return build_recognition_net("flow", "resnet_tiny", num_classes=num_classes, clip=CLIP)


def test_torchvision_state_dict_loads_with_inflated_first_conv_and_skipped_classifier(tmp_path):
    torch.manual_seed(0)
    rgb = tvm.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1])  # 1000 ImageNet classes
    path = tmp_path / "resnet_tiny_imagenet.pth"
    torch.save(rgb.state_dict(), path)
    net = _tsn_flow_net()
    fc_before = net.fc.weight.clone()
    skipped = load_pretrained(net, path)
    assert set(skipped) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(net.fc.weight, fc_before)  # new head kept
    torch.testing.assert_close(net.layer3[0].conv1.weight, rgb.layer3[0].conv1.weight)
    torch.testing.assert_close(
        net.conv1.weight, inflate_conv_weight(rgb.conv1.weight, 2 * CLIP.stack_length)
    )


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_our_checkpoint_format_with_module_prefix_loads_exactly(tmp_path, key):
    torch.manual_seed(1)
    source = _tsn_flow_net()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({key: state, "epoch": 3}, path)
    target = _tsn_flow_net()
    assert load_pretrained(target, path) == []
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)


def test_prefix_selects_one_sub_network_of_a_larger_checkpoint(tmp_path):
    source = _tsn_flow_net()
    state = {f"recognition.flow.{k}": v for k, v in source.state_dict().items()}
    state["policy.head.weight"] = torch.zeros(2, 2)
    path = tmp_path / "adamml.pt"
    torch.save({"model": state}, path)
    target = _tsn_flow_net()
    load_pretrained(target, path, prefix="recognition.flow.")
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsError, match="nope.pth.*not found"):
        load_pretrained(_tsn_flow_net(), path)


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="garbage.pth.*not a readable"):
        read_state_dict(path)


def test_mismatched_weights_name_the_file_and_the_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)  # two blocks per stage
    with pytest.raises(PretrainedWeightsError, match=r"resnet18.pth.*layer1\.1\.conv1\.weight"):
        load_pretrained(_tsn_flow_net(), path)


def test_wrong_width_tensor_is_reported_with_both_shapes(tmp_path):
    state = _tsn_flow_net().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(
        PretrainedWeightsError, match=r"layer2\.0\.conv1\.weight \(file \(3, 3, 3, 3\)"
    ):
        load_pretrained(_tsn_flow_net(), path)
