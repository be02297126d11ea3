"""VideoDataset on tiny real media: MP4 files, the decoded cache, official frame folders."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from media import make_frame_folder, make_video, moving_frames, tone

from adamml.config import ClipSettings, DecodeSettings, ExperimentConfig
from adamml.data.cache import VideoCache
from adamml.data.catalog import discover
from adamml.data.datasets import VideoDataset, build_datasets
from adamml.data.formats import DatasetError
from adamml.data.types import VideoEntry
from adamml.data.video import MissingAudioWarning, decode_video
from adamml.modalities.audio import spectrogram_shape

CLIP = ClipSettings(num_segments=3, frames_per_segment=4, frame_stride=2, stack_length=2, crop_size=32)
DECODE = DecodeSettings(fps=25.0, short_side=48, sample_rate=16_000)
BINS, FRAMES = spectrogram_shape(DECODE.sample_rate, CLIP)
SAMPLE_KEYS = {"audio_missing", "label", "multi_hot", "index", "video"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train/<class>/*.mp4 and root/val/<class>/*.mp4; 'quiet' has no audio track."""
    root = tmp_path_factory.mktemp("videos")
    for split in ("train", "val"):
        make_video(root / split / "bell" / "a.mp4", num_frames=30, seed=1, freq=440.0)
        make_video(root / split / "drum" / "b.mp4", num_frames=20, seed=2, freq=880.0)
    make_video(root / "quiet.mp4", num_frames=20, audio_channels=None, seed=3)
    return root


def dataset(entries: list[VideoEntry], names: list[str], **kwargs) -> VideoDataset:
    options = dict(modalities=["rgb", "audio"], clip=CLIP, decode=DECODE, train=False)
    options.update(kwargs)
    return VideoDataset(entries, names, **options)


def test_sample_from_mp4_has_documented_keys_shapes_dtypes(videos: Path) -> None:
    entries, names = discover(videos, "train")
    ds = dataset(entries, names, modalities=["rgb", "audio", "rgbdiff"])
    sample = ds[1]
    assert set(sample) == SAMPLE_KEYS | {"rgb", "audio", "rgbdiff"}
    assert sample["rgb"].shape == (3, 4, 3, 32, 32) and sample["rgb"].dtype == torch.float32
    assert sample["rgbdiff"].shape == (3, 4, 6, 32, 32) and sample["rgbdiff"].dtype == torch.float32
    assert sample["audio"].shape == (3, 1, BINS, FRAMES) and sample["audio"].dtype == torch.float32
    assert sample["audio_missing"].dtype == torch.bool and not bool(sample["audio_missing"])
    assert sample["label"].dtype == torch.int64 and int(sample["label"]) == 1
    assert sample["multi_hot"].tolist() == [0.0, 1.0]
    assert int(sample["index"]) == 1 and sample["video"].endswith("b.mp4")
    assert torch.isfinite(sample["audio"]).all() and sample["audio"].abs().sum() > 0


def test_only_requested_modalities_are_returned(videos: Path) -> None:
    entries, names = discover(videos, "val")
    sample = dataset(entries, names, modalities=["audio"])[0]
    assert set(sample) == SAMPLE_KEYS | {"audio"}


def test_eval_segments_override(videos: Path) -> None:
    entries, names = discover(videos, "val")
    sample = dataset(entries, names, num_segments=5)[0]
    assert sample["rgb"].shape[0] == 5 and sample["audio"].shape[0] == 5


def test_missing_audio_gives_flag_and_zero_spectrogram(videos: Path) -> None:
    ds = dataset([VideoEntry(path=videos / "quiet.mp4", labels=[0])], ["x"])
    with pytest.warns(MissingAudioWarning):
        sample = ds[0]
    assert bool(sample["audio_missing"])
    assert sample["audio"].shape == (3, 1, BINS, FRAMES) and sample["audio"].abs().sum() == 0


def test_multi_hot_holds_every_label(videos: Path) -> None:
    entry = VideoEntry(path=videos / "train" / "bell" / "a.mp4", labels=[2, 0])
    sample = dataset([entry], ["a", "b", "c"], multi_label=True, modalities=["audio"])[0]
    assert sample["multi_hot"].tolist() == [1.0, 0.0, 1.0]
    assert int(sample["label"]) == 2


def test_several_labels_on_single_label_set_is_an_error(videos: Path) -> None:
    entry = VideoEntry(path=videos / "quiet.mp4", labels=[0, 1], source="list.txt:4")
    with pytest.raises(DatasetError, match=r"list\.txt:4: 2 labels on a single-label dataset"):
        dataset([entry], ["a", "b"])


