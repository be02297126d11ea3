"""Where in a video each segment's clip is taken (TSN-style segment sampling).

A video of N decoded frames is cut into K equal segments over the span where a whole clip
fits; each segment yields one clip of T frames at stride ``clip.frame_stride``. Training
draws a random start inside each segment (augmentation across epochs); evaluation spreads the
clips evenly from the first possible start to the last (the reference's test clips; or the
centre of each segment), so a checkpoint scores the same every time.

A clip starting at frame s covers frames s, s+stride, ..., s+(T-1)*stride, and a flow or
RGB-difference stack at frame i also needs frames i+1..i+L, so the usable starts are
0..N - clip.segment_span. Pass a ``ClipSettings`` with ``stack_length=0`` when no stacked
modality is used, so RGB-only clips may reach the last frame.

Short videos never fail: starts collapse onto the frames that exist and indices are clamped,
so frames repeat rather than fall out of range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: sampling runs without torch (adamml.runners)
    from adamml.config import ClipSettings


def segment_starts(
    num_frames: int,
    clip: ClipSettings,
    train: bool,
    rng: np.random.Generator | None = None,
    *,
    num_segments: int | None = None,
) -> np.ndarray:
    """First frame of each segment's clip: int64 (K,), with K = num_segments or clip's.

    Train: uniform random position inside each of the K segments (needs ``rng``).
    Eval (``clip.eval_positions``): "linspace" spreads the K starts evenly from the first to
    the last start a whole clip fits at, as the reference's test clips (``linspace(0,
    last_start, K)``, truncated); "centre" takes the centre of each segment.
    """
    k = int(num_segments if num_segments is not None else clip.num_segments)
    if k < 1:
        raise ValueError(f"num_segments must be >= 1, got {k}")
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got {num_frames}")
    # Number of start positions at which a whole clip (with its stack) fits; at least one.
    positions = max(num_frames - clip.segment_span + 1, 1)
    length = positions / k  # segment length in start positions (may be < 1 for short videos)
    edges = np.arange(k, dtype=np.float64) * length
    if train:
        if rng is None:
            raise ValueError("training-mode sampling needs an rng (numpy Generator)")
        offsets = rng.uniform(0.0, length, size=k)
    elif clip.eval_positions == "linspace":
        return np.linspace(0, positions - 1, num=k).astype(np.int64)
    elif clip.eval_positions == "centre":
        offsets = np.full(k, length / 2.0)
    else:
        raise ValueError(
            f"data.clip.eval_positions must be 'linspace' or 'centre', got {clip.eval_positions!r}"
        )
    starts = np.floor(edges + offsets).astype(np.int64)
    return np.clip(starts, 0, positions - 1)


def centre_window_starts(num_frames: int, clip: ClipSettings, rng: np.random.Generator, *, num_segments: int | None = None) -> np.ndarray:
    """Training starts whose clips centre near the middle of the video: int64 (K,).

    The reference's audio network trains on one window per video whose centre is uniform in
    the middle eighth of the video (its sampler's 8 groups, the window at the middle two);
    with K clips, each centres in the middle eighth of its K-th of the video. The start is
    the clip centred there, clamped to the starts where a whole clip fits."""
    k = int(num_segments if num_segments is not None else clip.num_segments)
    if k < 1:
        raise ValueError(f"num_segments must be >= 1, got {k}")
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got {num_frames}")
    part = num_frames / k
    centres = (np.arange(k, dtype=np.float64) + 0.5) * part + rng.uniform(-part / 16.0, part / 16.0, size=k)
    half_span = (clip.frames_per_segment - 1) * clip.frame_stride / 2.0
    positions = max(num_frames - clip.segment_span + 1, 1)
    return np.clip(np.floor(centres - half_span), 0, positions - 1).astype(np.int64)


def clip_indices(starts: np.ndarray, clip: ClipSettings, num_frames: int) -> np.ndarray:
    """Frame indices of every segment's clip: int64 (K, T), all in [0, num_frames).

    Indices are clamped to the last frame that still has a full L-stack after it where the
    video is long enough, else to the last frame.
    """
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    steps = np.arange(clip.frames_per_segment, dtype=np.int64) * clip.frame_stride
    indices = starts[:, None] + steps[None, :]
    last = num_frames - 1 - clip.stack_length
    if last < 0:
        last = num_frames - 1
    return np.clip(indices, 0, max(last, 0))


def segment_centres_s(indices: np.ndarray, fps: float) -> np.ndarray:
    """Time in seconds at the middle of each segment's clip: float64 (K,), from (K, T) indices.

    The audio window of a segment is centred here (the paper's 1.28 s window per segment;
    docs/method.md, "Audio input").
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"expected (K, T) frame indices, got shape {indices.shape}")
    return (indices[:, 0] + indices[:, -1]).astype(np.float64) / 2.0 / fps


def sample_indices(
    num_frames: int,
    clip: ClipSettings,
    train: bool,
    rng: np.random.Generator | None = None,
    *,
    num_segments: int | None = None,
) -> np.ndarray:
    """``segment_starts`` then ``clip_indices``: int64 (K, T) frame indices of a sample."""
    starts = segment_starts(num_frames, clip, train, rng, num_segments=num_segments)
    return clip_indices(starts, clip, num_frames)


def policy_frame_indices(frames_per_segment: int, policy_frames: int) -> list[int]:
    """Which of a segment's frames the policy looks at: every other one, at most
    ``policy_frames`` of them (reference: 4 of 8)."""
    return list(range(0, frames_per_segment, 2))[: max(1, policy_frames)]
