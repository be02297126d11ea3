"""The embedded synthetic dataset: determinism, files on disk, evidence flags, and that each
class group is recognisable by its intended modality only (trivial probes on hand features)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from adamml import cli
from adamml.data.synth import (
    CLASS_NAMES,
    CLASSES,
    clip_rng,
    generate_dataset,
    render_clip,
)

SR = 16_000
FPS = 8.0
SIZE = 64
GROUPS = {g: [c.name for c in CLASSES if c.group == g] for g in ("sound", "look", "move")}


# --------------------------------------------------------------------------------------------
# Hand features used by the probes (deliberately simple: the point is the data, not the probe).


def object_mask(frame: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels far (> 40 in some channel) from the frame's median colour."""
    f = frame.astype(np.float32)
    median = np.median(f.reshape(-1, 3), axis=0)
    return np.abs(f - median).max(axis=-1) > 40


def seconds_frames(clip, second: int) -> np.ndarray:
    per = int(FPS)
    return clip.frames[second * per : (second + 1) * per]


def seconds_audio(clip, second: int) -> np.ndarray:
    return clip.audio[second * SR : (second + 1) * SR]


def audio_features(clip) -> np.ndarray:
    """Log energies in 24 log-spaced FFT bands (150 Hz - 7.5 kHz) of the first audible second,
    minus their mean so loudness does not count."""
    second = int(np.flatnonzero(clip.segment_info.audio)[0])
    x = seconds_audio(clip, second)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / SR)
    edges = np.geomspace(150.0, 7500.0, 25)
    bands = np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    logs = np.log(bands + 1e-9)
    return logs - logs.mean()


