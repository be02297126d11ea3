"""Batch prediction over a corpus: one JSON line per video, a manifest, resumable.

``adamml predict VIDEO_OR_DIR_OR_LIST... --out predictions.jsonl`` writes, per video, either
its prediction or its error::

    {"video": "a.mp4", "classes": ["dog", ...], "scores": [0.91, ...], "decisions": [["rgb", "audio"], ["audio"]],
     "gflops": 12.3, "audio_missing": false}
    {"video": "b.mp4", "error": "b.mp4: cannot be opened as a video (...)"}

and keeps a :class:`~adamml.scale.manifest.Manifest` beside it (``predictions.manifest.jsonl``).
Whatever produces the records -- this process (``--engine local``) or a Ray Data pipeline
(``--engine ray``, :mod:`adamml.scale.predict`) -- this module writes them, so a rerun after a
kill appends only the videos still pending, and every video appears once in the output.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from adamml.data.formats import VIDEO_EXTENSIONS, DatasetError
from adamml.scale.manifest import DONE, FAILED, PENDING, Manifest, RunMismatch

__all__ = [
    "BatchReport", "expand_videos", "manifest_path", "prediction_record", "error_record",
    "local_records", "predict_to_jsonl", "RunMismatch",
]

LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv")


@dataclass
class BatchReport:
    """What one batch-prediction run did; ``failed``: (video, error), this run's and earlier ones."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    out: str = ""

    def summary(self) -> str:
        lines = [
            f"predicted {self.done}, skipped {self.skipped} (already in {self.out}), "
            f"failed {len(self.failed)}, in {self.seconds:.1f} s"
        ]
        if self.failed:
            lines.append("failures:")
            lines += [f"  {msg}" if video in msg else f"  {video}: {msg}" for video, msg in self.failed]
        return "\n".join(lines)


def expand_videos(items: Iterable[str | Path]) -> list[str]:
    """Video files from files, folders (searched recursively for video extensions) and list
    files (``.txt``/``.lst``/``.csv``: the first field of each line is a path, relative to
    the list's folder unless absolute; a ``path`` header and ``#`` comments are skipped)."""
    videos: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise DatasetError(f"{path}: no video files (extensions {', '.join(VIDEO_EXTENSIONS)}) in this folder")
            videos += found
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                first = line.replace(",", " ").split(maxsplit=1)[0] if line.strip() else ""
                if not first or first.startswith("#") or (number == 1 and first.lower() == "path"):
                    continue
                video = Path(first) if Path(first).is_absolute() else path.parent / first
                if not video.is_file():
                    raise DatasetError(f"{path}, line {number}: no such video file {video}")
                videos.append(str(video))
        elif path.is_file():
            videos.append(str(path))
        else:
            raise DatasetError(f"{path}: no such file or folder (give videos, folders of videos or list files)")
    return list(dict.fromkeys(videos))  # each video once, in the order given


def manifest_path(out: str | Path) -> Path:
    """``predictions.jsonl`` -> ``predictions.manifest.jsonl``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".manifest.jsonl")


def prediction_record(prediction) -> dict[str, Any]:
    """The JSON line of one :class:`~adamml.results.Prediction`."""
    return {
        "video": prediction.video,
        "classes": [name for name, _ in prediction.top],
        "scores": [round(score, 6) for _, score in prediction.top],
        "decisions": prediction.segments,
        "gflops": float(f"{prediction.gflops:.9g}"),  # significant digits: tiny models cost 1e-2 GFLOPs
        "audio_missing": prediction.audio_missing,
    }


def error_record(video: str, exc: BaseException) -> dict[str, Any]:
    """The JSON line of a video that failed; the message names the file."""
    message = str(exc)
    if video not in message:
        message = f"{video}: {type(exc).__name__}: {message}"
    return {"video": video, "error": message}


def local_records(videos: list[str], model, *, topk: int = 5) -> Iterator[dict[str, Any]]:
    """``--engine local``: each video through ``model.predict`` (an :class:`adamml.Model`), one
    after the other in this process: the predictions ``adamml predict`` gives file by file."""
    for video in videos:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a missing audio track is in the record
                prediction = model.predict(video, topk=topk)
        except Exception as exc:  # a broken video is recorded; the run goes on
            yield error_record(video, exc)
            continue
        prediction.video = video
        yield prediction_record(prediction)


def _read_output(out: Path) -> dict[str, dict[str, Any]]:
    """The records already written; a partial last line (a kill mid-write) is cut off."""
    records: dict[str, dict[str, Any]] = {}
    if not out.is_file():
        return records
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with out.open("r+b") as handle:
            handle.truncate(len(complete))
    for line in complete.decode("utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "video" in record:
            records[str(record["video"])] = record
    return records


def _drop_lines(out: Path, videos: set[str]) -> None:
    """Rewrite ``out`` without the lines of ``videos`` (failures about to be retried), atomically."""
    kept = [line for line in out.read_text(encoding="utf-8").splitlines(keepends=True)
            if json.loads(line).get("video") not in videos]
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(kept)
    os.replace(tmp, out)


def predict_to_jsonl(
    videos: list[str],
    out: str | Path,
    produce: Callable[[list[str]], Iterable[dict[str, Any]]],
    *,
    manifest: str | Path | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    run: dict[str, Any] | None = None,
) -> BatchReport:
    """Append to ``out`` the records that ``produce(todo)`` yields for the videos not yet done.

    A video is done once its line is in ``out``; the manifest follows the output (a kill
    between the two writes is reconciled on the next run). Failed videos are not retried
    unless ``retry_failed``; their old lines are then replaced.

    ``run``: what the predictions depend on (the checkpoint's SHA-256, the options), kept in
    the manifest; resuming an output written with other values is refused (:class:`RunMismatch`)
    before anything is written, so one file never mixes two models' predictions.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Manifest(manifest or manifest_path(out))
    if run is not None:
        log.check_run(run, out)
    written = _read_output(out)
    log.mark(
        {"video": v, "status": FAILED, "error": r["error"]} if "error" in r else {"video": v, "status": DONE}
        for v, r in written.items() if log.status(v) == PENDING
    )
    report = BatchReport(out=str(out))
    todo = []
    for video in videos:
        status = log.status(video) if video in written else PENDING
        if status == DONE:
            report.skipped += 1
        elif status == FAILED and not retry_failed:
            report.failed.append((video, f"{log.error(video)} (failed in an earlier run)"))
        else:
            todo.append(video)
    retried = {v for v in todo if v in written}
    if retried:
        _drop_lines(out, retried)
    log.add_pending(todo)
    wanted = set(todo)
    bar = tqdm(total=len(todo), desc="predict", unit="video", disable=not progress or not todo)
    if todo:
        with out.open("a", encoding="utf-8") as handle:
            for record in produce(todo):
                video = str(record["video"])
                if video not in wanted:
                    raise RuntimeError(f"the engine returned {video}, which was not asked for or came twice")
                wanted.discard(video)
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                if "error" in record:
                    report.failed.append((video, record["error"]))
                    log.mark([{"video": video, "status": FAILED, "error": record["error"], "t": round(time.time(), 3)}])
                else:
                    report.done += 1
                    log.mark([{"video": video, "status": DONE, "t": round(time.time(), 3)}])
                bar.update()
    bar.close()
    report.failed.sort()
    report.seconds = time.perf_counter() - t0
    return report
