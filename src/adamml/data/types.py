"""Plain containers passed between decoding, caching and datasets (the decoded video itself,
which the modalities read too, is :class:`adamml.media.DecodedVideo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adamml.errors import AdamMLError


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
