"""``adamml predict --window``: a long video read once in windows, with bounded memory, scored
per window, with a timeline in the JSON and as a PNG."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from media import make_long_video

from adamml.config import DecodeSettings, to_dict
from adamml.config_files import load_config
from adamml.inference.windows import stream_windows

SETTINGS = DecodeSettings(fps=4.0, short_side=32, sample_rate=8000)


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("long")
    return {s: make_long_video(folder / f"long{s}.mp4", s) for s in (30, 240)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny AdaMML, saved as training saves it (predict only needs the format)."""
    from adamml.models.adamml import build_adamml
    from adamml.runtime.checkpoint import save_checkpoint

    cfg = load_config("tiny", ["data.decode.fps=4", "data.decode.short_side=32"])
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    names = ["low", "mid", "high", "none"]
    save_checkpoint({"kind": "adamml", "model": model.state_dict(), "config": to_dict(cfg),
                     "model_config": to_dict(cfg.model), "class_names": names}, path)
    return path


def test_windows_cover_the_video_and_match_a_full_decode(long_videos):
    from adamml.data.video import decode_video

    path = long_videos[30]
    full = decode_video(path, SETTINGS)
    windows = list(stream_windows(path, SETTINGS, 7.0, audio_margin_s=0.5))
    assert [len(w.frames) for w in windows] == [28, 28, 28, 28, 8]  # 30 s at 4 fps, last window short
    assert np.array_equal(np.concatenate([w.frames for w in windows]), full.frames)
    for w in windows:  # each window's audio is the full track's, margin included
        lo = round(w.audio_start_s * 8000)
        assert np.allclose(w.audio, full.audio[lo : lo + len(w.audio)], atol=1e-6)
        assert w.audio_start_s == max(0.0, w.start_s - 0.5)


def _peak_bytes(path: Path) -> int:
    tracemalloc.start()
    for _ in stream_windows(path, SETTINGS, 5.0, audio_margin_s=0.5):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_length_of_the_video(long_videos):
    short, long = _peak_bytes(long_videos[30]), _peak_bytes(long_videos[240])
    whole_track = 240 * 8000 * 4  # what holding the long video's audio alone would take
    assert long < 1.5 * short
    assert long < whole_track


def test_predict_window_writes_a_timeline_in_json_and_png(long_videos, checkpoint, tmp_path, capsys):
    from adamml.cli import main

    png = tmp_path / "timeline.png"
    assert main(["predict", str(long_videos[30]), "--checkpoint", str(checkpoint), "--window", "10",
                 "--timeline", str(png), "--json", "--device", "cpu"]) == 0
    body = json.loads(capsys.readouterr().out)
    (timeline,) = body["timelines"]
    assert [(w["start_s"], w["end_s"]) for w in timeline["windows"]] == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    for w in timeline["windows"]:
        assert len(w["segments"]) == 4 and all(set(s) <= {"rgb", "audio"} for s in w["segments"])
        assert abs(sum(p for _, p in w["top"])) <= 1.0 + 1e-6 and w["gflops"] > 0
    assert abs(timeline["gflops"] - sum(w["gflops"] for w in timeline["windows"])) < 1e-9
    assert set(timeline["selection"]) == {"rgb", "audio"}
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_predict_window_prints_one_line_per_window(long_videos, checkpoint, capsys):
    from adamml.cli import main

    assert main(["predict", str(long_videos[30]), "--checkpoint", str(checkpoint), "--window", "15", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "2 windows of 15 s" in out and "0:00.0-0:15.0" in out and "0:15.0-0:30.0" in out
    assert "whole video:" in out


def _flow_model():
    """A tiny RGB + flow AdaMML with the reference's stack normalisation, as a checkpoint loads."""
    from adamml.models.adamml import build_adamml
    from adamml.models.build import LoadedModel

    cfg = load_config("tiny", ["data.decode.fps=4", "data.decode.short_side=32", "model.modalities=[rgb,flow]",
                               "data.decode.flow=dis", "data.clip.stack_norm=reference"])
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip).eval()
    return LoadedModel("adamml", cfg.model, cfg, ["low", "mid", "high", "none"], network=model)


def test_a_window_is_cut_as_a_dataset_cuts_the_video(long_videos):
    """A window covering the whole video gives the evaluation sample of a dataset: the same
    frames, crops and spectrograms, and the stacks normalised as the config says."""
    from adamml.data.datasets import VideoDataset
    from adamml.data.types import VideoEntry
    from adamml.inference.windows import window_sample

    loaded = _flow_model()
    cfg, names = loaded.cfg, loaded.class_names
    path = long_videos[30]
    (window,) = list(stream_windows(path, cfg.data.decode, 30.0, audio_margin_s=0.0))
    modalities = ["rgb", "rgbdiff", "audio"]
    batch, indices = window_sample(window, modalities, cfg.data.clip, 4, frame_subsets={"rgbdiff": [0]})
    sample = VideoDataset([VideoEntry(path=path, labels=[0])], names, modalities=modalities, clip=cfg.data.clip,
                          decode=cfg.data.decode, train=False, num_segments=4, frame_subsets={"rgbdiff": [0]})[0]
    assert indices.shape == (4, cfg.data.clip.frames_per_segment)
    for m in modalities:
        torch.testing.assert_close(batch[m][0], sample[m], msg=m)
    assert batch["rgbdiff_frames"].tolist() == [[0]]


def test_windowed_flow_model_computes_flow_only_where_its_policy_selects_it(long_videos, monkeypatch):
    import adamml.modalities.flow as flow_module
    from adamml.inference.pipeline import Predictor
    from adamml.inference.windows import predict_windows

    calls = []
    real = flow_module.compute_flow
    def counted(frames, method):
        calls.append(len(frames))
        return real(frames, method)

    monkeypatch.setattr(flow_module, "compute_flow", counted)  # where a window's (lazy) flow is computed
    loaded = _flow_model()
    predictor = Predictor(loaded, device="cpu")
    thresholds = predictor.model.policy.use_thresholds  # the prepared copy's
    thresholds[1] = 1e9  # flow: never
    never = predict_windows(long_videos[30], predictor, window_s=10.0)
    assert not calls and all(s == ["rgb"] for w in never.windows for s in w.segments)
    thresholds[:] = -1e9  # everything everywhere
    always = predict_windows(long_videos[30], predictor, window_s=10.0)
    assert calls and all(s == ["rgb", "flow"] for w in always.windows for s in w.segments)
    assert sum(calls) <= 3 * 4 * loaded.cfg.data.clip.frames_per_segment * loaded.cfg.data.clip.stack_length * 2
    assert always.gflops > never.gflops
