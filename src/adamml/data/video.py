"""Decode any video file (or an official frame folder) into a :class:`DecodedVideo`.

Everything training needs comes from one pass over the file with PyAV: frames resampled to a
fixed rate and resized, the audio track downmixed and resampled, and optionally optical
flow. Errors name the file and say what is wrong, because a dataset of thousands of videos
always holds a few broken ones and the user has to find them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np

from adamml.config import DecodeSettings
from adamml.data.types import VideoDecodeError
from adamml.media import DecodedVideo
from adamml.modalities.flow import compute_flow

__all__ = [
    "MissingAudioWarning",
    "SparseFrames",
    "decode_video",
    "decode_frame_folder",
    "decode_audio_file",
    "resize_short_side",
]


class MissingAudioWarning(UserWarning):
    """A video has no audio track: its spectrogram will be all zeros."""


def resize_short_side(image: np.ndarray, short_side: int | None) -> np.ndarray:
    """Resize (H, W, C) so min(H, W) == short_side, keeping the aspect (INTER_AREA)."""
    if not short_side or short_side <= 0:
        return image
    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    if h <= w:
        new_h, new_w = short_side, max(1, round(w * short_side / h))
    else:
        new_h, new_w = max(1, round(h * short_side / w)), short_side
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoDecodeError(f"{path}: file not found")
    if path.is_dir():
        raise VideoDecodeError(f"{path}: is a folder, not a video file (use decode_frame_folder)")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(
            f"{path}: cannot be opened as a video ({exc}); the file is corrupt, truncated or "
            "not a media file"
        ) from None


class SparseFrames:
    """Some frames of a video, indexed like the full uint8 (N, H, W, C) array.

    What a long video decodes to when only a sample's frames are kept (``decode_video`` with
    ``keep_frames``): memory stays a few dozen frames whatever the length. Supports ``len``,
    ``shape``, ``dtype``, ``ndim`` and integer / integer-array indexing of kept frames.
    """

    def __init__(self, num_frames: int, frame_shape: tuple[int, ...], kept: dict[int, np.ndarray], where: str) -> None:
        self.shape = (int(num_frames), *(int(v) for v in frame_shape))
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.kept = kept
        self._where = where

    def __len__(self) -> int:
        return self.shape[0]

    def _get(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"{self._where}: frame {index} out of range for {self.shape[0]}")
        if index not in self.kept:
            raise KeyError(f"{self._where}: frame {index} was not kept while decoding")
        return self.kept[index]

    def __getitem__(self, key: int | np.ndarray) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self._get(int(key) + (self.shape[0] if key < 0 else 0))
        indices = np.asarray(key).reshape(-1)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        for j, i in enumerate(indices):
            out[j] = self._get(int(i))
        return out


class _FrameResampler:
    """Pick, for each target time k/fps, the decoded frame nearest to it (ties: the earlier).

    Only the chosen frames are converted and resized, so a 60 fps source subsampled to 8 fps
    costs little more than decoding. With ``keep`` (output indices), only those are converted
    and stored: the others are counted, never materialised.
    """

    def __init__(self, fps: float, short_side: int | None, keep: set[int] | None = None) -> None:
        self.fps = fps
        self.short_side = short_side
        self.keep = keep
        self.out: list[np.ndarray] = []
        self.kept: dict[int, np.ndarray] = {}
        self.count = 0
        self.prev: tuple[float, av.VideoFrame] | None = None
        self._array_of: av.VideoFrame | None = None  # the frame _cached was converted from
        self._cached: np.ndarray | None = None

    def _emit(self, frame: av.VideoFrame) -> None:
        if self.keep is None:
            self.out.append(self._array(frame))
        elif self.count in self.keep:
            self.kept[self.count] = self._array(frame)
        self.count += 1

    def _array(self, frame: av.VideoFrame) -> np.ndarray:
        if self._array_of is not frame:
            self._cached = resize_short_side(upright(frame.to_ndarray(format="rgb24"), frame_rotation(frame)), self.short_side)
            self._array_of = frame
        return self._cached  # type: ignore[return-value]

    def _target(self) -> float:
        return self.count / self.fps

    def push(self, t: float, frame: av.VideoFrame) -> None:
        while self._target() <= t:
            target = self._target()
            if self.prev is not None and abs(self.prev[0] - target) <= abs(t - target):
                chosen = self.prev[1]
            else:
                chosen = frame
            self._emit(chosen)
        self.prev = (t, frame)

    def finish(self, end_time: float) -> None:
        """Fill targets up to ``end_time`` (exclusive) with the last frame. The frames are
        then in ``out`` (all) or ``kept`` (with ``keep``); ``count`` says how many there are."""
        if self.prev is None:
            return
        while self._target() < end_time - 1e-6:
            self._emit(self.prev[1])
        if not self.count:  # a single frame shorter than one output period
            self._emit(self.prev[1])
        self.frame_shape = self._array(self.prev[1]).shape


def frame_rotation(frame: av.VideoFrame) -> int:
    """Clockwise degrees (0, 90, 180, 270) the frame must turn to be shown upright: its
    display matrix, as a phone records a portrait clip (FFmpeg's ``rotation`` is counter-clockwise)."""
    try:
        rotation = frame.rotation
    except AttributeError:  # PyAV before 14
        return 0
    return round(-float(rotation or 0) / 90) % 4 * 90


def upright(image: np.ndarray, clockwise: int) -> np.ndarray:
    """``image`` turned ``clockwise`` degrees (a multiple of 90), as a player shows it."""
    turn = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}.get(clockwise)
    return image if turn is None else np.ascontiguousarray(cv2.rotate(image, turn))


