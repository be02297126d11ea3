"""RGB difference stacks: the cheap stand-in for optical flow (the policy's flow proxy)."""

from __future__ import annotations

import numpy as np

from adamml.layouts import IMAGENET_MEAN, IMAGENET_STD
from adamml.modalities.rgb import check_indices
from adamml.modalities.spatial import Crop, crop_indexed

__all__ = ["rgbdiff_clip"]

_STD = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)
_MEAN = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)


def rgbdiff_clip(
    frames: np.ndarray,
    indices: np.ndarray,
    stack_length: int,
    crop: Crop,
    crop_size: int,
    *,
    reference: bool = False,
) -> np.ndarray:
    """uint8 (N, H, W, 3), indices (K, T) -> float32 (K, T, 3L, S, S).

    Channels 3j..3j+2 hold frame[i+j+1] - frame[i+j] (j < L) on [0, 1] pixels divided by the
    ImageNet std (no mean: a difference is centred already); frame numbers past the end are
    clamped to the last frame, so a difference there is zero.

    ``reference``: the reference code's values instead: the difference stored as an 8-bit
    image ``(d + 255) / 2`` (d in pixels), then scaled to [0, 1] and normalised with the
    ImageNet mean and std like an RGB frame.
    """
    indices = check_indices(indices, len(frames))
    last = len(frames) - 1
    steps = np.arange(stack_length + 1)
    needed = np.minimum(indices[..., None] + steps, last)  # (K, T, L+1)
    cropped, inverse = crop_indexed(frames, needed, crop, crop_size)  # (U, S, S, 3)
    if reference:
        pixels = cropped.transpose(0, 3, 1, 2).astype(np.float32)[inverse]  # (K, T, L+1, 3, S, S)
        image = np.floor((pixels[:, :, 1:] - pixels[:, :, :-1] + 255.0) / 2.0) / 255.0
        diff = (image - _MEAN) / _STD
    else:
        chw = cropped.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (U, 3, S, S)
        stack = chw[inverse]  # (K, T, L+1, 3, S, S)
        diff = (stack[:, :, 1:] - stack[:, :, :-1]) / _STD  # (K, T, L, 3, S, S)
    k, t, length, c, s, _ = diff.shape
    return np.ascontiguousarray(diff.reshape(k, t, length * c, s, s))
