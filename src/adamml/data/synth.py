"""The embedded synthetic audio-visual dataset (``adamml synth``).

Why it exists: the demo must show that *adaptive* modality selection pays off, on 2 CPU
cores, without downloading anything. So the data is built so that each class is recognisable
from exactly one kind of evidence, and so that evidence is sometimes missing for a second.

Recipe (every clip: ``duration_s`` seconds, ``fps`` frames of ``size`` x ``size`` RGB, mono
audio at ``sample_rate``; defaults 4 s, 8 fps, 64 px, 16 kHz). 12 classes in three groups:

* **Sound classes** (``sound_*``): the picture is the same for all four, a neutral textured
  background with a soft grey blob (brighter or darker) drifting slowly from a random place.
  Only the sound differs: ``sound_steady_whistle`` a pure tone at 1.2-1.4 kHz with a light
  vibrato; ``sound_fast_beeps`` 2.5-3.0 kHz beeps, 5-7 per second; ``sound_rising_chirps``
  sweeps from ~0.5 kHz up to ~4 kHz, 3-5 per second; ``sound_high_hiss`` noise band-limited
  to 4.0-5.5 kHz.
* **Appearance classes** (``look_*``): differ only by the object visible in any single frame:
  ``look_red_disc``, ``look_green_square``, ``look_blue_triangle``, ``look_yellow_cross``
  (random position, size, angle and colour jitter; all share the same mild motion: a slow
  drift, a little camera shake and a +-2-6 % zoom wobble). They share one sound: a low hum at
  200-250 Hz with its octave and a slow tremolo.
* **Motion classes** (``move_*``): the same magenta diamond in every class, differing only in
  how it moves within each second (0.9-1.3 cycles per second, so 4 frames spread over a second
  see it): ``move_side_to_side`` (horizontal oscillation), ``move_up_and_down`` (vertical),
  ``move_in_circles`` (circling), ``move_pulsing_size`` (stays put, grows and shrinks). The
  static coordinates are drawn from the same distribution as the moving ones, so any single
  frame has the same distribution of position and size in all four classes. They share a buzz
  at 700-800 Hz with a fast tremolo (a different hum from the appearance group, so audio tells
  the group apart).

Per second, independently: with probability 0.3 the frames of that second are occluded (a
flat neutral card over the lens, or the empty background without any object), and with
probability 0.3 the sound of that second (class sound or group hum) is replaced by
near-silence or by broadband noise. Each video keeps at least one visible and one audible second (the flags are redrawn
otherwise); the flags are returned in ``RenderedClip.segment_info`` and written to
``segments.csv``. Everywhere: background colour/texture jitter, sensor noise, a faint audio
noise floor, random amplitudes, pitches, positions and sizes.

What follows for a classifier: audio alone knows the 4 sound classes and the group of the
others (~50 % of 12); a single frame knows the 4 appearance classes and the group of the others
(~50 %); a short clip also knows the motion classes (~75 %); audio + clip: ~100 %.

On disk: ``OUT_DIR/{train,val}/<class>/<id>.mp4`` (H.264 + AAC), ``OUT_DIR/{train,val}.csv``
(``path,label``, path relative to OUT_DIR), ``OUT_DIR/classes.txt`` (index order),
``OUT_DIR/segments.csv`` (per-second flags) and ``OUT_DIR/synth.json`` (the settings, so a
rerun into the same folder resumes instead of mixing two datasets).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from adamml.runtime.files import atomic_write_text

P_OCCLUDED: float = 0.3
P_SILENT: float = 0.3
SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SynthClass:
    """One class of the dataset: its group says which modality recognises it."""

    name: str
    group: str  # "sound", "look" or "move"
    description: str


CLASSES: list[SynthClass] = [
    SynthClass("sound_steady_whistle", "sound", "grey blob scene; steady 1.2-1.4 kHz tone"),
    SynthClass("sound_fast_beeps", "sound", "grey blob scene; 2.5-3 kHz beeps, 5-7 per second"),
    SynthClass("sound_rising_chirps", "sound", "grey blob scene; 0.5->4 kHz sweeps, 3-5 per second"),
    SynthClass("sound_high_hiss", "sound", "grey blob scene; noise band 4-5.5 kHz"),
    SynthClass("look_red_disc", "look", "red disc drifting slowly; low 200-250 Hz hum"),
    SynthClass("look_green_square", "look", "green square drifting slowly; low 200-250 Hz hum"),
    SynthClass("look_blue_triangle", "look", "blue triangle drifting slowly; low 200-250 Hz hum"),
    SynthClass("look_yellow_cross", "look", "yellow cross drifting slowly; low 200-250 Hz hum"),
    SynthClass("move_side_to_side", "move", "magenta diamond oscillating horizontally; 700-800 Hz buzz"),
    SynthClass("move_up_and_down", "move", "magenta diamond oscillating vertically; 700-800 Hz buzz"),
    SynthClass("move_in_circles", "move", "magenta diamond circling; 700-800 Hz buzz"),
    SynthClass("move_pulsing_size", "move", "magenta diamond growing and shrinking in place; 700-800 Hz buzz"),
]
CLASS_NAMES: list[str] = [c.name for c in CLASSES]
_BY_NAME: dict[str, SynthClass] = {c.name: c for c in CLASSES}


@dataclass
class SegmentInfo:
    """Per-second evidence flags of one clip (index = second of the clip).

    visual[s]: the frames of second s show the scene (False: occluded / empty).
    audio[s]: the group/class sound plays in second s (False: silence or broadband noise).
    For sound classes the scene never tells the class, and for look/move classes the sound
    only tells the group: the flags say whether the signal is there, not what it proves.
    visual_cover / audio_cover: what replaced the signal ("card", "empty", "silence",
    "noise"; "" where the signal is present).
    """

    visual: np.ndarray  # bool (seconds,)
    audio: np.ndarray  # bool (seconds,)
    visual_cover: list[str] = field(default_factory=list)
    audio_cover: list[str] = field(default_factory=list)


@dataclass
class RenderedClip:
    """frames: uint8 (N, size, size, 3); audio: float32 (S,) in [-1, 1]."""

    frames: np.ndarray
    audio: np.ndarray
    segment_info: SegmentInfo


@dataclass
class SynthInfo:
    """What ``generate_dataset`` wrote."""

    out_dir: Path
    classes: list[str]
    counts: dict[str, int]  # split -> number of videos
    csv_paths: dict[str, Path]  # split -> csv
    classes_path: Path
    segments_path: Path
    written: int = 0  # videos encoded by this call
    skipped: int = 0  # videos already present (resumed)


# ---------------------------------------------------------------------------------------------
# Timing helpers


def _num_seconds(duration_s: float) -> int:
    return max(1, math.ceil(duration_s - 1e-9))


def _second_of(times: np.ndarray, seconds: int) -> np.ndarray:
    return np.minimum(np.floor(times + 1e-9).astype(np.int64), seconds - 1)


def _draw_flags(rng: np.random.Generator, seconds: int, p_off: float) -> np.ndarray:
    """Bernoulli "signal present" flags, redrawn until at least one second has the signal."""
    while True:
        flags = rng.random(seconds) >= p_off
        if flags.any():
            return flags


# ---------------------------------------------------------------------------------------------
# Pictures. Float images (H, W, 3) in [0, 255]; objects are composited through anti-aliased
# uint8 masks drawn with OpenCV (fixed-point coordinates, 4 fractional bits).

_SHIFT = 4
_ONE = 1 << _SHIFT
_SUPER = 4  # masks are drawn 4x larger and area-averaged: smooth edges, no size flicker


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Neutral, slightly tinted background with low-frequency texture (|texture| <= 12)."""
    base = rng.uniform(90.0, 160.0) + rng.uniform(-8.0, 8.0, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tex = np.zeros((size, size), np.float32)
    for _ in range(2):
        fx, fy = rng.uniform(-3.0, 3.0, size=2)
        tex += rng.uniform(2.0, 5.0) * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    coarse = rng.normal(0.0, 3.0, size=(max(2, size // 8),) * 2).astype(np.float32)
    tex += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    tex = np.clip(tex, -12.0, 12.0)
    return base[None, None, :].astype(np.float32) + tex[:, :, None]


def _fixed(v: np.ndarray | float) -> np.ndarray:
    """Pixel coordinates -> fixed-point coordinates of the 4x canvas (pixel centres align)."""
    return np.round((np.asarray(v, np.float64) * _SUPER + (_SUPER - 1) / 2) * _ONE).astype(np.int32)


def _downsample(big: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def _polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    big = np.zeros((size * _SUPER, size * _SUPER), np.uint8)
    cv2.fillPoly(big, [_fixed(points).reshape(-1, 1, 2)], 255, lineType=cv2.LINE_AA, shift=_SHIFT)
    return _downsample(big, size)


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """uint8 (size, size) anti-aliased mask of a shape of "radius" r centred at (cx, cy)."""
    if shape == "disc":
        big = np.zeros((size * _SUPER, size * _SUPER), np.uint8)
        centre = tuple(int(v) for v in _fixed([cx, cy]))
        radius = round(r * _SUPER * _ONE)
        cv2.circle(big, centre, radius, 255, -1, lineType=cv2.LINE_AA, shift=_SHIFT)
        return _downsample(big, size)
    if shape == "square":
        local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * (r * 0.85)
    elif shape == "diamond":
        local = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], np.float64) * (r * 1.15)
    elif shape == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])
        local = np.stack([np.cos(a), np.sin(a)], axis=1) * (r * 1.2)
    elif shape == "cross":
        w, L = 0.35 * r, 1.05 * r
        local = np.array(
            [[-w, -L], [w, -L], [w, -w], [L, -w], [L, w], [w, w], [w, L], [-w, L],
             [-w, w], [-L, w], [-L, -w], [-w, -w]], np.float64
        )
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    rot = local @ np.array([[c, s], [-s, c]])
    return _polygon_mask(size, rot + np.array([cx, cy]))


def _composite(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    alpha = mask.astype(np.float32)[:, :, None] / 255.0
    return img * (1.0 - alpha) + colour[None, None, :] * alpha


_LOOK = {
    "look_red_disc": ("disc", (220.0, 45.0, 45.0)),
    "look_green_square": ("square", (45.0, 200.0, 55.0)),
    "look_blue_triangle": ("triangle", (45.0, 80.0, 215.0)),
    "look_yellow_cross": ("cross", (230.0, 215.0, 40.0)),
}
_MOVE_COLOUR = (215.0, 45.0, 210.0)


def _drift(rng: np.random.Generator, times: np.ndarray, lo: float, hi: float, max_move: float):
    """Linear drift between two random points of [lo, hi]^2 at most ``max_move`` px apart."""
    start = rng.uniform(lo, hi, size=2)
    step = rng.normal(size=2)
    step *= rng.uniform(0.0, max_move) / (np.linalg.norm(step) + 1e-9)
    end = np.clip(start + step, lo, hi)
    frac = (times / max(times[-1], 1e-9))[:, None] if len(times) > 1 else np.zeros((1, 1))
    return start[None, :] * (1 - frac) + end[None, :] * frac  # (N, 2)


def _render_scene(
    cls: SynthClass, rng: np.random.Generator, times: np.ndarray, size: int
) -> list[np.ndarray]:
    """Float frames (H, W, 3) of the visible scene at ``times`` (seconds), without noise."""
    bg = _background(rng, size)
    n = len(times)
    frames: list[np.ndarray] = []
    if cls.group == "sound":
        sigma = rng.uniform(0.08, 0.12) * size
        contrast = rng.uniform(60.0, 90.0) * rng.choice([-1.0, 1.0])
        pos = _drift(rng, times, 0.25 * size, 0.75 * size, 0.15 * size)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        for i in range(n):
            d2 = (xx - pos[i, 0]) ** 2 + (yy - pos[i, 1]) ** 2
            frames.append(bg + contrast * np.exp(-d2 / (2 * sigma**2))[:, :, None])
        return frames
    if cls.group == "look":
        shape, colour = _LOOK[cls.name]
        col = np.clip(np.array(colour) + rng.uniform(-20.0, 20.0, size=3), 0, 255)
        r = rng.uniform(0.10, 0.15) * size
        angle = rng.uniform(0, 2 * np.pi)  # fixed: spinning would be shape-specific motion
        margin = 1.25 * r * 1.06 + 3
        pos = _drift(rng, times, margin, size - margin, 0.15 * size)
        # hand-held camera, the same for every look class: a little shake and zoom wobble, so
        # that the only motion cue is a shared nuisance, not something a shape does
        pos = pos + rng.normal(0.0, rng.uniform(0.2, 0.6), size=pos.shape)
        zoom = 1.0 + rng.uniform(0.02, 0.06) * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * times + rng.uniform(0, 2 * np.pi))
        for i in range(n):
            mask = _shape_mask(shape, size, pos[i, 0], pos[i, 1], r * zoom[i], angle)
            frames.append(_composite(bg, mask, col))
        return frames
    # Motion classes: x = cx + A sin(phase_x), y = cy + A sin(phase_y), r = r0 (1 + 0.4 sin(phase_r));
    # one phase advances with time depending on the class, the others are random constants, so
    # a single frame has the same distribution of position and size in every motion class.
    col = np.clip(np.array(_MOVE_COLOUR) + rng.uniform(-20.0, 20.0, size=3), 0, 255)
    r0 = rng.uniform(0.10, 0.13) * size
    amp = 0.17 * size
    margin = 1.4 * 0.13 * size * 1.15 + amp + 1
    cx, cy = rng.uniform(margin, size - margin, size=2)
    freq = rng.uniform(0.9, 1.3)
    ph = rng.uniform(0, 2 * np.pi, size=3)
    wt = 2 * np.pi * freq * times
    zero = np.zeros_like(times)
    moving = {
        "move_side_to_side": (wt, zero, zero),
        "move_up_and_down": (zero, wt, zero),
        "move_in_circles": (wt, wt + ph[1] - ph[0] + rng.choice([-0.5, 0.5]) * np.pi, zero),
        "move_pulsing_size": (zero, zero, wt),
    }[cls.name]
    xs = cx + amp * np.sin(ph[0] + moving[0])
    ys = cy + amp * np.sin(ph[1] + moving[1])
    rs = r0 * (1.0 + 0.4 * np.sin(ph[2] + moving[2]))
    angle = rng.uniform(-0.2, 0.2)
    for i in range(n):
        mask = _shape_mask("diamond", size, xs[i], ys[i], rs[i], angle)
        frames.append(_composite(bg, mask, col))
    return frames


# ---------------------------------------------------------------------------------------------
# Sounds: float64 (S,) waveforms with peak amplitude ~1 before scaling.


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(freqs < lo) | (freqs > hi)] = 0.0
    out = np.fft.irfft(spec, n)
    return out / (np.abs(out).max() + 1e-12)


