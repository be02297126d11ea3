"""FLOPs counting: known models, the paper's per-segment and per-video figures, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from adamml.cli import main
from adamml.config_files import load_config
from adamml.models.flops import (
    count_flops,
    count_macs,
    flops_report,
    gflops_per_video,
    modality_costs,
    recognition_cost,
)


def _meta(build):
    with torch.device("meta"):
        return build().eval()


def test_linear_layer_counts_two_flops_per_multiply_add():
    layer = nn.Linear(10, 7, bias=False)
    assert count_flops(layer, torch.randn(3, 10)) == 2 * 3 * 10 * 7
    assert count_macs(layer, torch.randn(3, 10)) == 3 * 10 * 7


def test_meta_counting_equals_counting_real_tensors():
    model = tvm.mobilenet_v2(weights=None, width_mult=0.25).eval()
    real = count_flops(model, torch.randn(1, 3, 64, 64))
    meta = count_flops(
        _meta(lambda: tvm.mobilenet_v2(weights=None, width_mult=0.25)),
        torch.empty(1, 3, 64, 64, device="meta"),
    )
    assert real == meta > 0


@pytest.mark.parametrize(
    ("build", "gmacs"),
    [(lambda: tvm.resnet50(weights=None), 4.089), (lambda: tvm.mobilenet_v2(weights=None), 0.3008)],
)
def test_known_imagenet_models_at_224(build, gmacs):
    macs = count_macs(_meta(build), torch.empty(1, 3, 224, 224, device="meta"))
    assert macs / 1e9 == pytest.approx(gmacs, rel=1e-3)


PAPER = load_config("kinetics_sounds_rgb_rgbdiff_audio")


@pytest.mark.parametrize(
    ("modality", "backbone", "gmacs"),
    [("rgb", "resnet50", 14.136), ("flow", "resnet50", 16.339), ("audio", "mobilenet_v2", 0.3817)],
)
def test_paper_costs_per_segment(modality, backbone, gmacs):
    cost = recognition_cost(modality, backbone, PAPER.data.clip, num_classes=31)
    assert cost.gmacs == pytest.approx(gmacs, rel=1e-3)


def test_paper_costs_per_video_of_10_segments_and_fusion_baselines():
    costs = modality_costs(PAPER.model, PAPER.data.clip)
    k = PAPER.data.eval_segments
    assert k == 10
    rgb, audio, flow = (costs[m] * k for m in ("rgb", "audio", "flow"))
    assert rgb == pytest.approx(141.36, rel=0.01)
    assert audio == pytest.approx(3.82, rel=0.01)
    assert flow == pytest.approx(163.39, rel=0.01)
    assert rgb + audio == pytest.approx(145.17, rel=0.01)
    assert rgb + flow == pytest.approx(304.75, rel=0.01)
    assert rgb + audio + flow == pytest.approx(308.56, rel=0.01)
    assert costs["policy"] > 0


def test_policy_parts_match_the_reference_for_rgb_and_audio():
    pytest.importorskip("adamml.models.policy")
    cfg = load_config("kinetics_sounds_rgb_audio")
    report = flops_report(cfg)
    parts = report["policy"]["parts_per_segment"]
    assert parts["rgb"] / 2e9 == pytest.approx(0.3754, rel=1e-3)
    assert parts["audio"] / 2e9 == pytest.approx(0.3817, rel=1e-3)


def test_video_gflops_adds_policy_cost_per_segment_and_selected_costs():
    decisions = torch.tensor(
        [[[1, 1], [1, 1]], [[0, 0], [0, 0]], [[1, 0], [0, 1]]], dtype=torch.float32
    )  # (B=3, K=2, M=2)
    out = torch.tensor(gflops_per_video(decisions, [10.0, 1.0], policy_gflops=0.5), dtype=torch.float64)
    torch.testing.assert_close(out, torch.tensor([23.0, 1.0, 12.0], dtype=torch.float64))


def test_video_gflops_rejects_a_wrong_number_of_modalities():
    with pytest.raises(ValueError, match="M=3"):
        gflops_per_video(torch.ones(1, 2, 2), [1.0, 2.0, 3.0], 0.0)


def test_cli_prints_a_table_in_gflops_and_says_they_are_multiply_adds(capsys):
    assert main(["flops", "--config", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "multiply-adds" in out
    assert "resnet_tiny" in out and "policy" in out


def test_cli_json_raw_and_gmacs_agree(capsys):
    assert main(["flops", "--config", "tiny", "--json", "--segments", "3"]) == 0
    gmacs = json.loads(capsys.readouterr().out)
    assert main(["flops", "--config", "tiny", "--json", "--raw", "--segments", "3"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert gmacs["segments"] == raw["segments"] == 3
    for g, r in zip(gmacs["modalities"], raw["modalities"], strict=True):
        assert isinstance(r["per_segment"], int)
        assert g["per_segment"] == pytest.approx(r["per_segment"] / 2e9)
        assert r["per_video"] == 3 * r["per_segment"]


def test_cli_reports_a_bad_config_with_its_name(capsys):
    assert main(["flops", "--config", "no_such_config"]) == 2
    assert "no_such_config" in capsys.readouterr().err