class _AudioCollector:
    """Downmix to mono and resample with FFmpeg's swresample (handles 5.1 and any rate);
    remembers when the first sample plays, so the track can be placed against the video."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.start: float | None = None  # seconds, the stream's clock

    def push(self, frame: av.AudioFrame | None) -> None:
        if frame is not None and self.start is None and frame.pts is not None and frame.time is not None:
            self.start = float(frame.time)
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self, video_start: float | None = None) -> np.ndarray:
        """The waveform from the video's first frame on: a track that starts later is led by
        silence, one that starts earlier loses what plays before the picture."""
        self.push(None)  # flush
        if not self.chunks:
            return np.zeros(0, np.float32)
        waveform = np.clip(np.concatenate(self.chunks).astype(np.float32), -1.0, 1.0)
        if video_start is not None and self.start is not None:
            shift = round((self.start - video_start) * self.sample_rate)
            if shift > 0:
                waveform = np.concatenate([np.zeros(shift, np.float32), waveform])
            elif shift < 0:
                waveform = waveform[-shift:]
        return waveform


def _frame_times(frames: Iterator[av.VideoFrame], rate: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """Presentation times in seconds from the first frame; robust to missing or bad pts."""
    start: float | None = None
    last = -math.inf
    for index, frame in enumerate(frames):
        t = float(frame.time) if frame.pts is not None and frame.time is not None else None
        if t is None:
            t = (last + 1.0 / rate) if last > -math.inf else index / rate
        if start is None:
            start = t
        t -= start
        if t <= last:  # duplicated / non-monotonic timestamps: assume one frame period
            t = last + 1.0 / rate
        last = t
        yield t, frame


def decode_video(
    path: str | Path,
    settings: DecodeSettings,
    *,
    keep_frames: Callable[[int], np.ndarray] | None = None,
) -> DecodedVideo:
    """Decode frames (uint8 (N, H, W, 3) at ``settings.fps``) and mono audio from a file.

    Frames: the frame nearest each time k/fps, resized to ``settings.short_side``.
    Audio: float32 (S,) at ``settings.sample_rate``. Flow (uint8 (N-1, H, W, 2)) when
    ``settings.flow`` names a method.

    ``keep_frames(N)`` -> the frame indices the caller will read (any shape): then frames and
    flow come back as :class:`SparseFrames` holding only those (and their neighbours), so an
    hour-long video costs the memory of one sample. N is first read from the packets' time
    stamps without decoding; if decoding finds another N, the file is decoded again with it.
    """
    path = Path(path)
    if settings.fps is None:  # the source frame rate: every decoded frame is kept
        settings = dataclasses.replace(settings, fps=source_frame_rate(path))
    if settings.fps <= 0:
        raise ValueError(f"{path}: fps must be positive, got {settings.fps}")
    if keep_frames is None:
        resampler, waveform, meta, has_audio = _decode_pass(path, settings, None)
        frames = np.stack(resampler.out)
        num_frames = len(frames)
    else:
        def wanted(n: int) -> set[int]:
            idx = np.unique(np.clip(np.asarray(keep_frames(n), np.int64).reshape(-1), 0, n - 1))
            if settings.flow:  # a flow field needs both its frames, the last field included
                idx = np.unique(np.clip(np.concatenate([idx - 1, idx, idx + 1]), 0, n - 1))
            return set(idx.tolist())

        keep = wanted(max(1, _count_frames(path, settings.fps)))
        resampler, waveform, meta, has_audio = _decode_pass(path, settings, keep)
        num_frames = resampler.count
        if not wanted(num_frames) <= keep:
            keep = wanted(num_frames)
            resampler, waveform, meta, has_audio = _decode_pass(path, settings, keep)
        frames = SparseFrames(num_frames, resampler.frame_shape, resampler.kept, str(path))

    audio_missing = not has_audio or waveform.size == 0
    if audio_missing:
        _missing_audio(path, settings, "has no audio track" if not has_audio else "audio track is empty")
    flow = None
    if settings.flow:
        if isinstance(frames, SparseFrames):
            fields = {
                j: compute_flow(np.stack([frames.kept[j], frames.kept[j + 1]]), settings.flow)[0]
                for j in sorted(frames.kept) if j + 1 in frames.kept
            }
            flow = SparseFrames(num_frames - 1, (*frames.shape[1:3], 2), fields, str(path))
        else:
            flow = compute_flow(frames, settings.flow)
    return DecodedVideo(
        frames=frames,
        fps=float(settings.fps),
        audio=waveform,
        sample_rate=settings.sample_rate,
        audio_missing=audio_missing,
        flow=flow,
        source=str(path),
        meta=meta,
    )


def _frame_rate(stream: av.VideoStream) -> float:
    """The source frame rate, 25 when the container does not say."""
    return float(stream.average_rate or stream.guessed_rate or 25.0) or 25.0


# The reference's default --fps: the frame clock its audio windows are placed with.
REFERENCE_FRAME_CLOCK = 29.97


def source_frame_rate(path: str | Path) -> float:
    """The frame rate a video file declares (25 when it does not say)."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise VideoDecodeError(f"{path}: has no video stream (streams found: {kinds})")
        return _frame_rate(container.streams.video[0])