def test_label_out_of_range_is_an_error(videos: Path) -> None:
    entry = VideoEntry(path=videos / "quiet.mp4", labels=[5], source="train.csv:7")
    with pytest.raises(DatasetError, match=r"train\.csv:7: label index 5 out of range 0\.\.1"):
        dataset([entry], ["a", "b"])


def test_same_seed_epoch_index_gives_same_sample(videos: Path) -> None:
    entries, names = discover(videos, "train")
    first = dataset(entries, names, train=True, seed=7)
    second = dataset(entries, names, train=True, seed=7)
    a, b = first[0], second[0]
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["audio"], b["audio"])
    second.set_epoch(1)
    c = second[0]
    assert not torch.equal(a["rgb"], c["rgb"])  # new offsets / crop next epoch
    first.set_epoch(1)
    assert torch.equal(first[0]["rgb"], c["rgb"])


def test_eval_samples_are_deterministic_across_epochs(videos: Path) -> None:
    entries, names = discover(videos, "val")
    ds = dataset(entries, names)
    a = ds[0]["rgb"]
    ds.set_epoch(5)
    assert torch.equal(a, ds[0]["rgb"])


def test_flow_decoded_when_decode_flow_set(videos: Path) -> None:
    entries, names = discover(videos, "val")
    ds = dataset(entries, names, modalities=["flow"], decode=dataclasses.replace(DECODE, flow="dis"))
    flow = ds[0]["flow"]
    assert flow.shape == (3, 4, 4, 32, 32) and flow.dtype == torch.float32
    assert flow.abs().max() <= 1.0 and flow.abs().sum() > 0  # the texture moves


def test_flow_without_decode_flow_is_a_clear_error(videos: Path) -> None:
    entries, names = discover(videos, "val")
    with pytest.raises(DatasetError, match="decode.flow is not set"):
        dataset(entries, names, modalities=["rgb", "flow"])


# ----------------------------------------------------------------------------- the cache


def test_cache_gives_the_same_sample_as_decoding(videos: Path, tmp_path: Path) -> None:
    entries, names = discover(videos, "val")
    cache = VideoCache(tmp_path / "cache", DECODE, image_format="raw")
    for entry in entries:
        cache.save(entry.path, decode_video(entry.path, DECODE))
    direct = dataset(entries, names)[1]
    cached = dataset(entries, names, cache=cache)[1]
    assert set(cached) == set(direct)
    assert torch.equal(direct["rgb"], cached["rgb"])
    assert torch.allclose(direct["audio"], cached["audio"])


def test_missing_cache_entry_says_to_run_extract(videos: Path, tmp_path: Path) -> None:
    entries, names = discover(videos, "val")
    ds = dataset(entries, names, cache=VideoCache(tmp_path / "empty", DECODE))
    with pytest.raises(DatasetError, match=r"a\.mp4: not in the cache.*adamml extract.*fps=25"):
        ds[0]


def test_cache_without_flow_but_flow_requested(videos: Path, tmp_path: Path) -> None:
    entries, names = discover(videos, "val")
    cache = VideoCache(tmp_path / "cache", DECODE)
    cache.save(entries[0].path, decode_video(entries[0].path, DECODE))
    ds = dataset(entries, names, cache=cache, modalities=["flow"])
    with pytest.raises(DatasetError, match="cache entry has no optical flow"):
        ds[0]


# ----------------------------------------------------------------------------- official lists


