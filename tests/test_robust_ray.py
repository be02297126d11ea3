"""The Ray engine notices a video replaced at the same path as the local one does: a cached
video decoded again, and a video that failed before retried once it is another file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from media import make_garbage, make_video

from adamml.config import DecodeSettings
from adamml.data.cache import VideoCache

SETTINGS = DecodeSettings(fps=8.0, short_side=32, sample_rate=8000)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'adamml[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'adamml[ray]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    if started:
        ray.shutdown()


def _replace(path: Path, **kwargs) -> None:
    """Another video at ``path``, with another size and a later modification time."""
    before = path.stat()
    make_video(path, **kwargs)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert path.stat().st_size != before.st_size


def test_ray_extract_decodes_a_replaced_video_again_and_retries_a_replaced_failure(ray_cluster, tmp_path: Path) -> None:
    from adamml.scale.extract import extract_videos_ray

    folder = tmp_path / "v"
    folder.mkdir()
    kept = make_video(folder / "kept.mp4", num_frames=16, fps=8.0, seed=1)
    replaced = make_video(folder / "replaced.mp4", num_frames=16, fps=8.0, seed=2)
    broken = make_garbage(folder / "broken.mp4")
    cache = VideoCache(tmp_path / "cache", SETTINGS)
    first = extract_videos_ray([kept, replaced, broken], cache, progress=False)
    assert (first.done, [p for p, _ in first.failed]) == (2, [str(broken)])
    old_frames = cache.load(replaced).frames

    _replace(replaced, num_frames=24, fps=8.0, seed=3)
    _replace(broken, num_frames=16, fps=8.0, seed=4)  # the download finished this time
    again = extract_videos_ray([kept, replaced, broken], cache, progress=False)
    assert (again.done, again.skipped, again.changed, again.failed) == (2, 1, 2, [])
    assert "decoded again: the file at their path changed" in again.summary()
    assert cache.load(replaced).num_frames == 24 and not np.array_equal(cache.load(replaced).frames[:16], old_frames)
    assert cache.has(broken)
    # Nothing changed since: a third run does nothing.
    third = extract_videos_ray([kept, replaced, broken], cache, progress=False)
    assert (third.done, third.skipped, third.changed) == (0, 3, 0)
