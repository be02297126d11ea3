"""Plain containers passed between decoding, caching and datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class DecodeSettings:
    """How a video is decoded before anything else happens to it.

    Frames are resampled to ``fps`` and resized so their short side is ``short_side``;
    audio is downmixed to mono and resampled to ``sample_rate``.
    """

    fps: float = 25.0
    short_side: int = 256
    sample_rate: int = 24_000
    flow: str | None = None  # None, "tvl1" or "dis": which optical flow to compute and cache
    strict_audio: bool = False  # a missing audio track is an error instead of a warning


@dataclass
class DecodedVideo:
    """Everything training needs from one video, as decoded (and cached) once.

    frames: uint8 (N, H, W, 3) at ``fps``.
    audio: float32 (S,) mono waveform at ``sample_rate`` in [-1, 1]; empty when missing.
    flow: uint8 (N-1, H, W, 2) flow between consecutive frames, quantised with
        ``adamml.layouts.FLOW_BOUND``; None when not computed.
    """

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int
    audio_missing: bool
    flow: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


class VideoDecodeError(RuntimeError):
    """A video could not be read; the message names the file and the problem."""


@dataclass
class ClipSettings:
    """How a decoded video becomes model input: segments, frames per segment, sizes.

    Defaults are the paper's (SPEC section 2): 8 frames at stride 4 per segment, 224x224
    crops, 5 stacked flow fields, a 1.28 s log spectrogram window (n_fft 511 -> 256 bins,
    10 ms Hann window, 5 ms hop at 24 kHz).
    """

    num_segments: int = 5
    frames_per_segment: int = 8
    frame_stride: int = 4
    stack_length: int = 5  # flow fields / frame differences stacked per frame position
    crop_size: int = 224
    audio_window_s: float = 1.28
    n_fft: int = 511
    win_ms: float = 10.0
    hop_ms: float = 5.0
    spectrogram: str = "linear"  # "linear" (the paper's) or "mel"
    n_mels: int = 128
    audio_frames: int | None = 256  # crop/pad the spectrogram's time axis to this many frames

    @property
    def segment_span(self) -> int:
        """Number of consecutive decoded frames one segment covers (including the stack)."""
        return (self.frames_per_segment - 1) * self.frame_stride + self.stack_length + 1


@dataclass
class VideoEntry:
    """One video of a dataset split, wherever it was declared.

    path: a video file, or a frame folder (official AdaMML/TSN list-file format).
    labels: class indices (one for single-label sets, several for multi-label sets).
    start, end: frame range from an official list file (inclusive, 1-based), else None.
    source: "file:line" where the entry was declared, so errors can point at it.
    """

    path: Path
    labels: list[int]
    start: int | None = None
    end: int | None = None
    source: str = ""

    @property
    def frame_range(self) -> tuple[int | None, int | None]:
        """(start, end): with the path, what the cache keys a decoded entry by."""
        return (self.start, self.end)
