"""List formats and discovery: every layout reads, every bad input names its file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adamml.data.catalog import (
    DATASETS,
    build_activitynet_classes,
    build_activitynet_lists,
    build_fcvid_lists,
    class_names_for,
    discover,
    get_dataset,
    read_sports1m_classes,
)
from adamml.data.formats import (
    DatasetError,
    frame_folder_audio,
    read_class_names,
    read_csv,
    read_official_list,
)

PAPER_KINETICS_SOUNDS = [
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball",
    "laughing", "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar",
    "playing clarinet", "playing drums", "playing guitar", "playing harmonica",
    "playing keyboard", "playing organ", "playing piano", "playing saxophone",
    "playing trombone", "playing trumpet", "playing violin", "playing xylophone",
    "ripping paper", "shoveling snow", "shuffling cards", "singing", "stomping grapes",
    "tap dancing", "tapping guitar", "tapping pen", "tickling",
]


def touch(path: Path) -> Path:
    """Discovery only needs files to exist; decoding is tested in test_datasets.py."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ----------------------------------------------------------------------------- folder per class


def test_folder_per_class_sorted_classes_and_labels(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "dog" / "b.mp4")
    touch(tmp_path / "train" / "cat" / "a.avi")
    touch(tmp_path / "train" / "cat" / "notes.txt")  # not a video: ignored
    entries, names = discover(tmp_path, "train")
    assert names == ["cat", "dog"]
    assert [(e.path.name, e.labels) for e in entries] == [("a.avi", [0]), ("b.mp4", [1])]


def test_folder_per_class_uses_classes_txt_order(tmp_path: Path) -> None:
    touch(tmp_path / "val" / "cat" / "a.mp4")
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    entries, names = discover(tmp_path, "val")
    assert names == ["dog", "cat"]
    assert entries[0].labels == [1]


def test_folder_not_in_class_list_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "val" / "horse" / "a.mp4")
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    with pytest.raises(DatasetError, match="horse.*not a known class"):
        discover(tmp_path, "val")


def test_missing_split_lists_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no 'test' split found.*test.csv"):
        discover(tmp_path, "test")


# ----------------------------------------------------------------------------- CSV


def test_csv_single_label_names_and_absolute_paths(tmp_path: Path) -> None:
    touch(tmp_path / "v" / "a.mp4")
    absolute = touch(tmp_path / "elsewhere" / "b.mp4")
    (tmp_path / "train.csv").write_text(f"path,label\nv/a.mp4,zebra\n{absolute},ant\n")
    entries, names = discover(tmp_path, "train")
    assert names == ["ant", "zebra"]
    assert [e.labels for e in entries] == [[1], [0]]
    assert entries[1].path == absolute
    assert entries[0].source == f"{tmp_path / 'train.csv'}:2"


