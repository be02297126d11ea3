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


# --- torchvision:<model>.<weights> sources, through torch's hub cache (never the network) ---

MV2_SOURCE = "torchvision:mobilenet_v2.IMAGENET1K_V1"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path, and a download that fails if it is tried."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ADAMML_OFFLINE", raising=False)
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise OSError("no network in the tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return folder, calls


def _cache_file(folder, name: str, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)


def test_a_torchvision_source_loads_the_cached_file_and_inflates_it_as_the_reference(hub):
    from adamml.models.backbones import parse_torchvision_source

    folder, calls = hub
    spec = parse_torchvision_source(MV2_SOURCE)
    assert spec.file_name == "mobilenet_v2-b0353104.pth"  # the name torchvision's URL gives it
    assert spec.cache_path == folder / spec.file_name
    state = tvm.mobilenet_v2(weights=None).state_dict()
    _cache_file(folder, spec.file_name, state)
    net = build_recognition_net(
        "audio", "mobilenet_v2", num_classes=5, clip=CLIP, pretrained=MV2_SOURCE, inflation="reference"
    )
    assert calls == []  # the cache is looked at first: no download tried
    stem = net.features[0][0].weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem[:, 0], state["features.0.0.weight"].mean(dim=1))  # plain mean
    torch.testing.assert_close(net.features[7].conv[1][0].weight, state["features.7.conv.1.0.weight"])
    rescaled = build_recognition_net("audio", "mobilenet_v2", num_classes=5, clip=CLIP, pretrained=MV2_SOURCE)
    torch.testing.assert_close(rescaled.features[0][0].weight[:, 0], state["features.0.0.weight"].sum(dim=1))


def test_a_missing_torchvision_file_is_one_line_naming_file_folder_and_url(hub):
    from adamml.models.backbones import read_weights

    folder, calls = hub
    with pytest.raises(PretrainedWeightsError) as err:
        read_weights(MV2_SOURCE)
    text = str(err.value)
    assert calls == ["https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"]
    assert "\n" not in text and "download failed" in text
    for part in ("mobilenet_v2-b0353104.pth", str(folder), "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"):
        assert part in text


def test_offline_switch_fails_without_trying_the_network(hub, monkeypatch):
    from adamml.models.backbones import read_weights

    folder, calls = hub
    monkeypatch.setenv("ADAMML_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match="ADAMML_OFFLINE is set"):
        read_weights(MV2_SOURCE)
    assert calls == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("torchvision:resnet50", "expected torchvision:<model>.<weights>"),
        ("torchvision:resnet5O.IMAGENET1K_V1", "torchvision has no model 'resnet5O'"),
        ("torchvision:resnet50.IMAGENET2K", "ResNet50_Weights has no 'IMAGENET2K'.*IMAGENET1K_V1"),
        ("torchvision:mobilenet_v2.IMAGENET1K_V1", "holds torchvision mobilenet_v2 weights.*'resnet50'"),
    ],
)
def test_a_wrong_torchvision_source_fails_when_the_config_is_read(source, message):
    from adamml.config import ConfigError
    from adamml.config_files import load_config

    with pytest.raises(ConfigError, match=f"model.pretrained.rgb.*{message}"):
        load_config("kinetics_sounds_rgb_audio", [f"model.pretrained.rgb={source}"])


def test_paper_config_without_cached_weights_stops_before_reading_data(hub, tmp_path, capsys):
    from adamml.cli import main

    folder, calls = hub
    missing = tmp_path / "no_such_dataset"
    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--data", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "resnet50-0676ba61.pth" in err and str(folder) in err and "https://download.pytorch.org/models/" in err
    assert str(missing) not in err  # the data was never looked at


def test_plan_names_every_imagenet_start_and_the_reference_head(hub, capsys):
    from adamml.cli import main

    folder, _ = hub
    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "rgb: resnet50, starts from torchvision:resnet50.IMAGENET1K_V1 (not cached" in out
    assert "audio: mobilenet_v2, starts from torchvision:mobilenet_v2.IMAGENET1K_V1 (not cached" in out
    assert "policy extractors: audio from torchvision:mobilenet_v2.IMAGENET1K_V1" in out
    assert "rgb from torchvision:mobilenet_v2.IMAGENET1K_V1" in out
    assert "policy head reference: concatenation" in out and "inflated reference" in out
    _cache_file(folder, "resnet50-0676ba61.pth", {})
    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--plan"]) == 0
    assert "starts from torchvision:resnet50.IMAGENET1K_V1 (cached)" in capsys.readouterr().out
    assert main(["train", "--config", "kinetics_sounds_rgb_audio", "--plan", "--allow-random-start"]) == 0
    out = capsys.readouterr().out
    assert "rgb: resnet50, starts from random" in out and "audio: mobilenet_v2, starts from random" in out
    assert "torchvision:" not in out


