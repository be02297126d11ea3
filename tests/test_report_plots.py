"""Paper-style tables, their CSV/JSON files, and the evaluation figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adamml.evaluation.metrics import MetricAccumulator, per_class_selection_rates
from adamml.evaluation.plots import (
    plot_accuracy_vs_gflops,
    plot_policy_strips,
    plot_selection_by_class,
)
from adamml.evaluation.report import (
    MethodResult,
    format_table,
    gflops_saving,
    load_json,
    write_csv,
    write_json,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def paper_rows() -> list[MethodResult]:
    """Kinetics-Sounds, RGB + Audio, as the paper reports it (its Table 1)."""
    return [
        MethodResult("RGB", 82.85, selection={"rgb": 100.0}, gflops=141.36),
        MethodResult("Audio", 65.49, selection={"audio": 100.0}, gflops=3.82),
        MethodResult(
            "Weighted fusion", 87.86, selection={"rgb": 100.0, "audio": 100.0}, gflops=145.17
        ),
        MethodResult("AdaMML", 88.17, selection={"rgb": 46.47, "audio": 94.15}, gflops=76.45),
    ]


# --- table ------------------------------------------------------------------------------------


def test_table_has_the_papers_columns_rows_and_saving(paper_rows: list[MethodResult]) -> None:
    text = format_table(paper_rows, ["rgb", "audio"])
    lines = text.strip().splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Method",
        "Acc. (%)",
        "RGB (%)",
        "Audio (%)",
        "GFLOPs",
    ]
    assert len(lines) == 2 + 4
    assert "| AdaMML " in lines[-1]
    assert "88.17" in lines[-1] and "46.47" in lines[-1] and "94.15" in lines[-1]
    # The paper's figure: 76.45 GFLOPs is 47.3 % less than weighted fusion's 145.17.
    assert "76.45 (-47.3%)" in lines[-1]
    # Unused modalities are a dash, and static rows carry no saving.
    rgb_row = next(line for line in lines if line.startswith("| RGB "))
    assert "—" in rgb_row and "(" not in rgb_row


def test_table_reference_row_can_be_named(paper_rows: list[MethodResult]) -> None:
    text = format_table(paper_rows, ["rgb", "audio"], reference="RGB")
    assert "76.45 (-45.9%)" in text
    with pytest.raises(ValueError, match="reference row 'Average fusion' not among"):
        format_table(paper_rows, ["rgb", "audio"], reference="Average fusion")


def test_table_map_header_and_activitynet_saving() -> None:
    rows = [
        MethodResult("Weighted fusion", 72.88, "mAP", {"rgb": 100.0, "audio": 100.0}, 145.17),
        MethodResult("AdaMML", 73.91, "mAP", {"rgb": 76.25, "audio": 56.35}, 94.01),
    ]
    text = format_table(rows, ["rgb", "audio"], metric="mAP")
    assert "mAP (%)" in text.splitlines()[0]
    assert "94.01 (-35.2%)" in text


def test_table_rejects_a_metric_the_rows_do_not_have(paper_rows: list[MethodResult]) -> None:
    with pytest.raises(ValueError, match="RGB: has 'top1', not 'mAP'"):
        format_table(paper_rows, ["rgb", "audio"], metric="mAP")


def test_adaptive_is_inferred_from_the_name_unless_given() -> None:
    assert MethodResult("AdaMML-RGBDiff", 84.36).adaptive is True
    assert MethodResult("Weighted fusion", 83.47).adaptive is False
    assert MethodResult("My policy", 80.0, adaptive=True).adaptive is True
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        MethodResult("x", 1.0, metric="acc")


def test_from_metrics_converts_fractions_to_percent() -> None:
    acc = MetricAccumulator(modalities=["rgb", "audio"], scores_are="probs")
    decisions = np.zeros((2, 4, 2))
    decisions[:, :2, 0] = 1  # rgb on half the segments
    decisions[:, :, 1] = 1
    acc.update(
        [0, 1], [[0.9, 0.1], [0.2, 0.8]], labels=[0, 0], decisions=decisions, gflops=[10.0, 20.0]
    )
    row = MethodResult.from_metrics("AdaMML", acc.compute(), "top1", ["rgb", "audio"])
    assert row.accuracy == pytest.approx(50.0)
    assert row.selection == {"rgb": pytest.approx(50.0), "audio": pytest.approx(100.0)}
    assert row.gflops == pytest.approx(15.0)
    assert row.extra["mean_class_acc"] == pytest.approx(50.0)
    assert row.adaptive
    assert gflops_saving(row, MethodResult("Fusion", 1.0, gflops=30.0)) == pytest.approx(-50.0)


# --- files ------------------------------------------------------------------------------------


def test_csv_written_and_parseable(paper_rows: list[MethodResult], tmp_path: Path) -> None:
    path = write_csv(paper_rows, tmp_path / "out" / "results.csv", ["rgb", "audio"])
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["RGB", "Audio", "Weighted fusion", "AdaMML"]
    assert float(rows[3]["accuracy"]) == pytest.approx(88.17)
    assert float(rows[3]["selection_rgb"]) == pytest.approx(46.47)
    assert rows[0]["selection_audio"] == ""  # RGB alone never uses audio
    assert float(rows[3]["gflops_change_pct"]) == pytest.approx(-47.337, abs=1e-3)
    assert rows[3]["adaptive"] == "1"
    assert not list(tmp_path.joinpath("out").glob(".*.tmp"))  # no temp file left behind


def test_json_round_trip(paper_rows: list[MethodResult], tmp_path: Path) -> None:
    paper_rows[3].extra["checkpoint"] = "runs/ks/adamml/best.pt"
    path = write_json(paper_rows, tmp_path / "results.json", meta={"dataset": "kinetics-sounds"})
    doc = json.loads(path.read_text())
    assert doc["meta"] == {"dataset": "kinetics-sounds"}
    assert doc["results"][1]["selection"] == {"audio": 100.0}
    assert load_json(path) == paper_rows


def test_load_json_names_the_file_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": [\n  {"method": "x",}\n]}')
    with pytest.raises(ValueError, match=r"bad\.json: line 2: not valid JSON"):
        load_json(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"results": [{"method": "x", "acc": 1}]}')
    with pytest.raises(ValueError, match=r"wrong\.json: results\[0\]: not a MethodResult"):
        load_json(wrong)


# --- plots ------------------------------------------------------------------------------------


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    assert not list(path.parent.glob(f".{path.name}.*"))  # the temp file was renamed away


def test_accuracy_vs_gflops_writes_a_png(paper_rows: list[MethodResult], tmp_path: Path) -> None:
    path = plot_accuracy_vs_gflops(paper_rows, tmp_path / "acc.png", dpi=60)
    assert_png(path)


def _video(rng: np.random.Generator, k: int, spectrogram_shape: tuple[int, ...]) -> dict:
    return {
        "title": "clip.mp4",
        "thumbnails": rng.integers(0, 256, size=(k, 24, 32, 3), dtype=np.uint8),
        "spectrogram": rng.normal(size=spectrogram_shape).astype(np.float32),
        "decisions": (rng.random((k, 2)) < 0.5).astype(np.float32),
        "modalities": ["rgb", "audio"],
        "label": "playing piano",
        "prediction": "playing organ",
    }


def test_policy_strips_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    videos = [
        _video(rng, 4, (4, 32, 16)),  # per-segment spectrograms
        _video(rng, 4, (32, 64)),  # one spectrogram for the whole video
        {  # audio-only model, layout (K, 1, F, S) as the dataset gives it
            "title": "no frames",
            "spectrogram": torch.randn(4, 1, 32, 16),
            "decisions": torch.ones(4, 1),
            "modalities": ["audio"],
        },
    ]
    assert_png(plot_policy_strips(videos, tmp_path / "strips.png", dpi=40))


def test_policy_strips_rejects_mismatched_entries(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bad = _video(rng, 4, (4, 32, 16))
    bad["decisions"] = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"videos\[0\] \('clip.mp4'\): decisions must be \(K, M\)"):
        plot_policy_strips([bad], tmp_path / "x.png")
    bad = _video(rng, 4, (4, 32, 16))
    bad["thumbnails"] = bad["thumbnails"].astype(np.float32)
    with pytest.raises(ValueError, match="thumbnails must be uint8"):
        plot_policy_strips([bad], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_selection_by_class_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    decisions = (rng.random((40, 3, 2)) < 0.5).astype(np.float32)
    labels = rng.integers(0, 6, size=40)
    names = [f"class {c}" for c in range(8)]  # classes 6, 7 have no videos
    path = plot_selection_by_class(
        decisions, labels, names, ["rgb", "audio"], tmp_path / "cls.png", dpi=50, max_classes=4
    )
    assert_png(path)


def test_per_class_selection_rates_by_hand() -> None:
    decisions = np.zeros((3, 2, 2))
    decisions[0, :, 0] = 1  # class 0 video: rgb everywhere
    decisions[1, 0, 1] = 1  # class 0 video: audio on one of two segments
    decisions[2, :, 1] = 1  # class 2 video: audio everywhere
    rates = per_class_selection_rates(decisions, [0, 0, 2], num_classes=3)
    assert rates[0] == pytest.approx([0.5, 0.25])
    assert np.isnan(rates[1]).all()
    assert rates[2] == pytest.approx([0.0, 1.0])
