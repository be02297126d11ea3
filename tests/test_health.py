"""No silent collapse: the run's summary says when AdaMML is below its best single modality or
the policy (almost) never runs a modality, with the numbers and the likely fix."""

from __future__ import annotations

from adamml.evaluation.health import collapse_warnings
from adamml.evaluation.report import MethodResult


def rows(adamml_acc: float, audio_rate: float, rgb_rate: float, rgb_acc: float = 18.3, gflops: float = 0.17) -> list:
    return [
        MethodResult("Audio", 13.3, selection={"audio": 100.0}, gflops=0.01),
        MethodResult("RGB", rgb_acc, selection={"rgb": 100.0}, gflops=0.32),
        MethodResult("Weighted fusion", 20.8, selection={"audio": 100.0, "rgb": 100.0}, gflops=0.33),
        MethodResult("AdaMML", adamml_acc, selection={"audio": audio_rate, "rgb": rgb_rate}, gflops=gflops),
    ]


def test_a_collapsed_run_is_reported_with_numbers_and_fixes():
    # A collapsed own-data run: AdaMML 10.8 % at audio 0.4 % / RGB 14.0 %, RGB 18.3 %, 10 classes.
    lines = collapse_warnings(rows(10.8, 0.4, 14.0), num_classes=10)
    text = "\n".join(lines)
    assert "AdaMML 10.8% is below its best single modality (RGB 18.3%)" in text
    assert "AdaMML runs audio on only 0.4% of segments" in text
    assert "Audio reaches only 13.3% after stage 1 (chance 10.0%)" in text
    assert "train stage 1 longer" in text
    assert not any("runs rgb" in line for line in lines)  # 14 % is a choice, not a collapse


def test_a_healthy_run_gets_no_warning():
    healthy = rows(66.7, 96.0, 45.0, rgb_acc=58.3)
    healthy[0].accuracy = 25.0
    assert collapse_warnings(healthy, num_classes=10) == []


def test_a_missed_budget_is_reported():
    healthy = rows(66.7, 96.0, 45.0, rgb_acc=58.3, gflops=0.25)
    healthy[0].accuracy = 25.0
    (line,) = collapse_warnings(healthy, num_classes=10, budget=0.5)
    assert "75.8% of Weighted fusion's 0.3300, not the 50% budget" in line
    assert collapse_warnings(healthy, num_classes=10, budget=0.75) == []


def test_a_dropped_weak_modality_under_a_budget_names_the_budget_and_the_modalitys_own_accuracy():
    # F1 (docs/own-data.md): trained to 0.5, the kept policy ran RGB on 0 % of segments.
    run = [
        MethodResult("Audio", 81.0, selection={"audio": 100.0}, gflops=0.123),
        MethodResult("RGB", 24.0, selection={"rgb": 100.0}, gflops=0.125),
        MethodResult("Weighted fusion", 81.0, selection={"audio": 100.0, "rgb": 100.0}, gflops=0.2485),
        MethodResult("AdaMML", 81.0, selection={"audio": 66.25, "rgb": 0.0}, gflops=0.1241, adaptive=True),
    ]
    (line,) = collapse_warnings(run, num_classes=10, budget=0.5)
    assert "runs rgb on only 0.0% of segments" in line
    assert "(RGB alone 24.0% against Audio's 81.0%: it adds little for its cost)" in line
    assert "likely fix: raise --budget," in line and "cost_weights" not in line
    (unbudgeted,) = collapse_warnings(run, num_classes=10)
    assert "lower train.adamml.cost_weights.rgb or raise --budget" in unbudgeted
