"""The switches that put a run on the reference code's behaviour, each tested on the real tiny
models and real samples: the frozen side's mode, sampled validation, the stage-1 audio
window, independent crops; the paper configs set them, the package defaults do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adamml.config import ClipSettings, DecodeSettings
from adamml.config_files import load_config
from adamml.data.datasets import VideoDataset
from adamml.data.sampling import centre_window_starts, clip_indices, segment_centres_s
from adamml.data.types import VideoEntry
from adamml.media import DecodedVideo
from adamml.models.adamml import build_adamml
from adamml.runtime.distributed import Runtime
from adamml.training.engine import evaluate, train_one_epoch
from adamml.training.schedule import adamml_schedule
from adamml.training.stages import adamml_task

PAPER_CONFIGS = [
    "kinetics_sounds_rgb_audio", "kinetics_sounds_rgb_flow", "kinetics_sounds_rgb_flow_audio",
    "kinetics_sounds_rgb_rgbdiff", "kinetics_sounds_rgb_rgbdiff_audio", "activitynet_rgb_audio",
    "activitynet_resnet18_224", "activitynet_resnet18_112", "activitynet_efficientnet",
    "fcvid_rgb_audio", "mini_sports1m_rgb_audio",
]
FLOW_CONFIGS = [n for n in PAPER_CONFIGS if "flow" in n or "rgbdiff" in n]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_take_the_references_settings(name):
    cfg = load_config(name)
    assert cfg.train.adamml.frozen_mode == "train"
    assert cfg.train.adamml.val_decisions == "sampled"
    assert cfg.train.unimodal.audio_window == "centre"
    assert cfg.data.clip.crops == "independent"
    assert cfg.train.precision == "32"
    assert cfg.train.unimodal.val_segments == 1
    if name in FLOW_CONFIGS:
        assert cfg.data.decode.fps is None  # the source's own rate, as the reference extracts
    else:
        assert cfg.data.decode.fps == (1.0 if name == "fcvid_rgb_audio" else 25.0)


@pytest.mark.parametrize("name", ["demo", "default", "tiny"])
def test_the_package_configs_keep_the_current_behaviour(name):
    cfg = load_config(name)
    assert (cfg.train.adamml.frozen_mode, cfg.train.adamml.val_decisions) == ("eval", "argmax")
    assert (cfg.train.unimodal.audio_window, cfg.data.clip.crops, cfg.train.precision) == ("clip", "shared", "auto")
    assert cfg.train.unimodal.val_segments is None


@pytest.mark.parametrize(("key", "value"), [("train.adamml.frozen_mode", "trian"),
                                            ("train.adamml.val_decisions", "random"),
                                            ("train.unimodal.audio_window", "middle"),
                                            ("data.clip.crops", "separate")])
def test_a_wrong_switch_value_is_named_with_the_choices(key, value):
    from adamml.config import ConfigError

    with pytest.raises(ConfigError, match=rf"{key}: got '{value}'; expected one of"):
        load_config("tiny", [f"{key}={value}"])


# ---- the frozen side during the other side's epochs ------------------------------------------


def _tiny_batches(cfg, model, videos: int = 4, batches: int = 1, seed: int = 0) -> list[dict]:
    clip = cfg.data.clip
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batches):
        out.append({
            "rgb": torch.randn(videos, clip.num_segments, clip.frames_per_segment, 3, clip.crop_size, clip.crop_size,
                               generator=g),
            "audio": torch.randn(videos, clip.num_segments, *model.recognition["audio"].input_shape(clip), generator=g),
            "label": torch.randint(0, cfg.model.num_classes, (videos,), generator=g),
            "multi_hot": torch.zeros(videos, cfg.model.num_classes),
            "index": torch.arange(b * videos, (b + 1) * videos),
            "video": [f"v{b * videos + i}" for i in range(videos)],
        })
    return out


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_frozen_recognition_keeps_its_weights_and_moves_its_statistics_only_in_train_mode(mode, one_thread):
    cfg = load_config("tiny", [f"train.adamml.frozen_mode={mode}"])
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip)
    task = adamml_task(model, cfg)
    policy_pass = next(p for p in adamml_schedule(cfg.train.adamml) if p.trains == "policy")
    norms = [m for m in model.recognition.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    stats = [n.running_mean.clone() for n in norms]
    weights = [p.detach().clone() for p in model.recognition.parameters()]
    policy_before = [p.detach().clone() for p in model.policy.parameters()]
    task.set_trainable(policy_pass)
    optimizers = task.make_optimizers(policy_pass)
    train_one_epoch(task, model, _tiny_batches(cfg, model), policy_pass, optimizers,
                    torch.amp.GradScaler("cuda", enabled=False), Runtime())
    # The frozen side's modules are in the mode asked for; the trained side in train mode.
    assert all(m.training == (mode == "train") for m in model.recognition.modules())
    assert all(m.training for m in model.policy.modules())
    moved = [not torch.equal(a, n.running_mean) for a, n in zip(stats, norms, strict=True)]
    assert all(moved) if mode == "train" else not any(moved)
    assert all(torch.equal(a, p) for a, p in zip(weights, model.recognition.parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(policy_before, model.policy.parameters(), strict=True))


def test_frozen_policy_in_a_recognition_pass_follows_the_switch_too():
    for mode in ("eval", "train"):
        cfg = load_config("tiny", [f"train.adamml.frozen_mode={mode}"])
        model = build_adamml(cfg.model, cfg.data.clip)
        task = adamml_task(model, cfg)
        recognition_pass = next(p for p in adamml_schedule(cfg.train.adamml) if p.trains == "recognition")
        model.train()
        task.set_modes(recognition_pass)
        assert all(m.training == (mode == "train") for m in model.policy.modules())
        assert all(m.training for m in model.recognition.modules())


# ---- validation decisions --------------------------------------------------------------------


def _policy_that_prefers_use(model, margin: float = 0.5) -> None:
    """Every decision logit (skip 0, use ``margin``) whatever the input: the argmax uses every
    modality, a Gumbel sample uses each with probability sigmoid(margin) = 0.62."""
    with torch.no_grad():
        for head in model.policy.heads.values():
            head.weight.zero_()
            head.bias.copy_(torch.tensor([0.0, margin]))


def test_sampled_validation_draws_the_decisions_and_is_repeatable(one_thread):
    cfg = load_config("tiny", ["train.adamml.val_decisions=sampled"])
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip)
    _policy_that_prefers_use(model)
    loader = _tiny_batches(cfg, model, videos=8, batches=2)
    sampled = evaluate(adamml_task(model, cfg), loader, cfg, Runtime())
    again = evaluate(adamml_task(model, cfg), loader, cfg, Runtime())
    argmax_cfg = load_config("tiny")
    argmax = evaluate(adamml_task(model, argmax_cfg), loader, argmax_cfg, Runtime())
    assert argmax["selection_rgb"] == argmax["selection_audio"] == 1.0
    # 64 draws per modality at p = 0.62: far from all of them.
    assert 0.3 < sampled["selection_rgb"] < 0.95 and 0.3 < sampled["selection_audio"] < 0.95
    assert sampled["selection_rgb"] == again["selection_rgb"] and sampled["gflops"] == again["gflops"]
    assert sampled["gflops"] < argmax["gflops"]


def test_a_budget_run_validates_at_its_thresholds_even_when_sampled_is_asked():
    from adamml.training.engine import validates_sampled

    cfg = load_config("tiny", ["train.adamml.val_decisions=sampled"])
    task = adamml_task(build_adamml(cfg.model, cfg.data.clip), cfg)
    assert validates_sampled(task, cfg)
    budget = load_config("tiny", ["train.adamml.val_decisions=sampled", "train.adamml.budget=0.5"])
    assert not validates_sampled(adamml_task(build_adamml(budget.model, budget.data.clip), budget), budget)


# ---- the stage-1 audio window ----------------------------------------------------------------


def test_centre_windows_centre_in_the_middle_eighth_of_the_video_and_spread_over_it():
    clip = ClipSettings(frames_per_segment=8, frame_stride=4, stack_length=0)
    rng = np.random.default_rng(0)
    n = 800  # frames
    centres = np.array([
        segment_centres_s(clip_indices(centre_window_starts(n, clip, rng, num_segments=1), clip, n), 1.0)[0]
        for _ in range(2000)
    ])
    assert centres.min() >= n * 7 / 16 - 1 and centres.max() <= n * 9 / 16 + 1
    assert centres.max() - centres.min() > 0.9 * n / 8  # uniform over it, not one point
    # K clips: each in the middle eighth of its K-th.
    starts = centre_window_starts(n, clip, np.random.default_rng(1), num_segments=4)
    mids = segment_centres_s(clip_indices(starts, clip, n), 1.0)
    for k, mid in enumerate(mids):
        assert (k + 0.5) * n / 4 - n / 64 - 1 <= mid <= (k + 0.5) * n / 4 + n / 64 + 1


class _InMemory(VideoDataset):
    """A VideoDataset over one decoded video held in memory (no file, no cache)."""

    def __init__(self, decoded: DecodedVideo, **kwargs):
        self._decoded = decoded
        super().__init__([VideoEntry(Path("memory.mp4"), [0])], ["a"], **kwargs)

    def load(self, entry):
        return self._decoded


def _loud_fraction(audio_window: str) -> float:
    """Fraction of 40 training samples whose audio window hears a tone that sounds only over
    seconds 27-37 of a silent 64 s video."""
    cfg = load_config("tiny")
    rate, fps, seconds = cfg.data.decode.sample_rate, 8.0, 64
    t = np.arange(seconds * rate) / rate
    audio = np.where((t > 27) & (t < 37), 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    decoded = DecodedVideo(frames=np.zeros((int(seconds * fps), 8, 8, 3), np.uint8), fps=fps, audio=audio,
                           sample_rate=rate, audio_missing=False)
    dataset = _InMemory(decoded, modalities=["audio"], clip=cfg.data.clip, decode=cfg.data.decode, train=True,
                        num_segments=1, audio_window=audio_window)
    loud = 0
    for epoch in range(40):
        dataset.set_epoch(epoch)
        spec = dataset[0]["audio"]
        loud += int(spec.max() - spec.min() > 1.0)  # a silent window's log spectrogram is flat
    return loud / 40


def test_stage1_audio_windows_near_the_centre_hear_the_middle_of_the_video():
    assert _loud_fraction("centre") == 1.0
    assert _loud_fraction("clip") < 0.5  # drawn anywhere: mostly the silent seconds


def _validation_hears_the_tone(audio_window: str) -> bool:
    """One validation clip of a silent 64 s video with a tone over seconds 27-37 only."""
    cfg = load_config("tiny")
    rate, fps, seconds = cfg.data.decode.sample_rate, 8.0, 64
    t = np.arange(seconds * rate) / rate
    audio = np.where((t > 27) & (t < 37), 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    decoded = DecodedVideo(frames=np.zeros((int(seconds * fps), 8, 8, 3), np.uint8), fps=fps, audio=audio,
                           sample_rate=rate, audio_missing=False)
    clip = ClipSettings(**{**cfg.data.clip.__dict__, "eval_positions": "linspace"})
    dataset = _InMemory(decoded, modalities=["audio"], clip=clip, decode=cfg.data.decode, train=False,
                        num_segments=1, audio_window=audio_window)
    spec = dataset[0]["audio"]
    return bool(spec.max() - spec.min() > 1.0)


def test_one_validation_clip_of_the_audio_network_hears_the_video_centre_as_the_reference():
    assert _validation_hears_the_tone("centre")
    assert not _validation_hears_the_tone("clip")  # linspace with one clip: the first second


def _unimodal_dataset_arguments(monkeypatch, overrides: list[str]) -> dict:
    """The keyword arguments stage 1 (audio, tiny config) builds its datasets with."""
    from adamml.training import stages

    seen = {}

    def fake_build(cfg, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(stages, "build_datasets", fake_build)
    with pytest.raises(RuntimeError, match="stop here"):
        stages.train_unimodal(load_config("tiny", overrides), "audio", Runtime())
    return seen


def test_stage1_validation_clips_follow_val_segments(monkeypatch, tmp_path):
    from adamml.data.datasets import build_datasets
    from adamml.data.synth import generate_dataset

    seen = _unimodal_dataset_arguments(monkeypatch, ["train.unimodal.val_segments=1"])
    assert seen["val_segments"] == 1

    from adamml.data.synth import CLASS_NAMES

    generate_dataset(tmp_path, seed=0, train_per_class=1, val_per_class=1, duration_s=2.0, progress=False, workers=1)
    cfg = load_config("tiny", [f"data.root={tmp_path}", "data.use_cache=false", "data.eval_segments=3",
                               f"model.num_classes={len(CLASS_NAMES)}"])
    _, one, _ = build_datasets(cfg, modalities=["audio"], audio_window="centre", val_segments=1)
    _, spread, _ = build_datasets(cfg, modalities=["audio"], audio_window="centre")
    assert (one.num_segments, one.audio_window) == (1, "centre")
    assert (spread.num_segments, spread.audio_window) == (3, "clip")  # the test clips, as every stage
    assert one[0]["audio"].shape[0] == 1 and spread[0]["audio"].shape[0] == 3


def test_train_unimodal_passes_the_audio_window_to_its_dataset(monkeypatch):
    seen = _unimodal_dataset_arguments(monkeypatch, ["train.unimodal.audio_window=centre"])
    assert seen["audio_window"] == "centre" and seen["modalities"] == ["audio"]


# ---- crops of the visual inputs --------------------------------------------------------------


def _rgb_and_difference(crops: str, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    clip = ClipSettings(num_segments=2, frames_per_segment=2, frame_stride=1, stack_length=1, crop_size=16,
                        train_crop="zoom", crops=crops)
    frames = (np.random.default_rng(3).random((24, 40, 48, 3)) * 255).astype(np.uint8)
    decoded = DecodedVideo(frames=frames, fps=8.0, audio=np.zeros(0, np.float32), sample_rate=8000,
                           audio_missing=True)
    dataset = _InMemory(decoded, modalities=["rgb", "rgbdiff"], clip=clip, decode=DecodeSettings(), train=True,
                        num_segments=2)
    dataset.set_epoch(epoch)
    sample = dataset[0]
    return sample["rgb"], sample["rgbdiff"]


def test_shared_crops_show_one_region_and_independent_crops_each_their_own():
    for epoch in range(3):
        rgb, diff = _rgb_and_difference("shared", epoch)
        # The RGB difference of a frame is the next RGB frame minus it, on the same pixels.
        torch.testing.assert_close(diff[:, 0], rgb[:, 1] - rgb[:, 0])
        rgb_i, diff_i = _rgb_and_difference("independent", epoch)
        torch.testing.assert_close(rgb_i, rgb)  # the first input keeps the shared draw
        assert not torch.allclose(diff_i[:, 0], rgb_i[:, 1] - rgb_i[:, 0], atol=1e-3)


def test_windows_of_a_file_decode_at_its_own_rate_when_fps_is_null(tiny_video):
    """The flow configs decode at the source's rate; reading a file in windows follows it."""
    from adamml.inference.windows import stream_windows

    windows = list(stream_windows(tiny_video, DecodeSettings(fps=None, short_side=32, sample_rate=16000), 0.4))
    assert {w.fps for w in windows} == {25.0}
    assert sum(len(w.frames) for w in windows) == 25  # every frame of the 1 s, 25 fps clip