def test_csv_multi_label_with_both_separators(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.mp4")
    (tmp_path / "classes.txt").write_text("run\njump\nswim\n")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,run;swim\nb.mp4,jump|2\n")
    entries, names = discover(tmp_path, "train")
    assert names == ["run", "jump", "swim"]
    assert [e.labels for e in entries] == [[0, 2], [1, 2]]


def test_csv_integer_labels_without_class_list(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,3\n")
    entries, names = read_csv(tmp_path / "train.csv", tmp_path)
    assert entries[0].labels == [3]
    assert names == ["0", "1", "2", "3"]


def test_csv_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,cat\na.mp4,horse\n")
    with pytest.raises(DatasetError, match=r"train\.csv:3: unknown label 'horse'"):
        read_csv(tmp_path / "train.csv", tmp_path, ["cat", "dog"])


def test_csv_label_index_out_of_range(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,2\n")
    with pytest.raises(DatasetError, match=r"train\.csv:2: label index 2 out of range \(expected 0\.\.1\)"):
        read_csv(tmp_path / "train.csv", tmp_path, ["cat", "dog"])


def test_csv_missing_video_names_line(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("path,label\nnope.mp4,0\n")
    with pytest.raises(DatasetError, match=r"train\.csv:2: video .*nope\.mp4 not found"):
        read_csv(tmp_path / "train.csv", tmp_path)


def test_csv_bad_header_and_empty(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("file,class\nx.mp4,0\n")
    with pytest.raises(DatasetError, match=r"a\.csv:1: expected a header"):
        read_csv(tmp_path / "a.csv", tmp_path)
    (tmp_path / "b.csv").write_text("")
    with pytest.raises(DatasetError, match=r"b\.csv: empty CSV"):
        read_csv(tmp_path / "b.csv", tmp_path)


def test_csv_wrong_field_count(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    (tmp_path / "t.csv").write_text("path,label\na.mp4,0,extra\n")
    with pytest.raises(DatasetError, match=r"t\.csv:2: expected 2 fields"):
        read_csv(tmp_path / "t.csv", tmp_path)


# ----------------------------------------------------------------------------- official lists


def make_official(tmp_path: Path, body: str, name: str = "train.txt") -> Path:
    (tmp_path / "frames" / "v1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "frames" / "v2").mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(body)
    return path


def test_official_list_spaces_and_semicolons(tmp_path: Path) -> None:
    make_official(tmp_path, "frames/v1 1 30 2\n\nframes/v2;5;40;0;1\n")
    entries, names = discover(tmp_path, "train")
    assert [(e.path, e.start, e.end, e.labels) for e in entries] == [
        (tmp_path / "frames" / "v1", 1, 30, [2]),
        (tmp_path / "frames" / "v2", 5, 40, [0, 1]),
    ]
    assert names == ["0", "1", "2"]
    assert entries[1].source.endswith("train.txt:3")


def test_official_list_prefers_list_file_and_underscore_name(tmp_path: Path) -> None:
    make_official(tmp_path, "frames/v1 1 9 0\n", name="val_list.txt")
    touch(tmp_path / "val.csv")  # ignored: a list file wins
    entries, _ = discover(tmp_path, "val")
    assert entries[0].end == 9


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("frames/v1 1 30\n", r"train\.txt:1: expected at least 4 fields"),
        ("frames/v1 1 30 0\nframes/v2 one 30 0\n", r"train\.txt:2: start_frame and end_frame must be integers"),
        ("frames/v1 10 3 0\n", r"train\.txt:1: bad frame range 10\.\.3"),
        ("frames/v1 1 30 0\nframes/v3 1 30 0\n", r"train\.txt:2: .*v3 not found"),
        ("frames/v1 1 30 5\n", r"train\.txt:1: label index 5 out of range \(expected 0\.\.1\)"),
        ("frames/v1 1 30 horse\n", r"train\.txt:1: unknown label 'horse'"),
        ("\n\n", r"train\.txt: list file is empty"),
    ],
)
def test_official_list_errors_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = make_official(tmp_path, body)
    with pytest.raises(DatasetError, match=message):
        read_official_list(path, tmp_path, ["cat", "dog"])


def test_official_list_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nothere\.txt: list file not found"):
        read_official_list(tmp_path / "nothere.txt", tmp_path)


def test_official_test_list_without_labels(tmp_path: Path) -> None:
    path = make_official(tmp_path, "frames/v1 1 30\n")
    entries, _ = read_official_list(path, tmp_path, require_labels=False)
    assert entries[0].labels == []


def test_official_list_class_names_from_categories_txt(tmp_path: Path) -> None:
    make_official(tmp_path, "frames/v1 1 30 1\n")
    (tmp_path / "categories.txt").write_text("cat\ndog\n")
    entries, names = discover(tmp_path, "train")
    assert names == ["cat", "dog"] and entries[0].labels == [1]


def test_frame_folder_audio_beside_or_inside(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    assert frame_folder_audio(folder) is None
    touch(folder / "audio.wav")
    assert frame_folder_audio(folder) == folder / "audio.wav"
    touch(tmp_path / "v1.wav")
    assert frame_folder_audio(folder) == tmp_path / "v1.wav"


# ----------------------------------------------------------------------------- class lists


def test_class_names_numbered_lines_lose_their_index(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("1 run fast\n2,jump\n3\tswim\n")
    assert read_class_names(tmp_path / "a.txt") == ["run fast", "jump", "swim"]
    (tmp_path / "b.txt").write_text("3 point shot\nlayup\n")  # not all numbered: names kept
    assert read_class_names(tmp_path / "b.txt") == ["3 point shot", "layup"]


def test_class_names_duplicate_and_empty(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("run\njump\nrun\n")
    with pytest.raises(DatasetError, match=r"a\.txt:3: class 'run' listed twice"):
        read_class_names(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        read_class_names(tmp_path / "b.txt")


# ----------------------------------------------------------------------------- catalogue


def test_kinetics_sounds_has_31_classes_in_spec_order() -> None:
    assert class_names_for("kinetics_sounds") == PAPER_KINETICS_SOUNDS
    assert DATASETS["kinetics_sounds"].metric == "top1"


@pytest.mark.parametrize(
    ("name", "classes", "metric", "fps"),
    [("kinetics_sounds", 31, "top1", 25.0), ("activitynet", 200, "mAP", 25.0),
     ("fcvid", 239, "mAP", 1.0), ("mini_sports1m", 487, "mAP", 25.0)],
)
def test_catalogue_numbers(name: str, classes: int, metric: str, fps: float) -> None:
    info = get_dataset(name)
    assert (info.num_classes, info.metric, info.fps) == (classes, metric, fps)


def test_catalogue_refuses_to_invent_class_lists() -> None:
    with pytest.raises(DatasetError, match="no class list is shipped.*taxonomy"):
        class_names_for("activitynet")
    with pytest.raises(DatasetError, match="unknown dataset 'ucf'"):
        get_dataset("ucf")


def test_discover_uses_catalogue_class_list(tmp_path: Path) -> None:
    touch(tmp_path / "val" / "tickling" / "a.mp4")
    entries, names = discover(tmp_path, "val", "kinetics_sounds")
    assert len(names) == 31 and entries[0].labels == [30]


def fake_activitynet(tmp_path: Path) -> Path:
    """A taxonomy with the real shape: root -> 2 groups -> 200 leaves (100 each)."""
    nodes = [{"nodeId": 0, "nodeName": "Root", "parentId": None, "parentName": None}]
    nodes += [{"nodeId": g, "nodeName": f"group{g}", "parentId": 0, "parentName": "Root"} for g in (1, 2)]
    nodes += [
        {"nodeId": 10 + i, "nodeName": f"activity {i:03d}", "parentId": 1 + i % 2, "parentName": "g"}
        for i in reversed(range(200))
    ]
    database = {
        "abc": {"subset": "training", "annotations": [{"label": "activity 005"}, {"label": "activity 001"}]},
        "def": {"subset": "validation", "annotations": [{"label": "activity 199"}]},
        "gone": {"subset": "training", "annotations": [{"label": "activity 002"}]},
        "tst": {"subset": "testing", "annotations": []},
    }
    path = tmp_path / "activity_net.v1-3.min.json"
    path.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": nodes, "database": database}))
    return path


def test_activitynet_classes_are_the_sorted_leaves(tmp_path: Path) -> None:
    names = build_activitynet_classes(fake_activitynet(tmp_path))
    assert len(names) == 200 and names[0] == "activity 000" and names == sorted(names)
    assert "group1" not in names and "Root" not in names


def test_activitynet_lists_roundtrip_through_discover(tmp_path: Path) -> None:
    json_path = fake_activitynet(tmp_path)
    touch(tmp_path / "videos" / "v_abc.mp4")
    touch(tmp_path / "videos" / "def.mkv")
    counts = build_activitynet_lists(json_path, tmp_path / "videos", tmp_path)
    assert counts == {"train": 1, "val": 1, "missing": 1}
    entries, names = discover(tmp_path, "train", "activitynet")
    assert len(names) == 200 and entries[0].labels == [1, 5]
    val, _ = discover(tmp_path, "val", "activitynet", class_names=names)
    assert val[0].path == tmp_path / "videos" / "def.mkv" and val[0].labels == [199]


def test_activitynet_bad_json_names_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"x\.json: not valid JSON"):
        build_activitynet_classes(tmp_path / "x.json")


def test_fcvid_lists_from_official_materials(tmp_path: Path) -> None:
    materials = tmp_path / "materials"
    materials.mkdir()
    (materials / "FCVID_VideoName_TrainTestSplit.txt").write_text(
        "c0/a.mp4 train\nc1/b.mp4 test\nc1/missing.mp4 train\n"
    )
    rows = [[0] * 239 for _ in range(3)]
    rows[0][0] = rows[0][7] = 1
    rows[1][238] = 1
    rows[2][1] = 1
    (materials / "FCVID_Label.txt").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    (tmp_path / "cls.txt").write_text("".join(f"{i} class{i}\n" for i in range(239)))
    touch(tmp_path / "videos" / "c0" / "a.mp4")
    touch(tmp_path / "videos" / "c1" / "b.mp4")
    counts = build_fcvid_lists(materials, tmp_path / "videos", tmp_path / "out", tmp_path / "cls.txt")
    assert counts == {"train": 1, "test": 1, "missing": 1}
    train, names = discover(tmp_path / "out", "train", "fcvid")
    assert names[7] == "class7" and train[0].labels == [0, 7]
    test, _ = discover(tmp_path / "out", "test", "fcvid", class_names=names)
    assert test[0].labels == [238]


def test_fcvid_label_row_of_wrong_width(tmp_path: Path) -> None:
    materials = tmp_path / "materials"
    materials.mkdir()
    (materials / "FCVID_VideoName_TrainTestSplit.txt").write_text("c0/a.mp4 train\n")
    (materials / "FCVID_Label.txt").write_text("0 1 0\n")
    (tmp_path / "cls.txt").write_text("".join(f"class{i}\n" for i in range(239)))
    with pytest.raises(DatasetError, match=r"FCVID_Label\.txt:1: expected 239 0/1 flags, found 3"):
        build_fcvid_lists(materials, tmp_path, tmp_path / "out", tmp_path / "cls.txt")


def test_sports1m_labels_need_487_lines(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("".join(f"sport {i}\n" for i in range(487)))
    assert read_sports1m_classes(tmp_path / "labels.txt")[486] == "sport 486"
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="2 classes, expected 487"):
        read_sports1m_classes(tmp_path / "short.txt")


def test_named_dataset_without_full_class_list_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "archery" / "a.mp4")
    with pytest.raises(DatasetError, match=r"Mini-Sports1M has 487 classes but 1 were found; write .*classes\.txt"):
        discover(tmp_path, "train", "mini_sports1m")


@pytest.mark.parametrize("names", [["#hash", "a;b", "c|d", "plain"], ["1 one", "2 two"], ["x", "y"]])
def test_a_runs_own_split_files_read_back_its_class_names(tmp_path: Path, names: list[str]) -> None:
    """Class folder names that a plain class list or a ';'-joined CSV label cannot hold."""
    from adamml.data.splits import write_split

    for name in names:
        for i in range(2):
            touch(tmp_path / "data" / "train" / name / f"v{i}.mp4")
    entries, class_names = discover(tmp_path / "data", "train")
    assert class_names == sorted(names)
    target = write_split(tmp_path / "splits", "train", entries, class_names, tmp_path / "data")
    again, names_back = discover(tmp_path / "data", str(target))
    assert names_back == class_names
    assert [(e.path, e.labels) for e in again] == [(e.path, e.labels) for e in entries]


def test_discovery_names_the_subfolders_broken_links_and_empty_classes_it_passes_over(tmp_path: Path) -> None:
    from adamml.data.formats import DiscoveryWarning

    touch(tmp_path / "train" / "cat" / "a.mp4")
    touch(tmp_path / "train" / "cat" / "more" / "b.mp4")  # nested: not read
    (tmp_path / "train" / "cat" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (tmp_path / "train" / "dog").mkdir()  # no video
    with pytest.warns(DiscoveryWarning) as caught:
        entries, names = discover(tmp_path, "train")
    assert len(entries) == 1 and names == ["cat", "dog"]
    said = [str(w.message) for w in caught]
    assert any("1 subfolder(s) inside class folders skipped" in m and "more" in m for m in said)
    assert any("1 broken link(s) skipped" in m and "gone.mp4" in m for m in said)
    assert any("1 class folder(s) hold no video, yet count as classes: dog" in m for m in said)


def test_discovery_names_repeated_and_relabelled_csv_rows_and_one_based_labels(tmp_path: Path) -> None:
    from adamml.data.formats import DiscoveryWarning

    for name in ("a", "b"):
        touch(tmp_path / f"{name}.mp4")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,1\na.mp4,1\nb.mp4,2\nb.mp4,1\n")
    with pytest.warns(DiscoveryWarning) as caught:
        read_csv(tmp_path / "train.csv", tmp_path)
    said = [str(w.message) for w in caught]
    assert any("1 row(s) repeat a video with the same label" in m and "train.csv:3" in m for m in said)
    assert any("1 row(s) give a video listed before another label" in m and "train.csv:5" in m for m in said)
    assert any("integer labels from 1 with no class list" in m for m in said)


def test_clean_data_is_discovered_without_a_warning(tmp_path: Path) -> None:
    import warnings

    for name in ("cat", "dog"):
        touch(tmp_path / "train" / name / "a.mp4")
    (tmp_path / "val.csv").write_text("path,label\ntrain/cat/a.mp4,0\ntrain/dog/a.mp4,1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        discover(tmp_path, "train")
        read_csv(tmp_path / "val.csv", tmp_path)


def test_camcorder_and_broadcast_containers_are_videos_and_other_files_are_named_when_skipped(tmp_path: Path) -> None:
    from adamml.data.formats import DiscoveryWarning

    for name in ("a.ts", "b.MTS", "c.m2ts", "d.ogv", "e.mp4"):
        touch(tmp_path / "train" / "cat" / name)
    touch(tmp_path / "train" / "cat" / "notes.txt")
    touch(tmp_path / "train" / "cat" / ".DS_Store")  # hidden files are nobody's videos: not named
    with pytest.warns(DiscoveryWarning) as caught:
        entries, _ = discover(tmp_path, "train")
    assert sorted(e.path.name for e in entries) == ["a.ts", "b.MTS", "c.m2ts", "d.ogv", "e.mp4"]
    said = [str(w.message) for w in caught]
    assert any("1 file(s) without a video extension skipped" in m and "notes.txt" in m for m in said)
    assert not any(".DS_Store" in m for m in said)