def _count_frames(path: Path, fps: float) -> int:
    """Output frames a decode at ``fps`` will give, from packet time stamps (no decoding).

    A guess: decode_video checks it against what decoding finds.
    """
    with _open(path) as container:
        if not container.streams.video:
            return 1
        stream = container.streams.video[0]
        rate = _frame_rate(stream)
        times = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None and packet.time_base is not None:
                    times.append(float(packet.pts * packet.time_base))
        except (av.error.FFmpegError, OSError):
            pass  # a damaged file: the decoding pass reports it by name
    if not times:
        return 1
    span = max(times) - min(times) + 1.0 / rate
    return max(1, math.ceil(span * fps - 1e-6))


def _video_frames(container, streams, audio: _AudioCollector | None, path) -> Iterator[av.VideoFrame]:
    """Demux once: yield the video frames, hand audio frames to ``audio`` on the way (so one
    pass reads both streams); a packet that fails to decode is an error naming the stream."""
    for packet in container.demux(streams):
        try:
            decoded = packet.decode()
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(
                f"{path}: {packet.stream.type} stream is corrupt at t={_packet_time(packet)} ({exc})"
            ) from None
        for frame in decoded:
            if packet.stream.type == "video":
                yield frame
            elif audio is not None:
                audio.push(frame)


