"""Split lists a run writes for itself: a validation split carved out of train when the data
has none, and the lists without the videos that could not be decoded.

Both are CSV files in the run folder (``<output_dir>/splits/<split>.csv``, paths relative to
the data root, labels by class name), which ``data.train_split`` / ``data.val_split`` then
name; :func:`adamml.data.formats.discover` reads a split given as a ``.csv`` path. So the run
records exactly which videos it trained and validated on, and ``adamml evaluate`` scores the
same validation videos later.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from adamml.data.formats import LABEL_SEPARATORS, DatasetError
from adamml.data.types import VideoEntry
from adamml.runtime.files import atomic_write_text

VAL_FRACTION = 0.2  # of each class, when the data has no validation split


def carve_validation(
    entries: list[VideoEntry], class_names: list[str], *, fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """Split ``entries`` into (train, val), stratified by (first) label and seeded.

    Every class keeps at least one training video and gives at least one validation video, so
    both splits know every class; a class with fewer than two videos cannot be split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        by_class.setdefault(entry.labels[0], []).append(i)
    too_few = [class_names[c] for c, idx in sorted(by_class.items()) if len(idx) < 2]
    if too_few:
        raise DatasetError(
            f"cannot carve a validation split out of train: class(es) {', '.join(too_few)} "
            "have fewer than 2 videos; add videos or give a val split"
        )
    rng = np.random.default_rng(seed)
    val_idx: set[int] = set()
    for _, idx in sorted(by_class.items()):
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val_idx.update(int(i) for i in rng.permutation(idx)[:n_val])
    train = [e for i, e in enumerate(entries) if i not in val_idx]
    val = [e for i, e in enumerate(entries) if i in val_idx]
    return train, val


_NUMBERED = re.compile(r"\d+\s*[,\t ]\s*.+")  # what read_class_names takes for "<index> <name>"


def _class_list_text(class_names: list[str]) -> str:
    """classes.txt that reads back as ``class_names``: numbered lines ("0 #name") where a plain
    list would lose a name (one starting with '#' reads as a comment) or its leading number."""
    for name in class_names:
        if not name or name != name.strip() or "\n" in name or "\r" in name:
            raise DatasetError(f"class name {name!r} cannot be written to a class list (empty, or blank at an end, or a line break)")
    if any(n.startswith("#") for n in class_names) or all(_NUMBERED.fullmatch(n) for n in class_names):
        return "".join(f"{i} {name}\n" for i, name in enumerate(class_names))
    return "".join(f"{name}\n" for name in class_names)


def _label_text(index: int, class_names: list[str]) -> str:
    """A label as the CSV holds it: the class name, or its index where the name holds a label
    separator (';' or '|', which would split it in two)."""
    name = class_names[index]
    if not LABEL_SEPARATORS.search(name):
        return name
    if str(index) in class_names:
        raise DatasetError(f"class {name!r} holds ';' or '|' and its index {index} is another class's name; rename one")
    return str(index)


def write_split(folder: str | Path, split: str, entries: list[VideoEntry], class_names: list[str], root: str | Path) -> Path:
    """Write ``folder/<split>.csv`` (or ``.txt``, the official list format, for frame-folder
    entries with a frame range) and ``folder/classes.txt``; returns the list file.

    Paths are relative to ``root`` where possible; files are written atomically.
    """
    folder, root = Path(folder), Path(root).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "classes.txt", _class_list_text(class_names))
    ranged = any(e.start is not None for e in entries)
    rows = []
    for entry in entries:
        video = Path(entry.path).absolute()
        try:
            shown = video.relative_to(root).as_posix()
        except ValueError:
            shown = str(video)
        if ranged:
            rows.append(" ".join([shown, str(entry.start), str(entry.end), *(str(i) for i in entry.labels)]))
        else:
            rows.append(shown)
    target = folder / f"{split}.{'txt' if ranged else 'csv'}"
    if ranged:
        text = "".join(f"{row}\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label"])
        for shown, entry in zip(rows, entries, strict=True):
            writer.writerow([shown, ";".join(_label_text(i, class_names) for i in entry.labels)])
        text = buffer.getvalue()
    atomic_write_text(target, text)
    return target

