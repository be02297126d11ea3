"""A folder of decoded videos, one ``.npz`` per video, keyed by the decode settings.

Decoding (and above all TV-L1 flow) costs far more than training reads, so every video is
decoded once by ``adamml extract`` and read back from here. Layout::

    <root>/<fingerprint>/settings.json          the DecodeSettings that produced the folder
    <root>/<fingerprint>/<stem>-<hash10>.npz    one video

The fingerprint hashes the settings, so caches made with different fps / size / sample rate
/ flow never mix. Each entry records its source file's size and modification time; a video
replaced or re-encoded at the same path no longer counts as cached (:meth:`VideoCache.has`),
so extraction decodes it again instead of serving the old frames. Storage (``image_format``):

- ``"jpeg"`` (default): each frame JPEG-encoded (quality 95) and packed into one byte array
  with offsets (a few times to 20x smaller than raw uint8, depending on content); flow
  fields PNG-encoded (lossless, so quantised flow round-trips exactly); audio as 16-bit PCM
  (half of float32; its quantisation noise, ~1e-10 per sample, vanishes under the
  spectrogram's log(power + 1e-6)).
- ``"raw"``: plain uint8 arrays and float32 audio; exact, large, fastest to read.

Files are written atomically (:func:`adamml.runtime.files.atomic_path`: a temporary name in
the same folder, then a rename), so a killed extraction never leaves a file that ``has``
would report as done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from adamml.config import DecodeSettings
from adamml.errors import AdamMLError
from adamml.media import DecodedVideo
from adamml.runtime.files import atomic_path, atomic_write_bytes

__all__ = ["CacheError", "VideoCache", "LazyImages", "settings_fingerprint", "source_stamp", "CACHE_VERSION"]

CACHE_VERSION = 1
SHARED = 0o644  # cache files: readable by everyone whatever the umask (caches are often shared)
# Settings that change what is stored (strict_audio only changes whether extraction fails).
_CONTENT_FIELDS = ("fps", "short_side", "sample_rate", "flow")


class CacheError(AdamMLError, RuntimeError):
    """A cache file is unreadable; the message names it and says how to recover."""


def settings_fingerprint(settings: DecodeSettings) -> str:
    """A readable, stable folder name for the settings, e.g. ``fps25-s256-sr24000-noflow-1a2b3c4d``."""
    content = {k: getattr(settings, k) for k in _CONTENT_FIELDS}
    content["version"] = CACHE_VERSION
    digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    fps = "src" if settings.fps is None else f"{settings.fps:g}".replace(".", "p")
    flow = settings.flow or "noflow"
    return f"fps{fps}-s{settings.short_side}-sr{settings.sample_rate}-{flow}-{digest}"


def _pack(images: Sequence[np.ndarray], ext: str, params: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Encode images and pack them into one uint8 array plus int64 offsets (len + 1)."""
    blobs = []
    for image in images:
        ok, buf = cv2.imencode(ext, image, params)
        if not ok:
            raise CacheError(f"OpenCV could not encode an image of shape {image.shape} as {ext}")
        blobs.append(buf.reshape(-1))
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([b.size for b in blobs])
    data = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
    return data, offsets


def _unpack(data: np.ndarray, offsets: np.ndarray, flags: int, where: str) -> list[np.ndarray]:
    images = []
    for i in range(len(offsets) - 1):
        image = cv2.imdecode(data[offsets[i] : offsets[i + 1]], flags)
        if image is None:
            raise CacheError(f"{where}: image {i} is corrupt")
        images.append(image)
    return images


class LazyImages:
    """An array-like (N, H, W, C) uint8 that decodes only the images it is indexed with.

    A training sample uses a few dozen of a video's hundreds of frames; decoding all of them
    on every ``__getitem__`` would dominate data loading. Supports ``len``, ``shape``,
    ``dtype``, ``ndim``, integer / slice / integer-array indexing and ``np.asarray``.
    ``channels`` is 3 (RGB frames) or 2 (flow: planes x, y stored as consecutive images).
    """

    def __init__(self, data: np.ndarray, offsets: np.ndarray, shape: tuple[int, ...], where: str) -> None:
        self._data, self._offsets, self._where = data, offsets, where
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self._planes = 2 if self.shape[-1] == 2 else 1  # flow: one grayscale image per plane
        expected = self.shape[0] * self._planes + 1
        if len(offsets) != expected:
            raise CacheError(f"{where}: {len(offsets) - 1} images stored, expected {expected - 1}")

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, i: int) -> np.ndarray:
        if self._planes == 1:
            bgr = _unpack(self._data, self._offsets[i : i + 2], cv2.IMREAD_COLOR, self._where)[0]
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        planes = _unpack(self._data, self._offsets[2 * i : 2 * i + 3], cv2.IMREAD_GRAYSCALE, self._where)
        return np.stack(planes, axis=-1)

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(key, int | np.integer):
            index = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"image {key} out of range for {self.shape[0]}")
            return self._decode(index)
        indices = np.arange(self.shape[0])[key]
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for j, i in enumerate(indices):
            out[j] = self._decode(int(i))
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        full = self[np.arange(self.shape[0])]
        return full if dtype is None else full.astype(dtype)


