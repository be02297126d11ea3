"""Optical flow: computed once at extraction (TV-L1 as in the paper, or fast DIS), stored as uint8.

Quantisation follows the TSN/AdaMML convention so that officially extracted ``x_/y_*.jpg``
flow and ours are interchangeable: flow clipped to +-FLOW_BOUND (20 px) and mapped linearly
onto 0..255, i.e. ``u8 = round((clip(f, -B, B) + B) * 255 / (2B))``, so 127.5 means no motion
and one step is 40/255 = 0.157 px.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from adamml.layouts import FLOW_BOUND
from adamml.modalities.rgb import check_indices
from adamml.modalities.spatial import Crop, crop_indexed

__all__ = ["FLOW_METHODS", "compute_flow", "quantize_flow", "dequantize_flow", "flow_clip"]

FLOW_METHODS = ("tvl1", "dis")


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """float flow in pixels -> uint8, ``round((clip(f, -B, B) + B) * 255 / (2B))``."""
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(scaled).astype(np.uint8)


def dequantize_flow(flow_u8: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """uint8 -> float32 pixels, ``u8 * 2B / 255 - B`` (the inverse of quantize_flow)."""
    return flow_u8.astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def _estimator(method: str) -> cv2.DenseOpticalFlow:
    if method == "tvl1":
        return cv2.optflow.DualTVL1OpticalFlow_create()
    if method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    raise ValueError(f"unknown flow method {method!r}: expected one of {', '.join(FLOW_METHODS)}")


def compute_flow(frames: np.ndarray, method: str = "tvl1", bound: float = FLOW_BOUND) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> quantised uint8 (N-1, H, W, 2): (x, y) flow from frame i to i+1.

    Computed on grayscale. TV-L1 costs about 1 s per 224x224 pair on one core; DIS ~0.01 s.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"compute_flow expects (N, H, W, 3) frames, got {frames.shape}")
    estimator = _estimator(method)
    n, h, w, _ = frames.shape
    out = np.empty((max(n - 1, 0), h, w, 2), np.uint8)
    prev = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY) if n else None
    for i in range(1, n):
        cur = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
        out[i - 1] = quantize_flow(estimator.calc(prev, cur, None), bound)
        prev = cur
    return out


# The reference normalises flow images (uint8, bound 20) with these, as a one-channel image.
REFERENCE_MEAN, REFERENCE_STD = 0.5, 0.226


def flow_clip(
    flow_u8: np.ndarray,
    indices: np.ndarray,
    stack_length: int,
    crop: Crop,
    crop_size: int,
    bound: float = FLOW_BOUND,
    *,
    reference: bool = False,
) -> np.ndarray:
    """Quantised flow (N-1, H, W, 2), frame indices (K, T) -> float32 (K, T, 2L, S, S) in [-1, 1].

    Position i stacks fields i..i+L-1 (clamped to the last field), channels x1, y1, x2, y2, ...
    Values are flow / bound. Flow vectors are scaled with the crop's resize (a region of
    ``crop.size`` px shown at ``crop_size`` px moves crop_size/size times as far) and x is
    negated on a horizontal flip, so the motion stays physically consistent with the RGB crop.

    ``reference``: the reference code's values instead, the quantised flow as an image
    normalised with mean 0.5 and std 0.226, ``(u8 / 255 - 0.5) / 0.226`` (about +-2.2), vectors
    not scaled with the resize (x still negated on a flip), so its checkpoints see what they
    were trained on.
    """
    num_fields = len(flow_u8)
    if num_fields == 0:
        k, t = np.shape(indices)
        return np.zeros((k, t, 2 * stack_length, crop_size, crop_size), np.float32)
    indices = check_indices(indices, num_fields + 1)
    needed = np.minimum(indices[..., None] + np.arange(stack_length), num_fields - 1)  # (K, T, L)
    cropped, inverse = crop_indexed(flow_u8, needed, crop, crop_size)  # (U, S, S, 2) uint8
    if reference:
        values = (cropped.astype(np.float32) / np.float32(255.0) - np.float32(REFERENCE_MEAN)) / np.float32(REFERENCE_STD)
        if crop.flip:
            values[..., 0] *= -1.0
        values = values.transpose(0, 3, 1, 2)
    else:
        values = dequantize_flow(cropped, bound) * np.float32(crop_size / crop.size / bound)
        if crop.flip:
            values[..., 0] *= -1.0
        values = np.clip(values, -1.0, 1.0).transpose(0, 3, 1, 2)  # (U, 2, S, S)
    stack = values[inverse]  # (K, T, L, 2, S, S)
    k, t, length, c, s, _ = stack.shape
    return np.ascontiguousarray(stack.reshape(k, t, length * c, s, s))


class LazyFlow:
    """Optical flow fields indexed like ``compute_flow``'s uint8 (N-1, H, W, 2) array, each
    computed from its two frames the first time it is read. ``computed`` counts them."""

    def __init__(self, frames: Any, method: str) -> None:
        self.frames = frames
        self.method = method
        n, h, w = frames.shape[:3]
        self.shape = (max(int(n) - 1, 0), int(h), int(w), 2)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        self.fields: dict[int, np.ndarray] = {}

    @property
    def computed(self) -> int:
        return len(self.fields)

    def __len__(self) -> int:
        return self.shape[0]

    def _get(self, i: int) -> np.ndarray:
        if i not in self.fields:
            pair = np.stack([self.frames[i], self.frames[i + 1]])
            self.fields[i] = compute_flow(pair, self.method)[0]
        return self.fields[i]

    def __getitem__(self, key: int | np.ndarray) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self._get(int(key))
        indices = np.asarray(key).reshape(-1)
        return np.stack([self._get(int(i)) for i in indices]) if len(indices) else np.empty((0, *self.shape[1:]), self.dtype)
