"""The paper's four datasets: sizes, metric, layout and where each class list comes from.

A plain dict (``DATASETS``) because users pick a dataset by name in a config
(``data.dataset: kinetics_sounds``). Class lists are shipped only where they are known
exactly (Kinetics-Sounds, from the paper); the others are built from the official files
their owners distribute, with the builders below, and written to ``<root>/classes.txt``,
which :func:`discover` (at the end of this module) reads first. See docs/datasets.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from adamml.data.formats import (
    VIDEO_EXTENSIONS,
    DatasetError,
    read_class_folders,
    read_class_names,
    read_csv,
    read_official_list,
)
from adamml.data.types import VideoEntry
from adamml.runtime.files import atomic_write_text

CLASSLIST_DIR = Path(__file__).parent / "classlists"


@dataclass(frozen=True)
class DatasetInfo:
    """What adamml needs to know about a benchmark, and what a user needs to prepare it."""

    name: str
    title: str
    num_classes: int
    metric: str  # "top1" or "mAP" (video-level mean average precision)
    multi_label: bool
    fps: float  # frame rate used for frame extraction in the paper's pipeline
    train_videos: int
    test_videos: int
    splits: tuple[str, str]  # (train split, evaluation split) names under the root
    class_list: str | None  # file in adamml/data/classlists, or None when built by the user
    class_source: str  # where the class list comes from and how to build it
    layout: str  # expected folder layout under data.root
    list_files: dict[str, tuple[str, ...]] = field(default_factory=dict)


_FOLDER_LAYOUT = (
    "<root>/{train}/<class>/<video>.mp4 and <root>/{test}/<class>/<video>.mp4 (folder per class), "
    "or <root>/{train}.csv and <root>/{test}.csv (path,label), "
    "or official list files <root>/{train}.txt with frame folders"
)

DATASETS: dict[str, DatasetInfo] = {
    "kinetics_sounds": DatasetInfo(
        name="kinetics_sounds",
        title="Kinetics-Sounds",
        num_classes=31,
        metric="top1",
        multi_label=False,
        fps=25.0,
        train_videos=22_521,
        test_videos=1_532,
        splits=("train", "val"),
        class_list="kinetics_sounds.txt",
        class_source=(
            "the 31 Kinetics-400 classes listed in the AdaMML paper (shipped, in alphabetical "
            "order); videos are the Kinetics-400 train/val videos of those classes"
        ),
        layout=_FOLDER_LAYOUT.format(train="train", test="val"),
    ),
    "activitynet": DatasetInfo(
        name="activitynet",
        title="ActivityNet-v1.3",
        num_classes=200,
        metric="mAP",
        multi_label=True,
        fps=25.0,
        train_videos=10_024,
        test_videos=4_926,
        splits=("train", "val"),
        class_list=None,
        class_source=(
            "the 200 leaf activities of the taxonomy in the official activity_net.v1-3.min.json, "
            "sorted alphabetically: build_activitynet_classes(json_path); "
            "build_activitynet_lists() also writes train.csv/val.csv from its 'database'"
        ),
        layout=(
            "<root>/videos/v_<youtube id>.<ext> (the official download naming) plus "
            "<root>/train.csv, <root>/val.csv, <root>/classes.txt written by build_activitynet_lists"
        ),
    ),
    "fcvid": DatasetInfo(
        name="fcvid",
        title="FCVID",
        num_classes=239,
        metric="mAP",
        multi_label=True,
        fps=1.0,
        train_videos=45_611,
        test_videos=45_612,
        splits=("train", "test"),
        class_list=None,
        class_source=(
            "the official FCVID release: videos in <category>/<video> folders, "
            "materials/FCVID_VideoName_TrainTestSplit.txt ('<category>/<video> train|test' per "
            "line) and materials/FCVID_Label.txt (one row of 239 0/1 flags per video, same order); "
            "class names in label-column order from a class-index file ('<index> <name>' or one "
            "name per line): build_fcvid_lists(materials_dir, video_root, out_root, class_file)"
        ),
        layout=(
            "<root>/<category>/<video>.<ext> as released, plus <root>/train.csv, <root>/test.csv "
            "and <root>/classes.txt written by build_fcvid_lists"
        ),
    ),
    "mini_sports1m": DatasetInfo(
        name="mini_sports1m",
        title="Mini-Sports1M",
        num_classes=487,
        metric="mAP",
        multi_label=False,
        fps=25.0,
        train_videos=14_610,
        test_videos=4_870,
        splits=("train", "test"),
        class_list=None,
        class_source=(
            "labels.txt of the official Sports-1M repository (487 lines, one class name per "
            "line, line order = class index): read_sports1m_classes(labels_txt); the subset is "
            "30 training and 10 test videos per class"
        ),
        layout=_FOLDER_LAYOUT.format(train="train", test="test"),
    ),
}


def get_dataset(name: str) -> DatasetInfo:
    """Look a dataset up by name, with a message that lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)} "
            "(or 'folder'/'csv'/'list' for your own data)"
        ) from None


