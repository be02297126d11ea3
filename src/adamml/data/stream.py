"""Live sources through PyAV: URLs, cameras, a file still being written, standard input.

A source is read front to back once and never seeked: frames are resampled to the model's
frame rate and resized as they arrive (only the frames kept are converted), and the audio
is downmixed and resampled as it comes. Audio is placed by its time stamps, not by counting:
its first sample goes where its time says relative to the first video frame, and a gap or
an overlap of more than :data:`AUDIO_SLACK_S` (a dropped packet, a restarted encoder) is
padded with silence or cut, so audio and video stay aligned over hours.

What a source string means (:func:`open_source`):

- ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``srt://``: a network stream;
- ``/dev/videoN``: a V4L2 camera;
- ``-``: a container on standard input (MPEG-TS, MKV, fragmented MP4, ...);
- any other path: a file, followed while it grows (as ``tail -f``) until it has not grown
  for ``follow_idle_s``; written as MPEG-TS, MKV or fragmented MP4 it can be read while
  another program writes it. A finished file is read the same way, to its end.
"""

from __future__ import annotations

import math
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from adamml.config import DecodeSettings
from adamml.data.types import VideoDecodeError
from adamml.data.video import _frame_rate, _FrameResampler

__all__ = ["StreamError", "StreamFrame", "StreamAudio", "LiveSource", "FollowedFile", "open_source", "AUDIO_SLACK_S"]

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
# Audio more than this far from where its time stamps put it is re-aligned (padded or cut).
AUDIO_SLACK_S = 0.1


class StreamError(VideoDecodeError):
    """A live source could not be opened, or broke off; the message names it and says why."""


@dataclass
class StreamFrame:
    """One output frame: ``index`` at the model's frame rate (time ``index / fps`` from the
    first frame), uint8 (H, W, 3) at the config's short side (None: skipped, never
    converted), and the wall time it arrived."""

    index: int
    image: np.ndarray | None
    arrival: float


@dataclass
class StreamAudio:
    """Mono float32 samples at the config's rate, the first at sample ``start`` (sample 0 is
    the first video frame's time); ``arrival``: wall time."""

    start: int
    samples: np.ndarray
    arrival: float


class FollowedFile:
    """A file read like ``tail -f``: at its current end, ``read`` waits for more, and reports
    the end once the file has not grown for ``idle_s`` seconds. No ``seek``: PyAV then reads
    it as the stream it is."""

    def __init__(self, path: Path, idle_s: float, poll_s: float = 0.02) -> None:
        self.path = path
        self.idle_s = float(idle_s)
        self.poll_s = poll_s
        self.handle = open(path, "rb")  # noqa: SIM115 (closed in close())

    def read(self, size: int = -1) -> bytes:
        waited = 0.0
        while True:
            data = self.handle.read(size)
            if data:
                return data
            if waited >= self.idle_s:
                return b""
            time.sleep(self.poll_s)
            waited += self.poll_s

    def close(self) -> None:
        self.handle.close()


