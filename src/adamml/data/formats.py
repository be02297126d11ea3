"""Find a split's videos and labels, whatever layout the dataset was delivered in.

Three layouts are read, and :func:`adamml.data.catalog.discover` tries them in this order:

1. **Official list file** (the AdaMML/TSN format): ``root/<split>.txt`` or
   ``root/<split>_list.txt`` (or the file names the catalogue gives for a named dataset).
   One video per line, fields separated by spaces or by ``;``::

       path start_frame end_frame label [label ...]

   ``path`` is relative to ``root`` (or absolute) and is usually a *frame folder* holding
   ``img_00001.jpg`` ..., TV-L1 flow as ``x_00001.jpg``/``y_00001.jpg`` (the reference's bare
   ``00001.jpg`` names are not read: rename them);
   it may also be a video file. Frame numbers are 1-based and inclusive. Labels are class
   indices (0-based), or class names when a class list is known. The audio of a frame folder
   ``F`` is read from ``F.wav`` (a WAV beside the folder) or ``F/audio.wav`` (inside it); see
   :func:`frame_folder_audio`.
2. **CSV**: ``root/<split>.csv`` with a ``path,label`` header; path relative to ``root`` or
   absolute; label a class name or index; several labels separated by ``;`` or ``|``.
3. **Folder per class**: ``root/<split>/<class>/<video>.{mp4,avi,mkv,webm,mov,...}``.

Class names come from ``root/classes.txt`` (or the reference's ``categories.txt``) if present, else from the catalogue's list for a
named dataset, else from the data (sorted folder names, sorted CSV labels).

Every problem raises :class:`DatasetError` naming the file (and line) and what was expected,
because a bad line found at epoch 3 of a GPU job is far more expensive than one found now.
What is read but looks unintended (a subfolder or broken link skipped, a class without
videos, a repeated row, integer labels with no class 0) is told as a :class:`DiscoveryWarning`
that counts and names it.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

from adamml.data.types import VideoEntry
from adamml.errors import AdamMLError

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
    ".ts", ".mts", ".m2ts", ".ogv", ".vob", ".3g2", ".asf", ".f4v", ".mxf",
)
LABEL_SEPARATORS = re.compile(r"[;|]")


class DatasetError(AdamMLError, ValueError):
    """A dataset file is missing or malformed; the message names the file, line and fix."""


class DiscoveryWarning(UserWarning):
    """Discovery skipped or assumed something the user may not have meant; names what."""


def _named(items: list, limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _warn(message: str) -> None:
    warnings.warn(message, DiscoveryWarning, stacklevel=3)


# ----------------------------------------------------------------------------- class lists


def read_class_names(path: str | Path) -> list[str]:
    """Read a class list: one name per line, line order = class index; blank lines skipped.

    Files where every line reads ``<index> <name>`` or ``<index>,<name>`` with indices running
    0..C-1 or 1..C (the form of many official class-index files) lose the index; a name that
    merely starts with a number ("3 point shot") stays whole unless every line is numbered.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: class list not found")
    lines = [
        (lineno, raw.strip())
        for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if raw.strip() and not raw.strip().startswith("#")
    ]
    if not lines:
        raise DatasetError(f"{path}: class list is empty; expected one class name per line")
    matches = [re.fullmatch(r"(\d+)\s*[,\t ]\s*(.+)", line) for _, line in lines]
    if all(matches):
        indices = [int(m.group(1)) for m in matches if m]
        first = indices[0]
        if first in (0, 1) and indices == list(range(first, first + len(indices))):
            lines = [(lineno, m.group(2).strip()) for (lineno, _), m in zip(lines, matches, strict=True) if m]
    names: list[str] = []
    for lineno, name in lines:
        if name in names:
            raise DatasetError(f"{path}:{lineno}: class {name!r} listed twice")
        names.append(name)
    return names


def _resolve_label(
    token: str, class_names: list[str] | None, where: str, *, allow_names: bool = True
) -> int:
    """Map a label token (class name or 0-based index) to an index, or say why not."""
    token = token.strip()
    if class_names is not None and allow_names and token in class_names:
        return class_names.index(token)
    try:
        index = int(token)
    except ValueError:
        if class_names is None:
            raise DatasetError(
                f"{where}: label {token!r} is not an integer class index; "
                "give a classes.txt to use class names"
            ) from None
        known = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
        raise DatasetError(
            f"{where}: unknown label {token!r}; expected one of the {len(class_names)} classes "
            f"({known}) or an index 0..{len(class_names) - 1}"
        ) from None
    if index < 0 or (class_names is not None and index >= len(class_names)):
        bound = f"0..{len(class_names) - 1}" if class_names is not None else ">= 0"
        raise DatasetError(f"{where}: label index {index} out of range (expected {bound})")
    return index


