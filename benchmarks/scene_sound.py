"""A scene x sound video dataset made of real photographs and real recorded sounds that
packages ship, written the way a user's mixed folder looks: for trying ``adamml train --data``
on a kind of data where every class needs both modalities and, second by second, one of them
is often useless.

Run: ``python benchmarks/scene_sound.py OUT [--material tune|heldout] [--seed S]``
(needs ``pip install scikit-image pygame`` for their bundled photographs and sounds, and
Debian's ``sound-theme-freedesktop`` and ``alsa-utils`` for theirs; a minute or two on 2 cores).

- **Classes** are pairs (scene, sound) from a 4 x 4 grid of four photographs and four
  recordings, 11 of the 16 cells: a scene occurs with two or three sounds and a sound with two
  or three scenes, so neither modality alone names the class.
- **Per second**, the class's photograph is in view with probability 0.5 (at least 2 seconds
  per clip), otherwise another photograph is; the class's sound is heard with probability 0.5
  (at least 2 seconds), otherwise another recording or only background noise. So on a given
  segment the picture, the sound, both or neither identify the class: the case AdaMML is for.
- **Two material sets**: ``tune`` (astronaut, cat, coffee, rocket x bell, car door, phone,
  music) and ``heldout`` (motorcycle, galaxies, temple, flower x trash, explosion, alarm,
  voice). The distractor photographs and recordings are shared. Tune on one; keep the other.
- **A mixed folder**: six containers with eight video and eight audio codecs (mp4 H.264/AAC,
  mkv HEVC/Opus, H.264/FLAC, VP8/AC-3, webm VP9/Opus, avi MPEG-4/MP3, mov MJPEG/PCM, ts
  MPEG-2/MP2), 12-30 fps, landscape and portrait sizes, 6-10 s, 16-48 kHz, mono and stereo,
  3 % of the clips without an audio track, file and class names with spaces, brackets and
  non-ASCII letters.

Layout: ``OUT/train/<class>/<file>``, ``OUT/val/<class>/<file>`` and ``OUT/segments.csv``
(which seconds show the scene and which carry the sound).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
ALSA = Path("/usr/share/sounds/alsa")


def _skimage(name: str) -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SystemExit("scikit-image is not installed: pip install scikit-image")
    return Path(spec.origin).parent / "data" / name


def _pygame(name: str) -> Path:
    spec = importlib.util.find_spec("pygame")  # found, not imported: importing prints a banner
    if spec is None or spec.origin is None:
        raise SystemExit("pygame is not installed: pip install pygame")
    return Path(spec.origin).parent / "examples" / "data" / name


MATERIAL = {
    "tune": {
        "scenes": {"astronaut": "skimage:astronaut.png", "cat": "skimage:chelsea.png",
                   "coffee": "skimage:coffee.png", "rocket": "skimage:rocket.jpg"},
        "sounds": {"bell": "freedesktop:bell.oga", "car door": "pygame:car_door.wav",
                   "phone": "freedesktop:phone-incoming-call.oga", "music": "pygame:house_lo.ogg"},
    },
    "heldout": {
        "scenes": {"motorcycle": "skimage:motorcycle_left.png", "galaxies": "skimage:hubble_deep_field.jpg",
                   "temple": "sklearn:china.jpg", "flower": "sklearn:flower.jpg"},
        "sounds": {"trash": "freedesktop:trash-empty.oga", "explosion": "pygame:boom.wav",
                   "alarm": "freedesktop:alarm-clock-elapsed.oga", "voice": "alsa:Front_Center.wav"},
    },
}
DISTRACTOR_IMAGES = ["skimage:brick.png", "skimage:gravel.png", "skimage:grass.png", "skimage:coins.png",
                     "skimage:moon.png", "skimage:page.png", "skimage:camera.png", "skimage:retina.jpg",
                     "skimage:ihc.png", "skimage:color.png"]
DISTRACTOR_SOUNDS = ["pygame:whiff.wav", "pygame:punch.wav", "pygame:secosmic_lo.wav",
                     "freedesktop:message.oga", "freedesktop:complete.oga", "freedesktop:dialog-warning.oga",
                     "freedesktop:service-login.oga", "freedesktop:device-added.oga", "alsa:Noise.wav"]
# 11 of the 4 x 4 (scene, sound) cells: rows and columns hold 2 or 3 classes each
DROPPED = {(0, 3), (1, 2), (2, 1), (3, 0), (3, 3)}
# (container, video codec, pixel format, audio codec, audio sample format, file extension)
FORMATS = [
    ("mp4", "libx264", "yuv420p", "aac", "fltp", ".mp4"),
    ("matroska", "hevc", "yuv420p", "libopus", "s16", ".mkv"),
    ("matroska", "libx264", "yuv420p", "flac", "s16", ".mkv"),
    ("matroska", "libvpx", "yuv420p", "ac3", "fltp", ".mkv"),
    ("webm", "libvpx-vp9", "yuv420p", "libopus", "s16", ".webm"),
    ("avi", "mpeg4", "yuv420p", "libmp3lame", "fltp", ".avi"),
    ("mov", "mjpeg", "yuvj420p", "pcm_s16le", "s16", ".mov"),
    ("mpegts", "mpeg2video", "yuv420p", "mp2", "s16", ".ts"),
]
SIZES = [(160, 120), (128, 96), (176, 144), (96, 128), (120, 160), (144, 112)]  # (width, height)
FPS = [12, 15, 24, 25, 30]
RATES = [16000, 22050, 44100, 48000]
P_IN_VIEW = P_HEARD = 0.5
P_NO_AUDIO = 0.03


def resolve(ref: str) -> Path:
    kind, name = ref.split(":", 1)
    if kind == "skimage":
        return _skimage(name)
    if kind == "pygame":
        return _pygame(name)
    if kind == "sklearn":
        spec = importlib.util.find_spec("sklearn")
        assert spec is not None and spec.origin is not None
        return Path(spec.origin).parent / "datasets" / "images" / name
    folder = {"freedesktop": FREEDESKTOP, "alsa": ALSA}[kind]
    path = folder / name
    if not path.exists():
        raise SystemExit(f"{path} not found: apt-get install -y sound-theme-freedesktop alsa-utils")
    return path


def load_image(ref: str) -> np.ndarray:
    import cv2

    image = cv2.imread(str(resolve(ref)), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {resolve(ref)}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_sound(ref: str, rate: int = 48000) -> np.ndarray:
    """Mono float32 at ``rate``, peak-normalised, silence at both ends trimmed."""
    import av

    chunks = []
    with av.open(str(resolve(ref))) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    x = np.concatenate(chunks).astype(np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    x = x[loud[0] : loud[-1] + 1] if loud.size else x
    return x / max(float(np.abs(x).max()), 1e-6)


@dataclass(frozen=True)
class Clip:
    path: Path
    seed: int
    scene: int  # index into the material's scenes
    sound: int


_SHARED: dict = {}


def _init(scenes: list, sounds: list, images: list, noises: list) -> None:
    """Each worker receives the decoded material once."""
    _SHARED.update(scenes=scenes, sounds=sounds, images=images, noises=noises)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    brown = np.cumsum(white) * 0.02
    brown -= np.convolve(brown, np.ones(4801) / 4801, mode="same")  # keep the rumble, not the drift
    brown /= max(float(np.abs(brown).max()), 1e-6)
    return 0.6 * brown + 0.1 * white / 3.0


def _excerpt(rng: np.random.Generator, sound: np.ndarray, n: int) -> np.ndarray:
    """A second of a recording: a random stretch of a long one, a short one placed at random."""
    out = np.zeros(n, np.float32)
    if len(sound) >= n:
        start = int(rng.integers(0, len(sound) - n + 1))
        return sound[start : start + n].copy()
    at = int(rng.integers(0, n - len(sound) + 1))
    out[at : at + len(sound)] = sound
    return out


def make_audio(rng: np.random.Generator, sound: np.ndarray, heard: list[bool], seconds: int, rate: int) -> np.ndarray:
    n = seconds * 48000
    audio = _noise(rng, n) * float(rng.uniform(0.03, 0.1))
    for second, is_heard in enumerate(heard):
        if is_heard:
            piece = _excerpt(rng, sound, 48000)
        elif rng.random() < 0.6:
            noises = _SHARED["noises"]
            piece = _excerpt(rng, noises[int(rng.integers(len(noises)))], 48000)
        else:
            continue
        audio[second * 48000 : (second + 1) * 48000] += piece * float(rng.uniform(0.3, 0.8))
    if rate != 48000:
        t = np.arange(int(n * rate / 48000)) * 48000 / rate
        audio = np.interp(t, np.arange(n), audio).astype(np.float32)
    return np.clip(audio, -1.0, 1.0)


def _view(rng: np.random.Generator, image: np.ndarray, frames: int, size: tuple[int, int]) -> np.ndarray:
    """A slowly panning and zooming camera over a photograph, with its own exposure and noise."""
    import cv2

    width, height = size
    h, w = image.shape[:2]
    aspect = width / height
    scale = rng.uniform(0.45, 0.85)
    vh = int(min(h, w / aspect) * scale)
    vw = int(vh * aspect)
    y, x = rng.uniform(0, h - vh), rng.uniform(0, w - vw)
    vy, vx = rng.uniform(-1.5, 1.5, size=2) * vh / 100
    gain, offset = rng.uniform(0.7, 1.2), rng.uniform(-25, 25)
    sigma = rng.uniform(3, 10)
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        y, x = float(np.clip(y + vy, 0, h - vh)), float(np.clip(x + vx, 0, w - vw))
        crop = image[int(y) : int(y) + vh, int(x) : int(x) + vw]
        frame = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        frame = frame * gain + offset + rng.normal(0, sigma, size=frame.shape).astype(np.float32)
        out[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def make_frames(rng: np.random.Generator, scene: np.ndarray, in_view: list[bool], fps: int,
                size: tuple[int, int]) -> np.ndarray:
    images = _SHARED["images"]
    parts = []
    for shown in in_view:
        image = scene if shown else images[int(rng.integers(len(images)))]
        parts.append(_view(rng, image, fps, size))
    return np.concatenate(parts)


def write(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None, rate: int, stereo: bool,
          fmt: tuple) -> None:
    import av

    container_format, vcodec, pix_fmt, acodec, sample_fmt, _ = fmt
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format=container_format) as container:
        v = container.add_stream(vcodec, rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if vcodec == "mpeg2video":
            v.bit_rate = 800_000
        if vcodec.startswith("libvpx"):
            v.options = {"deadline": "realtime", "cpu-used": "8"}
        if vcodec == "hevc":
            v.options = {"x265-params": "log-level=none"}
        a = None
        if audio is not None:
            a = container.add_stream(acodec, rate=rate, layout="stereo" if stereo else "mono")
            a.format = sample_fmt
        for frame in frames:
            for packet in v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in v.encode():
            container.mux(packet)
        if a is not None and audio is not None:
            pcm = np.repeat(audio[None], 2 if stereo else 1, axis=0)
            for start in range(0, pcm.shape[1], 1024):  # PyAV re-frames to the codec's frame size
                chunk = pcm[:, start : start + 1024]
                if sample_fmt == "s16":  # packed: channels interleaved in one plane
                    af = av.AudioFrame.from_ndarray((chunk.T.reshape(1, -1) * 32767).astype(np.int16),
                                                    format="s16", layout=a.layout.name)
                else:
                    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk, np.float32), format="fltp",
                                                    layout=a.layout.name)
                af.sample_rate, af.pts, af.time_base = rate, start, Fraction(1, rate)
                for packet in a.encode(af):
                    container.mux(packet)
            for packet in a.encode():
                container.mux(packet)
    tmp.replace(path)


def _write_clip(clip: Clip) -> tuple[str, list[bool], list[bool]]:
    rng = np.random.default_rng(clip.seed)
    seconds = int(rng.integers(6, 11))
    fps = FPS[int(rng.integers(len(FPS)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    fmt = FORMATS[int(rng.integers(len(FORMATS)))]
    rate = RATES[int(rng.integers(len(RATES)))]
    in_view = [bool(v) for v in rng.random(seconds) < P_IN_VIEW]
    heard = [bool(v) for v in rng.random(seconds) < P_HEARD]
    for flags in (in_view, heard):
        while sum(flags) < 2:
            flags[int(rng.integers(seconds))] = True
    frames = make_frames(rng, _SHARED["scenes"][clip.scene], in_view, fps, size)
    has_audio = rng.random() >= P_NO_AUDIO
    if fmt[3] == "libopus" or (fmt[3] in ("mp2", "ac3") and rate not in (44100, 48000)):
        rate = 48000  # the rates these encoders take
    audio = make_audio(rng, _SHARED["sounds"][clip.sound], heard, seconds, rate) if has_audio else None
    path = clip.path.with_suffix(fmt[5])
    write(path, frames, fps, audio, rate, bool(rng.random() < 0.5), fmt)
    return str(path), in_view, heard if has_audio else [False] * seconds


def classes(material: str) -> list[tuple[int, int, str]]:
    """(scene index, sound index, class name) of the 11 classes."""
    scenes, sounds = list(MATERIAL[material]["scenes"]), list(MATERIAL[material]["sounds"])
    return [(i, j, f"{scenes[i]} · {sounds[j]}") for i in range(4) for j in range(4) if (i, j) not in DROPPED]


def build(out: Path, material: str, train_per_class: int, val_per_class: int, seed: int, workers: int) -> dict:
    spec = MATERIAL[material]
    scenes = [load_image(ref) for ref in spec["scenes"].values()]
    sounds = [load_sound(ref) for ref in spec["sounds"].values()]
    images = [load_image(ref) for ref in DISTRACTOR_IMAGES]
    noises = [load_sound(ref) for ref in DISTRACTOR_SOUNDS]
    rng = np.random.default_rng(seed)
    jobs, counts = [], {}
    names = ["clip {:03d}", "Clip ({:03d})", "vidéo [{:03d}]", "take_{:03d} – été", "{:03d}"]
    for scene, sound, name in classes(material):
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                stem = names[int(rng.integers(len(names)))].format(i)
                jobs.append(Clip(folder / stem, int(rng.integers(2**31)), scene, sound))
                counts[split] = counts.get(split, 0) + 1
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=_init,
                             initargs=(scenes, sounds, images, noises)) as pool:
        done = list(pool.map(_write_clip, jobs, chunksize=4))
    with (out / "segments.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "in_view", "heard"])
        for path, in_view, heard in sorted(done):
            writer.writerow([Path(path).relative_to(out).as_posix(), "".join("01"[v] for v in in_view),
                             "".join("01"[v] for v in heard)])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--material", choices=sorted(MATERIAL), default="tune")
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    counts = build(args.out, args.material, args.train_per_class, args.val_per_class, args.seed, args.workers)
    print(f"wrote {', '.join(f'{n} {s}' for s, n in counts.items())} clips ({len(classes(args.material))} "
          f"classes, material '{args.material}') to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