class _Pipe:
    """Standard input (or any byte stream) without ``seek``, so PyAV reads it in order."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def read(self, size: int = -1) -> bytes:
        return self.handle.read(size)

    def close(self) -> None:
        pass


def describe(source: str) -> str:
    """What kind of source a string is: "network", "camera", "stdin" or "file"."""
    if source == "-":
        return "stdin"
    if source.lower().startswith(NETWORK_SCHEMES):
        return "network"
    if source.startswith("/dev/video"):
        return "camera"
    return "file"


def open_source(source: str, *, follow_idle_s: float = 3.0, timeout_s: float = 10.0,
                format: str | None = None) -> tuple[av.container.InputContainer, object | None]:
    """Open ``source`` (see the module's docstring) for reading; returns the container and
    the file-like object it reads from (None for URLs and cameras), to close after it."""
    kind = describe(source)
    # Small probe so a live stream starts within about a second, not after FFmpeg's 5 s default.
    options = {"probesize": "262144", "analyzeduration": "1000000"}
    reader = None
    try:
        if kind == "network":
            if source.lower().startswith(("rtsp://", "rtsps://")):
                options["rtsp_transport"] = "tcp"
            return av.open(source, mode="r", format=format, options=options, timeout=(timeout_s, timeout_s)), None
        if kind == "camera":
            return av.open(source, mode="r", format=format or "v4l2", timeout=(timeout_s, timeout_s)), None
        if kind == "stdin":
            reader = _Pipe(sys.stdin.buffer)
        else:
            path = Path(source)
            if not path.exists():
                raise StreamError(f"{source}: no such file (a live source is a file, a URL, /dev/videoN or -)")
            if path.is_dir():
                raise StreamError(f"{source}: is a folder, not a video file or stream")
            if _finished_mp4(path):  # its index is at the end or not streamable: read it by path
                return av.open(str(path), mode="r", format=format), None
            reader = FollowedFile(path, follow_idle_s)
        return av.open(reader, mode="r", format=format, options=options), reader
    except StreamError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if reader is not None:
            reader.close()
        hint = ("; a file read while it is written must be MPEG-TS, MKV or fragmented MP4"
                if kind in ("file", "stdin") else "")
        raise StreamError(f"{source}: cannot be opened as a video stream ({exc}){hint}") from None


def _finished_mp4(path: Path) -> bool:
    """An MP4/MOV that is not fragmented: its sample index (``moov``) describes a finished
    file, often after the media, so it is read by path (with seeks), not followed. A
    fragmented MP4 (``moov`` with ``mvex``, written first) is followed like any stream."""

    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8 or head[4:8] != b"ftyp":
            return False
        handle.seek(0)
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return False  # no index yet: a fragmented file still being written
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", handle.read(8))[0] - 8
            if kind == b"mdat":
                return True
            if kind == b"moov":
                return b"mvex" not in handle.read(max(0, min(size - 8, 1 << 24)))
            if size < 8:
                return False
            handle.seek(size - 8, 1)


class _AudioAligner:
    """Mono float32 at ``rate`` placed by time stamps relative to ``origin`` (the first video
    frame's time): the first samples go where their time says; later drift beyond
    AUDIO_SLACK_S is padded with silence (a gap) or dropped (an overlap)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.written = 0  # samples handed on
        self.expected: float | None = None  # where the next input frame should start (output samples)
        self.skip = 0  # samples still to drop (audio that began before the first video frame)
        self.pending: list[av.AudioFrame] = []  # frames before the first video frame

    def push(self, frame: av.AudioFrame, origin: float | None) -> list[tuple[int, np.ndarray]]:
        if origin is None:  # no video yet: hold a little audio until the clock starts
            self.pending.append(frame)
            del self.pending[:-64]
            return []
        out: list[tuple[int, np.ndarray]] = []
        for held in [*self.pending, frame]:
            out += self._place(held, origin)
        self.pending.clear()
        return out

    def _place(self, frame: av.AudioFrame, origin: float) -> list[tuple[int, np.ndarray]]:
        out = []
        t = frame.time
        if t is not None:
            target = (float(t) - origin) * self.rate
            if self.expected is None:
                if target > 0:
                    out.append(self._emit(np.zeros(int(round(target)), np.float32)))
                else:
                    self.skip = int(round(-target))
                self.expected = target
            elif target - self.expected > AUDIO_SLACK_S * self.rate:  # a gap: silence
                out.append(self._emit(np.zeros(int(round(target - self.expected)), np.float32)))
                self.expected = target
            elif self.expected - target > AUDIO_SLACK_S * self.rate:  # an overlap: drop the frame
                return out
        elif self.expected is None:
            self.expected = 0.0
        self.expected += frame.samples * self.rate / max(frame.sample_rate, 1)
        for piece in self.resampler.resample(frame):
            samples = piece.to_ndarray().reshape(-1).astype(np.float32)
            if self.skip:
                cut = min(self.skip, len(samples))
                samples, self.skip = samples[cut:], self.skip - cut
            if len(samples):
                out.append(self._emit(samples))
        return out

    def flush(self) -> list[tuple[int, np.ndarray]]:
        return [self._emit(p.to_ndarray().reshape(-1).astype(np.float32)) for p in self.resampler.resample(None)]

    def _emit(self, samples: np.ndarray) -> tuple[int, np.ndarray]:
        start = self.written
        self.written += len(samples)
        return start, np.clip(samples, -1.0, 1.0)


class LiveSource:
    """Frames and audio of a live source, in arrival order (:meth:`__iter__`).

    ``pace``: read a finished file at this multiple of its own speed (1: real time, as
    ``ffmpeg -re``), to replay it as if it were live; None: as fast as it comes.
    ``skip``: asked with each output frame's index before it is converted; True hands the
    frame on with no image (a reader that has fallen behind drops frames before paying for
    their conversion and resizing, not after).
    """

    def __init__(self, source: str, settings: DecodeSettings, *, pace: float | None = None,
                 follow_idle_s: float = 3.0, timeout_s: float = 10.0, format: str | None = None,
                 skip: Callable[[int], bool] | None = None) -> None:
        if pace is not None and pace <= 0:
            raise ValueError(f"pace must be positive, got {pace}")
        self.source = str(source)
        self.settings = settings
        self.pace = pace
        self.follow_idle_s = follow_idle_s
        self.timeout_s = timeout_s
        self.format = format
        self.skip = skip
        self.has_audio: bool | None = None  # known once opened
        self.source_fps: float | None = None
        self.fps: float | None = None  # output frame rate (the config's, or the source's)
        self.closed = False  # set from another thread to stop reading

    def __iter__(self) -> Iterator[StreamFrame | StreamAudio]:

        container, reader = open_source(self.source, follow_idle_s=self.follow_idle_s,
                                        timeout_s=self.timeout_s, format=self.format)
        try:
            if not container.streams.video:
                kinds = ", ".join(s.type for s in container.streams) or "none"
                raise StreamError(f"{self.source}: has no video stream (streams found: {kinds})")
            vstream = container.streams.video[0]
            # Slice threads only: frame threads hold frames back (one per thread) until later
            # ones arrive, which is latency on a stream.
            vstream.thread_type = "SLICE"
            astream = container.streams.audio[0] if container.streams.audio else None
            self.has_audio = astream is not None
            self.source_fps = rate = _frame_rate(vstream)
            self.fps = float(self.settings.fps or rate)
            resampler = _SkippingResampler(self.fps, self.settings.short_side, self.skip)
            audio = _AudioAligner(int(self.settings.sample_rate)) if astream is not None else None
            streams = [vstream] + ([astream] if astream is not None else [])
            origin: float | None = None
            last = -math.inf
            wall0: float | None = None
            count = 0
            try:
                for packet in container.demux(streams):
                    if self.closed:
                        return
                    for frame in packet.decode():
                        now = time.perf_counter()
                        if packet.stream.type == "audio":
                            for start, samples in audio.push(frame, origin) if audio is not None else []:
                                yield StreamAudio(start, samples, now)
                            continue
                        t = float(frame.time) if frame.pts is not None and frame.time is not None else None
                        if origin is None:
                            origin = t if t is not None else 0.0
                        t = (t - origin) if t is not None else count / rate
                        if t <= last:  # repeated or backwards time stamps: one frame period on
                            t = last + 1.0 / rate
                        last, count = t, count + 1
                        if self.pace is not None:
                            wall0 = now - t / self.pace if wall0 is None else wall0
                            delay = wall0 + t / self.pace - now
                            if delay > 0:
                                time.sleep(delay)
                            now = time.perf_counter()
                        resampler.push(t, frame)
                        yield from _drain(resampler, now)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                raise StreamError(f"{self.source}: the stream broke off ({exc})") from None
            if count == 0:
                raise StreamError(f"{self.source}: no video frame could be decoded (not a video, or empty)")
            resampler.finish(last + 1.0 / rate)
            now = time.perf_counter()
            yield from _drain(resampler, now)
            if audio is not None:
                for start, samples in audio.flush():
                    yield StreamAudio(start, samples, now)
        finally:
            container.close()
            if reader is not None:
                reader.close()


class _SkippingResampler(_FrameResampler):
    """The file reader's frame picker, asking ``skip`` before converting each output frame."""

    def __init__(self, fps: float, short_side: int | None, skip: Callable[[int], bool] | None) -> None:
        super().__init__(fps, short_side)
        self.skip = skip

    def _emit(self, frame: av.VideoFrame) -> None:
        skipped = self.skip is not None and self.skip(self.count)
        self.out.append(None if skipped else self._array(frame))
        self.count += 1


def _drain(resampler, now: float) -> Iterator[StreamFrame]:
    """The resampler's new output frames, numbered (``count`` is how many it has emitted)."""
    first = resampler.count - len(resampler.out)
    frames = [StreamFrame(first + i, image, now) for i, image in enumerate(resampler.out)]
    resampler.out.clear()
    yield from frames
