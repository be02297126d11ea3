"""Plain containers passed between decoding, caching and datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adamml.errors import AdamMLError


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


class VideoDecodeError(AdamMLError, RuntimeError):
    """A video could not be read; the message names the file and the problem."""


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