def _class_sound(cls: SynthClass, rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    if cls.name == "sound_steady_whistle":
        f = rng.uniform(1200.0, 1400.0)
        vib_rate, vib_depth = rng.uniform(4.0, 6.0), 0.01 * f
        phase = 2 * np.pi * f * t - vib_depth / vib_rate * np.cos(2 * np.pi * vib_rate * t)
        return np.sin(phase + rng.uniform(0, 2 * np.pi))
    if cls.name == "sound_fast_beeps":
        f, rate = rng.uniform(2500.0, 3000.0), rng.uniform(5.0, 7.0)
        pos = (t * rate + rng.uniform()) % 1.0
        env = np.clip(np.minimum(pos, 0.45 - pos) / 0.04, 0.0, 1.0)  # 45 % duty, soft edges
        return env * np.sin(2 * np.pi * f * t)
    if cls.name == "sound_rising_chirps":
        f_lo, f_hi = rng.uniform(400.0, 600.0), rng.uniform(3500.0, 4500.0)
        period = 1.0 / rng.uniform(3.0, 5.0)
        tau = (t + rng.uniform(0, period)) % period
        k = f_hi / f_lo
        phase = 2 * np.pi * f_lo * period / np.log(k) * (k ** (tau / period) - 1.0)
        env = np.sin(np.pi * tau / period) ** 0.5  # silent at the wrap, so no click
        return env * np.sin(phase)
    if cls.name == "sound_high_hiss":
        return _band_noise(rng, len(t), sr, 4000.0, 5500.0)
    if cls.group == "look":
        f0 = rng.uniform(200.0, 250.0)
        trem = 1.0 - 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t))
        wave = np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 2 * f0 * t + rng.uniform(0, 6.3))
        return trem * wave / 1.5
    if cls.group == "move":
        f0 = rng.uniform(700.0, 800.0)
        trem = 1.0 - 0.6 * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(8.0, 12.0) * t))
        return trem * np.sin(2 * np.pi * f0 * t)
    raise ValueError(f"no sound defined for class {cls.name!r}")


