"""The decoded-media contract: what decoding produces and the modalities read.

It sits below both ``data`` (which decodes and caches videos into it) and ``modalities``
(which turn it into per-segment tensors), so neither has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