def test_official_list_with_frame_folders_flow_and_wav(tmp_path: Path) -> None:
    frames = moving_frames(24, 48, 64, seed=4)
    flow = np.full((23, 48, 64, 2), 128, np.uint8)
    flow[..., 0] = 160  # a constant rightward motion, as TV-L1 JPEGs store it
    make_frame_folder(tmp_path / "frames" / "v1", frames, flow, tone(1.0, 16_000), 16_000)
    make_frame_folder(tmp_path / "frames" / "v2", frames)  # no wav: audio missing
    (tmp_path / "val.txt").write_text("frames/v1 1 24 1\nframes/v2;3;20;0\n")
    entries, names = discover(tmp_path, "val")
    assert names == ["0", "1"]
    ds = dataset(entries, names, modalities=["rgb", "audio", "flow"])
    sample = ds[0]
    assert sample["rgb"].shape == (3, 4, 3, 32, 32) and sample["flow"].shape == (3, 4, 4, 32, 32)
    assert not bool(sample["audio_missing"]) and sample["audio"].abs().sum() > 0
    assert sample["flow"][:, :, 0].mean() > 0 and int(sample["label"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingAudioWarning)
        with pytest.raises(DatasetError, match="has no optical flow"):
            ds[1]
        other = dataset(entries, names)[1]
    assert bool(other["audio_missing"]) and other["rgb"].shape == (3, 4, 3, 32, 32)


# ----------------------------------------------------------------------------- from a config


def config_for(root: Path, **data) -> ExperimentConfig:
    config = ExperimentConfig()
    config.data.root = str(root)
    config.data.use_cache = False
    config.data.decode = DECODE
    config.data.clip = CLIP
    config.data.eval_segments = 4
    for key, value in data.items():
        setattr(config.data, key, value)
    config.model.num_classes = 2
    return config


def test_build_datasets_from_config(videos: Path) -> None:
    train_ds, val_ds, names = build_datasets(config_for(videos))
    assert names == ["bell", "drum"] and len(train_ds) == len(val_ds) == 2
    assert train_ds.train and not val_ds.train
    assert train_ds[0]["rgb"].shape[0] == 3 and val_ds[0]["rgb"].shape[0] == 4
    batch = next(iter(torch.utils.data.DataLoader(val_ds, batch_size=2)))
    assert batch["rgb"].shape == (2, 4, 4, 3, 32, 32) and batch["label"].tolist() == [0, 1]
    assert batch["audio"].shape == (2, 4, 1, BINS, FRAMES) and len(batch["video"]) == 2


def test_build_datasets_adds_rgbdiff_proxy_for_flow(videos: Path) -> None:
    config = config_for(videos, decode=dataclasses.replace(DECODE, flow="dis"))
    config.model.modalities = ["rgb", "flow"]
    train_ds, val_ds, _ = build_datasets(config)
    assert train_ds.modalities == ["rgb", "flow", "rgbdiff"]
    # Only the policy reads it: computed on the frames it reads (every other of T = 4), and
    # the sample says which; the policy's input is the same as from all T frames.
    from adamml.models.adamml import build_adamml
    from adamml.models.policy import policy_frame_indices

    frames = policy_frame_indices(CLIP.frames_per_segment, config.model.policy.frames)
    batch = next(iter(torch.utils.data.DataLoader(val_ds, batch_size=2)))
    assert batch["rgbdiff"].shape[2] == len(frames) == 2 and batch["rgbdiff_frames"].tolist() == [frames, frames]
    full_ds = dataset(val_ds.entries, val_ds.class_names, modalities=["rgb", "flow", "rgbdiff"], num_segments=4,
                      decode=config.data.decode, clip=config.data.clip)
    full = next(iter(torch.utils.data.DataLoader(full_ds, batch_size=2)))
    assert full["rgbdiff"].shape[2] == CLIP.frames_per_segment and "rgbdiff_frames" not in full
    config.model.backbones = {"rgb": "resnet_tiny", "flow": "resnet_tiny"}
    config.model.policy = dataclasses.replace(config.model.policy, backbone="mobilenet_v2_tiny", resolution=24,
                                              joint_dim=16, hidden_size=8, frames=2)
    policy = build_adamml(config.model, config.data.clip).eval().policy
    cut, whole = policy.policy_inputs(batch), policy.policy_inputs(full)
    torch.testing.assert_close(cut["rgbdiff"], whole["rgbdiff"])
    with torch.no_grad():
        torch.testing.assert_close(policy(cut, temperature=1.0, sample=False).logits,
                                   policy(whole, temperature=1.0, sample=False).logits)
    batch["rgbdiff_frames"] = torch.tensor([[1, 3], [1, 3]])  # not the policy's frames: refused
    with pytest.raises(ValueError, match=r"holds frames \[\(1, 3\)\] of each segment; the policy reads frames \[0, 2\]"):
        policy.policy_inputs(batch)


def test_build_datasets_checks_class_count(videos: Path) -> None:
    config = config_for(videos)
    config.model.num_classes = 31
    with pytest.raises(DatasetError, match="2 classes but model.num_classes is 31"):
        build_datasets(config)


def test_build_datasets_uses_cache_folder(videos: Path, tmp_path: Path) -> None:
    config = config_for(videos, use_cache=True, cache=str(tmp_path / "c"))
    train_ds, _, _ = build_datasets(config)
    assert train_ds.cache is not None and train_ds.cache.root == tmp_path / "c"


def test_frame_folder_listed_from_a_later_frame_reads_the_matching_audio(tmp_path: Path) -> None:
    """The WAV covers the whole folder; a list entry from frame 26 must hear the second half."""
    frames = moving_frames(50, 48, 64, seed=5)  # 2 s at 25 fps
    audio = np.concatenate([np.zeros(16_000, np.float32), tone(1.0, 16_000)])  # silent, then a tone
    make_frame_folder(tmp_path / "v", frames, None, audio, 16_000)
    one = ClipSettings(
        num_segments=1, frames_per_segment=4, frame_stride=2, stack_length=2, crop_size=32, eval_positions="centre"
    )
    halves = [VideoEntry(path=tmp_path / "v", labels=[0], start=s, end=e) for s, e in ((1, 25), (26, 50))]
    first, second = (dataset([h], ["x"], modalities=["audio"], clip=one)[0]["audio"] for h in halves)
    assert second.mean() > first.mean() + 1.0  # log power: the tone is far louder than silence


def test_cache_keeps_two_clips_of_one_frame_folder_apart(tmp_path: Path) -> None:
    """Official list files may cut several clips from one frame folder: each range is its
    own cache entry, and the cached sample equals the one decoded from the folder."""
    from adamml.data.extract import extract_videos

    frames = moving_frames(50, 48, 64, seed=7)
    make_frame_folder(tmp_path / "v", frames, None, tone(2.0, 16_000), 16_000)
    halves = [VideoEntry(path=tmp_path / "v", labels=[0], start=s, end=e) for s, e in ((1, 25), (26, 50))]
    cache = VideoCache(tmp_path / "cache", DECODE)
    report = extract_videos(halves, cache, workers=1, progress=False)
    assert not report.failed
    assert len(cache.entries()) == 2
    cached = [dataset([h], ["x"], cache=cache, modalities=["rgb"])[0]["rgb"] for h in halves]
    decoded = [dataset([h], ["x"], modalities=["rgb"])[0]["rgb"] for h in halves]
    def gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().mean())

    # Each cached clip is its own range (JPEG-recompressed: close, not equal), not the other.
    assert gap(cached[0], decoded[0]) < 0.05 and gap(cached[1], decoded[1]) < 0.05
    assert gap(cached[0], decoded[1]) > 4 * gap(cached[0], decoded[0])


