"""Write real MP4 files (H.264 video + AAC audio) with PyAV.

Used by the synthetic dataset and by the tests, which need genuine media files rather than
arrays pretending to be videos.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from adamml.runtime.files import atomic_path


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
    *,
    crf: int = 23,
    audio_bitrate: int = 64_000,
) -> Path:
    """Encode ``frames`` uint8 (N, H, W, 3) and optional ``audio`` float (S,) or (channels, S).

    H and W must be even (H.264 with yuv420p). The file is written to a temporary name and
    renamed, so a killed run never leaves a half-written video behind.
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{path}: H.264 needs even frame sizes, got {w}x{h}")
    rate = Fraction(fps).limit_denominator(1000)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
        vstream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        astream = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim == 1:
                audio = audio[None, :]
            layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(audio.shape[0])
            if layout is None:
                raise ValueError(f"{path}: unsupported number of audio channels {audio.shape[0]}")
            astream = container.add_stream("aac", rate=sample_rate, layout=layout)
            astream.bit_rate = audio_bitrate
        for frame in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            planar = np.clip(audio, -1.0, 1.0).astype(np.float32)
            chunk = 1024
            for start in range(0, planar.shape[1], chunk):
                block = np.ascontiguousarray(planar[:, start : start + chunk])
                aframe = av.AudioFrame.from_ndarray(block, format="fltp", layout=astream.layout.name)
                aframe.sample_rate = sample_rate
                aframe.pts = start
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path
