"""The audio modality: a log spectrogram of a fixed window centred on each segment.

As the reference's ``utils/video_dataset.py`` computes it (docs/method.md, "Audio input").

Paper defaults at 24 kHz: a 1.28 s window (30,720 samples), n_fft 511 (256 bins), 10 ms Hann
window (240 samples) zero-padded to n_fft, 5 ms hop (120 samples), centred frames with
constant padding of n_fft // 2 = 255 -> 256 bins x 256 frames (1 + (30720 + 510 - 511) // 120;
the "257 frames" sometimes quoted holds for an even n_fft of 512), value log(|X|^2 + 1e-6).
``ClipSettings.audio_frames`` then crops or zero-pads the time axis (a no-op at 256).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where a spectrogram is computed: the window helpers run without it
    import torch

    from adamml.config import ClipSettings

__all__ = [
    "audio_window", "fit_frames", "log_spectrogram", "mel_filterbank", "power_spectrogram",
    "segment_windows", "spectrogram_shape", "LOG_EPS",
]

LOG_EPS = 1e-6


def audio_window(num_samples: int, sample_rate: int, centre_s: float, window_s: float) -> tuple[int, int]:
    """Sample range [start, stop) of a ``window_s`` window centred on ``centre_s``.

    A window crossing the start or the end of the track is shifted inside it (the reference's
    rule); a track shorter than the window gives (0, num_samples) and the caller repeats it.
    """
    required = int(round(window_s * sample_rate))
    if num_samples <= required:
        return 0, num_samples
    start = int(round((centre_s - window_s / 2.0) * sample_rate))
    start = min(max(start, 0), num_samples - required)
    return start, start + required


def _hop_and_win(sample_rate: int, clip: ClipSettings) -> tuple[int, int]:
    win = int(round(clip.win_ms * sample_rate / 1000.0))
    hop = int(round(clip.hop_ms * sample_rate / 1000.0))
    if win > clip.n_fft:
        raise ValueError(
            f"STFT window {win} samples ({clip.win_ms} ms at {sample_rate} Hz) exceeds n_fft {clip.n_fft}"
        )
    return hop, win


def spectrogram_shape(sample_rate: int, clip: ClipSettings) -> tuple[int, int]:
    """(freq bins, time frames) that :func:`log_spectrogram` produces per segment."""
    hop, _ = _hop_and_win(sample_rate, clip)
    bins = clip.n_mels if clip.spectrogram == "mel" else clip.n_fft // 2 + 1
    # torch.stft with center=True pads n_fft // 2 on both sides
    samples = int(round(clip.audio_window_s * sample_rate)) + 2 * (clip.n_fft // 2)
    frames = clip.audio_frames or 1 + (samples - clip.n_fft) // hop
    return bins, frames


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """HTK-scale triangular filters, (n_fft // 2 + 1, n_mels), without area normalisation.

    The filters torchaudio's ``MelSpectrogram`` applies by default (f_min 0, f_max the
    Nyquist frequency, ``mel_scale="htk"``, ``norm=None``), computed the same way in float32 so
    that caches and checkpoints made with it stay valid.
    """
    import torch  # lazily: the torch-free runtimes import this module's window helpers

    n_freqs = n_fft // 2 + 1
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_points = torch.linspace(_hz_to_mel(0.0), _hz_to_mel(float(sample_rate // 2)), n_mels + 2)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    widths = hz_points[1:] - hz_points[:-1]
    slopes = hz_points.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


@lru_cache(maxsize=8)
def _hann(win: int) -> torch.Tensor:
    import torch  # lazily, as in mel_filterbank

    return torch.hann_window(win)


def power_spectrogram(
    windows: torch.Tensor, sample_rate: int, kind: str, n_fft: int, win: int, hop: int, n_mels: int
) -> torch.Tensor:
    """(K, samples) -> (K, bins, frames) power, |STFT|^2 with centred, zero-padded frames.

    The Hann window of ``win`` samples sits in the middle of each ``n_fft`` frame (torch.stft
    pads it), as the reference computes it; ``kind="mel"`` maps the bins through
    :func:`mel_filterbank`.
    """
    import torch  # lazily, as in mel_filterbank

    if kind not in ("linear", "mel"):
        raise ValueError(f"unknown spectrogram kind {kind!r}: expected 'linear' or 'mel'")
    stft = torch.stft(
        windows, n_fft=n_fft, hop_length=hop, win_length=win, window=_hann(win),
        center=True, pad_mode="constant", normalized=False, onesided=True, return_complex=True,
    )
    power = stft.abs().pow(2.0)
    if kind == "mel":
        power = torch.matmul(power.transpose(-1, -2), mel_filterbank(sample_rate, n_fft, n_mels))
        power = power.transpose(-1, -2)
    return power


def log_spectrogram(
    waveform: np.ndarray,
    sample_rate: int,
    centres_s: Sequence[float],
    clip: ClipSettings,
    missing: bool = False,
) -> np.ndarray:
    """Mono float32 (S,) -> float32 (K, 1, F, Frames), one window per segment centre.

    A missing or empty track gives all zeros of the same shape (the model then sees silence
    as "no information", as in the reference).
    """
    bins, out_frames = spectrogram_shape(sample_rate, clip)
    k = len(centres_s)
    waveform = np.asarray(waveform, np.float32).reshape(-1)
    if missing or waveform.size == 0:
        return np.zeros((k, 1, bins, out_frames), np.float32)
    windows = segment_windows(waveform, sample_rate, centres_s, clip)
    hop, win = _hop_and_win(sample_rate, clip)
    import torch  # lazily, as in mel_filterbank

    with torch.no_grad():
        power = power_spectrogram(
            torch.from_numpy(windows), sample_rate, clip.spectrogram, clip.n_fft, win, hop, clip.n_mels
        )  # (K, F, frames)
    return fit_frames(torch.log(power + LOG_EPS).numpy(), clip)


def segment_windows(waveform: np.ndarray, sample_rate: int, centres_s: Sequence[float], clip: ClipSettings) -> np.ndarray:
    """float32 (K, window samples): each segment's audio window (a short track repeated to
    fill it); shared with the spectrogram of the runtimes without torch (adamml.runners)."""
    required = int(round(clip.audio_window_s * sample_rate))
    windows = np.empty((len(centres_s), required), np.float32)
    for i, centre in enumerate(centres_s):
        start, stop = audio_window(waveform.size, sample_rate, float(centre), clip.audio_window_s)
        piece = waveform[start:stop]
        if piece.size < required:  # short track: repeat it to fill the window
            piece = np.tile(piece, -(-required // piece.size))[:required]
        windows[i] = piece
    return windows


def fit_frames(spec: np.ndarray, clip: ClipSettings) -> np.ndarray:
    """(K, F, frames) log power -> float32 (K, 1, F, clip.audio_frames): the time axis cut or
    zero-padded to the configured length."""
    if clip.audio_frames:
        have = spec.shape[-1]
        if have >= clip.audio_frames:
            spec = spec[..., : clip.audio_frames]
        else:  # zero-pad the time axis (zero = log-power of e^0, the reference pads images with 0)
            spec = np.pad(spec, ((0, 0), (0, 0), (0, clip.audio_frames - have)))
    return np.ascontiguousarray(spec[:, None].astype(np.float32))
