"""The end of a run's summary names a stage-1 network the cap stopped while it still climbed."""

import csv
from pathlib import Path

from adamml.training.run import still_improving


def _log(folder: Path, scores: list[float]) -> None:
    folder.mkdir(parents=True)
    with (folder / "log.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "val_score"])
        w.writeheader()
        for i, s in enumerate(scores):
            w.writerow({"epoch": i + 1, "val_score": s})


def test_a_network_climbing_at_its_cap_is_named_with_its_curve(tmp_path):
    _log(tmp_path / "unimodal_audio", [0.1, 0.12, 0.2, 0.27, 0.53, 0.64, 0.67, 0.72])
    _log(tmp_path / "unimodal_rgb", [0.3, 0.4, 0.5, 0.52, 0.51, 0.52, 0.51, 0.52])  # flat: not named
    said = still_improving(tmp_path, cap=8, patience=4)
    assert len(said) == 1
    assert "the audio network was still improving" in said[0] and "cap of 8 epochs" in said[0]
    assert "27 -> 53 -> 64 -> 67 -> 72 %" in said[0]


def test_a_network_stopped_before_its_cap_is_not_named(tmp_path):
    _log(tmp_path / "unimodal_audio", [0.1, 0.2, 0.3, 0.4, 0.5])  # climbing, but the cap is 14
    assert still_improving(tmp_path, cap=14, patience=4) == []