FrameRange = tuple[int | None, int | None] | None


def source_stamp(video_path: str | Path) -> dict | None:
    """A video file's size and modification time (None for a frame folder or a missing file):
    what tells a cached entry from a source replaced since."""
    try:
        stat = Path(video_path).stat()
    except OSError:
        return None
    if not Path(video_path).is_file():
        return None
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


class VideoCache:
    """Decoded videos under ``root / settings_fingerprint(settings)``."""

    def __init__(
        self,
        root: str | Path,
        settings: DecodeSettings,
        *,
        image_format: str = "jpeg",
        jpeg_quality: int = 95,
    ) -> None:
        if image_format not in ("jpeg", "raw"):
            raise ValueError(f"image_format must be 'jpeg' or 'raw', got {image_format!r}")
        self.root = Path(root)
        self.settings = settings
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.folder = self.root / settings_fingerprint(settings)
        self._stamps: dict[tuple[str, int, int], dict | None] = {}  # entry (path, mtime, size) -> its stamp

    def __repr__(self) -> str:
        return f"VideoCache({str(self.folder)!r}, image_format={self.image_format!r})"

    def entry_path(self, video_path: str | Path, frame_range: FrameRange = None) -> Path:
        """``<stem>-<sha1(absolute path)[:10]>.npz``: readable, and unique per source path.

        ``frame_range`` (start, end) of an official list file's frame folder is part of the
        key: two lines may cut different clips from one folder.
        """
        source = Path(video_path).expanduser().absolute()
        key = str(source)
        if frame_range is not None and any(v is not None for v in frame_range):
            key += f"#{frame_range[0]}-{frame_range[1]}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.stem)[:60] or "video"
        return self.folder / f"{stem}-{digest}.npz"

    def has(self, video_path: str | Path, frame_range: FrameRange = None) -> bool:
        """Whether the video is cached, and from the file now at its path (see :meth:`changed`)."""
        return self.entry_path(video_path, frame_range).is_file() and not self.changed(video_path, frame_range)

    def changed(self, video_path: str | Path, frame_range: FrameRange = None) -> bool:
        """Whether the cached entry was decoded from another file than the one now at its path
        (another size or modification time). Entries without a record, frame folders and
        sources no longer there are taken as they are."""
        entry = self.entry_path(video_path, frame_range)
        try:
            stat = entry.stat()
        except OSError:
            return False
        key = (str(entry), stat.st_mtime_ns, stat.st_size)
        if key not in self._stamps:
            try:
                with np.load(entry, allow_pickle=False) as npz:
                    self._stamps[key] = json.loads(str(npz["info"])).get("source_stamp")
            except Exception:  # a damaged entry: load() names it
                self._stamps[key] = None
        saved, now = self._stamps[key], source_stamp(video_path)
        return saved is not None and now is not None and saved != now

    def _write_settings(self) -> None:
        target = self.folder / "settings.json"
        if target.is_file():
            return
        body = {"version": CACHE_VERSION, "settings": dataclasses.asdict(self.settings)}
        atomic_write_bytes(target, (json.dumps(body, indent=2) + "\n").encode(), mode=SHARED)

    def save(self, video_path: str | Path, decoded: DecodedVideo, frame_range: FrameRange = None,
             *, stamp: dict | None = None) -> Path:
        """Store ``decoded`` atomically; returns the cache file. ``stamp``: the source's
        :func:`source_stamp` taken before decoding (default: now)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        audio = np.asarray(decoded.audio, np.float32)
        arrays: dict[str, np.ndarray] = {
            "info": np.array(
                json.dumps(
                    {
                        "version": CACHE_VERSION,
                        "fps": decoded.fps,
                        "sample_rate": decoded.sample_rate,
                        "audio_missing": decoded.audio_missing,
                        "source": decoded.source or str(video_path),
                        "meta": decoded.meta,
                        "source_stamp": stamp if stamp is not None else source_stamp(video_path),
                        "frames_shape": list(decoded.frames.shape),
                        "image_format": self.image_format,
                    }
                )
            ),
        }
        if self.image_format == "jpeg":  # 16-bit PCM: its noise floor is far below the log's 1e-6
            arrays["audio_pcm16"] = np.rint(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
        else:
            arrays["audio"] = audio
        frames = np.asarray(decoded.frames)
        if self.image_format == "jpeg":
            bgr = (cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames)
            arrays["frames_jpeg"], arrays["frames_offsets"] = _pack(
                list(bgr), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
            )
        else:
            arrays["frames"] = frames
        if decoded.flow is not None:
            if self.image_format == "jpeg":
                planes = [field[..., c] for field in decoded.flow for c in (0, 1)]  # x0, y0, x1, ...
                arrays["flow_png"], arrays["flow_offsets"] = _pack(planes, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])
                arrays["flow_shape"] = np.asarray(decoded.flow.shape, np.int64)
            else:
                arrays["flow"] = decoded.flow
        target = self.entry_path(video_path, frame_range)
        with atomic_path(target, mode=SHARED) as tmp, open(tmp, "wb") as handle:
            _write_npz(handle, arrays)
        return target

    def load(self, video_path: str | Path, *, lazy: bool = False, frame_range: FrameRange = None) -> DecodedVideo:
        """Read a cached video back; a missing or damaged file raises :class:`CacheError`.

        ``lazy=True``: JPEG/PNG-stored frames and flow come back as :class:`LazyImages`
        (decoded when indexed), which the modality functions accept like arrays.
        """
        path = self.entry_path(video_path, frame_range)
        if not path.is_file():
            raise CacheError(
                f"{path}: not in the cache (video {video_path}); run `adamml extract` first"
            )
        hint = "delete it and run `adamml extract` again"
        try:
            with np.load(path, allow_pickle=False) as npz:
                info = json.loads(str(npz["info"]))
                if info.get("version") != CACHE_VERSION:
                    raise CacheError(f"{path}: cache version {info.get('version')}, expected {CACHE_VERSION}; {hint}")
                if "frames_jpeg" in npz:
                    packed = LazyImages(npz["frames_jpeg"], npz["frames_offsets"], info["frames_shape"], str(path))
                    frames = packed if lazy else np.asarray(packed)
                else:
                    frames = npz["frames"]
                flow = None
                if "flow_png" in npz:
                    packed = LazyImages(npz["flow_png"], npz["flow_offsets"], tuple(npz["flow_shape"]), str(path))
                    flow = packed if lazy else np.asarray(packed)
                elif "flow" in npz:
                    flow = npz["flow"]
                if "audio_pcm16" in npz:
                    audio = npz["audio_pcm16"].astype(np.float32) / np.float32(32767.0)
                else:
                    audio = npz["audio"]
        except CacheError:
            raise
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"{path}: damaged cache file ({type(exc).__name__}: {exc}); {hint}") from None
        if list(frames.shape) != list(info["frames_shape"]):
            raise CacheError(f"{path}: frames have shape {frames.shape}, expected {info['frames_shape']}; {hint}")
        return DecodedVideo(
            frames=frames,
            fps=float(info["fps"]),
            audio=audio,
            sample_rate=int(info["sample_rate"]),
            audio_missing=bool(info["audio_missing"]),
            flow=flow,
            source=info["source"],
            meta=info.get("meta", {}),
        )

    def audio_track(self, video_path: str | Path, frame_range: FrameRange = None) -> tuple[np.ndarray, bool]:
        """The cached waveform (as stored: 16-bit PCM or float32) and whether the video had no
        audio track, without reading its frames (what a look over a whole split's sound
        reads); a missing or damaged file raises :class:`CacheError`."""
        path = self.entry_path(video_path, frame_range)
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = bool(json.loads(str(npz["info"]))["audio_missing"])
                audio = npz["audio_pcm16"] if "audio_pcm16" in npz else npz["audio"]
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"{path}: cannot read the cached audio of {video_path} ({type(exc).__name__}: {exc})") from None
        return audio, missing

    def entries(self) -> list[Path]:
        """Every finished cache file (temporary files excluded)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.npz") if not p.name.startswith("."))


def _write_npz(handle, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with a fixed timestamp on every member, so the same video gives the same bytes.

    ``np.savez`` stamps each member with the current time; then two extractions of one video
    (or two engines, see ``adamml.scale``) could not be compared or deduplicated by content.
    """
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