def _resolve_path(raw: str, root: Path) -> Path:
    path = Path(raw.strip())
    return path if path.is_absolute() else root / path


def _index_names(entries: list[VideoEntry]) -> list[str]:
    """Class names for data labelled only by index: the indices themselves, as text."""
    top = max((max(e.labels) for e in entries if e.labels), default=-1)
    return [str(i) for i in range(top + 1)]


# ----------------------------------------------------------------------------- CSV


def read_csv(
    path: str | Path, root: str | Path, class_names: list[str] | None = None
) -> tuple[list[VideoEntry], list[str]]:
    """Read a ``path,label`` CSV; returns the entries and the class names used.

    Without ``class_names``, labels that are all integers are indices (names "0", "1", ...);
    otherwise the sorted set of label strings becomes the class list.
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DatasetError(f"{path}: CSV file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows = [(i, r) for i, r in enumerate(rows, start=1) if any(c.strip() for c in r)]
    if not rows:
        raise DatasetError(f"{path}: empty CSV; expected a 'path,label' header and one row per video")
    header_line, header = rows[0]
    header = [h.strip().lower() for h in header]
    if "path" not in header or "label" not in header:
        raise DatasetError(
            f"{path}:{header_line}: expected a header with columns 'path' and 'label', found {header}"
        )
    path_col, label_col = header.index("path"), header.index("label")
    parsed: list[tuple[str, Path, list[str]]] = []
    for lineno, row in rows[1:]:
        where = f"{path}:{lineno}"
        if len(row) != len(header):
            raise DatasetError(f"{where}: expected {len(header)} fields ({','.join(header)}), found {len(row)}")
        tokens = [t.strip() for t in LABEL_SEPARATORS.split(row[label_col]) if t.strip()]
        if not row[path_col].strip():
            raise DatasetError(f"{where}: empty path")
        if not tokens:
            raise DatasetError(f"{where}: no label; expected a class name or index")
        video = _resolve_path(row[path_col], root)
        if not video.exists():
            raise DatasetError(f"{where}: video {video} not found")
        parsed.append((where, video, tokens))
    if not parsed:
        raise DatasetError(f"{path}: no videos listed below the header")
    names = class_names
    if names is None:
        _check_one_label_kind(path, parsed)
        all_tokens = sorted({t for _, _, ts in parsed for t in ts})
        if not all(_is_index(t) for t in all_tokens):
            names = all_tokens
    entries = [
        VideoEntry(path=video, labels=[_resolve_label(t, names, where) for t in tokens], source=where)
        for where, video, tokens in parsed
    ]
    _check_rows(path, entries)
    if class_names is not None:
        used = {i for e in entries for i in e.labels}
        unused = [name for i, name in enumerate(class_names) if i not in used]
        if unused:  # a class of another split's labels that this one never names: often a typo there
            _warn(f"{path}: {len(unused)} class(es) of the class list have no video here, yet count as classes: "
                  f"{_named(unused)}")
    if names is None and entries and min(min(e.labels) for e in entries if e.labels) > 0:
        _warn(f"{path}: integer labels from {min(min(e.labels) for e in entries)} with no class list: read as "
              "0-based indices, so class 0 has no video; give a classes.txt (one name per line, class 0 first)")
    return entries, names if names is not None else _index_names(entries)


def _is_index(token: str) -> bool:
    return token.lstrip("-").isdigit()


def _check_one_label_kind(path: Path, parsed: list[tuple[str, Path, list[str]]]) -> None:
    """Without a class list, labels are all indices or all names: a mix would make the odd
    ones classes of their own ("1" beside "cat" and "dog"; a typo among indices, which then
    also sorts "10" before "2"). Refused, naming the row of the first odd label."""
    found = [(where, t) for where, _, tokens in parsed for t in tokens]
    indices = [(where, t) for where, t in found if _is_index(t)]
    names = [(where, t) for where, t in found if not _is_index(t)]
    if not indices or not names:
        return
    (where, odd), (other_where, other) = (indices[0], names[0]) if len(indices) <= len(names) else (names[0], indices[0])
    kind, others = ("a class index", "class names") if _is_index(odd) else ("a class name", "class indices")
    raise DatasetError(
        f"{where}: label {odd!r} is {kind} where the other rows give {others} (such as {other!r} at "
        f"{other_where}) and no class list says which are classes; give one kind of label, or a "
        f"{path.parent / 'classes.txt'} (one name per line, class 0 first)"
    )


def _check_rows(path: Path, entries: list[VideoEntry]) -> None:
    """Tell repeated videos: the same row twice, or one video under two different labels."""
    seen: dict[Path, VideoEntry] = {}
    repeated, relabelled = [], []
    for entry in entries:
        key = Path(entry.path).absolute()
        first = seen.setdefault(key, entry)
        if first is not entry:
            (repeated if first.labels == entry.labels else relabelled).append(f"{entry.source} (as {first.source})")
    if repeated:
        _warn(f"{path}: {len(repeated)} row(s) repeat a video with the same label, which then counts twice: {_named(repeated)}")
    if relabelled:
        _warn(f"{path}: {len(relabelled)} row(s) give a video listed before another label: {_named(relabelled)}; "
              "a video of several classes belongs on one row with its labels joined by ';'")


# ----------------------------------------------------------------------------- official lists


def _split_fields(line: str) -> list[str]:
    if ";" in line:
        return [f.strip() for f in line.split(";") if f.strip()]
    return line.split()


def read_official_list(
    path: str | Path,
    root: str | Path,
    class_names: list[str] | None = None,
    *,
    require_labels: bool = True,
    check_paths: bool = True,
) -> tuple[list[VideoEntry], list[str]]:
    """Read an AdaMML/TSN list file: ``path start_frame end_frame label [label ...]``.

    ``require_labels=False`` accepts test lists with only ``path start end``. Returns the
    entries and the class names (the given ones, or "0".."max label" when none are known).
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DatasetError(f"{path}: list file not found")
    entries: list[VideoEntry] = []
    min_fields = 4 if require_labels else 3
    expected = "path start_frame end_frame label [label ...]" if require_labels else "path start_frame end_frame [label ...]"
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        fields = _split_fields(line)
        if len(fields) < min_fields:
            raise DatasetError(
                f"{where}: expected at least {min_fields} fields ({expected}), found {len(fields)}: {line!r}"
            )
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise DatasetError(
                f"{where}: start_frame and end_frame must be integers, found {fields[1]!r} {fields[2]!r}"
            ) from None
        if start < 1 or end < start:
            raise DatasetError(f"{where}: bad frame range {start}..{end}; expected 1 <= start <= end")
        video = _resolve_path(fields[0], root)
        if check_paths and not video.exists():
            raise DatasetError(f"{where}: {video} not found (expected a frame folder or a video file)")
        labels = [_resolve_label(t, class_names, where) for t in fields[3:]]
        entries.append(VideoEntry(path=video, labels=labels, start=start, end=end, source=where))
    if not entries:
        raise DatasetError(f"{path}: list file is empty; expected lines '{expected}'")
    return entries, class_names if class_names is not None else _index_names(entries)


