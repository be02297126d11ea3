"""Temporal max pooling between the stages of a 2D network that sees frames as a batch.

The TSN-like networks of AdaMML run a 2D ResNet on (N*T, C, H, W) and halve T after stages
1, 2 and 3, so the expensive late stages see few frames (8 -> 4 -> 2 -> 1).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def pooled_frames(frames: int, kernel: int = 3, stride: int = 2) -> int:
    """Frames after pooling: floor((T + 2*pad - kernel) / stride) + 1 with pad = (kernel-1)//stride.

    For the reference's kernel 3, stride 2 (pad 1) this is ceil(T / 2): 8 -> 4 -> 2 -> 1,
    5 -> 3, 1 -> 1. (The reference's own bookkeeping uses T // 2, which is wrong for odd T.)
    """
    pad = (kernel - 1) // stride
    return (frames + 2 * pad - kernel) // stride + 1


class TemporalMaxPool(nn.Module):
    """Max pooling over time of frames stacked in the batch dimension.

    Input (N*T, C, H, W) with T = ``frames``; output (N*T', C, H, W) with
    T' = ``pooled_frames(frames, kernel, stride)``. Padding (kernel-1)//stride frames on each
    side (1 for kernel 3, stride 2) as in the reference; padded positions never win the max.
    """

    def __init__(self, frames: int, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.frames = frames
        self.out_frames = pooled_frames(frames, kernel, stride)
        pad = (kernel - 1) // stride
        self.pool = nn.MaxPool3d(
            kernel_size=(kernel, 1, 1), stride=(stride, 1, 1), padding=(pad, 0, 0)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.frames:
            raise ValueError(
                f"TemporalMaxPool: batch of {x.shape[0]} is not a multiple of {self.frames} frames"
            )
        x = rearrange(x, "(n t) c h w -> n c t h w", t=self.frames)
        x = self.pool(x)
        return rearrange(x, "n c t h w -> (n t) c h w")

    def extra_repr(self) -> str:
        return f"frames={self.frames}, out_frames={self.out_frames}"