def _decode_pass(path: Path, settings: DecodeSettings, keep: set[int] | None):
    """One pass over the file: the frame resampler (holding the frames), audio, metadata."""
    container = _open(path)
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise VideoDecodeError(f"{path}: has no video stream (streams found: {kinds})")
        vstream = container.streams.video[0]
        vstream.thread_type = "AUTO"
        astream = container.streams.audio[0] if container.streams.audio else None
        rate = _frame_rate(vstream)

        resampler = _FrameResampler(settings.fps, settings.short_side, keep)
        audio = _AudioCollector(settings.sample_rate) if astream is not None else None
        streams = [vstream] + ([astream] if astream is not None else [])

        last_t = None
        video_start = None  # the first frame's time: where the audio is placed from
        rotation = 0
        try:
            for t, frame in _frame_times(_video_frames(container, streams, audio, path), rate):
                if last_t is None:
                    video_start = float(frame.time) if frame.pts is not None and frame.time is not None else None
                    rotation = frame_rotation(frame)
                resampler.push(t, frame)
                last_t = t
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoDecodeError(f"{path}: decoding failed ({exc}); the file may be truncated") from None
        if last_t is None:
            raise VideoDecodeError(f"{path}: no video frame could be decoded (corrupt or truncated file)")
        _check_complete(path, container, vstream, astream, last_t + 1.0 / rate, rate)
        resampler.finish(last_t + 1.0 / rate)
        waveform = audio.finish(video_start) if audio is not None else np.zeros(0, np.float32)
        meta = {
            "rotation": rotation,
            "audio_offset_s": round(audio.start - video_start, 4) if audio is not None and audio.start is not None and video_start is not None else 0.0,
            "source_fps": rate,
            "source_size": [vstream.codec_context.width, vstream.codec_context.height],
            "video_codec": vstream.codec_context.name,
            "audio_codec": astream.codec_context.name if astream is not None else None,
            "audio_channels": astream.codec_context.channels if astream is not None else 0,
            "audio_source_rate": astream.codec_context.sample_rate if astream is not None else 0,
        }

    return resampler, waveform, meta, astream is not None


def declared_duration(container, vstream, astream) -> float | None:
    """The picture's length in seconds as the file's header states it: the video stream's own,
    else the container's when nothing else could make it longer; None when unstated."""
    if vstream.duration and vstream.time_base:
        return float(vstream.duration * vstream.time_base)
    if astream is None and container.duration:
        return container.duration / 1_000_000
    return None


def _check_complete(path: Path, container, vstream, astream, decoded_s: float, rate: float) -> None:
    """A file cut short (a download stopped midway) whose header still declares the whole
    length is an error, not a short video: decoded less than 90 % of it (less two frames)."""
    declared = declared_duration(container, vstream, astream)
    if declared is not None and decoded_s + 2.0 / rate < 0.9 * declared:
        raise VideoDecodeError(
            f"{path}: truncated: {decoded_s:.2f} s of video decoded of the {declared:.2f} s its header "
            "declares (a download or copy cut short?)"
        )


def _packet_time(packet: av.Packet) -> str:
    try:
        return f"{float(packet.pts * packet.time_base):.2f}s"
    except (TypeError, ValueError):
        return "?"


def _missing_audio(path: Path, settings: DecodeSettings, problem: str) -> None:
    if settings.strict_audio:
        raise VideoDecodeError(f"{path}: {problem} (strict audio: every video must have sound)")
    warnings.warn(f"{path}: {problem}; its spectrogram will be all zeros", MissingAudioWarning, stacklevel=3)


