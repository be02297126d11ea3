"""Edge cases that once ended in a traceback or a misleading line: a last training batch of
one clip, an all-silent dataset, a table without the fusion stage, CSV labels of two kinds, and
bf16 asked of a CPU that only emulates it, in training as in inference."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from media import make_video

from adamml.cli import main

CLASSES = ["bee", "cow"]


def _write_dataset(root: Path, train_per_class: tuple[int, ...], *, audio: bool = True) -> Path:
    """train/<class>/*.mp4 and val/<class>/*.mp4 (one validation clip per class)."""
    for c, name in enumerate(CLASSES):
        for split, count in (("train", train_per_class[c]), ("val", 1)):
            for i in range(count):
                make_video(root / split / name / f"{name}{i}.mp4", num_frames=16, fps=8.0, height=40, width=40,
                           freq=300.0 + 500 * c, seed=100 * c + 10 * (split == "val") + i,
                           audio_channels=1 if audio else None)
    return root


def _train(*args: str) -> tuple[int, str]:
    """``adamml train --config tiny`` in this process: exit code, stdout and stderr together."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["train", "--config", "tiny", "--workers", "1", *args])
    return code, out.getvalue()


def test_a_last_training_batch_of_one_clip_trains_without_a_batch_norm_error(tmp_path: Path) -> None:
    # 5 training videos in batches of 4: the last batch would hold one clip (stage 1 trains on one
    # clip per video), which batch norm cannot normalise over.
    root = _write_dataset(tmp_path / "data", (3, 2))
    code, text = _train("--data", str(root), "--output", str(tmp_path / "run"), "--stage", "unimodal",
                        "--modality", "rgb", "train.unimodal.epochs=1", "train.batch_size=4")
    assert code == 0, text
    assert "Expected more than 1 value per channel" not in text
    assert (tmp_path / "run" / "unimodal_rgb" / "best.pt").is_file()


def test_only_a_last_batch_of_one_clip_is_left_out_and_evaluation_keeps_every_video() -> None:
    from adamml.data.loader import make_loader
    from adamml.runtime.distributed import Runtime

    class Clips(list):
        num_segments = 1

    class Segments(list):
        num_segments = 4  # 4 clips per video: a batch of one video still normalises

    def sizes(dataset, train: bool = True) -> list[int]:
        return [len(b) for b in make_loader(dataset, 4, Runtime(), train=train, seed=0, num_workers=0)]

    assert sizes(Clips(range(5))) == [4]
    assert sizes(Clips(range(6))) == [4, 2]
    assert sizes(Clips(range(5)), train=False) == [4, 1]
    assert sizes(Segments(range(5))) == [4, 1]


@pytest.mark.parametrize("native", [False, True])
def test_training_in_bf16_runs_it_only_on_a_cpu_that_has_it_and_says_the_fp32_fallback_once(native, monkeypatch, capsys):
    from adamml.models import execution
    from adamml.runtime.distributed import Runtime
    from adamml.training.engine import autocast

    monkeypatch.setattr(execution, "_said", set())
    monkeypatch.setattr(execution, "cpu_has_native_bf16", lambda: native)
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    for _ in range(2):  # two training steps: the line once
        with autocast(Runtime(), "bf16"):
            out = layer(torch.randn(2, 3, 8, 8))
        out.float().sum().backward()
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    err = capsys.readouterr().err.splitlines()
    if native:
        assert err == []
    else:
        assert len(err) == 1 and "has no native bf16" in err[0] and "running fp32 instead" in err[0]
    with autocast(Runtime(), "32"):
        assert layer(torch.randn(2, 3, 8, 8)).dtype == torch.float32


def test_without_a_fusion_row_the_saving_is_against_fusions_cost_never_a_single_modality() -> None:
    from adamml.evaluation.report import MethodResult, format_table, reference_note

    rows = [  # a run evaluated without its fusion stage (the tiny config's costs per video)
        MethodResult("RGB", 50.0, selection={"rgb": 100.0}, gflops=0.1727),
        MethodResult("Audio", 50.0, selection={"audio": 100.0}, gflops=0.0113),
        MethodResult("AdaMML", 50.0, selection={"rgb": 40.0, "audio": 90.0}, gflops=0.0957),
        MethodResult("Random policy (AdaMML's rates)", 50.0, selection={"rgb": 40.0, "audio": 90.0}, gflops=0.0792),
    ]
    fusion = 0.1840
    table = format_table(rows, ["rgb", "audio"], fusion_gflops=fusion)
    adamml = next(line for line in table.splitlines() if line.startswith("| AdaMML "))
    assert f"0.0957 ({100 * (0.0957 / fusion - 1):+.1f}%)" in adamml
    assert "from the networks' costs" in reference_note(rows, fusion)
    bare = format_table(rows, ["rgb", "audio"])  # no cost known: no comparison at all
    assert "%)" not in next(line for line in bare.splitlines() if line.startswith("| AdaMML "))
    assert reference_note(rows).startswith("GFLOPs changes are not shown")
    # With the fusion row measured, it is the reference and no note is added.
    measured = [*rows, MethodResult("Weighted fusion", 55.0, selection={"rgb": 100.0, "audio": 100.0}, gflops=0.2)]
    assert f"0.0957 ({100 * (0.0957 / 0.2 - 1):+.1f}%)" in format_table(measured, ["rgb", "audio"], fusion_gflops=fusion)
    assert reference_note(measured, fusion) is None


def test_evaluate_without_the_fusion_stage_compares_adamml_with_fusions_counted_cost(tmp_path: Path, capsys) -> None:
    from adamml.config import to_dict
    from adamml.config_files import load_config
    from adamml.data.cache import VideoCache
    from adamml.data.catalog import discover
    from adamml.data.extract import extract_videos
    from adamml.models.adamml import build_adamml
    from adamml.models.flops import segment_costs
    from adamml.runtime.checkpoint import save_checkpoint

    root = _write_dataset(tmp_path / "data", (1, 1))
    cfg = load_config("tiny", [f"data.root={root}", "model.num_classes=2"])
    extract_videos(discover(root, "val")[0], VideoCache(root / "cache", cfg.data.decode), progress=False)
    torch.manual_seed(0)
    checkpoint = save_checkpoint({
        "kind": "adamml", "model": build_adamml(cfg.model, cfg.data.clip).state_dict(), "config": to_dict(cfg),
        "model_config": to_dict(cfg.model), "class_names": CLASSES,
    }, tmp_path / "adamml" / "best.pt")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--no-plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    costs = segment_costs(cfg.model, cfg.data.clip)
    fusion = cfg.data.eval_segments * (costs["rgb"] + costs["audio"])
    assert f"against weighted fusion's {fusion:.4f} GFLOPs per video" in printed
    adamml = next(line for line in printed.splitlines() if line.startswith("| AdaMML "))
    gflops = float(adamml.split("|")[-2].split()[0])
    assert f"({100 * (gflops / fusion - 1):+.1f}%)" in adamml, printed


def test_csv_labels_of_two_kinds_without_a_class_list_are_refused_naming_the_row(tmp_path: Path) -> None:
    from adamml.data.formats import DatasetError, read_csv

    for name in "abcd":
        (tmp_path / f"{name}.mp4").touch()
    (tmp_path / "train.csv").write_text("path,label\na.mp4,cat\nb.mp4,dog\nc.mp4,1\nd.mp4,cat\n")
    with pytest.raises(DatasetError, match=r"train\.csv:4: label '1' is a class index where the other rows give "
                                           r"class names \(such as 'cat' at .*train\.csv:2\)"):
        read_csv(tmp_path / "train.csv", tmp_path)
    (tmp_path / "train.csv").write_text("path,label\na.mp4,0\nb.mp4,1\nc.mp4,l\nd.mp4,2\n")  # a typo of 1
    with pytest.raises(DatasetError, match=r"train\.csv:4: label 'l' is a class name where the other rows give class indices"):
        read_csv(tmp_path / "train.csv", tmp_path)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")  # with a class list, names and indices mix as before
    (tmp_path / "train.csv").write_text("path,label\na.mp4,cat\nb.mp4,1\n")
    entries, names = read_csv(tmp_path / "train.csv", tmp_path, ["cat", "dog"])
    assert [e.labels for e in entries] == [[0], [1]] and names == ["cat", "dog"]


def test_a_class_that_a_split_never_names_is_told_as_a_discovery_warning(tmp_path: Path) -> None:
    import warnings

    from adamml.data.catalog import discover
    from adamml.data.formats import DiscoveryWarning

    for name in "abcde":
        (tmp_path / f"{name}.mp4").touch()
    (tmp_path / "train.csv").write_text("path,label\na.mp4,cat\nb.mp4,dog\nc.mp4,dgo\n")  # a typo: a class of its own
    (tmp_path / "val.csv").write_text("path,label\nd.mp4,cat\ne.mp4,dog\n")
    _, names = discover(tmp_path, "train")
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always", DiscoveryWarning)
        discover(tmp_path, "val", class_names=names)
    (line,) = [str(w.message) for w in told if w.category is DiscoveryWarning]
    assert "val.csv: 1 class(es) of the class list have no video here, yet count as classes: dgo" in line
