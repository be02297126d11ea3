"""Live sources: a file followed while another process writes it, streams that break off or
are not media, audio placed by its time stamps."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from adamml.config import DecodeSettings
from adamml.data.live_producer import start as start_producer
from adamml.data.stream import LiveSource, StreamAudio, StreamError, StreamFrame, describe

SETTINGS = DecodeSettings(fps=8.0, short_side=32, sample_rate=8000)

def write_ts(path: Path, seconds: float, *, pace: float = 100.0) -> subprocess.Popen:
    """Start a writer process of MPEG-TS (H.264 + AAC, 64x48 at 8 fps, a 440 Hz tone at
    8 kHz), flushed every packet; ``pace`` 1 writes in real time."""
    return start_producer(path, seconds, kind="flat", fps=8, width=64, height=48, sample_rate=8000, layout="mono",
                          pace=pace)


def cut_inside_a_video_packet(whole: Path, cut: Path, after_s: float) -> Path:
    """Copy ``whole`` up to two TS packets (of 188 bytes) and a bit past the start of the first
    video packet after ``after_s``: a connection dropped inside the stream, which the decoder
    reports (nearer the packet's start, FFmpeg drops the partial packet without a word)."""
    import av

    with av.open(str(whole)) as container:
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base)
        packet = next(p for p in container.demux(stream)
                      if p.pts is not None and float(p.pts * p.time_base) - start >= after_s)
    cut.write_bytes(whole.read_bytes()[: packet.pos + 2 * 188 + 24])
    return cut


def test_a_file_written_while_it_is_read_is_followed_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "growing.ts"
    writer = write_ts(path, 2.0, pace=1.0)
    try:
        while not path.exists() or path.stat().st_size == 0:  # the writer has started
            time.sleep(0.02)
        frames, audio = [], []
        for item in LiveSource(str(path), SETTINGS, follow_idle_s=0.6):
            (frames if isinstance(item, StreamFrame) else audio).append(item)
        ended = time.perf_counter()
        assert writer.wait(timeout=10) == 0
    finally:
        writer.kill()
    assert [f.index for f in frames] == list(range(16))  # 2 s at 8 fps, every frame, in order
    # Read as it was written: the frames arrived over the writer's two seconds, not at once.
    assert frames[-2].arrival - frames[0].arrival > 1.0
    # And the end was noticed once the file stopped growing (0.6 s), not much later.
    assert ended - frames[-2].arrival < 3.0
    samples = sum(len(a.samples) for a in audio)
    assert 2.0 * 8000 <= samples <= 2.3 * 8000  # AAC pads the last frame
    assert audio[0].start == 0


def test_audio_is_placed_by_its_time_stamps_not_by_counting(tmp_path: Path) -> None:
    """A stream whose audio starts 0.5 s after its video (and has a 0.5 s hole) keeps the
    sound at the time it belongs to."""
    import av

    path = tmp_path / "late_audio.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        for _ in range(24):
            for packet in video.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for start in [*range(4000, 12000, 800), *range(16000, 24000, 800)]:  # 0.5-1.5 s, then 2-3 s
            frame = av.AudioFrame.from_ndarray(np.full((1, 800), 8000, np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, start
            for packet in audio.encode(frame):
                out.mux(packet)
    items = list(LiveSource(str(path), SETTINGS, follow_idle_s=0.1))
    track = np.zeros(30000, np.float32)
    for a in (i for i in items if isinstance(i, StreamAudio)):
        track[a.start : a.start + len(a.samples)] = a.samples
    loud = np.abs(track) > 0.1
    assert not loud[:3900].any() and loud[4100:11900].all()  # silence, then sound from 0.5 s
    assert not loud[12100:15900].any() and loud[16100:23900].all()  # the hole kept as silence


def test_a_source_of_garbage_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "noise.ts"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(StreamError, match=r"noise\.ts: cannot be opened as a video stream") as info:
        list(LiveSource(str(path), SETTINGS, follow_idle_s=0.1))
    assert "\n" not in str(info.value)


def test_a_stream_cut_off_mid_packet_ends_with_an_error_after_the_frames_it_sent(tmp_path: Path) -> None:
    whole = tmp_path / "whole.ts"
    assert write_ts(whole, 2.0).wait(timeout=30) == 0
    cut = cut_inside_a_video_packet(whole, tmp_path / "cut.ts", 1.0)
    frames = []
    with pytest.raises(StreamError, match=r"cut\.ts: the stream broke off"):
        for item in LiveSource(str(cut), SETTINGS, follow_idle_s=0.1):
            frames += [item] if isinstance(item, StreamFrame) else []
    assert 6 <= len(frames) < 16


def test_missing_files_and_kinds_of_source() -> None:
    with pytest.raises(StreamError, match="no such file"):
        list(LiveSource("/nonexistent/cam.ts", SETTINGS))
    assert [describe(s) for s in ("rtsp://cam/1", "https://x/y.m3u8", "/dev/video0", "-", "a.ts")] == [
        "network", "network", "camera", "stdin", "file"]


def test_frames_the_reader_skips_are_never_converted(tmp_path: Path) -> None:
    """``skip`` is asked before each output frame is converted: those come with no image."""
    path = tmp_path / "clip.ts"
    assert write_ts(path, 2.0).wait(timeout=30) == 0
    asked = []
    frames = [item for item in LiveSource(str(path), SETTINGS, follow_idle_s=0.1,
                                          skip=lambda i: asked.append(i) or 4 <= i < 12)
              if isinstance(item, StreamFrame)]
    assert asked == list(range(16)) and [f.index for f in frames] == list(range(16))
    assert [f.image is None for f in frames] == [4 <= i < 12 for i in range(16)]
    assert all(f.image.shape[0] == 32 for f in frames if f.image is not None)
