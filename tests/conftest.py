"""Generic fixtures shared by every test module (media builders live in tests/media.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# Let test modules `from media import ...` however pytest was started.
sys.path.insert(0, str(Path(__file__).parent))

from media import make_video  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator, so random tests are reproducible."""
    return np.random.default_rng(0)


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    """A 1 s, 25 fps, 96x64 H.264 MP4 with a 16 kHz mono AAC 440 Hz tone."""
    return make_video(tmp_path / "tiny.mp4", num_frames=25, fps=25.0)


@pytest.fixture
def silent_video(tmp_path: Path) -> Path:
    """The same clip without an audio track."""
    return make_video(tmp_path / "silent.mp4", num_frames=25, fps=25.0, audio_channels=None)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions run far faster on one thread than on two contended ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