METRICS = ("top1", "mAP")


def headline_metric(dataset: str, multi_label: bool, metric: str | None = None) -> str:
    """The metric a run is reported and selected by: ``data.metric`` if set, else the
    catalogue's for its datasets (the paper's: top-1 on Kinetics-Sounds, mAP on the other
    three), else mAP for multi-label data and top-1 otherwise."""
    if metric is not None:
        if metric not in METRICS:
            raise DatasetError(f"data.metric must be one of {', '.join(METRICS)}, got {metric!r}")
        return metric
    if dataset in DATASETS:
        return DATASETS[dataset].metric
    return "mAP" if multi_label else "top1"


def class_names_for(name: str) -> list[str]:
    """The shipped class list of a catalogue dataset; an error says how to build the others."""
    info = get_dataset(name)
    if info.class_list is None:
        raise DatasetError(
            f"{info.title}: no class list is shipped; build <root>/classes.txt from {info.class_source}"
        )
    names = read_class_names(CLASSLIST_DIR / info.class_list)
    if len(names) != info.num_classes:
        raise DatasetError(
            f"{CLASSLIST_DIR / info.class_list}: {len(names)} classes, expected {info.num_classes}"
        )
    return names


def write_class_list(names: list[str], path: str | Path) -> Path:
    """Write one class name per line, atomically (temp file + rename)."""
    return atomic_write_text(path, "".join(f"{n}\n" for n in names))


