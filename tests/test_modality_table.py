"""The modality table is the one description of each modality: the dataset, the recognition
networks and the policy all agree with what its rows say."""

from __future__ import annotations

import pytest
import torch

from adamml.config import ClipSettings, DecodeSettings, ModelConfig, PolicyConfig
from adamml.data.datasets import VideoDataset
from adamml.data.types import VideoEntry
from adamml.modalities.table import MODALITIES, input_modalities, policy_source
from adamml.models.build import build_model

CLIP = ClipSettings(num_segments=2, frames_per_segment=4, frame_stride=2, stack_length=2, crop_size=32,
                    n_fft=63, win_ms=2.0, hop_ms=1.0, audio_frames=32)
DECODE = DecodeSettings(fps=25.0, short_side=48, sample_rate=16_000, flow="dis")


def test_every_row_is_keyed_by_its_name_and_has_a_positive_channel_count():
    assert list(MODALITIES) == ["rgb", "audio", "flow", "rgbdiff"]
    for name, row in MODALITIES.items():
        assert row.name == name
        assert row.channels(CLIP) >= 1
        assert row.reads in ("frames", "flow", "audio")


def test_a_dataset_sample_has_the_tables_shape_for_every_modality(tiny_video):
    dataset = VideoDataset([VideoEntry(path=tiny_video, labels=[0])], ["a"], modalities=list(MODALITIES),
                           clip=CLIP, decode=DECODE, train=False)
    sample = dataset[0]
    for name, row in MODALITIES.items():
        assert tuple(sample[name].shape) == (CLIP.num_segments, *row.input_shape(CLIP)), name


@pytest.mark.parametrize("name", list(MODALITIES))
def test_a_recognition_network_takes_the_tables_input_shape(name):
    backbone = "mobilenet_v2_tiny" if not MODALITIES[name].visual else "resnet_tiny"
    model = build_model("unimodal", ModelConfig(modalities=[name], backbones={name: backbone}, num_classes=3), CLIP)
    x = torch.zeros(2, CLIP.num_segments, *MODALITIES[name].input_shape(CLIP))
    assert model({name: x}).logits.shape == (2, 3)


def test_the_policy_looks_at_a_proxy_only_where_the_table_gives_one():
    assert {name: policy_source(name) for name in MODALITIES} == {
        "rgb": "rgb", "audio": "audio", "flow": "rgbdiff", "rgbdiff": "rgbdiff"}
    assert policy_source("flow", "flow") == "flow"
    with pytest.raises(ValueError, match="flow_proxy"):
        policy_source("flow", "audio")
    assert input_modalities(["rgb", "flow"]) == ["rgb", "flow", "rgbdiff"]
    assert input_modalities(["rgb", "flow"], policy=False) == ["rgb", "flow"]


def test_an_adamml_model_runs_on_the_inputs_the_table_says_it_needs():
    cfg = ModelConfig(modalities=["rgb", "flow", "audio"], num_classes=3,
                      backbones={"rgb": "resnet_tiny", "flow": "resnet_tiny", "audio": "mobilenet_v2_tiny"},
                      policy=PolicyConfig(backbone="mobilenet_v2_tiny", resolution=32, joint_dim=16, hidden_size=8))
    model = build_model("adamml", cfg, CLIP).eval()
    batch = {m: torch.zeros(1, CLIP.num_segments, *MODALITIES[m].input_shape(CLIP))
             for m in input_modalities(cfg.modalities, flow_proxy=cfg.policy.flow_proxy)}
    assert set(batch) == {"rgb", "flow", "audio", "rgbdiff"}
    with torch.no_grad():
        out = model(batch, mode="conditional")
    assert out.logits.shape == (1, 3)
