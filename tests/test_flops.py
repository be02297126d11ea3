"""FLOPs counting: known models, the paper's per-segment and per-video figures, the CLI."""

from __future__ import annotations

import json

import numpy as np
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
    """The paper's per-video figures (Table 1's fusion rows), to 0.1 %. Every one of ours is
    within it: the largest gap is audio, 3.8178 against the paper's 3.82 rounded to two
    digits (0.06 %); the others are within 0.006 %."""
    costs = modality_costs(PAPER.model, PAPER.data.clip)
    k = PAPER.data.eval_segments
    assert k == 10
    rgb, audio, flow = (costs[m] * k for m in ("rgb", "audio", "flow"))
    assert rgb == pytest.approx(141.36, rel=1e-3)
    assert audio == pytest.approx(3.82, rel=1e-3)
    assert flow == pytest.approx(163.39, rel=1e-3)
    assert rgb + audio == pytest.approx(145.17, rel=1e-3)
    assert rgb + flow == pytest.approx(304.75, rel=1e-3)
    assert rgb + audio + flow == pytest.approx(308.56, rel=1e-3)
    assert costs["policy"] > 0


# The reference's constants (utils/utils.py, flops_computation), in multiply-adds.
REFERENCE_MACS = {"rgb": 14_135_984_128, "flow": 16_338_911_232, "audio": 381_739_008}
REFERENCE_POLICY_MACS = {"rgb": 375_446_400, "audio": 381_739_008, "rgbdiff": 909_283_200}


@pytest.mark.parametrize(("modality", "backbone", "features"), [("rgb", "resnet50", 2048), ("flow", "resnet50", 2048),
                                                               ("audio", "mobilenet_v2", 1280)])
def test_our_costs_are_the_references_constants_plus_the_classifier_exactly(modality, backbone, features):
    """The exact derivation behind the 0.1 % above: the reference leaves the 31-class
    classifier (features x 31 multiply-adds) out, and nothing else differs."""
    cost = recognition_cost(modality, backbone, PAPER.data.clip, num_classes=31)
    assert cost.flops // 2 == REFERENCE_MACS[modality] + features * 31


def test_policy_extractors_are_the_references_constants_exactly():
    rgb_audio = flops_report(load_config("kinetics_sounds_rgb_audio"))["policy"]["parts_per_segment"]
    assert rgb_audio["rgb"] // 2 == REFERENCE_POLICY_MACS["rgb"]
    assert rgb_audio["audio"] // 2 == REFERENCE_POLICY_MACS["audio"]
    # The reference's RGB-difference constant is the extractor at 224x224 (docs/flops.md).
    at_224 = flops_report(load_config("kinetics_sounds_rgb_rgbdiff", ["model.policy.resolution=224"]))
    assert at_224["policy"]["parts_per_segment"]["rgbdiff"] // 2 == REFERENCE_POLICY_MACS["rgbdiff"]


@pytest.mark.parametrize("sampled", [False, True])
def test_an_evaluations_gflops_are_policy_plus_rate_times_cost_per_segment(sampled):
    """End to end on the tiny model: the GFLOPs an evaluation reports are K x (the policy's
    cost + sum over modalities of the selection rate x the modality's cost per segment), and
    each video's are its own decisions' cost; with forced decisions the policy is not paid."""
    from adamml.evaluation.evaluate import evaluate_model
    from adamml.models.adamml import build_adamml
    from adamml.models.flops import segment_costs
    from adamml.runtime.distributed import Runtime

    cfg = load_config("tiny")
    clip = cfg.data.clip
    torch.manual_seed(0)
    model = build_adamml(cfg.model, clip)
    g = torch.Generator().manual_seed(1)
    videos, k = 6, clip.num_segments
    loader = [{
        "rgb": torch.randn(videos, k, clip.frames_per_segment, 3, clip.crop_size, clip.crop_size, generator=g),
        "audio": torch.randn(videos, k, *model.recognition["audio"].input_shape(clip), generator=g),
        "label": torch.zeros(videos, dtype=torch.long),
        "multi_hot": torch.zeros(videos, cfg.model.num_classes),
        "index": torch.arange(b * videos, (b + 1) * videos),
        "video": [f"v{b}{i}" for i in range(videos)],
    } for b in range(2)]
    costs = segment_costs(cfg.model, clip)
    modalities = cfg.model.modalities
    result = evaluate_model(model, loader, "adamml", cfg.model, cfg, Runtime(), sample=sampled, seed=3)
    m = result.metrics
    rates = [m[f"selection_{x}"] for x in modalities]
    if sampled:
        assert any(0.0 < r < 1.0 for r in rates)  # the check is not only on all-or-nothing rates
    expected = k * (costs["policy"] + sum(r * costs[x] for r, x in zip(rates, modalities, strict=True)))
    assert m["gflops"] == pytest.approx(expected, rel=1e-6)
    d = np.asarray(result.gathered["decisions"], dtype=np.float64)  # (N, K, M)
    per_video = k * costs["policy"] + (d * np.array([costs[x] for x in modalities])).sum(axis=(1, 2))
    np.testing.assert_allclose(result.gathered["gflops"], per_video, rtol=1e-6)

    def forced(batch_size, segments, names, device):
        out = torch.zeros(batch_size, segments, len(names), device=device)
        out[:, ::2, 0] = 1.0  # RGB on every other segment, audio never
        return out

    forced_result = evaluate_model(model, loader, "adamml", cfg.model, cfg, Runtime(), decisions_fn=forced)
    assert forced_result.metrics["gflops"] == pytest.approx(k / 2 * costs["rgb"], rel=1e-6)


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
