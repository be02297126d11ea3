"""One spatial crop shared by every visual modality of a sample.

RGB, flow and RGB difference of the same segment must see the same region (and the same
flip), otherwise fusing them mixes different parts of the scene; so the crop is chosen once
(:func:`choose_crop`) and applied to each modality (:func:`apply_crop`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Crop", "choose_crop", "apply_crop", "crop_indexed"]

# "zoom" training crops cover crop_size * U(SCALE_MIN, SCALE_MAX) source pixels.
SCALE_MIN, SCALE_MAX = 0.8, 1.25
# "reference" training crops: the frame resized to a short side in this range for a 224 crop.
REFERENCE_SHORT_SIDES = (256.0, 320.0)
REFERENCE_CROP = 224.0


@dataclass(frozen=True)
class Crop:
    """A square region ``size`` x ``size`` at (top, left) of the source frame, then resized to
    the crop size; ``flip`` mirrors it horizontally."""

    top: int
    left: int
    size: int
    flip: bool = False


def choose_crop(
    height: int,
    width: int,
    crop_size: int,
    train: bool,
    rng: np.random.Generator | None = None,
    mode: str = "reference",
    flip: bool = True,
) -> Crop:
    """Train: a random square, flipped with p=0.5 unless ``flip`` is False (for classes a
    mirror changes: digits, text, left/right gestures). Its side is, with ``mode`` "reference",
    short * 224 / U(256, 320) (the reference's random short side in [256, 320], then a 224
    crop; scale-free, so it holds at any crop size), with "zoom" crop_size * U(0.8, 1.25).
    Eval: centred crop_size square, no flip. Frames smaller than the crop are resized up."""
    if height <= 0 or width <= 0 or crop_size <= 0:
        raise ValueError(f"bad crop request: frame {height}x{width}, crop {crop_size}")
    short = min(height, width)
    if not train:
        size = min(crop_size, short)
        return Crop(top=(height - size) // 2, left=(width - size) // 2, size=size, flip=False)
    if rng is None:
        raise ValueError("choose_crop(train=True) needs a numpy Generator for reproducibility")
    if mode == "reference":
        size = int(round(short * REFERENCE_CROP / rng.uniform(*REFERENCE_SHORT_SIDES)))
    elif mode == "zoom":
        size = int(round(crop_size * rng.uniform(SCALE_MIN, SCALE_MAX)))
    else:
        raise ValueError(f"data.clip.train_crop must be 'reference' or 'zoom', got {mode!r}")
    size = max(1, min(size, short))
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    mirrored = rng.random() < 0.5  # drawn either way: the switch leaves other draws unchanged
    return Crop(top=top, left=left, size=size, flip=bool(flip and mirrored))


def apply_crop(images: np.ndarray, crop: Crop, crop_size: int) -> np.ndarray:
    """(N, H, W, C) -> (N, S, S, C) with S = crop_size, same dtype; C up to 512 (OpenCV).

    Flipping only mirrors pixels: callers holding signed horizontal quantities (flow x)
    must negate them themselves.
    """
    if images.ndim != 4:
        raise ValueError(f"apply_crop expects (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    if crop.top + crop.size > h or crop.left + crop.size > w:
        raise ValueError(f"crop {crop} does not fit a {h}x{w} frame")
    region = images[:, crop.top : crop.top + crop.size, crop.left : crop.left + crop.size]
    if crop.flip:
        region = region[:, :, ::-1]
    if crop.size == crop_size:
        return np.ascontiguousarray(region)
    interp = cv2.INTER_AREA if crop.size > crop_size else cv2.INTER_LINEAR
    out = np.empty((n, crop_size, crop_size, c), images.dtype)
    for i in range(n):
        resized = cv2.resize(np.ascontiguousarray(region[i]), (crop_size, crop_size), interpolation=interp)
        out[i] = resized.reshape(crop_size, crop_size, c)
    return out


def crop_indexed(
    images: np.ndarray, indices: np.ndarray, crop: Crop, crop_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop only the frames that ``indices`` (any shape) use, each once.

    Returns (len(unique), S, S, C) and the inverse map with the shape of ``indices``, so
    ``out[inverse]`` is the cropped ``images[indices]``.
    """
    unique, inverse = np.unique(indices, return_inverse=True)
    return apply_crop(images[unique], crop, crop_size), inverse.reshape(np.shape(indices))
