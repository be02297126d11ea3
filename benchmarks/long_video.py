"""Memory and time of decoding a long video for evaluation / ``adamml predict``.

Run: ``python benchmarks/long_video.py [--seconds 300]`` (about a minute on 2 cores).

A full decode holds every frame at the model's rate and size; a streamed decode
(``VideoDataset(stream=True)``, what ``adamml predict`` uses) keeps only the frames the
sample reads. Both decode the whole file once (streaming may need a second pass when the
packet time stamps mis-predict the frame count). Peak memory is what ``tracemalloc`` sees
(NumPy and PyAV frame buffers included) while building one sample.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import tracemalloc
from pathlib import Path

import av
import numpy as np


def write_long_video(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """An H.264 + AAC file written frame by frame, so its length costs no memory here."""
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=16_000)
        audio.layout = "mono"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            shade = ((xx + 3 * i) % 256).astype(np.uint8)
            rgb = np.stack([shade, (yy + i) % 256, 255 - shade], axis=-1).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        samples_per_frame = 1024
        total = int(seconds * 16_000)
        t0 = 0
        while t0 < total:
            n = min(samples_per_frame, total - t0)
            t = (t0 + np.arange(n)) / 16_000
            wave = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
            frame.sample_rate = 16_000
            frame.pts = t0
            for packet in audio.encode(frame):
                out.mux(packet)
            t0 += n
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
    return path


def measure(path: Path, stream: bool) -> tuple[float, float, int]:
    from adamml.config import ClipSettings, DecodeSettings
    from adamml.data.datasets import VideoDataset
    from adamml.data.types import VideoEntry

    clip = ClipSettings(num_segments=5, frames_per_segment=8, frame_stride=4, crop_size=224)
    decode = DecodeSettings(fps=25.0, short_side=256, sample_rate=24_000)
    dataset = VideoDataset(
        [VideoEntry(path=path, labels=[0], source=str(path))], ["x"], modalities=["rgb", "audio"],
        clip=clip, decode=decode, train=False, stream=stream,
    )
    tracemalloc.start()
    started = time.perf_counter()
    sample = dataset[0]
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sample["rgb"].shape[:2] == (5, 8)
    return seconds, peak / 2**20, int(sample["rgb"].numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_long_video(Path(tmp) / "long.mp4", args.seconds, 25, args.width, args.height)
        print(f"{args.seconds:.0f} s, {args.width}x{args.height} at 25 fps -> decoded at 25 fps, "
              "short side 256; sample: 5 segments x 8 frames, RGB + audio\n")
        rows = [("full decode", *measure(path, stream=False)), ("streamed", *measure(path, stream=True))]
    print(f"| {'decode':<12} | {'seconds':>8} | {'peak MiB':>9} |")
    print(f"|{'-' * 14}|{'-' * 9}:|{'-' * 10}:|")
    for name, seconds, peak, _ in rows:
        print(f"| {name:<12} | {seconds:8.2f} | {peak:9.1f} |")
    print(f"\nstreamed / full: time {rows[1][1] / rows[0][1]:.2f}, peak memory {rows[1][2] / rows[0][2]:.3f}")


if __name__ == "__main__":
    main()
