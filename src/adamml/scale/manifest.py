"""Per-video status of a long run (pending, done, failed with the error), kept on disk.

An append-only JSON-lines log: one line per status change, the last line about a video wins.
Appending never rewrites what is there, so a run killed mid-write loses at most its last,
partial line (ignored on reading), and a rerun knows exactly which videos are finished::

    {"video": "/data/a.mp4", "status": "pending"}
    {"video": "/data/a.mp4", "status": "done", "seconds": 1.52, "t": 1796100000.123}
    {"video": "/data/b.mp4", "status": "failed", "error": "/data/b.mp4: not a media file ...", "t": ...}

(``t``: when it finished, Unix time; ``seconds``: the work it took, where the engine says;
an extraction's failure also keeps the ``source_stamp`` of the file that failed, so a file
replaced since is retried.)
A ``{"run": {...}}`` line records what the results depend on (a prediction run's checkpoint
SHA-256 and options): a later run with other values is refused instead of mixing them in.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adamml.errors import AdamMLError

__all__ = ["Manifest", "RunMismatch", "PENDING", "DONE", "FAILED"]

PENDING, DONE, FAILED = "pending", "done", "failed"


class RunMismatch(AdamMLError):
    """Resuming into an output written by another model or with other options."""


class Manifest:
    """The status of every video of a run, read from and appended to ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.run: dict[str, Any] | None = None  # the first run's settings, where recorded
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # the partial last line of a killed run
                        continue
                    if isinstance(record, dict) and "video" in record and "status" in record:
                        self.records[str(record["video"])] = record
                    elif isinstance(record, dict) and isinstance(record.get("run"), dict) and self.run is None:
                        self.run = record["run"]

    def check_run(self, run: dict[str, Any], out: str | Path | None = None) -> None:
        """Record ``run`` (JSON values) on the first run; on a later one, refuse other values
        in one line naming each that differs."""
        run = json.loads(json.dumps(run))
        if self.run is None:
            self._append([json.dumps({"run": run}) + "\n"])
            self.run = run
            return
        differ = [f"{key} {self.run.get(key)!r} then, {run.get(key)!r} now"
                  for key in sorted(set(self.run) | set(run)) if self.run.get(key) != run.get(key)]
        if differ:
            target = out or self.path
            raise RunMismatch(f"{target}: was written with other settings ({'; '.join(differ)}); "
                              "give another output file, or delete it and its manifest to start again")

    def status(self, video: str) -> str:
        record = self.records.get(str(video))
        return record["status"] if record else PENDING

    def error(self, video: str) -> str | None:
        record = self.records.get(str(video))
        return record.get("error") if record else None

    def mark(self, records: Iterable[dict[str, Any]]) -> None:
        """Append status records (``video``, ``status``, optional ``error`` and details), durably."""
        lines = []
        for record in records:
            if record.get("status") not in (PENDING, DONE, FAILED):
                raise ValueError(f"{self.path}: unknown status {record.get('status')!r} for {record.get('video')}")
            self.records[str(record["video"])] = record
            lines.append(json.dumps(record) + "\n")
        self._append(lines)

    def _append(self, lines: list[str]) -> None:
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            self._end_partial_line(handle)
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def _end_partial_line(self, handle) -> None:
        """After a kill mid-write the file may end inside a line: start on a fresh one."""
        if handle.tell() == 0:
            return
        with self.path.open("rb") as reader:
            reader.seek(-1, os.SEEK_END)
            if reader.read(1) != b"\n":
                handle.write("\n")

    def add_pending(self, videos: Iterable[str]) -> None:
        """Record the videos this run will do, so the file lists the pending ones too."""
        self.mark({"video": str(v), "status": PENDING} for v in videos if str(v) not in self.records)

    def counts(self, videos: Iterable[str] | None = None) -> Counter:
        keys = self.records if videos is None else [str(v) for v in videos]
        return Counter(self.status(v) for v in keys)

    def failures(self, videos: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """(video, error) of every failed video (of ``videos``, if given), sorted."""
        keys = self.records if videos is None else [str(v) for v in videos]
        return sorted((v, self.error(v) or "") for v in keys if self.status(v) == FAILED)