def decode_audio_file(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of any file PyAV reads to float32 mono (S,) at ``sample_rate``."""
    path = Path(path)
    container = _open(path)
    with container:
        if not container.streams.audio:
            raise VideoDecodeError(f"{path}: has no audio stream")
        collector = _AudioCollector(sample_rate)
        try:
            for frame in container.decode(container.streams.audio[0]):
                collector.push(frame)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(f"{path}: audio decoding failed ({exc})") from None
        return collector.finish()


_IMG_RE = re.compile(r"^img_(\d+)\.jpg$")


def _read_image(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise VideoDecodeError(f"{path}: cannot be read as an image (missing or corrupt)")
    return image


def decode_frame_folder(
    folder: str | Path,
    settings: DecodeSettings,
    start: int | None = None,
    end: int | None = None,
    audio_path: str | Path | None = None,
) -> DecodedVideo:
    """Read the official AdaMML/TSN layout: ``img_00001.jpg``..., ``x_/y_00001.jpg``, a .wav.

    ``start``/``end`` are 1-based inclusive frame numbers (from the list file); by default
    every ``img_*.jpg`` in the folder. Frames are taken as already at ``settings.fps``. Flow
    JPEGs are kept as the quantised uint8 flow (bound 20), (N-1, H, W, 2). The audio comes
    from ``audio_path``, else ``<folder>.wav`` beside it or ``<folder>/audio.wav`` when present.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoDecodeError(f"{folder}: frame folder not found")
    if settings.fps is None:  # frames as extracted; audio placed with the reference's clock
        settings = dataclasses.replace(settings, fps=REFERENCE_FRAME_CLOCK)
    if start is None or end is None:
        numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _IMG_RE.match(p.name)))
        if not numbers:
            raise VideoDecodeError(f"{folder}: no img_NNNNN.jpg frames in this folder")
        start = numbers[0] if start is None else start
        end = numbers[-1] if end is None else end
    if end < start:
        raise VideoDecodeError(f"{folder}: empty frame range {start}..{end}")
    frames = []
    for n in range(start, end + 1):
        bgr = _read_image(folder / f"img_{n:05d}.jpg", cv2.IMREAD_COLOR)
        frames.append(resize_short_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), settings.short_side))
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoDecodeError(f"{folder}: frames have different sizes {sorted(shapes)}")
    frames_arr = np.stack(frames)

    flow = None
    if (folder / f"x_{start:05d}.jpg").exists():
        fields = []
        for n in range(start, end):  # N-1 fields between N frames
            xp, yp = folder / f"x_{n:05d}.jpg", folder / f"y_{n:05d}.jpg"
            if not xp.exists():
                break
            x = _read_image(xp, cv2.IMREAD_GRAYSCALE)
            y = _read_image(yp, cv2.IMREAD_GRAYSCALE)
            xy = np.stack([x, y], axis=-1)
            if xy.shape[:2] != frames_arr.shape[1:3]:
                xy = cv2.resize(xy, frames_arr.shape[2:0:-1], interpolation=cv2.INTER_AREA)
            fields.append(xy)
        if fields:
            while len(fields) < len(frames) - 1:  # a short flow folder: repeat the last field
                fields.append(fields[-1])
            flow = np.stack(fields)
    if flow is None and settings.flow:
        flow = compute_flow(frames_arr, settings.flow)

    candidates = [Path(audio_path)] if audio_path is not None else [
        folder.with_name(folder.name + ".wav"),
        folder / "audio.wav",
    ]
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        waveform = decode_audio_file(found, settings.sample_rate)
    else:
        waveform = np.zeros(0, np.float32)
    audio_missing = waveform.size == 0
    if audio_missing:
        problem = f"audio file {candidates[0]} not found" if found is None else "audio file is empty"
        _missing_audio(folder, settings, problem)
    return DecodedVideo(
        frames=frames_arr,
        fps=float(settings.fps),
        audio=waveform,
        sample_rate=settings.sample_rate,
        audio_missing=audio_missing,
        flow=flow,
        source=str(folder),
        meta={"start": start, "end": end, "audio_file": str(found) if found else None},
    )