@pytest.mark.parametrize(
    "name",
    ["kinetics_sounds_rgb_audio", "kinetics_sounds_rgb_flow", "kinetics_sounds_rgb_flow_audio",
     "kinetics_sounds_rgb_rgbdiff", "kinetics_sounds_rgb_rgbdiff_audio", "activitynet_rgb_audio",
     "activitynet_resnet18_224", "activitynet_resnet18_112", "activitynet_efficientnet",
     "fcvid_rgb_audio", "mini_sports1m_rgb_audio"],
)
def test_every_paper_config_starts_every_network_from_torchvision_imagenet(name):
    from adamml.config_files import load_config
    from adamml.modalities.table import policy_source
    from adamml.models.backbones import is_torchvision
    from adamml.models.policy import policy_weight_sources

    cfg = load_config(name)
    assert sorted(cfg.model.pretrained) == sorted(cfg.model.modalities)
    assert all(is_torchvision(s) and "IMAGENET1K" in s for s in cfg.model.pretrained.values())
    sources = {policy_source(m, cfg.model.policy.flow_proxy) for m in cfg.model.modalities}
    given = policy_weight_sources(cfg.model)
    assert sorted(given) == sorted(sources) and all(is_torchvision(s) for s in given.values())
    assert cfg.model.inflation == "reference" and cfg.model.policy.joint == "reference"


def test_allow_random_start_drops_only_torchvision_starts():
    from adamml.config_files import load_config
    from adamml.training.plan import without_torchvision_starts

    cfg = load_config("kinetics_sounds_rgb_audio")
    bare, lines = without_torchvision_starts(cfg)
    assert bare.model.pretrained == {} and not bare.model.policy.pretrained
    assert cfg.model.pretrained  # the given config is left as it was
    assert len(lines) == 1 and "--allow-random-start" in lines[0] and "model.pretrained.rgb" in lines[0]
    assert without_torchvision_starts(load_config("tiny")) == (load_config("tiny"), [])


def test_policy_extractors_load_a_cached_torchvision_mobilenet(hub):
    from adamml.config_files import load_config
    from adamml.models.policy import build_policy

    folder, calls = hub
    state = tvm.mobilenet_v2(weights=None).state_dict()
    _cache_file(folder, "mobilenet_v2-b0353104.pth", state)
    cfg = load_config("tiny", ["model.policy.backbone=mobilenet_v2", f"model.policy.pretrained={MV2_SOURCE}",
                               "model.policy.audio_backbone=mobilenet_v2", "model.inflation=reference"])
    policy = build_policy(cfg.model, cfg.data.clip)
    assert sorted(policy.pretrained_sources) == ["audio", "rgb"] and calls == []
    rgb = [m for m in policy.extractors["rgb"].features if not type(m).__name__.startswith("Temporal")]
    torch.testing.assert_close(rgb[10].conv[0][0].weight, state["features.10.conv.0.0.weight"])
    torch.testing.assert_close(policy.extractors["audio"].features[0][0].weight[:, 0],
                               state["features.0.0.weight"].mean(dim=1))


def test_run_summary_names_every_start_and_says_when_they_were_dropped():
    from adamml.config_files import load_config
    from adamml.training.plan import start_lines, without_torchvision_starts

    cfg = load_config("kinetics_sounds_rgb_audio")
    (line,) = start_lines(cfg)
    assert "rgb resnet50 from torchvision:resnet50.IMAGENET1K_V1" in line
    assert "audio mobilenet_v2 from torchvision:mobilenet_v2.IMAGENET1K_V1" in line and "policy head reference" in line
    bare, dropped = without_torchvision_starts(cfg)
    (line,) = start_lines(bare)
    assert "rgb resnet50 from random" in line and "audio copied from the stage-1 audio network; rgb random" in line
    assert "torchvision" not in line
    assert "--allow-random-start" in dropped[0]


def test_the_summary_says_a_cut_extractor_is_copied_from_stage_1_when_it_is():
    from adamml.config_files import load_config
    from adamml.models.adamml import build_adamml
    from adamml.training.plan import start_lines
    from adamml.training.stages import init_policy_from_recognition

    cfg = load_config("default")
    cfg.model.num_classes = 5
    (line,) = start_lines(cfg)
    assert "audio copied from the stage-1 audio network; rgb copied from the stage-1 rgb network" in line
    model = build_adamml(cfg.model, cfg.data.clip)
    assert sorted(init_policy_from_recognition(model)) == ["audio", "rgb"]
    first = "features.0.0.weight"
    assert torch.equal(model.policy.extractors["rgb"].state_dict()[first], model.recognition["rgb"].state_dict()[first])
