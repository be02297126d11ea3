"""Decode every video of a split once, in parallel, into a :class:`VideoCache` (``adamml extract``).

Resumable (videos already cached are skipped; cache files are written atomically, so a killed
run loses at most the videos in flight) and tolerant (a broken video is reported at the end,
not fatal). Workers are spawned processes, each limited to one thread so N workers use N cores.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
from tqdm import tqdm

from adamml.config import DecodeSettings
from adamml.data.cache import CacheError, VideoCache
from adamml.data.types import VideoDecodeError, VideoEntry
from adamml.data.video import MissingAudioWarning, decode_frame_folder, decode_video

__all__ = ["ExtractReport", "default_workers", "ensure_cached", "extract_videos", "extract_one", "extract_path", "limit_threads"]


@dataclass
class ExtractReport:
    """What one extraction run did. ``failed``: (video path, error message) pairs."""

    done: int = 0
    skipped: int = 0
    changed: int = 0  # of those to do: cached once, but from a file replaced since
    failed: list[tuple[str, str]] = field(default_factory=list)
    missing_audio: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, result: tuple[str, str, bool]) -> None:
        """Count one :func:`extract_path` result."""
        path, status, audio_missing = result
        if status == "done":
            self.done += 1
            if audio_missing:
                self.missing_audio.append(path)
        else:
            self.failed.append((path, status.removeprefix("failed: ")))

    def finish(self, started: float) -> ExtractReport:
        """Close the run: a stable order whatever order the workers finished in, and its time."""
        self.failed.sort()
        self.missing_audio.sort()
        self.seconds = time.perf_counter() - started
        return self

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"extracted {self.done}, skipped {self.skipped} (already cached), "
            f"failed {len(self.failed)}, in {self.seconds:.1f} s"
        ]
        if self.changed:
            lines.append(f"{self.changed} of them decoded again: the file at their path changed (size or "
                         "modification time) since they were cached")
        if self.missing_audio:
            lines.append(f"{len(self.missing_audio)} video(s) without audio (all-zero spectrograms):")
            lines += [f"  {p}" for p in self.missing_audio[:20]]
            if len(self.missing_audio) > 20:
                lines.append(f"  ... and {len(self.missing_audio) - 20} more")
        if self.failed:
            lines.append("failures:")
            lines += [f"  {msg}" if path in msg else f"  {path}: {msg}" for path, msg in self.failed]
        return "\n".join(lines)


def _as_entry(item: VideoEntry | str | Path) -> VideoEntry:
    return item if isinstance(item, VideoEntry) else VideoEntry(path=Path(item), labels=[])


def extract_one(entry: VideoEntry, cache: VideoCache) -> tuple[str, str, bool]:
    """Decode one video (file or frame folder) into the cache.

    Returns (path, status, audio_missing) with status "done", or raises VideoDecodeError.
    """
    # PyAV only when decoding: keeps `adamml --help` fast (workers import it once).
    from adamml.data.cache import source_stamp

    path = Path(entry.path)
    stamp = source_stamp(path)  # before decoding: a file replaced meanwhile is decoded again next time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingAudioWarning)  # recorded in the report instead
        if path.is_dir():
            decoded = decode_frame_folder(path, cache.settings, entry.start, entry.end)
        else:
            decoded = decode_video(path, cache.settings)
    cache.save(path, decoded, frame_range=entry.frame_range, stamp=stamp)
    return str(path), "done", decoded.audio_missing


def limit_threads() -> None:
    """One thread per worker, so N workers use N cores without oversubscription.

    Decoding needs no torch; importing it only to set its thread count would add seconds to
    every worker's start, so it is limited through the environment unless already loaded.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def die_with_parent(interval_s: float = 0.5) -> None:
    """End this worker process when the process that started it is gone (killed with -9, it
    cannot stop its pool): the worker would otherwise wait on its task queue for good, holding
    its memory. A daemon thread watches the parent's pid."""

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="adamml-parent-watch", daemon=True).start()


def start_worker() -> None:
    """A local extraction worker's start: one thread, and gone with its parent."""
    limit_threads()
    die_with_parent()