class _ArrayFrame:
    """A decoded RGB array where the resampler expects a PyAV frame."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def to_ndarray(self, format: str = "rgb24") -> np.ndarray:  # noqa: A002 - PyAV's name
        return self.array


def resample_frames(frames: np.ndarray, fps: float, settings: DecodeSettings) -> np.ndarray:
    """Decoded RGB frames uint8 (N, H, W, 3) at ``fps`` -> what :func:`decode_video` gives for a
    file holding them: the frame nearest each time k/``settings.fps`` (ties: the earlier),
    resized to ``settings.short_side``."""
    target = float(settings.fps or fps)
    resampler = _FrameResampler(target, settings.short_side)
    for i, frame in enumerate(frames):
        resampler.push(i / fps, _ArrayFrame(frame))
    resampler.finish((len(frames) - 1) / fps + 1.0 / fps)
    return np.stack(resampler.out)


def resample_audio(samples: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 samples at ``sample_rate`` -> float32 at ``target_rate``, with the resampler
    decoding a file uses (FFmpeg's swresample), clipped to [-1, 1] as decoding clips."""
    collector = _AudioCollector(int(target_rate))
    if len(samples):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32).reshape(1, -1),
                                           format="flt", layout="mono")
        frame.sample_rate = int(sample_rate)
        frame.pts = None
        collector.push(frame)
    return collector.finish()


@dataclasses.dataclass
class MediaChunk:
    """What one step of :func:`stream_media` decoded: output frames uint8 (H, W, 3) at the
    settings' rate and mono float32 audio pieces at its sample rate (not yet clipped), since
    the previous chunk; ``final`` on the last one (the file is done, the resampler flushed)."""

    frames: list[np.ndarray]
    audio: list[np.ndarray]
    has_audio: bool
    final: bool = False


def stream_media(path: str | Path, settings: DecodeSettings) -> Iterator[MediaChunk]:
    """Decode a file front to back as :func:`decode_video` does (the same frames and audio),
    handing them on as they come, so a caller holds only what it still needs (long videos)."""
    path = Path(path)
    fps, rate_out = float(settings.fps), int(settings.sample_rate)
    container = _open(path)
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: has no video stream")
        vstream = container.streams.video[0]
        vstream.thread_type = "AUTO"
        astream = container.streams.audio[0] if container.streams.audio else None
        streams = [vstream] + ([astream] if astream is not None else [])
        resampler = _FrameResampler(fps, settings.short_side)
        audio = _AudioCollector(rate_out) if astream is not None else None

        video_start: float | None = None  # the first frame's time: the audio is placed from it
        head: int | None = None  # samples still to drop (< 0) from the track's head, once placed

        def placed(pieces: list[np.ndarray]) -> list[np.ndarray]:
            """The track placed against the picture as :meth:`_AudioCollector.finish` places
            it: led by silence when it starts later, its head dropped when it starts earlier."""
            nonlocal head
            if head is None:
                if not pieces or audio is None or audio.start is None or video_start is None:
                    return pieces
                head = round((audio.start - video_start) * rate_out)
                if head > 0:
                    pieces, head = [np.zeros(head, np.float32), *pieces], 0
            while head < 0 and pieces:
                drop = min(-head, len(pieces[0]))
                pieces = [pieces[0][drop:], *pieces[1:]] if drop < len(pieces[0]) else pieces[1:]
                head += drop
            return pieces

        def chunk(final: bool = False) -> MediaChunk:
            out = MediaChunk(list(resampler.out), placed(list(audio.chunks)) if audio is not None else [],
                             audio is not None, final)
            resampler.out.clear()
            if audio is not None:
                audio.chunks.clear()
            return out

        last_t = None
        try:
            for t, frame in _frame_times(_video_frames(container, streams, audio, path), _frame_rate(vstream)):
                if last_t is None and frame.pts is not None and frame.time is not None:
                    video_start = float(frame.time)
                resampler.push(t, frame)
                last_t = t
                yield chunk()
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoDecodeError(f"{path}: decoding failed ({exc}); the file may be truncated") from None
        if last_t is None:
            raise VideoDecodeError(f"{path}: no video frame could be decoded")
        resampler.finish(last_t + 1.0 / _frame_rate(vstream))
        rest = audio.finish() if audio is not None else None  # the resampler's flush, clipped
        final = MediaChunk(list(resampler.out), placed([rest]) if rest is not None else [], audio is not None, True)
        resampler.out.clear()
        yield final
