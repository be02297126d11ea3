"""Recognition sub-networks: shapes for every backbone x modality, TSN temporal pooling."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from adamml.config import ClipSettings
from adamml.config_files import load_config
from adamml.modalities.table import modality_channels
from adamml.models.backbones import BACKBONES
from adamml.models.recognition import (
    TSNResNet,
    build_recognition_net,
    build_recognition_nets,
)
from adamml.models.temporal import TemporalMaxPool, pooled_frames

CLIP = ClipSettings(
    num_segments=2, frames_per_segment=2, stack_length=2, crop_size=32, n_fft=63, audio_frames=32
)
TINY = ("resnet_tiny", "mobilenet_v2_tiny")
MODALITIES = ("rgb", "flow", "rgbdiff", "audio")


def test_pooled_frames_is_ceil_half_for_kernel_3_stride_2():
    assert [pooled_frames(t) for t in (1, 2, 3, 4, 5, 8, 16)] == [1, 1, 2, 2, 3, 4, 8]


def test_temporal_max_pool_takes_the_max_over_neighbouring_frames():
    x = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1, 1, 1)  # (n, t, c, h, w)
    x[1] = -x[1]
    pool = TemporalMaxPool(frames=5)
    y = pool(x.reshape(10, 1, 1, 1)).reshape(2, 3)
    # windows (pad, 0, 1), (1, 2, 3), (3, 4, pad) per video
    assert y[0].tolist() == [1.0, 3.0, 4.0]
    assert y[1].tolist() == [-5.0, -6.0, -8.0]


def test_temporal_max_pool_rejects_a_batch_that_is_not_whole_videos():
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        TemporalMaxPool(frames=4)(torch.zeros(6, 1, 2, 2))


@pytest.mark.parametrize("backbone", TINY)
@pytest.mark.parametrize("modality", MODALITIES)
def test_tiny_backbones_give_logits_and_features_for_every_modality(modality, backbone):
    net = build_recognition_net(modality, backbone, num_classes=5, clip=CLIP).eval()
    shape = net.input_shape(CLIP)
    if modality == "audio":
        assert shape == (1, 32, 32)
    else:
        assert shape == (2, modality_channels(modality, CLIP), 32, 32)
    logits, features = net(torch.randn(3, *shape))
    assert logits.shape == (3, 5)
    assert features.shape == (3, net.feature_dim)
    assert net.modality == modality and net.num_classes == 5


@pytest.mark.parametrize("backbone", sorted(set(BACKBONES) - set(TINY)))
def test_full_size_backbones_run_one_small_sample(backbone):
    # ResNets on flow stacks (the 10-channel stem), the light nets on spectrograms.
    clip = ClipSettings(
        frames_per_segment=2, stack_length=1, crop_size=32, n_fft=63, audio_frames=32
    )
    modality = "flow" if BACKBONES[backbone].family == "resnet" else "audio"
    net = build_recognition_net(modality, backbone, num_classes=4, clip=clip).eval()
    with torch.no_grad():
        logits, features = net(torch.randn(1, *net.input_shape(clip)))
    assert logits.shape == (1, 4)
    assert features.shape == (1, BACKBONES[backbone].feature_dim)


def test_channel_counts_follow_the_layout_contract():
    clip = ClipSettings(stack_length=5)
    assert [modality_channels(m, clip) for m in MODALITIES] == [3, 10, 15, 1]


def _frames_seen(net: TSNResNet, frames: int) -> list[int]:
    seen = []
    hooks = [
        getattr(net, f"layer{i}").register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
        for i in range(1, 5)
    ]
    net(torch.randn(1, frames, 3, 32, 32))
    for h in hooks:
        h.remove()
    return seen


def test_tsn_resnet_stages_see_8_4_2_1_frames():
    clip = ClipSettings(frames_per_segment=8, crop_size=32)
    net = build_recognition_net("rgb", "resnet_tiny", num_classes=3, clip=clip).eval()
    assert _frames_seen(net, 8) == [8, 4, 2, 1]


def test_temporal_pooling_can_be_turned_off():
    clip = ClipSettings(frames_per_segment=8, crop_size=32)
    net = build_recognition_net("rgb", "resnet_tiny", num_classes=3, clip=clip, temporal_pool=False)
    assert _frames_seen(net.eval(), 8) == [8, 8, 8, 8]


def test_wrong_number_of_frames_is_a_clear_error():
    net = build_recognition_net("rgb", "resnet_tiny", num_classes=3, clip=CLIP)
    with pytest.raises(ValueError, match=r"T=2"):
        net(torch.randn(1, 3, 3, 32, 32))


def test_parameter_names_are_torchvisions_so_imagenet_weights_load_unchanged():
    net = build_recognition_net("rgb", "resnet_tiny", num_classes=3, clip=CLIP)
    reference = tvm.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1]).state_dict()
    assert set(net.state_dict()) == set(reference)
    net = build_recognition_net("rgb", "mobilenet_v2_tiny", num_classes=3, clip=CLIP)
    assert set(net.state_dict()) == set(tvm.mobilenet_v2(width_mult=0.25).state_dict())


def test_dropout_only_acts_in_training():
    net = build_recognition_net("rgb", "resnet_tiny", num_classes=3, clip=CLIP, dropout=0.9)
    x = torch.randn(2, *net.input_shape(CLIP))
    net.eval()
    a, _ = net(x)
    b, _ = net(x)
    torch.testing.assert_close(a, b)
    net.train()
    c, _ = net(x)
    d, _ = net(x)
    assert not torch.allclose(c, d)


def test_pretrained_file_is_loaded_by_the_builder(tmp_path):
    source = build_recognition_net("audio", "mobilenet_v2_tiny", num_classes=3, clip=CLIP)
    path = tmp_path / "audio.pt"
    torch.save({"model": source.state_dict()}, path)
    net = build_recognition_net(
        "audio", "mobilenet_v2_tiny", num_classes=3, clip=CLIP, pretrained=str(path)
    )
    torch.testing.assert_close(net.classifier[1].weight, source.classifier[1].weight)


def test_build_recognition_nets_follows_the_config_order():
    cfg = load_config("tiny", ["model.modalities=[audio, rgb]"])
    nets = build_recognition_nets(cfg.model, cfg.data.clip)
    assert list(nets) == ["audio", "rgb"]
    assert nets["audio"].num_classes == cfg.model.num_classes


def test_a_modality_without_a_backbone_is_named():
    """load_config refuses such a config (tests/test_config.py); a config built in code is
    still caught by the builder."""
    cfg = load_config("tiny")
    cfg.model.backbones = {"rgb": "resnet_tiny"}
    with pytest.raises(ValueError, match="no entry for modality 'audio'"):
        build_recognition_nets(cfg.model, cfg.data.clip)
