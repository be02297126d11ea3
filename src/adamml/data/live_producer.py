"""A stream produced in real time, to try live reading on: MPEG-TS (H.264 + AAC) written
into a file at the clip's frame rate and flushed every packet, as a camera relay or
``ffmpeg -re ... -f mpegts`` would, so a reader following the file sees it arrive.

Pictures: ``flat`` (one grey level per frame, stepping), ``synthetic`` (a drifting texture)
or ``clip`` (a real clip's frames, looped). Sound: a tone (``flat``: 440 Hz; ``synthetic``:
its pitch steps every second) or the clip's own audio, looped. Run it as a separate process
(:func:`start`), so that writing does not compete with the reader for the interpreter::

    python -m adamml.data.live_producer out.ts --seconds 20 --kind synthetic
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["write_stream", "start", "KINDS"]

KINDS = ("flat", "synthetic", "clip")


def _clip_media(clip: Path, width: int, height: int, rate: int, layout: str) -> tuple[list, np.ndarray]:
    """The clip's frames (at the output size) and its audio (planar float at ``rate``), decoded once."""
    frames, sound = [], []
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    with av.open(str(clip)) as src:
        for frame in src.decode(src.streams.video[0]):
            frames.append(frame.reformat(width=width, height=height, format="yuv420p"))
    with av.open(str(clip)) as src:
        if src.streams.audio:
            for frame in src.decode(src.streams.audio[0]):
                for piece in resampler.resample(frame):
                    sound.append(piece.to_ndarray())
    channels = 1 if layout == "mono" else 2
    return frames, np.concatenate(sound, axis=1) if sound else np.zeros((channels, rate), np.float32)


def write_stream(path: str | Path, seconds: float, *, kind: str = "synthetic", fps: int = 25, width: int = 640,
                 height: int = 360, sample_rate: int = 48000, layout: str = "stereo", pace: float = 1.0,
                 clip: str | Path | None = None) -> float:
    """Write ``seconds`` of stream to ``path`` at ``pace`` times real time; returns how far
    behind its schedule the writer fell at worst (seconds), so a reader's lag can be told
    apart from the producer's."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    channels = 1 if layout == "mono" else 2
    out = av.open(str(path), "w", format="mpegts", options={"flush_packets": "1"})
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = {"preset": "ultrafast", "tune": "zerolatency"}
    audio = out.add_stream("aac", rate=sample_rate, layout=layout)
    picture: Callable[[int], av.VideoFrame]
    if kind == "clip":
        if clip is None:
            raise ValueError("kind 'clip' needs a clip")
        frames, sound = _clip_media(Path(clip), width, height, sample_rate, layout)
        picture = lambda i: frames[i % len(frames)]  # noqa: E731

        def block(at: int) -> np.ndarray:
            at %= max(1, sound.shape[1] - 1024)
            piece = sound[:, at : at + 1024]
            return np.ascontiguousarray(np.pad(piece, ((0, 0), (0, 1024 - piece.shape[1]))))
    else:
        base = (np.random.default_rng(0).random((height, width + 4000)) * 255).astype(np.uint8)

        def picture(i: int) -> av.VideoFrame:
            if kind == "flat":
                image = np.full((height, width, 3), (i * 9) % 255, np.uint8)
            else:
                gray = base[:, (2 * i) % 4000 : (2 * i) % 4000 + width]
                image = np.stack([gray, 255 - gray, gray // 2], -1)
            return av.VideoFrame.from_ndarray(image, format="rgb24")

        def block(at: int) -> np.ndarray:
            t = np.arange(at, at + 1024) / sample_rate
            pitch = 440.0 if kind == "flat" else 300 + 50 * (int(at / sample_rate) % 8)
            tone = (0.5 if kind == "flat" else 0.3) * np.sin(2 * np.pi * pitch * t)
            return np.repeat(tone[None], channels, axis=0).astype(np.float32)

    start, sent, late = time.perf_counter(), 0, 0.0
    for i in range(int(seconds * fps)):
        frame = picture(i)
        frame.pts, frame.time_base = i, Fraction(1, fps)  # a looped clip's own stamps would restart
        for packet in video.encode(frame):
            out.mux(packet)
        while sent < (i + 1) * sample_rate // fps:
            piece = av.AudioFrame.from_ndarray(block(sent), format="fltp", layout=layout)
            piece.sample_rate, piece.pts = sample_rate, sent
            sent += 1024
            for packet in audio.encode(piece):
                out.mux(packet)
        delay = start + (i + 1) / fps / pace - time.perf_counter()
        late = max(late, -delay)
        if delay > 0:
            time.sleep(delay)
    for stream in (video, audio):
        for packet in stream.encode():
            out.mux(packet)
    out.close()
    return late


def start(path: str | Path, seconds: float, *, report: str | Path | None = None, **options) -> subprocess.Popen:
    """Start a producer process writing ``path`` (:func:`write_stream`'s ``options``); it
    writes how late it fell at worst into ``report`` (a file) when given."""
    words = [sys.executable, "-m", "adamml.data.live_producer", str(path), "--seconds", str(seconds)]
    for name, value in options.items():
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    if report is not None:
        words += ["--report", str(report)]
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding adamml
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(words, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--kind", choices=KINDS, default="synthetic")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--sample-rate", type=int, default=48000)
    parser.add_argument("--layout", choices=("mono", "stereo"), default="stereo")
    parser.add_argument("--pace", type=float, default=1.0, help="times real time")
    parser.add_argument("--clip", default=None, help="kind clip: the clip to loop")
    parser.add_argument("--report", default=None, help="write the worst lateness (seconds) here")
    args = parser.parse_args(argv)
    late = write_stream(args.path, args.seconds, kind=args.kind, fps=args.fps, width=args.width, height=args.height,
                        sample_rate=args.sample_rate, layout=args.layout, pace=args.pace, clip=args.clip)
    if args.report:
        Path(args.report).write_text(f"{late:.4f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
