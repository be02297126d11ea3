"""Tolerances for comparing two float computations of the same function, on any x86 CPU.

Kernels differ by host (AVX2, AVX-512, AMX) and by how work is split, so two correct
computations differ by rounding that grows with the magnitudes involved, not by a fixed
number. The tolerance is derived from the dtype's machine epsilon and the largest value
compared, with headroom for the depth of a network's accumulations.
"""

from __future__ import annotations

import torch

# Rounding of a deep network's accumulations, in units of the dtype's epsilon: about 1e-4
# relative to the largest output in float32 (AVX2 and AVX-512 hosts differ up to ~6e-5).
NETWORK_ULPS = 1000.0


def assert_same_function(
    actual: torch.Tensor, expected: torch.Tensor, ulps: float = NETWORK_ULPS
) -> None:
    """Assert `actual` equals `expected` up to rounding scaled to `expected`'s magnitude."""
    eps = torch.finfo(expected.dtype).eps
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    tolerance = ulps * eps
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale)
