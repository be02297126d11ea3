"""The local engine's per-video extraction as Ray Data tasks (``adamml extract --engine ray``).

One row per video (``ray.data.read_videos`` would make a row per frame); each row runs
:func:`adamml.data.extract.extract_path` in a one-CPU task, which writes the same atomic cache
file the local engine writes. The driver streams the results into a :class:`Manifest`
(``<cache folder>/manifest.jsonl`` by default), so a killed run is rerun and continues: videos
already in the cache, or recorded as failed, are not redone (``retry_failed`` redoes failures),
unless the file at their path changed since (size or modification time, as the local engine
checks): a replaced video is decoded again, a failed one that was replaced is retried.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from adamml.data.cache import VideoCache, source_stamp
from adamml.data.extract import ExtractReport, extract_path, limit_threads
from adamml.data.types import VideoEntry
from adamml.scale.manifest import DONE, FAILED, Manifest
from adamml.scale.runtime import connect, quiet_ray_data

__all__ = ["extract_videos_ray", "video_key", "MAX_BLOCKS"]

# Blocks are Ray Data's unit of work and of loss on a kill: one video per block up to this
# many (beyond it, a few videos per block keep the driver's bookkeeping small).
MAX_BLOCKS = 20_000


def video_key(entry: VideoEntry) -> str:
    """The manifest's name for an entry: its path, plus the frame range of a list-file clip."""
    start, end = entry.frame_range
    return str(entry.path) if start is None and end is None else f"{entry.path}#{start}-{end}"


def _extract_row(row: dict[str, Any], *, root: str, settings: dict, image_format: str) -> dict[str, Any]:
    """A Ray task: one video into the cache, the outcome as a row."""
    limit_threads()
    t0 = time.perf_counter()
    start = None if row["start"] < 0 else int(row["start"])
    end = None if row["end"] < 0 else int(row["end"])
    path, status, audio_missing = extract_path(row["path"], start, end, root, settings, image_format)
    return {
        "key": row["key"], "path": path, "status": status,
        "audio_missing": bool(audio_missing), "seconds": time.perf_counter() - t0,
    }


def extract_videos_ray(
    entries: list[VideoEntry] | list[Path],
    cache: VideoCache,
    *,
    address: str | None = None,
    manifest: str | Path | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> ExtractReport:
    """Decode every entry not yet in ``cache`` on Ray; same report as the local engine.

    ``report.failed`` also names the videos that failed in an earlier run and were not
    retried.
    """
    t0 = time.perf_counter()
    log = Manifest(manifest or cache.folder / "manifest.jsonl")
    report = ExtractReport()
    todo: list[VideoEntry] = []
    reconciled = []
    stamps: dict[str, dict | None] = {}
    for item in entries:
        entry = item if isinstance(item, VideoEntry) else VideoEntry(path=Path(item), labels=[])
        key = video_key(entry)
        if cache.has(entry.path, entry.frame_range):  # the cache file is the proof of work
            report.skipped += 1
            if log.status(key) != DONE:  # killed between the rename and the manifest line
                reconciled.append({"video": key, "status": DONE})
            continue
        stamps[key] = source_stamp(entry.path)
        # The local engine's check: cached, or failed, from another file than the one there now.
        failed_file = log.records.get(key, {}).get("source_stamp")
        replaced = failed_file is not None and stamps[key] is not None and failed_file != stamps[key]
        if log.status(key) == FAILED and not retry_failed and not replaced:
            report.failed.append((str(entry.path), f"{log.error(key)} (failed in an earlier run)"))
            continue
        report.changed += cache.changed(entry.path, entry.frame_range) or (log.status(key) == FAILED and replaced)
        todo.append(entry)
    log.mark(reconciled)
    log.add_pending(video_key(e) for e in todo)
    if todo:
        ray = connect(address)
        quiet_ray_data(ray)
        rows = [
            {"key": video_key(e), "path": str(e.path),
             "start": -1 if e.start is None else int(e.start), "end": -1 if e.end is None else int(e.end)}
            for e in todo
        ]
        settings = dataclasses.asdict(cache.settings)
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS)).map(
            _extract_row,
            fn_kwargs={"root": str(cache.root), "settings": settings, "image_format": cache.image_format},
            num_cpus=1,
        )
        bar = tqdm(total=len(todo), desc="extract (ray)", unit="video", disable=not progress)
        for row in dataset.iter_rows():
            report.record((row["path"], row["status"], row["audio_missing"]))
            if row["status"] == "done":
                log.mark([{"video": row["key"], "status": DONE, "seconds": round(row["seconds"], 4), "t": round(time.time(), 3)}])
            else:
                log.mark([{"video": row["key"], "status": FAILED, "error": row["status"].removeprefix("failed: "),
                           "source_stamp": stamps.get(row["key"]), "t": round(time.time(), 3)}])
            bar.update()
        bar.close()
    return report.finish(t0)