def frame_folder_audio(folder: str | Path) -> Path | None:
    """The WAV track of a frame folder ``F``: ``F.wav`` beside it, else ``F/audio.wav``."""
    folder = Path(folder)
    for candidate in (folder.with_name(folder.name + ".wav"), folder / "audio.wav"):
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------- folder per class


def read_class_folders(
    split_dir: str | Path, class_names: list[str] | None = None
) -> tuple[list[VideoEntry], list[str]]:
    """Read ``split_dir/<class>/<video>``; class names = sorted folder names unless given."""
    split_dir = Path(split_dir)
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"{split_dir}: no class folders; expected {split_dir}/<class>/<video>.mp4")
    names = class_names if class_names is not None else [p.name for p in folders]
    entries: list[VideoEntry] = []
    nested: list[Path] = []
    broken: list[Path] = []
    other: list[Path] = []
    empty: list[str] = []
    for folder in folders:
        if folder.name not in names:
            raise DatasetError(
                f"{folder}: folder {folder.name!r} is not a known class "
                f"(the class list has {len(names)} classes)"
            )
        label = names.index(folder.name)
        found = 0
        for video in sorted(folder.iterdir()):
            if video.is_file() and video.suffix.lower() in VIDEO_EXTENSIONS:
                entries.append(VideoEntry(path=video, labels=[label], source=str(video)))
                found += 1
            elif video.is_dir() and not video.name.startswith("."):
                nested.append(video)
            elif video.is_symlink() and not video.exists():
                broken.append(video)
            elif video.is_file() and not video.name.startswith("."):
                other.append(video)
        if not found:
            empty.append(folder.name)
    if not entries:
        raise DatasetError(
            f"{split_dir}: class folders hold no videos with extensions {', '.join(VIDEO_EXTENSIONS)}"
        )
    if nested:
        _warn(f"{split_dir}: {len(nested)} subfolder(s) inside class folders skipped (videos are read from "
              f"<class>/<video> only): {_named(nested)}")
    if broken:
        _warn(f"{split_dir}: {len(broken)} broken link(s) skipped: {_named(broken)}")
    if other:
        _warn(f"{split_dir}: {len(other)} file(s) without a video extension skipped (a video needs one of "
              f"{', '.join(VIDEO_EXTENSIONS)}): {_named(other)}")
    if empty:
        _warn(f"{split_dir}: {len(empty)} class folder(s) hold no video, yet count as classes: {_named(empty)}")
    return entries, names


# ----------------------------------------------------------------------------- discovery
