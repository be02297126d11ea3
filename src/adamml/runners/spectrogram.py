"""The audio modality's log spectrogram in numpy: what ``adamml.modalities.audio`` computes
with torchaudio, for the runtimes without torch.

The windows, their lengths and the final cut or padding are the torch path's own functions;
only the STFT (torch.stft with a periodic Hann window zero-padded to n_fft, centred frames,
constant padding) and the HTK mel filter bank (torchaudio's default) are written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from adamml.modalities.audio import (
    LOG_EPS,
    _hop_and_win,
    fit_frames,
    segment_windows,
    spectrogram_shape,
)


def _hann(win: int, n_fft: int) -> np.ndarray:
    """torch.hann_window(win) (periodic) centred in n_fft samples, as torch.stft pads it."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)
    full = np.zeros(n_fft)
    left = (n_fft - win) // 2
    full[left : left + win] = window
    return full


def stft_power(windows: np.ndarray, n_fft: int, win: int, hop: int) -> np.ndarray:
    """(K, S) samples -> (K, n_fft // 2 + 1, frames) power |X|^2, frames centred."""
    pad = n_fft // 2
    x = np.pad(windows.astype(np.float64), ((0, 0), (pad, pad)))
    frames = 1 + (x.shape[1] - n_fft) // hop
    at = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spec = np.fft.rfft(x[:, at] * _hann(win, n_fft), n=n_fft, axis=-1)  # (K, frames, F)
    return (spec.real**2 + spec.imag**2).transpose(0, 2, 1)


@lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_freqs: int, n_mels: int) -> np.ndarray:
    """(n_freqs, n_mels): torchaudio.functional.melscale_fbanks with its defaults (HTK
    scale, f_min 0, f_max sample_rate // 2, no normalisation)."""
    def to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    freqs = np.linspace(0, sample_rate // 2, n_freqs)
    points = 700.0 * (10.0 ** (np.linspace(to_mel(0.0), to_mel(float(sample_rate // 2)), n_mels + 2) / 2595.0) - 1.0)
    diff = points[1:] - points[:-1]
    slopes = points[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def log_spectrogram(waveform: np.ndarray, sample_rate: int, centres_s: Sequence[float], clip: Any,
                    missing: bool = False) -> np.ndarray:
    """Mono float32 (S,) -> float32 (K, 1, F, frames), as adamml.modalities.audio.log_spectrogram."""
    bins, out_frames = spectrogram_shape(sample_rate, clip)
    waveform = np.asarray(waveform, np.float32).reshape(-1)
    if missing or waveform.size == 0:
        return np.zeros((len(centres_s), 1, bins, out_frames), np.float32)
    windows = segment_windows(waveform, sample_rate, centres_s, clip)
    hop, win = _hop_and_win(sample_rate, clip)
    power = stft_power(windows, clip.n_fft, win, hop)
    if clip.spectrogram == "mel":
        power = np.einsum("kft,fm->kmt", power, mel_filters(sample_rate, clip.n_fft // 2 + 1, clip.n_mels))
    elif clip.spectrogram != "linear":
        raise ValueError(f"unknown spectrogram kind {clip.spectrogram!r}: expected 'linear' or 'mel'")
    return fit_frames(np.log(power + LOG_EPS).astype(np.float32), clip)