def extract_path(
    path: str, start: int | None, end: int | None, root: str, settings: dict, image_format: str
) -> tuple[str, str, bool]:
    """Runs in a worker (a spawned process or a Ray task): rebuild the cache handle, decode,
    report as plain data; never raises, so one broken video cannot stop a run."""
    cache = VideoCache(root, DecodeSettings(**settings), image_format=image_format)
    entry = VideoEntry(path=Path(path), labels=[], start=start, end=end)
    try:
        return extract_one(entry, cache)
    except VideoDecodeError as exc:
        return path, f"failed: {exc}", False
    except Exception as exc:  # a worker must report, not die: the run goes on
        return path, f"failed: {path}: {type(exc).__name__}: {exc}", False


def extract_videos(
    entries: list[VideoEntry] | list[Path],
    cache: VideoCache,
    *,
    workers: int = 1,
    progress: bool = True,
) -> ExtractReport:
    """Decode every entry not yet in ``cache``; returns what was done, skipped and failed."""
    t0 = time.perf_counter()
    report = ExtractReport()
    todo: list[VideoEntry] = []
    for item in entries:
        entry = _as_entry(item)
        if cache.has(entry.path, entry.frame_range):
            report.skipped += 1
        else:
            report.changed += cache.changed(entry.path, entry.frame_range)
            todo.append(entry)

    bar = tqdm(total=len(todo), desc="extract", unit="video", disable=not progress or not todo)
    settings = dataclasses.asdict(cache.settings)
    if workers <= 1 or len(todo) <= 1:
        for entry in todo:
            report.record(extract_path(str(entry.path), entry.start, entry.end, str(cache.root), settings, cache.image_format))
            bar.update()
    else:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)), mp_context=get_context("spawn"), initializer=start_worker
        ) as pool:
            futures = [
                pool.submit(
                    extract_path, str(e.path), e.start, e.end, str(cache.root), settings, cache.image_format
                )
                for e in todo
            ]
            for future in as_completed(futures):
                report.record(future.result())
                bar.update()
    bar.close()
    return report.finish(t0)


def check_writable(cache: VideoCache) -> None:
    """Refuse up front a cache folder that cannot be written (a read-only data root): every
    video would fail and the run would end saying none could be decoded."""


    try:
        cache.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.folder, prefix=".write-test."):
            pass
    except OSError as exc:
        raise CacheError(
            f"{cache.folder}: cannot write the cache ({exc.strerror or exc}); set data.cache to a "
            "writable folder (or --cache for adamml extract)"
        ) from None


def ensure_cached(
    splits: dict[str, list[VideoEntry]],
    cache: VideoCache,
    *,
    workers: int = 1,
    progress: bool = True,
    log=print,
) -> tuple[dict[str, list[VideoEntry]], ExtractReport]:
    """Extract every video of ``splits`` that ``cache`` lacks; return the splits without the
    videos that still are not cached (they failed: the report names them and why).

    What ``adamml train`` runs before training and ``adamml extract --config`` ahead of time.
    """
    unique: dict[tuple, VideoEntry] = {}
    for entries in splits.values():
        for entry in entries:
            unique.setdefault((str(entry.path), entry.frame_range), entry)
    missing = sum(not cache.has(e.path, e.frame_range) for e in unique.values())
    report = ExtractReport(skipped=len(unique))
    if missing:
        check_writable(cache)
        log(f"extracting {missing} of {len(unique)} videos with {workers} worker(s) into {cache.folder}")
        report = extract_videos(list(unique.values()), cache, workers=workers, progress=progress)
        log(report.summary())
    kept = {name: [e for e in entries if cache.has(e.path, e.frame_range)] for name, entries in splits.items()}
    for name, entries in splits.items():
        left = len(entries) - len(kept[name])
        if left:
            log(f"{name}: {left} of {len(entries)} videos could not be decoded and are left out "
                "(named above)")
    return kept, report


def default_workers() -> int:
    """Extraction processes when none are asked for: every core (decoding is per-video)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
