"""RGB clips: the frames a segment samples, cropped and ImageNet-normalised."""

from __future__ import annotations

import numpy as np

from adamml.layouts import IMAGENET_MEAN, IMAGENET_STD
from adamml.modalities.spatial import Crop, crop_indexed

__all__ = ["rgb_clip", "check_indices"]

_MEAN = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)


def check_indices(indices: np.ndarray, num_frames: int) -> np.ndarray:
    """Validate (K, T) frame indices; a sampler bug should fail here, not read garbage."""
    indices = np.asarray(indices)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"frame indices must be integers (K, T), got {indices.dtype} {indices.shape}")
    if num_frames <= 0:
        raise ValueError("the video has no frames")
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise ValueError(
            f"frame indices {indices.min()}..{indices.max()} outside the video's {num_frames} frames"
        )
    return indices


def rgb_clip(frames: np.ndarray, indices: np.ndarray, crop: Crop, crop_size: int) -> np.ndarray:
    """uint8 frames (N, H, W, 3) + indices (K, T) -> float32 (K, T, 3, S, S), ImageNet-normalised."""
    indices = check_indices(indices, len(frames))
    cropped, inverse = crop_indexed(frames, indices, crop, crop_size)  # (U, S, S, 3)
    chw = cropped.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (U, 3, S, S)
    chw = (chw - _MEAN) / _STD
    return np.ascontiguousarray(chw[inverse])  # (K, T, 3, S, S)
