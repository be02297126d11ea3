"""Segment sampling: TSN-style starts, clip indices, audio centres."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adamml.config import ClipSettings
from adamml.data.sampling import clip_indices, sample_indices, segment_centres_s, segment_starts

CLIP = ClipSettings(num_segments=4, frames_per_segment=3, frame_stride=2, stack_length=2)
# segment_span = (3 - 1) * 2 + 2 + 1 = 7 frames


def test_span_matches_definition() -> None:
    assert CLIP.segment_span == 7


def test_train_starts_fall_inside_their_segment() -> None:
    num_frames = 107  # 101 start positions -> segments of 25.25 positions
    positions = num_frames - CLIP.segment_span + 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        starts = segment_starts(num_frames, CLIP, True, rng)
        assert starts.shape == (4,) and starts.dtype == np.int64
        lower = np.floor(np.arange(4) * positions / 4)
        upper = np.ceil((np.arange(4) + 1) * positions / 4)
        assert np.all(starts >= lower) and np.all(starts < upper)


def test_train_starts_vary_and_are_reproducible_with_the_rng() -> None:
    draws = [tuple(segment_starts(200, CLIP, True, np.random.default_rng(s))) for s in range(20)]
    assert len(set(draws)) > 10  # random offsets
    again = segment_starts(200, CLIP, True, np.random.default_rng(3))
    assert tuple(again) == draws[3]


def test_train_offsets_cover_the_whole_segment() -> None:
    rng = np.random.default_rng(1)
    firsts = {int(segment_starts(47, CLIP, True, rng)[0]) for _ in range(400)}
    assert firsts == set(range(11))  # 41 positions / 4 segments: first segment = [0, 10.25)


def test_eval_starts_are_the_references_linspace_from_first_to_last_start() -> None:
    starts = segment_starts(107, CLIP, False)
    # 101 start positions: the reference's linspace(0, 100, 4, dtype=int).
    assert starts.tolist() == np.linspace(0, 100, num=4, dtype=int).tolist() == [0, 33, 66, 100]
    ten = segment_starts(300, CLIP, False, num_segments=10)
    assert ten[0] == 0 and ten[-1] == 300 - CLIP.segment_span


def test_centred_eval_starts_are_centred_and_deterministic() -> None:
    centred = dataclasses.replace(CLIP, eval_positions="centre")
    starts = segment_starts(107, centred, False)
    positions = 101
    centres = np.floor((np.arange(4) + 0.5) * positions / 4)
    assert np.array_equal(starts, centres)
    assert np.array_equal(starts, segment_starts(107, centred, False, np.random.default_rng(9)))


def test_eval_segments_can_differ_from_training() -> None:
    starts = segment_starts(300, CLIP, False, num_segments=10)
    assert starts.shape == (10,)
    assert np.all(np.diff(starts) > 0)


def test_train_needs_an_rng() -> None:
    with pytest.raises(ValueError, match="rng"):
        segment_starts(100, CLIP, True, None)


@pytest.mark.parametrize("num_frames", [1, 2, 5, 7, 8, 12])
@pytest.mark.parametrize("train", [True, False])
def test_short_videos_give_in_range_indices(num_frames: int, train: bool) -> None:
    rng = np.random.default_rng(num_frames)
    indices = sample_indices(num_frames, CLIP, train, rng, num_segments=5)
    assert indices.shape == (5, 3) and indices.dtype == np.int64
    assert indices.min() >= 0 and indices.max() <= num_frames - 1
    # Where the video is long enough, every index keeps a full L-stack after it.
    if num_frames > CLIP.stack_length:
        assert indices.max() <= num_frames - 1 - CLIP.stack_length


def test_clip_indices_stride_and_shape() -> None:
    indices = clip_indices(np.array([0, 10, 20]), CLIP, num_frames=100)
    assert indices.tolist() == [[0, 2, 4], [10, 12, 14], [20, 22, 24]]


def test_clip_indices_clamped_to_last_frame_with_a_stack() -> None:
    indices = clip_indices(np.array([8]), CLIP, num_frames=12)
    assert indices.tolist() == [[8, 9, 9]]  # 12 frames, L = 2 -> last usable frame 9


def test_rgb_only_clip_reaches_the_last_frame() -> None:
    rgb_only = dataclasses.replace(CLIP, stack_length=0)
    indices = sample_indices(11, rgb_only, False, num_segments=1)
    assert indices.max() <= 10
    full = clip_indices(np.array([6]), rgb_only, num_frames=11)
    assert full.tolist() == [[6, 8, 10]]


def test_segment_centres_in_seconds() -> None:
    indices = np.array([[0, 2, 4], [10, 12, 14]])
    assert np.allclose(segment_centres_s(indices, fps=2.0), [1.0, 6.0])
    with pytest.raises(ValueError, match="fps"):
        segment_centres_s(indices, fps=0)