def frame_features(clip) -> np.ndarray:
    """One frame of the first visible second: mean colour of the object pixels and shape stats
    (area, fill of the bounding box, bounding-box aspect)."""
    second = int(np.flatnonzero(clip.segment_info.visual)[0])
    frame = seconds_frames(clip, second)[len(seconds_frames(clip, second)) // 2]
    mask = object_mask(frame)
    ys, xs = np.nonzero(mask)
    colour = frame[mask].astype(np.float32).mean(axis=0) / 255.0
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    return np.concatenate([colour, [mask.sum() / mask.size * 100, mask.sum() / (h * w), h / w]])


def soft_object_weight(frame: np.ndarray) -> np.ndarray:
    """float (H, W) in [0, 1]: how far each pixel is from the median colour (soft mask, so the
    object's anti-aliased edges do not flicker in and out like a hard threshold would)."""
    f = frame.astype(np.float32)
    dev = np.abs(f - np.median(f.reshape(-1, 3), axis=0)).max(axis=-1)
    return np.clip((dev - 25.0) / 50.0, 0.0, 1.0)


def motion_features(clip) -> np.ndarray:
    """Over the first visible second: spread of the object's centroid in x and in y, and the
    relative spread of its size (sqrt of area)."""
    second = int(np.flatnonzero(clip.segment_info.visual)[0])
    xs, ys, sizes = [], [], []
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for frame in seconds_frames(clip, second):
        w = soft_object_weight(frame)
        xs.append((w * xx).sum() / w.sum())
        ys.append((w * yy).sum() / w.sum())
        sizes.append(np.sqrt(w.sum()))
    sizes = np.asarray(sizes)
    # in pixels, with a 1 px floor: sub-pixel jitter is not motion anyone could see
    return np.log(np.array([np.std(xs), np.std(ys), sizes.std() / sizes.mean() * SIZE]) + 1.0)


def probe_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """4-fold cross-validated accuracy of a logistic regression."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    return float(cross_val_score(model, features, labels, cv=folds).mean())


PER_CLASS = 20


@pytest.fixture(scope="module")
def renders() -> dict[str, list]:
    """20 in-memory clips per class (fixed seeds), shared by the flag and probe tests."""
    return {
        name: [render_clip(name, np.random.default_rng([7, c, i])) for i in range(PER_CLASS)]
        for c, name in enumerate(CLASS_NAMES)
    }


@pytest.fixture(scope="module")
def features(renders) -> dict[str, dict[str, np.ndarray]]:
    """probe name -> class name -> (clips, features), computed once."""
    kinds = {"audio": audio_features, "frame": frame_features, "motion": motion_features}
    out = {k: {n: np.stack([f(c) for c in clips]) for n, clips in renders.items()} for k, f in kinds.items()}
    out["fused"] = {n: np.concatenate([out[k][n] for k in kinds], axis=1) for n in renders}
    return out


def probe(features, kind: str, names: list[str]) -> float:
    x = np.concatenate([features[kind][n] for n in names])
    y = np.repeat(np.arange(len(names)), [len(features[kind][n]) for n in names])
    return probe_accuracy(x, y)


# --------------------------------------------------------------------------------------------
# Rendering


def test_render_shapes_and_types():
    clip = render_clip("look_red_disc", np.random.default_rng(0), duration_s=2.0, fps=6.0, size=32, sample_rate=12_000)
    assert clip.frames.shape == (12, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (24_000,) and clip.audio.dtype == np.float32
    assert np.abs(clip.audio).max() <= 1.0
    assert clip.segment_info.visual.shape == (2,) and clip.segment_info.audio.shape == (2,)


def test_same_seed_gives_identical_arrays_and_different_seed_does_not():
    for name in ("sound_rising_chirps", "move_in_circles"):
        a = render_clip(name, clip_rng(3, "train", 5))
        b = render_clip(name, clip_rng(3, "train", 5))
        c = render_clip(name, clip_rng(4, "train", 5))
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
        assert np.array_equal(a.segment_info.visual, b.segment_info.visual)
        assert not np.array_equal(a.frames, c.frames)
        assert not np.array_equal(a.audio, c.audio)
    assert not np.array_equal(
        render_clip("look_red_disc", clip_rng(3, "train", 5)).audio,
        render_clip("look_red_disc", clip_rng(3, "val", 5)).audio,
    )


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown synthetic class 'nope'"):
        render_clip("nope", np.random.default_rng(0))
    with pytest.raises(ValueError, match="even"):
        render_clip("look_red_disc", np.random.default_rng(0), size=33)
    with pytest.raises(ValueError, match="unknown split"):
        clip_rng(0, "test", 0)


def test_every_video_has_an_informative_second_per_modality_even_when_rare():
    for i in range(30):
        clip = render_clip("sound_fast_beeps", np.random.default_rng(i), duration_s=2.0, size=16,
                           p_occluded=0.9, p_silent=0.9)
        assert clip.segment_info.visual.any() and clip.segment_info.audio.any()


def test_about_thirty_percent_of_seconds_lose_each_modality(renders):
    infos = [clip.segment_info for clips in renders.values() for clip in clips]
    hidden = np.mean([~i.visual for i in infos])
    silent = np.mean([~i.audio for i in infos])
    assert 0.2 < hidden < 0.4 and 0.2 < silent < 0.4


def test_occluded_seconds_show_no_object_and_visible_seconds_do(renders):
    seen_covers = set()
    for name, clips in renders.items():
        for clip in clips[:8]:
            info = clip.segment_info
            for s in range(len(info.visual)):
                areas = [object_mask(f).sum() for f in seconds_frames(clip, s)]
                if info.visual[s]:
                    assert min(areas) > 0, f"{name}: object missing in visible second {s}"
                else:
                    seen_covers.add(info.visual_cover[s])
                    assert max(areas) == 0, f"{name}: object visible in occluded second {s}"
    assert seen_covers == {"card", "empty"}


def test_silenced_seconds_are_silent_or_broadband_noise(renders):
    seen_covers = set()
    for name, clips in renders.items():
        for clip in clips[:8]:
            info = clip.segment_info
            for s in range(len(info.audio)):
                x = seconds_audio(clip, s)[160:-160]  # away from the 10 ms cross-fades
                power = np.abs(np.fft.rfft(x)) ** 2
                freqs = np.fft.rfftfreq(len(x), 1.0 / SR)
                above_6k = power[freqs > 6000].sum() / power.sum()  # no class sound goes there
                if info.audio[s]:
                    assert np.sqrt(np.mean(x**2)) > 0.03 and above_6k < 0.05, f"{name} second {s}"
                elif info.audio_cover[s] == "silence":
                    assert np.sqrt(np.mean(x**2)) < 0.005, f"{name}: silent second {s} is loud"
                else:
                    assert above_6k > 0.15, f"{name}: noise second {s} is not broadband"
                seen_covers.add(info.audio_cover[s])
    assert seen_covers == {"", "silence", "noise"}


# --------------------------------------------------------------------------------------------
# Each group is separable by its own modality and by no other


def test_audio_probe_separates_sound_classes_only(features):
    assert probe(features, "audio", GROUPS["sound"]) >= 0.9
    assert probe(features, "audio", GROUPS["look"]) <= 0.5
    assert probe(features, "audio", GROUPS["move"]) <= 0.5


def test_audio_probe_tells_the_three_groups_apart(features):
    one_per_group = [GROUPS["sound"][0], GROUPS["look"][0], GROUPS["move"][0]]
    assert probe(features, "audio", one_per_group) >= 0.95


def test_single_frame_probe_separates_appearance_classes_only(features):
    assert probe(features, "frame", GROUPS["look"]) >= 0.9
    assert probe(features, "frame", GROUPS["sound"]) <= 0.5
    assert probe(features, "frame", GROUPS["move"]) <= 0.5


def test_motion_probe_separates_motion_classes_only(features):
    assert probe(features, "motion", GROUPS["move"]) >= 0.9
    assert probe(features, "motion", GROUPS["look"]) <= 0.5
    assert probe(features, "motion", GROUPS["sound"]) <= 0.5


def test_fusing_modalities_beats_each_alone_on_all_twelve_classes(features):
    # audio: 4 sound classes + 2 groups of 4 -> about 6/12; a frame likewise
    assert probe(features, "audio", CLASS_NAMES) <= 0.65
    assert probe(features, "frame", CLASS_NAMES) <= 0.65
    assert probe(features, "fused", CLASS_NAMES) >= 0.9


# --------------------------------------------------------------------------------------------
# On disk


def small_dataset(out: Path, **kwargs):
    args = dict(seed=1, train_per_class=1, val_per_class=1, duration_s=2.0, size=32, workers=0,
                progress=False)
    args.update(kwargs)
    return generate_dataset(out, **args)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dataset_layout_csvs_and_classes(tmp_path):
    info = small_dataset(tmp_path)
    assert info.counts == {"train": 12, "val": 12} and info.written == 24
    assert (tmp_path / "classes.txt").read_text().splitlines() == CLASS_NAMES
    for split in ("train", "val"):
        rows = read_csv(tmp_path / f"{split}.csv")
        assert list(rows[0]) == ["path", "label"]
        assert sorted(r["label"] for r in rows) == sorted(CLASS_NAMES)
        for r in rows:
            assert r["path"].startswith(f"{split}/{r['label']}/") and r["path"].endswith(".mp4")
            assert (tmp_path / r["path"]).is_file()
    segments = read_csv(tmp_path / "segments.csv")
    assert len(segments) == 24 and all(len(r["visual"]) == 2 and "1" in r["audio"] for r in segments)
    assert json.loads((tmp_path / "synth.json").read_text())["seed"] == 1
    # the recorded flags are those of the clip the per-video generator renders
    row = segments[5]
    index = int(Path(row["path"]).stem.split("_")[-1])
    clip = render_clip(row["label"], clip_rng(1, "train", index), duration_s=2.0, size=32)
    assert row["visual"] == "".join("1" if f else "0" for f in clip.segment_info.visual)
    assert row["audio"] == "".join("1" if f else "0" for f in clip.segment_info.audio)
    assert not list(tmp_path.rglob("*.tmp*"))


def test_written_videos_decode_with_the_right_size_duration_and_audio(tmp_path):
    small_dataset(tmp_path)
    row = next(r for r in read_csv(tmp_path / "train.csv") if r["label"] == "sound_high_hiss")
    with av.open(str(tmp_path / row["path"])) as container:
        assert len(container.streams.audio) == 1
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(tmp_path / row["path"])) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        rate = container.streams.audio[0].rate
    assert len(frames) == 16 and frames[0].shape == (32, 32, 3)
    assert rate == SR and abs(len(audio) / rate - 2.0) < 0.15
    # the class evidence survives AAC: in every audible second the hiss band holds most energy
    flags = next(r for r in read_csv(tmp_path / "segments.csv") if r["path"] == row["path"])["audio"]
    audible = [s for s, flag in enumerate(flags) if flag == "1"]
    assert audible
    for s in audible:
        x = audio[s * rate + 400 : (s + 1) * rate - 400]
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
        assert power[(freqs > 3800) & (freqs < 5700)].sum() / power.sum() > 0.5


def test_video_arrays_do_not_depend_on_worker_count(tmp_path):
    a = small_dataset(tmp_path / "a", workers=0)
    b = small_dataset(tmp_path / "b", workers=2)
    assert a.segments_path.read_text() == b.segments_path.read_text()
    assert (tmp_path / "a/train.csv").read_text() == (tmp_path / "b/train.csv").read_text()


def test_rerun_resumes_and_other_settings_are_refused(tmp_path):
    small_dataset(tmp_path)
    segments_before = (tmp_path / "segments.csv").read_text()
    first = read_csv(tmp_path / "train.csv")[3]["path"]
    (tmp_path / first).unlink()
    info = small_dataset(tmp_path)
    assert info.written == 1 and info.skipped == 23 and (tmp_path / first).is_file()
    # flags of skipped videos are recovered from their generators without rendering
    assert (tmp_path / "segments.csv").read_text() == segments_before
    with pytest.raises(ValueError, match="seed differ"):
        small_dataset(tmp_path, seed=2)


def test_cli_writes_the_dataset(tmp_path, capsys):
    rc = cli.main([
        "synth", str(tmp_path / "ds"), "--train-per-class", "1", "--val-per-class", "0",
        "--duration-s", "1", "--size", "32", "--fps", "4", "--workers", "0", "--no-progress",
    ])
    assert rc == 0
    assert len(read_csv(tmp_path / "ds/train.csv")) == 12 and read_csv(tmp_path / "ds/val.csv") == []
    assert len(list((tmp_path / "ds/train").rglob("*.mp4"))) == 12
    assert "wrote 12 videos" in capsys.readouterr().out