def _write_csv(rows: list[tuple[str, list[int]]], path: Path) -> Path:
    """``path,label`` CSV with multi-labels joined by ';', written atomically."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["path", "label"])
    for video, labels in rows:
        writer.writerow([video, ";".join(str(i) for i in labels)])
    return atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- ActivityNet


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def build_activitynet_classes(json_path: str | Path) -> list[str]:
    """The 200 ActivityNet-v1.3 classes: leaves of the official taxonomy, sorted by name.

    Leaves (nodes no other node names as parent) are the annotated activities; sorting makes
    the index order independent of the JSON's ordering.
    """
    json_path = Path(json_path)
    data = _load_json(json_path)
    taxonomy = data.get("taxonomy")
    if not isinstance(taxonomy, list) or not taxonomy:
        raise DatasetError(f"{json_path}: no 'taxonomy' list; expected activity_net.v1-3.min.json")
    try:
        parents = {node["parentId"] for node in taxonomy}
        leaves = sorted({node["nodeName"] for node in taxonomy if node["nodeId"] not in parents})
    except (KeyError, TypeError):
        raise DatasetError(
            f"{json_path}: taxonomy nodes need 'nodeId', 'nodeName' and 'parentId'"
        ) from None
    if len(leaves) != DATASETS["activitynet"].num_classes:
        raise DatasetError(
            f"{json_path}: taxonomy has {len(leaves)} leaf activities, expected 200 (is this v1.3?)"
        )
    return leaves


def _find_video(video_dir: Path, video_id: str, index: dict[str, Path]) -> Path | None:
    for stem in (f"v_{video_id}", video_id):
        if stem in index:
            return index[stem]
    return None


def build_activitynet_lists(
    json_path: str | Path, video_dir: str | Path, out_root: str | Path
) -> dict[str, int]:
    """Write ``classes.txt``, ``train.csv`` (subset 'training') and ``val.csv`` ('validation').

    Videos are looked up as ``v_<id>.<ext>`` or ``<id>.<ext>`` in ``video_dir``; missing ones
    (many YouTube videos are gone) are skipped and counted. Returns counts per split and
    'missing'. Labels of a video are all its annotated activities (multi-label, for mAP).
    """
    json_path, video_dir, out_root = Path(json_path), Path(video_dir), Path(out_root)
    names = build_activitynet_classes(json_path)
    database = _load_json(json_path).get("database")
    if not isinstance(database, dict):
        raise DatasetError(f"{json_path}: no 'database' mapping of videos")
    index = {
        p.stem: p for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    } if video_dir.is_dir() else {}
    if not index:
        raise DatasetError(f"{video_dir}: no videos found; expected v_<youtube id>.mp4 files")
    rows: dict[str, list[tuple[str, list[int]]]] = {"train": [], "val": []}
    subsets = {"training": "train", "validation": "val"}
    missing = 0
    for video_id, item in database.items():
        split = subsets.get(item.get("subset", ""))
        if split is None:
            continue
        labels = sorted({names.index(a["label"]) for a in item.get("annotations", []) if a.get("label") in names})
        if not labels:
            continue
        video = _find_video(video_dir, video_id, index)
        if video is None:
            missing += 1
            continue
        rows[split].append((os.path.relpath(video, out_root), labels))
    write_class_list(names, out_root / "classes.txt")
    for split, split_rows in rows.items():
        _write_csv(split_rows, out_root / f"{split}.csv")
    return {"train": len(rows["train"]), "val": len(rows["val"]), "missing": missing}


# ----------------------------------------------------------------------------- FCVID


def build_fcvid_lists(
    materials_dir: str | Path,
    video_root: str | Path,
    out_root: str | Path,
    class_file: str | Path,
) -> dict[str, int]:
    """Write ``classes.txt``, ``train.csv`` and ``test.csv`` from the official FCVID files.

    ``materials_dir`` holds FCVID_VideoName_TrainTestSplit.txt and FCVID_Label.txt (rows of
    239 0/1 flags in the split file's order); ``class_file`` names the 239 columns in order.
    Videos missing under ``video_root`` (or with no label) are skipped and counted.
    """
    materials_dir, video_root, out_root = Path(materials_dir), Path(video_root), Path(out_root)
    names = read_class_names(class_file)
    num_classes = DATASETS["fcvid"].num_classes
    if len(names) != num_classes:
        raise DatasetError(f"{class_file}: {len(names)} classes, expected {num_classes}")
    split_file = materials_dir / "FCVID_VideoName_TrainTestSplit.txt"
    label_file = materials_dir / "FCVID_Label.txt"
    for required in (split_file, label_file):
        if not required.is_file():
            raise DatasetError(f"{required}: not found (part of the official FCVID release)")
    split_lines = [ln for ln in split_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    label_lines = [ln for ln in label_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(split_lines) != len(label_lines):
        raise DatasetError(
            f"{label_file}: {len(label_lines)} rows but {split_file.name} lists {len(split_lines)} videos"
        )
    rows: dict[str, list[tuple[str, list[int]]]] = {"train": [], "test": []}
    missing = 0
    for lineno, (split_line, label_line) in enumerate(zip(split_lines, label_lines, strict=True), 1):
        fields = split_line.split()
        if len(fields) != 2 or fields[1] not in rows:
            raise DatasetError(f"{split_file}:{lineno}: expected '<category>/<video> train|test'")
        flags = label_line.split()
        if len(flags) != num_classes:
            raise DatasetError(f"{label_file}:{lineno}: expected {num_classes} 0/1 flags, found {len(flags)}")
        try:
            labels = [i for i, flag in enumerate(flags) if float(flag) > 0]
        except ValueError:
            raise DatasetError(f"{label_file}:{lineno}: flags must be numbers 0 or 1") from None
        video = video_root / fields[0]
        if not labels or not video.is_file():
            missing += 1
            continue
        rows[fields[1]].append((os.path.relpath(video, out_root), labels))
    write_class_list(names, out_root / "classes.txt")
    for split, split_rows in rows.items():
        _write_csv(split_rows, out_root / f"{split}.csv")
    return {"train": len(rows["train"]), "test": len(rows["test"]), "missing": missing}


# ----------------------------------------------------------------------------- Sports-1M


def read_sports1m_classes(labels_txt: str | Path) -> list[str]:
    """The 487 Sports-1M classes from the official ``labels.txt`` (line order = index)."""
    names = read_class_names(labels_txt)
    expected = DATASETS["mini_sports1m"].num_classes
    if len(names) != expected:
        raise DatasetError(f"{labels_txt}: {len(names)} classes, expected {expected} (Sports-1M labels.txt)")
    return names


def evaluation_split(dataset: str) -> str:
    """The split a catalogue dataset is evaluated on (its test or val list): runs validate
    and select checkpoints on it, as the paper and the reference do; never carved from train."""
    return DATASETS[dataset].splits[1]


def missing_evaluation_split(root: str | Path, dataset: str, split: str) -> DatasetError:
    """The error for a catalogue dataset without the split it is evaluated on."""
    info = DATASETS[dataset]
    hint = "" if split == info.splits[1] else f" (data.val_split is {split!r}; {info.title} is evaluated on {info.splits[1]!r})"
    return DatasetError(
        f"{root}: no {split!r} split{hint}; a catalogue dataset is never carved out of train: "
        f"expected {info.layout}"
    )


# ---- finding a split -------------------------------------------------------------------------


def _first_file(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def split_exists(root: str | Path, split: str, dataset: str | None = None) -> bool:
    """Whether ``root`` holds ``split`` in a layout :func:`discover` reads (without reading it)."""
    root = Path(root)
    if Path(split).suffix in (".csv", ".txt") and Path(split).is_file():
        return True
    names = [f"{split}.txt", f"{split}_list.txt", f"{split}.csv"]
    info = DATASETS.get(dataset) if dataset is not None else None
    if info is not None:
        names += list(info.list_files.get(split, ()))
    return any((root / n).is_file() for n in names) or (root / split).is_dir()


def discover(
    root: str | Path,
    split: str,
    dataset: str | None = None,
    *,
    class_names: list[str] | None = None,
) -> tuple[list[VideoEntry], list[str]]:
    """Find ``split``'s videos under ``root`` in any supported layout (see the module doc).

    ``dataset`` names a catalogue entry, whose list-file names and class list are used.
    ``split`` may also be the path of a ``.csv`` or list ``.txt`` file (see adamml.data.splits).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    split_file = Path(split)
    if split_file.suffix in (".csv", ".txt") and split_file.is_file():
        # A split list a run wrote for itself (adamml.data.splits), with its class list beside it.
        if class_names is None:
            names_file = _first_file([split_file.with_name("classes.txt"), root / "classes.txt"])
            class_names = read_class_names(names_file) if names_file is not None else None
        if split_file.suffix == ".csv":
            return read_csv(split_file, root, class_names)
        return read_official_list(split_file, root, class_names)
    info = None
    if dataset is not None:
        info = DATASETS.get(dataset)
        if class_names is None and info is not None and info.class_list is not None:
            class_names = class_names_for(dataset)
    if class_names is None:
        # categories.txt is the reference code's name for the same file.
        names_file = _first_file([root / "classes.txt", root / "categories.txt"])
        if names_file is not None:
            class_names = read_class_names(names_file)

    list_names = [f"{split}.txt", f"{split}_list.txt"]
    if info is not None:
        list_names += list(info.list_files.get(split, ()))
    list_file = _first_file(root / n for n in list_names)
    if list_file is not None:
        found = read_official_list(list_file, root, class_names)
    elif (root / f"{split}.csv").is_file():
        found = read_csv(root / f"{split}.csv", root, class_names)
    elif (root / split).is_dir():
        found = read_class_folders(root / split, class_names)
    else:
        looked = ", ".join([*list_names, f"{split}.csv", f"{split}/<class>/<video>"])
        raise DatasetError(f"{root}: no {split!r} split found; looked for {looked}")
    if info is not None and len(found[1]) != info.num_classes:
        # Names guessed from one split of a benchmark would silently shift class indices.
        raise DatasetError(
            f"{root}: {info.title} has {info.num_classes} classes but {len(found[1])} were found; "
            f"write {root / 'classes.txt'} from {info.class_source}"
        )
    return found