def test_build_datasets_for_evaluation_only(videos: Path) -> None:
    train_ds, val_ds, names = build_datasets(config_for(videos), with_train=False)
    assert train_ds is None and names == ["bell", "drum"] and len(val_ds) == 2


@pytest.mark.parametrize("wrong_count", [None, 3, 500])
def test_streamed_decoding_keeps_only_the_frames_a_sample_reads_and_gives_the_same_sample(
    tmp_path: Path, monkeypatch, wrong_count
) -> None:
    """Evaluation/inference on long videos: the same tensors as a full decode, a bounded
    number of frames in memory; a wrong frame-count guess costs a second pass, not a wrong
    sample."""
    import adamml.data.video as video

    path = make_video(tmp_path / "long.mp4", num_frames=250, fps=25.0)  # 10 s
    decode = DecodeSettings(fps=25.0, short_side=48, flow="dis")
    entries = [VideoEntry(path=path, labels=[0], source="t")]
    kwargs = dict(modalities=["rgb", "rgbdiff", "flow", "audio"], clip=CLIP, decode=decode, train=False)
    full = VideoDataset(entries, ["a"], **kwargs)[0]
    if wrong_count is not None:
        monkeypatch.setattr(video, "_count_frames", lambda p, fps: wrong_count)
    streamed_set = VideoDataset(entries, ["a"], stream=True, **kwargs)
    streamed = streamed_set[0]
    for key in ("rgb", "rgbdiff", "flow", "audio"):
        assert torch.equal(full[key], streamed[key]), key
    decoded = streamed_set.load(entries[0])
    assert decoded.num_frames == 250
    # 3 segments x 4 frames, each with a 2-frame stack after it, and their flow neighbours.
    assert len(decoded.frames.kept) <= 3 * 4 * (2 + 1) + 2 * 3 * 4
    assert len(decoded.flow.kept) <= len(decoded.frames.kept)
    with pytest.raises(KeyError, match="was not kept"):
        decoded.frames[next(i for i in range(250) if i not in decoded.frames.kept)]


def test_streaming_is_refused_for_training(tmp_path: Path) -> None:
    entries = [VideoEntry(path=tmp_path / "x.mp4", labels=[0], source="t")]
    with pytest.raises(ValueError, match="stream=True is for evaluation"):
        VideoDataset(entries, ["a"], modalities=["rgb"], clip=CLIP, decode=DecodeSettings(), train=True, stream=True)


def test_train_flip_off_from_the_config_gives_the_same_crops_unmirrored(videos: Path) -> None:
    from adamml.config_files import load_config

    assert load_config("default", ["data.clip.train_flip=false"]).data.clip.train_flip is False
    entries, names = discover(videos, "train")
    flipping = dataset(entries, names, train=True, seed=7, modalities=["rgb"])
    plain = dataset(entries, names, train=True, seed=7, modalities=["rgb"],
                    clip=dataclasses.replace(CLIP, train_flip=False))
    mirrored = 0
    for epoch in range(8):
        flipping.set_epoch(epoch)
        plain.set_epoch(epoch)
        a, b = flipping[0]["rgb"], plain[0]["rgb"]
        if not torch.equal(a, b):
            assert torch.equal(a, b.flip(-1))  # same crop, only mirrored
            mirrored += 1
    assert 0 < mirrored < 8
