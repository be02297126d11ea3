"""Each modality's tensor: shape, dtype, values, and the one crop shared by all of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from media import textured_image, tone

from adamml.config import ClipSettings
from adamml.layouts import FLOW_BOUND, IMAGENET_MEAN, IMAGENET_STD
from adamml.modalities.audio import audio_window, log_spectrogram, mel_filterbank, spectrogram_shape
from adamml.modalities.flow import compute_flow, dequantize_flow, flow_clip, quantize_flow
from adamml.modalities.rgb import rgb_clip
from adamml.modalities.rgbdiff import rgbdiff_clip
from adamml.modalities.spatial import Crop, apply_crop, choose_crop

SR = 24_000
PAPER = ClipSettings()
UNCROPPED = dataclasses.replace(PAPER, audio_frames=None)


# ----------------------------------------------------------------------------- crops


def test_eval_crop_is_centred_without_flip() -> None:
    assert choose_crop(100, 160, 64, train=False) == Crop(top=18, left=48, size=64, flip=False)


def test_train_crops_fit_the_frame_and_flip_about_half_the_time(rng: np.random.Generator) -> None:
    crops = [choose_crop(120, 180, 64, train=True, rng=rng, mode="zoom") for _ in range(400)]
    for c in crops:
        assert 0 <= c.top <= 120 - c.size and 0 <= c.left <= 180 - c.size
    sizes = {c.size for c in crops}
    assert min(sizes) >= round(64 * 0.8) and max(sizes) <= round(64 * 1.25) and len(sizes) > 5
    assert 150 < sum(c.flip for c in crops) < 250


def test_small_frames_are_resized_up_to_the_crop() -> None:
    crop = choose_crop(40, 60, 64, train=False)
    assert crop.size == 40
    frames = np.zeros((2, 40, 60, 3), np.uint8)
    assert apply_crop(frames, crop, 64).shape == (2, 64, 64, 3)


# ----------------------------------------------------------------------------- rgb


def test_rgb_clip_shape_and_imagenet_normalisation() -> None:
    mean_pixel = np.round(np.asarray(IMAGENET_MEAN) * 255).astype(np.uint8)
    frames = np.broadcast_to(mean_pixel, (10, 48, 64, 3)).copy()
    frames[3] = 255
    indices = np.array([[0, 3], [3, 9]])
    clip = rgb_clip(frames, indices, choose_crop(48, 64, 32, train=False), 32)
    assert clip.shape == (2, 2, 3, 32, 32) and clip.dtype == np.float32
    assert np.abs(clip[0, 0]).max() < 0.01  # the ImageNet mean maps to ~0
    expected_white = (1 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(clip[1, 0, :, 0, 0], expected_white, rtol=1e-5)
    np.testing.assert_array_equal(clip[0, 1], clip[1, 0])


def test_rgb_clip_rejects_out_of_range_indices() -> None:
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="outside the video's 4 frames"):
        rgb_clip(frames, np.array([[0, 4]]), Crop(0, 0, 32), 32)


def test_flip_mirrors_rgb() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    plain = rgb_clip(frames, np.array([[0, 2]]), Crop(4, 4, 32, flip=False), 32)
    flipped = rgb_clip(frames, np.array([[0, 2]]), Crop(4, 4, 32, flip=True), 32)
    np.testing.assert_array_equal(flipped, plain[..., ::-1])


# ----------------------------------------------------------------------------- rgbdiff


def test_rgbdiff_values_and_end_clamping() -> None:
    frames = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(5)])  # +10 per frame
    out = rgbdiff_clip(frames, np.array([[0, 3]]), stack_length=2, crop=Crop(0, 0, 8), crop_size=8)
    assert out.shape == (1, 2, 6, 8, 8) and out.dtype == np.float32
    step = (10 / 255) / np.asarray(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(out[0, 0, :, 0, 0], np.tile(step, 2), rtol=1e-5)
    # position 3: 4-3 is a real difference, 5-4 is past the end (clamped to frame 4): zero
    np.testing.assert_allclose(out[0, 1, :3, 0, 0], step, rtol=1e-5)
    np.testing.assert_array_equal(out[0, 1, 3:], 0)


# ----------------------------------------------------------------------------- flow


def _shifted_pair(dx: int, dy: int, size: int = 96) -> np.ndarray:
    base = textured_image(size + 64, size + 64, seed=1)
    a = base[32 : 32 + size, 32 : 32 + size]
    b = base[32 - dy : 32 - dy + size, 32 - dx : 32 - dx + size]  # content moved by (dx, dy)
    return np.stack([np.repeat(a[..., None], 3, -1), np.repeat(b[..., None], 3, -1)])


@pytest.mark.parametrize("method", ["tvl1", "dis"])
def test_flow_recovers_a_known_shift(method: str) -> None:
    dx, dy = 3, -2
    flow_u8 = compute_flow(_shifted_pair(dx, dy), method)
    assert flow_u8.shape == (1, 96, 96, 2) and flow_u8.dtype == np.uint8
    interior = dequantize_flow(flow_u8)[0, 16:-16, 16:-16]
    assert abs(np.median(interior[..., 0]) - dx) < 0.5
    assert abs(np.median(interior[..., 1]) - dy) < 0.5
    assert np.mean(np.abs(interior[..., 0] - dx)) < 0.5


def test_quantisation_round_trip_and_rule() -> None:
    values = np.linspace(-FLOW_BOUND, FLOW_BOUND, 1001, dtype=np.float32)
    u8 = quantize_flow(values)
    assert u8.dtype == np.uint8 and u8[0] == 0 and u8[-1] == 255
    step = 2 * FLOW_BOUND / 255
    assert np.abs(dequantize_flow(u8) - values).max() <= step / 2 + 1e-5
    assert quantize_flow(np.array([100.0, -100.0])).tolist() == [255, 0]  # clipped to the bound


def test_flow_clip_layout_values_and_flip() -> None:
    # field f: x = +f px, y = -2 px everywhere (4 fields between 5 frames)
    fields = np.stack([np.stack([np.full((40, 40), f), np.full((40, 40), -2.0)], -1) for f in range(4)])
    flow_u8 = quantize_flow(fields)
    crop = Crop(4, 4, 32)
    out = flow_clip(flow_u8, np.array([[0, 3]]), stack_length=3, crop=crop, crop_size=32)
    assert out.shape == (1, 2, 6, 32, 32) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    step = 2 * FLOW_BOUND / 255 / FLOW_BOUND  # one quantisation step in output units
    x = out[0, 0, 0::2, 0, 0] * FLOW_BOUND
    np.testing.assert_allclose(x, [0, 1, 2], atol=step * FLOW_BOUND)  # interleaved x1, y1, x2, ...
    np.testing.assert_allclose(out[0, 0, 1::2, 0, 0], -2 / FLOW_BOUND, atol=step)
    np.testing.assert_allclose(out[0, 1, 0::2, 0, 0] * FLOW_BOUND, [3, 3, 3], atol=step * FLOW_BOUND)
    flipped = flow_clip(flow_u8, np.array([[0, 3]]), 3, Crop(4, 4, 32, flip=True), 32)
    np.testing.assert_allclose(flipped[:, :, 0::2], -out[:, :, 0::2][..., ::-1], atol=1e-6)
    np.testing.assert_allclose(flipped[:, :, 1::2], out[:, :, 1::2][..., ::-1], atol=1e-6)


def test_one_crop_selects_the_same_region_in_rgb_and_flow() -> None:
    frames = np.zeros((3, 60, 80, 3), np.uint8)
    frames[:, 20:30, 50:60] = 255  # a bright square...
    fields = np.zeros((2, 60, 80, 2), np.float32)
    fields[:, 20:30, 50:60, 0] = 10.0  # ...moving right
    crop = Crop(top=10, left=30, size=48, flip=True)  # resized 48 -> 40 and mirrored
    indices = np.array([[0]])
    rgb = rgb_clip(frames, indices, crop, 40)[0, 0, 0]
    flow = flow_clip(quantize_flow(fields), indices, 1, crop, 40)[0, 0, 0]
    bright = rgb > 0
    moving = np.abs(flow) > 0.1
    assert bright.sum() > 40
    assert (bright == moving).mean() > 0.97
    assert np.all(flow[bright & moving] < 0)  # flipped: moving left in the crop


# ----------------------------------------------------------------------------- audio


def test_audio_window_is_shifted_inside_the_track() -> None:
    n, req = SR * 5, int(1.28 * SR)
    assert audio_window(n, SR, 2.5, 1.28) == (int(round((2.5 - 0.64) * SR)), int(round((2.5 - 0.64) * SR)) + req)
    assert audio_window(n, SR, 0.1, 1.28) == (0, req)  # would cross the start
    assert audio_window(n, SR, 4.9, 1.28) == (n - req, n)  # would cross the end
    assert audio_window(SR, SR, 0.5, 1.28) == (0, SR)  # track shorter than the window


def test_short_track_is_repeated_to_fill_the_window() -> None:
    short = tone(0.5, SR, 440.0)
    repeated = np.tile(short, 3)[: int(1.28 * SR)]
    np.testing.assert_allclose(
        log_spectrogram(short, SR, [0.25], PAPER), log_spectrogram(repeated, SR, [0.64], PAPER), atol=1e-4
    )


def test_paper_spectrogram_shape_at_24k() -> None:
    # 30,720 samples, centre padding n_fft//2 = 255 per side, hop 120:
    # 1 + (30720 + 510 - 511) // 120 = 256 frames (not 257: n_fft is odd), 511 // 2 + 1 = 256 bins.
    assert spectrogram_shape(SR, UNCROPPED) == (256, 256)
    spec = log_spectrogram(tone(3.0, SR), SR, [0.5, 1.5, 2.5], UNCROPPED)
    assert spec.shape == (3, 1, 256, 256) and spec.dtype == np.float32
    assert log_spectrogram(tone(3.0, SR), SR, [1.5], dataclasses.replace(PAPER, audio_frames=300)).shape[-1] == 300


def _numpy_log_spectrogram(x: np.ndarray, n_fft: int, win: int, hop: int) -> np.ndarray:
    """The same STFT, written independently: constant centre padding, periodic Hann window
    zero-padded to n_fft in the middle, |rfft|^2, log(+1e-6). Returns (bins, frames)."""
    padded = np.pad(x.astype(np.float64), n_fft // 2)
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    frames = 1 + (len(padded) - n_fft) // hop
    cols = [np.abs(np.fft.rfft(padded[j * hop : j * hop + n_fft] * window)) ** 2 for j in range(frames)]
    return np.log(np.stack(cols, axis=1) + 1e-6)


def test_spectrogram_matches_a_numpy_stft() -> None:
    x = tone(1.28, SR, 1000.0) + 0.1 * tone(1.28, SR, 3300.0)
    ours = log_spectrogram(x, SR, [0.64], UNCROPPED)[0, 0]
    ref = _numpy_log_spectrogram(x, 511, 240, 120)
    assert ours.shape == ref.shape
    strong = ref > np.log(1e-2)  # compare where float32 rounding cannot dominate the log
    assert strong.mean() > 0.05
    np.testing.assert_allclose(ours[strong], ref[strong], atol=1e-2)
    assert np.abs(ours - ref).mean() < 0.05


def test_1khz_tone_peaks_in_the_right_bin() -> None:
    spec = log_spectrogram(tone(2.0, SR, 1000.0), SR, [1.0], PAPER)[0, 0]
    assert np.argmax(spec.mean(axis=1)) == round(1000 * 511 / SR)  # bin 21 (46.96 Hz per bin)


def test_missing_audio_gives_zeros_of_the_same_shape() -> None:
    centres = [0.5, 1.0]
    missing = log_spectrogram(np.zeros(0, np.float32), SR, centres, PAPER)
    flagged = log_spectrogram(tone(2.0, SR), SR, centres, PAPER, missing=True)
    assert missing.shape == flagged.shape == (2, 1, 256, 256)
    assert not missing.any() and not flagged.any()


def test_mel_variant_shape() -> None:
    clip = dataclasses.replace(PAPER, spectrogram="mel", n_mels=64)
    spec = log_spectrogram(tone(2.0, SR), SR, [1.0], clip)
    assert spec.shape == (1, 1, 64, 256) and np.isfinite(spec).all()


FIXTURE = Path(__file__).parent / "fixtures" / "torchaudio_spectrograms.npz"


def _fixture_clip(kind: str) -> ClipSettings:
    """The settings the fixture was made with: odd n_fft for linear, even for mel, Hann window
    shorter than n_fft (zero-padded in the middle), 12 mel filters at 8 kHz."""
    linear = ClipSettings(
        audio_window_s=0.05, n_fft=63, win_ms=5.0, hop_ms=2.5, spectrogram="linear", audio_frames=None
    )
    return linear if kind == "linear" else dataclasses.replace(linear, n_fft=64, spectrogram="mel", n_mels=12)


@pytest.mark.parametrize("kind", ["linear", "mel"])
def test_spectrogram_equals_the_torchaudio_transforms(kind: str) -> None:
    """Same values as torchaudio's Spectrogram / MelSpectrogram (HTK mel, no norm) gave, so
    caches and checkpoints made with them stay valid; the fixture holds what they returned
    for a seeded chirp plus noise (16-bit PCM), two windows per setting."""
    stored = np.load(FIXTURE)
    waveform = stored["pcm"].astype(np.float32) / 32768.0
    ours = log_spectrogram(waveform, int(stored["sample_rate"]), stored["centres"].tolist(), _fixture_clip(kind))
    expected = stored[kind]
    assert ours.shape == expected.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_mel_filterbank_is_htk_triangles() -> None:
    """Each filter peaks at 1 on its HTK-mel centre and is zero outside its neighbours."""
    fb = mel_filterbank(8000, 64, 12).numpy()  # (33 bins, 12 filters), 125 Hz per bin
    assert fb.shape == (33, 12) and fb.min() >= 0.0 and fb.max() <= 1.0
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    edges = 700.0 * (10.0 ** (np.linspace(0.0, mel(4000.0), 14) / 2595.0) - 1.0)
    freqs = np.linspace(0.0, 4000.0, 33)
    for m in range(12):
        outside = (freqs <= edges[m]) | (freqs >= edges[m + 2])
        assert not fb[outside, m].any()
        inside = ~outside
        expected = np.minimum((freqs - edges[m]) / (edges[m + 1] - edges[m]), (edges[m + 2] - freqs) / (edges[m + 2] - edges[m + 1]))
        np.testing.assert_allclose(fb[inside, m], expected[inside], atol=1e-5)


def test_train_flip_off_never_mirrors_and_keeps_the_other_draws() -> None:
    """Digits and text change class in a mirror; switching the flip off must not move the crops."""
    rng_on, rng_off = np.random.default_rng(7), np.random.default_rng(7)
    on = [choose_crop(120, 180, 64, True, rng_on, "zoom") for _ in range(200)]
    off = [choose_crop(120, 180, 64, True, rng_off, "zoom", flip=False) for _ in range(200)]
    assert any(c.flip for c in on) and not any(c.flip for c in off)
    assert [(c.top, c.left, c.size) for c in on] == [(c.top, c.left, c.size) for c in off]
