"""The decoded-video cache (atomic, fingerprinted) and `adamml extract` (resume, failures)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from media import make_garbage, make_video, moving_frames

from adamml.commands.extract import add_arguments, run
from adamml.config import DecodeSettings
from adamml.data.cache import CacheError, VideoCache, settings_fingerprint
from adamml.data.extract import extract_videos
from adamml.data.types import VideoEntry
from adamml.media import DecodedVideo

SETTINGS = DecodeSettings(fps=8.0, short_side=32, sample_rate=8000)


def _decoded(with_flow: bool = True) -> DecodedVideo:
    frames = moving_frames(6, 32, 48)
    flow = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 2), dtype=np.uint8) if with_flow else None
    audio = np.linspace(-1, 1, 8000, dtype=np.float32)
    return DecodedVideo(frames, 8.0, audio, 8000, False, flow, source="x.mp4", meta={"k": 1})


def test_fingerprint_separates_settings_but_not_strictness(tmp_path: Path) -> None:
    a = VideoCache(tmp_path, SETTINGS)
    b = VideoCache(tmp_path, DecodeSettings(fps=8.0, short_side=64, sample_rate=8000))
    strict = VideoCache(tmp_path, DecodeSettings(fps=8.0, short_side=32, sample_rate=8000, strict_audio=True))
    assert a.folder != b.folder and a.folder == strict.folder
    assert settings_fingerprint(SETTINGS).startswith("fps8-s32-sr8000-noflow-")
    assert a.entry_path("v/a.mp4") != a.entry_path("w/a.mp4")  # same name, other folder
    assert a.entry_path("v/a.mp4").name.startswith("a-")


def test_save_load_round_trip_raw_is_exact(tmp_path: Path) -> None:
    cache = VideoCache(tmp_path, SETTINGS, image_format="raw")
    original = _decoded()
    cache.save("x.mp4", original)
    assert cache.has("x.mp4")
    loaded = cache.load("x.mp4")
    np.testing.assert_array_equal(loaded.frames, original.frames)
    np.testing.assert_array_equal(loaded.flow, original.flow)
    np.testing.assert_array_equal(loaded.audio, original.audio)
    assert (loaded.fps, loaded.sample_rate, loaded.audio_missing, loaded.meta) == (8.0, 8000, False, {"k": 1})
    settings = json.loads((cache.folder / "settings.json").read_text())
    assert settings["settings"]["short_side"] == 32


def test_jpeg_storage_is_close_for_frames_and_exact_for_flow(tmp_path: Path) -> None:
    cache = VideoCache(tmp_path, SETTINGS)
    original = _decoded()
    cache.save("x.mp4", original)
    loaded = cache.load("x.mp4")
    assert loaded.frames.shape == original.frames.shape and loaded.frames.dtype == np.uint8
    mse = np.mean((loaded.frames.astype(float) - original.frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30  # PSNR of JPEG quality 95 on a busy 32x48 texture
    np.testing.assert_array_equal(loaded.flow, original.flow)  # PNG: lossless
    assert loaded.audio.dtype == np.float32
    np.testing.assert_allclose(loaded.audio, original.audio, atol=0.6 / 32767)  # 16-bit PCM
    no_flow = VideoCache(tmp_path / "b", SETTINGS)
    no_flow.save("y.mp4", _decoded(with_flow=False))
    assert no_flow.load("y.mp4").flow is None


def test_a_stray_temp_file_is_not_a_cached_video(tmp_path: Path) -> None:
    cache = VideoCache(tmp_path, SETTINGS)
    cache.folder.mkdir(parents=True)
    target = cache.entry_path("x.mp4")
    (cache.folder / f".{target.stem}.abc123.tmp").write_bytes(b"half a file")  # a killed save
    assert not cache.has("x.mp4")
    assert cache.entries() == []
    cache.save("x.mp4", _decoded())
    assert cache.entries() == [target]


def test_a_damaged_cache_file_is_a_clear_error(tmp_path: Path) -> None:
    cache = VideoCache(tmp_path, SETTINGS)
    path = cache.save("x.mp4", _decoded())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CacheError, match=rf"{path.name}: damaged cache file.*adamml extract"):
        cache.load("x.mp4")
    with pytest.raises(CacheError, match="not in the cache"):
        cache.load("other.mp4")


def test_extraction_resumes_and_reports_failures(tmp_path: Path) -> None:
    good = [make_video(tmp_path / f"v{i}.mp4", num_frames=8, fps=8.0, seed=i) for i in range(2)]
    silent = make_video(tmp_path / "silent.mp4", num_frames=8, fps=8.0, audio_channels=None)
    bad = make_garbage(tmp_path / "bad.mp4")
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    report = extract_videos([*good, silent, bad], cache, progress=False)
    assert report.done == 3 and report.skipped == 0
    assert [p for p, _ in report.failed] == [str(bad)]
    assert "bad.mp4" in report.failed[0][1]
    assert report.missing_audio == [str(silent)]
    assert all(cache.has(p) for p in [*good, silent]) and not cache.has(bad)
    assert "failed 1" in report.summary() and "bad.mp4" in report.summary()
    loaded = cache.load(good[0])
    assert loaded.frames.shape == (8, 32, 48, 3) and abs(loaded.audio.size - 8000) <= 512

    again = extract_videos([*good, silent, bad], cache, progress=False)
    assert again.skipped == 3 and again.done == 0 and len(again.failed) == 1


def test_strict_audio_makes_silent_videos_fail(tmp_path: Path) -> None:
    silent = make_video(tmp_path / "silent.mp4", num_frames=4, fps=8.0, audio_channels=None)
    strict = DecodeSettings(fps=8.0, short_side=32, sample_rate=8000, strict_audio=True)
    report = extract_videos([VideoEntry(silent, [0])], VideoCache(tmp_path / "c", strict), progress=False)
    assert report.done == 0 and "no audio" in report.failed[0][1]


def test_parallel_workers_extract_with_flow(tmp_path: Path) -> None:
    videos = [make_video(tmp_path / f"v{i}.mp4", num_frames=6, fps=8.0, seed=i) for i in range(3)]
    settings = DecodeSettings(fps=8.0, short_side=32, sample_rate=8000, flow="dis")
    cache = VideoCache(tmp_path / "cache", settings)
    report = extract_videos(videos, cache, workers=2, progress=False)
    assert report.done == 3 and report.ok
    flow = cache.load(videos[1]).flow
    assert flow is not None and flow.shape == (5, 32, 48, 2)


def test_cli_extracts_a_class_folder_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("adamml.data.formats")
    for name in ("cat", "dog"):
        make_video(tmp_path / "data" / "train" / name / f"{name}.mp4", num_frames=4, fps=8.0)
    make_garbage(tmp_path / "data" / "train" / "dog" / "broken.mp4")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--data", str(tmp_path / "data"), "--fps", "8", "--short-side", "32", "--sample-rate", "8000",
         "--no-progress"]
    )
    assert run(args) == 1  # one video failed
    out = capsys.readouterr().out
    assert "extracted 2" in out and "broken.mp4" in out
    cache = VideoCache(tmp_path / "data" / "cache", SETTINGS)
    assert cache.has(tmp_path / "data" / "train" / "cat" / "cat.mp4")


def test_lazy_load_decodes_only_what_is_indexed_and_matches_eager(tmp_path: Path) -> None:
    from adamml.data.cache import LazyImages
    from adamml.modalities.flow import flow_clip
    from adamml.modalities.rgb import rgb_clip
    from adamml.modalities.spatial import Crop

    cache = VideoCache(tmp_path, SETTINGS)
    cache.save("x.mp4", _decoded())
    eager, lazy = cache.load("x.mp4"), cache.load("x.mp4", lazy=True)
    assert isinstance(lazy.frames, LazyImages) and isinstance(lazy.flow, LazyImages)
    assert lazy.num_frames == 6 and lazy.frames.shape == eager.frames.shape
    np.testing.assert_array_equal(lazy.frames[np.array([4, 1])], eager.frames[[4, 1]])
    np.testing.assert_array_equal(lazy.frames[-1], eager.frames[-1])
    np.testing.assert_array_equal(np.asarray(lazy.flow), eager.flow)
    indices, crop = np.array([[0, 2], [3, 5]]), Crop(0, 8, 32)
    np.testing.assert_array_equal(rgb_clip(lazy.frames, indices, crop, 32), rgb_clip(eager.frames, indices, crop, 32))
    np.testing.assert_array_equal(
        flow_clip(lazy.flow, indices, 2, crop, 32), flow_clip(eager.flow, indices, 2, crop, 32)
    )


def test_a_video_replaced_at_the_same_path_is_extracted_again(tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", num_frames=8, fps=8.0, seed=0)
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    assert extract_videos([video], cache, progress=False).done == 1
    assert cache.load(video).num_frames == 8
    make_video(tmp_path / "clip.mp4", num_frames=16, fps=8.0, seed=1)  # re-encoded, longer, same name
    assert not cache.has(video) and cache.changed(video)
    report = extract_videos([video], cache, progress=False)
    assert report.done == 1 and report.changed == 1 and "decoded again" in report.summary()
    assert cache.load(video).num_frames == 16 and cache.has(video)
    assert extract_videos([video], cache, progress=False).skipped == 1  # then cached again


def test_an_entry_without_a_source_record_is_kept(tmp_path: Path) -> None:
    """Entries written before sources were recorded, and those whose source is gone, stay."""
    cache = VideoCache(tmp_path, SETTINGS)
    cache.save("gone.mp4", _decoded())
    assert cache.has("gone.mp4")
    video = make_video(tmp_path / "v.mp4", num_frames=4, fps=8.0)
    cache.save(video, _decoded(), stamp=None)
    entry = cache.entry_path(video)
    with np.load(entry) as npz:
        arrays = dict(npz)
    info = json.loads(str(arrays["info"]))
    del info["source_stamp"]
    arrays["info"] = np.array(json.dumps(info))
    np.savez(entry, **arrays)
    video.touch()
    assert cache.has(video)


PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from adamml.data.extract import start_worker
pool = ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"), initializer=start_worker)
pids = {pool.submit(os.getpid).result() for _ in range(4)}
print(" ".join(map(str, pids)), flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


def test_extraction_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
    finally:
        parent.send_signal(signal.SIGKILL)  # no chance to shut its pool down
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def test_a_cache_that_cannot_be_written_is_refused_before_extracting(tmp_path: Path) -> None:
    from adamml.data.extract import ensure_cached

    video = make_video(tmp_path / "v.mp4", num_frames=4, fps=8.0)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be (a read-only root fails so too)")
    cache = VideoCache(blocker / "cache", SETTINGS)
    with pytest.raises(CacheError, match=r"cannot write the cache .*set data.cache to a writable folder"):
        ensure_cached({"train": [VideoEntry(video, [0])]}, cache, progress=False, log=lambda line: None)