def _second_envelope(flags: np.ndarray, sr: int, n: int, ramp_s: float = 0.01) -> np.ndarray:
    """1 in seconds whose flag is set, 0 elsewhere, with 10 ms ramps so switching never clicks."""
    gate = np.repeat(flags.astype(np.float64), sr)[:n]
    if len(gate) < n:
        gate = np.concatenate([gate, np.full(n - len(gate), float(flags[-1]))])
    k = max(1, int(ramp_s * sr))
    padded = np.concatenate([np.full(k // 2, gate[0]), gate, np.full(k - k // 2, gate[-1])])
    csum = np.concatenate([[0.0], np.cumsum(padded)])
    return (csum[k:] - csum[:-k])[:n] / k  # moving average of length k, centred


# ---------------------------------------------------------------------------------------------
# One clip


def render_clip(
    class_name: str,
    rng: np.random.Generator,
    *,
    duration_s: float = 4.0,
    fps: float = 8.0,
    size: int = 64,
    sample_rate: int = 16_000,
    p_occluded: float = P_OCCLUDED,
    p_silent: float = P_SILENT,
) -> RenderedClip:
    """Render one clip of ``class_name`` in memory (recipe: the module docstring).

    Everything random comes from ``rng``, in a fixed order, so the same generator state gives
    byte-identical arrays. The per-second flags are drawn first, so resuming a dataset can
    recover them from the generator without rendering.
    """
    cls = _BY_NAME.get(class_name)
    if cls is None:
        raise ValueError(f"unknown synthetic class {class_name!r}: expected one of {', '.join(CLASS_NAMES)}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (H.264 needs even sizes), got {size}")
    if duration_s <= 0 or fps <= 0 or sample_rate < 12_000:
        raise ValueError(
            f"need duration_s > 0, fps > 0 and sample_rate >= 12000 (sounds reach 5.5 kHz), "
            f"got {duration_s}, {fps}, {sample_rate}"
        )
    seconds = _num_seconds(duration_s)
    visual, audible = _draw_segment_flags(rng, seconds, p_occluded, p_silent)
    visual_cover = ["" if v else str(rng.choice(["card", "empty"])) for v in visual]
    audio_cover = ["" if a else str(rng.choice(["silence", "noise"])) for a in audible]

    # --- frames (N, size, size, 3)
    n_frames = max(1, int(round(duration_s * fps)))
    times = np.arange(n_frames) / fps
    frame_second = _second_of(times, seconds)
    scene_rng, noise_rng = rng.spawn(2)
    scene = _render_scene(cls, scene_rng, times, size)
    empty = _background(scene_rng, size)  # the same family of background, without the object
    card = [
        np.full((size, size, 3), noise_rng.uniform(40.0, 200.0), np.float32)
        + noise_rng.uniform(-6.0, 6.0, size=3).astype(np.float32)
        for _ in range(seconds)
    ]
    sigma = np.float32(noise_rng.uniform(1.5, 3.0))
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    for i in range(n_frames):
        s = frame_second[i]
        img = scene[i] if visual[s] else (card[s] if visual_cover[s] == "card" else empty)
        img = img + sigma * noise_rng.standard_normal(img.shape, dtype=np.float32)
        frames[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # --- audio (S,)
    n_samples = max(1, int(round(duration_s * sample_rate)))
    t = np.arange(n_samples) / sample_rate
    sound_rng, audio_noise_rng = rng.spawn(2)
    signal = _class_sound(cls, sound_rng, t, sample_rate) * sound_rng.uniform(0.15, 0.4)
    audio = signal * _second_envelope(audible, sample_rate, n_samples)
    noisy = np.array([c == "noise" for c in audio_cover])
    if noisy.any():
        noise = audio_noise_rng.normal(0.0, audio_noise_rng.uniform(0.03, 0.12), n_samples)
        audio += noise * _second_envelope(noisy, sample_rate, n_samples)
    audio += audio_noise_rng.normal(0.0, audio_noise_rng.uniform(0.001, 0.003), n_samples)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return RenderedClip(frames, audio, SegmentInfo(visual, audible, visual_cover, audio_cover))


def _draw_segment_flags(
    rng: np.random.Generator, seconds: int, p_occluded: float, p_silent: float
) -> tuple[np.ndarray, np.ndarray]:
    return _draw_flags(rng, seconds, p_occluded), _draw_flags(rng, seconds, p_silent)


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of video ``index`` of ``split``: independent of worker count and order."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)]))


# ---------------------------------------------------------------------------------------------
# The dataset on disk


@dataclass(frozen=True)
class _Job:
    out_dir: str
    split: str
    index: int
    class_index: int
    seed: int
    duration_s: float
    fps: float
    size: int
    sample_rate: int

    @property
    def relpath(self) -> str:
        return f"{self.split}/{CLASS_NAMES[self.class_index]}/{self.split}_{self.index:05d}.mp4"


def _run_job(job: _Job) -> tuple[str, int, str, str, bool]:
    """Render and encode one video unless it exists; returns (relpath, class, flags..., wrote)."""
    cv2.setNumThreads(1)
    path = Path(job.out_dir) / job.relpath
    rng = clip_rng(job.seed, job.split, job.index)
    if path.exists():
        visual, audible = _draw_segment_flags(rng, _num_seconds(job.duration_s), P_OCCLUDED, P_SILENT)
        wrote = False
    else:
        clip = render_clip(
            CLASS_NAMES[job.class_index], rng, duration_s=job.duration_s, fps=job.fps,
            size=job.size, sample_rate=job.sample_rate,
        )
        from adamml.data.writer import write_video  # PyAV: not needed for `adamml --help`

        write_video(path, clip.frames, job.fps, clip.audio, job.sample_rate)
        visual, audible = clip.segment_info.visual, clip.segment_info.audio
        wrote = True
    bits = lambda flags: "".join("1" if f else "0" for f in flags)  # noqa: E731
    return job.relpath, job.class_index, bits(visual), bits(audible), wrote


def generate_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    train_per_class: int = 30,
    val_per_class: int = 10,
    duration_s: float = 4.0,
    fps: float = 8.0,
    size: int = 64,
    sample_rate: int = 16_000,
    workers: int | None = None,
    progress: bool = True,
) -> SynthInfo:
    """Write the embedded dataset under ``out_dir`` (layout: the module docstring).

    Rerunning into the same folder with the same settings resumes: existing videos are kept
    (they are written atomically, so none is half-written) and the CSVs, written last, are
    rewritten. Different settings in a folder that already holds a dataset are refused.
    workers: processes for rendering + encoding (None: up to 4, by CPU count; 0 or 1: none).
    They are spawned, so a script calling this with workers > 1 needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    out = Path(out_dir)
    if train_per_class < 1 or val_per_class < 0:
        raise ValueError(
            f"need train_per_class >= 1 and val_per_class >= 0, got {train_per_class}, {val_per_class}"
        )
    render_clip(CLASS_NAMES[0], np.random.default_rng(0), duration_s=min(duration_s, 0.25),
                fps=fps, size=size, sample_rate=sample_rate)  # validates settings up front
    settings = {
        "format_version": FORMAT_VERSION, "seed": int(seed), "train_per_class": int(train_per_class),
        "val_per_class": int(val_per_class), "duration_s": float(duration_s), "fps": float(fps),
        "size": int(size), "sample_rate": int(sample_rate), "classes": CLASS_NAMES,
        "p_occluded": P_OCCLUDED, "p_silent": P_SILENT,
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "synth.json"
    if manifest.exists():
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{manifest}: unreadable ({exc}); delete it or pick another folder") from exc
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(
                f"{manifest}: {out} already holds a synthetic dataset made with other settings "
                f"({', '.join(changed)} differ); pick an empty folder or delete the old one"
            )
    else:
        atomic_write_text(manifest, json.dumps(settings, indent=2) + "\n")

    per_class = {"train": train_per_class, "val": val_per_class}
    jobs = [
        _Job(str(out), split, c * per_class[split] + j, c, seed, duration_s, fps, size, sample_rate)
        for split in SPLITS
        for c in range(len(CLASS_NAMES))
        for j in range(per_class[split])
    ]
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    results = _map(_run_job, jobs, workers, progress)

    rows: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    seg_lines = io.StringIO()
    seg_writer = csv.writer(seg_lines, lineterminator="\n")
    seg_writer.writerow(["path", "label", "visual", "audio"])
    for relpath, class_index, visual, audible in ((r[0], r[1], r[2], r[3]) for r in results):
        split = relpath.split("/", 1)[0]
        rows[split].append((relpath, CLASS_NAMES[class_index]))
        seg_writer.writerow([relpath, CLASS_NAMES[class_index], visual, audible])
    classes_path = out / "classes.txt"
    atomic_write_text(classes_path, "".join(name + "\n" for name in CLASS_NAMES))
    segments_path = out / "segments.csv"
    atomic_write_text(segments_path, seg_lines.getvalue())
    csv_paths = {}
    for split in SPLITS:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows(rows[split])
        csv_paths[split] = out / f"{split}.csv"
        atomic_write_text(csv_paths[split], buf.getvalue())
    written = sum(1 for r in results if r[4])
    return SynthInfo(
        out_dir=out, classes=list(CLASS_NAMES), counts={s: len(rows[s]) for s in SPLITS},
        csv_paths=csv_paths, classes_path=classes_path, segments_path=segments_path,
        written=written, skipped=len(results) - written,
    )


def _map(fn: Callable[[_Job], tuple], jobs: list[_Job], workers: int, progress: bool) -> list[tuple]:
    """Ordered map, in worker processes when asked; "spawn" so a caller holding torch threads
    (the demo) cannot deadlock a forked child."""
    bar = tqdm(total=len(jobs), desc="synth", unit="video", disable=not progress)
    try:
        if workers <= 1:
            out = []
            for job in jobs:
                out.append(fn(job))
                bar.update()
            return out
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            out = []
            for result in pool.map(fn, jobs, chunksize=8):
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()


__all__ = [
    "CLASSES", "CLASS_NAMES", "P_OCCLUDED", "P_SILENT", "RenderedClip", "SegmentInfo",
    "SynthClass", "SynthInfo", "clip_rng", "generate_dataset", "render_clip",
]
