"""``adamml train --data ROOT`` on a folder of one's own videos: the class count comes from the
data, missing caches are extracted first (a broken video is named and left out), a validation
split is carved out of train when there is none, and the run says what it chose."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from media import make_garbage, make_video

from adamml.cli import main
from adamml.data.cache import VideoCache
from adamml.data.splits import carve_validation
from adamml.data.types import VideoEntry

CLASSES = ["bee", "cow", "owl"]  # 3 classes; the tiny config says 4


@pytest.fixture(scope="module")
def own_videos(tmp_path_factory) -> Path:
    """train/<class>/*.mp4 only (no val split), 5 clips per class, one broken file."""
    root = tmp_path_factory.mktemp("own")
    for c, name in enumerate(CLASSES):
        for i in range(5):
            make_video(root / "train" / name / f"{name}{i}.mp4", num_frames=16, fps=8.0, height=48, width=48,
                       freq=300.0 + 400 * c, seed=10 * c + i)
    make_garbage(root / "train" / "cow" / "broken.mp4")
    return root


@pytest.fixture(scope="module")
def own_run(own_videos, tmp_path_factory) -> tuple[Path, int, str]:
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["train", "--config", "tiny", "--data", str(own_videos), "--output", str(out),
                     "--stage", "unimodal", "--modality", "audio", "--workers", "1",
                     "train.unimodal.epochs=1", "train.batch_size=4"])
    return out, code, buffer.getvalue()


def read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_train_takes_the_class_count_from_the_data(own_run):
    out, code, printed = own_run
    assert code == 0
    state = torch.load(out / "unimodal_audio" / "best.pt", weights_only=False)
    assert state["config"]["model"]["num_classes"] == len(CLASSES)
    assert state["class_names"] == CLASSES
    assert "model.num_classes: 3, from the data (the config said 4)" in printed


def test_train_extracts_missing_caches_with_the_configs_decode_settings(own_run, own_videos):
    from adamml.config_files import load_config

    out, _, printed = own_run
    cache = VideoCache(own_videos / "cache", load_config("tiny").data.decode)
    cached = [p for p in (own_videos / "train").rglob("*.mp4") if cache.has(p)]
    assert len(cached) == 15  # every good clip, with the tiny config's fps / size / rate
    assert "extracted 15 videos" in printed


def test_a_broken_video_is_named_and_left_out(own_run, own_videos):
    out, _, printed = own_run
    broken = own_videos / "train" / "cow" / "broken.mp4"
    assert str(broken) in printed
    assert "1 failed and left out" in printed
    listed = [r["path"] for split in ("train", "val") for r in read_rows(out / "splits" / f"{split}.csv")]
    assert "train/cow/broken.mp4" not in listed and len(listed) == 15


def test_validation_is_carved_out_of_train_and_recorded_in_the_run(own_run):
    out, _, printed = own_run
    train = read_rows(out / "splits" / "train.csv")
    val = read_rows(out / "splits" / "val.csv")
    assert {r["label"] for r in val} == set(CLASSES)  # stratified: every class validated
    assert not {r["path"] for r in train} & {r["path"] for r in val}
    assert (out / "splits" / "classes.txt").read_text().split() == CLASSES
    state = torch.load(out / "unimodal_audio" / "best.pt", weights_only=False)
    assert state["config"]["data"]["val_split"] == str(out / "splits" / "val.csv")
    assert state["metrics"]["num_videos"] == len(val)
    assert "carved out of train" in (out / "summary.txt").read_text()


def test_carve_out_is_stratified_and_seeded():
    entries = [VideoEntry(path=Path(f"v{i}.mp4"), labels=[i % 4]) for i in range(40)]
    names = ["a", "b", "c", "d"]
    train, val = carve_validation(entries, names, fraction=0.2, seed=3)
    assert sorted(e.labels[0] for e in val) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(train) + len(val) == 40
    again = carve_validation(entries, names, fraction=0.2, seed=3)[1]
    other = carve_validation(entries, names, fraction=0.2, seed=4)[1]
    assert [e.path for e in again] == [e.path for e in val]
    assert [e.path for e in other] != [e.path for e in val]


def test_a_class_with_one_video_cannot_be_carved(tmp_path):
    from adamml.data.formats import DatasetError

    entries = [VideoEntry(path=Path("a.mp4"), labels=[0]), VideoEntry(path=Path("b.mp4"), labels=[1]),
               VideoEntry(path=Path("c.mp4"), labels=[1])]
    with pytest.raises(DatasetError, match="class\\(es\\) x have fewer than 2 videos"):
        carve_validation(entries, ["x", "y"])


def test_extract_with_a_config_uses_its_decode_settings_and_both_splits(tmp_path, capsys):
    from adamml.config_files import load_config

    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b"):
            make_video(root / split / name / f"{name}.mp4", num_frames=8, fps=8.0, height=48, width=48)
    assert main(["extract", "--config", "tiny", "--data", str(root), "--no-progress", "--workers", "1"]) == 0
    cache = VideoCache(root / "cache", load_config("tiny").data.decode)
    assert all(cache.has(p) for p in root.rglob("*.mp4"))
    assert main(["extract", "--config", "tiny", "--data", str(root), "--no-progress"]) == 0
    assert "nothing to extract: all 4 videos are cached" in capsys.readouterr().out


def _train(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["train", "--config", "tiny", "--workers", "1", *args])
    return code, buffer.getvalue()


def test_unimodal_stops_on_a_validation_plateau_and_resume_keeps_it_stopped(own_videos, tmp_path):
    # The three classes' tones are easy: the audio network soon validates at its best and
    # stays there; patience 2 then stops it long before the cap of 25 epochs.
    args = ["--data", str(own_videos), "--output", str(tmp_path), "--stage", "unimodal", "--modality", "audio",
            "train.unimodal.epochs=25", "train.unimodal.patience=2", "train.unimodal.lr=0.05", "train.batch_size=4"]
    code, printed = _train(args)
    assert code == 0
    rows = read_rows(tmp_path / "unimodal_audio" / "log.csv")
    assert len(rows) < 25
    assert rows[-1]["epochs_without_improvement"] == "2"
    best = max(float(r["val_score"]) for r in rows)
    assert best >= 2 / 3 and float(rows[-3]["val_score"]) == best  # counted from twice chance on
    assert f"stopping after epoch {len(rows)} of 25" in printed
    assert torch.load(tmp_path / "unimodal_audio" / "last.pt", weights_only=False)["stopped"]
    code, printed = _train([*args, "--resume"])
    assert code == 0 and len(read_rows(tmp_path / "unimodal_audio" / "log.csv")) == len(rows)
    assert f"stopped at epoch {len(rows)} on a validation plateau" in printed


def test_a_plateau_before_the_lr_step_lowers_the_rate_there_and_the_next_plateau_stops(own_videos, tmp_path):
    args = ["--data", str(own_videos), "--output", str(tmp_path), "--stage", "unimodal", "--modality", "audio",
            "train.unimodal.epochs=25", "train.unimodal.patience=2", "train.unimodal.lr=0.05",
            "train.unimodal.lr_steps=[20]", "train.batch_size=4"]
    code, printed = _train(args)
    assert code == 0
    rows = read_rows(tmp_path / "unimodal_audio" / "log.csv")
    early = [i for i, r in enumerate(rows) if r["lr_step_taken_early"] == "1"]
    assert len(early) == 1 and early[0] + 1 < len(rows) < 20, [r["val_score"] for r in rows]
    assert {r["lr"] for r in rows[: early[0] + 1]} == {"all=0.05"}
    assert {r["lr"] for r in rows[early[0] + 1:]} == {"all=0.005"}  # lowered from the next epoch on
    assert rows[-1]["epochs_without_improvement"] == "2" and f"stopping after epoch {len(rows)} of 25" in printed


def test_a_modalitys_own_stage1_rate_is_the_one_it_trains_with(own_videos, tmp_path):
    args = ["--data", str(own_videos), "--output", str(tmp_path), "--stage", "unimodal", "--modality", "audio",
            "train.unimodal.epochs=1", "train.unimodal.lr=0.05", "train.unimodal.modality_lr={audio: 0.007}",
            "train.batch_size=4"]
    code, _ = _train(args)
    assert code == 0
    assert read_rows(tmp_path / "unimodal_audio" / "log.csv")[0]["lr"] == "all=0.007"


@pytest.fixture(scope="module")
def budget_run(own_videos, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("budget")
    code, printed = _train(["--data", str(own_videos), "--output", str(out), "--budget", "0.5",
                            "train.batch_size=4", "train.unimodal.epochs=1", "train.fusion.epochs=1",
                            "train.adamml.warmup_epochs=1", "train.adamml.epochs=2", "train.adamml.finetune_epochs=0"])
    assert code == 0
    return out, printed


def test_budget_adapts_the_cost_weights_while_the_policy_trains(budget_run):
    out, printed = budget_run
    rows = read_rows(out / "adamml" / "log.csv")
    weights = [r["cost_weights"] for r in rows]
    policy_epochs = [i for i, r in enumerate(rows) if r["trains"] == "policy"]
    assert len(policy_epochs) == 2
    # Fixed before the first policy epoch, moved by every policy epoch's steps.
    assert weights[0] == weights[policy_epochs[0] - 1]
    assert weights[policy_epochs[0]] != weights[policy_epochs[0] - 1]
    # Validated (as the reference) after each alternating epoch's policy pass, never the warm-up.
    assert all(bool(r.get("budget_fraction")) == (r["trains"] == "policy") for r in rows)
    assert "cost weights adapted to a budget of 0.5 x fusion's GFLOPs" in printed


def test_budget_keeps_the_most_accurate_checkpoint_within_the_budget(budget_run):
    out, _ = budget_run
    rows = read_rows(out / "adamml" / "log.csv")
    validated = [i for i, r in enumerate(rows) if r.get("budget_fraction")]  # never the warm-up
    fractions = {i: float(rows[i]["budget_fraction"]) for i in validated}
    within = [i for i in validated if fractions[i] <= 0.55]
    best = torch.load(out / "adamml" / "best.pt", weights_only=False)
    if within:  # the most accurate of the epochs within the budget (+10 %), the first of equals
        chosen = max(within, key=lambda i: (float(rows[i]["val_score"]), -i))
    else:  # none within: the one closest to it
        chosen = min(validated, key=lambda i: (fractions[i], i))
    assert best["epoch"] == chosen + 1


def test_each_validation_fits_the_policys_thresholds_to_the_budget_and_the_checkpoint_keeps_them(budget_run, tmp_path):
    from adamml.evaluation.evaluate import evaluate_run
    from adamml.runtime.runs import find_stage_checkpoints

    out, printed = budget_run
    rows = read_rows(out / "adamml" / "log.csv")
    validated = [r for r in rows if r.get("budget_fraction")]
    assert validated and all(r["val_argmax_gflops"] for r in validated)  # the argmax, logged beside
    # Fitted on the validation split: never over the budget there, and close under it (the
    # largest cost within it; a few videos leave coarse steps).
    assert all(0.25 < float(r["budget_fraction"]) <= 0.5 + 1e-9 for r in validated), [r["budget_fraction"] for r in validated]
    best = torch.load(out / "adamml" / "best.pt", weights_only=False)
    metrics = best["metrics"]
    kept = best["model"]["policy.use_thresholds"]
    probabilities = torch.sigmoid(kept.double()).tolist()
    assert probabilities == pytest.approx([metrics["threshold_rgb"], metrics["threshold_audio"]], abs=1e-6)
    # Evaluating the checkpoint (conditional execution) reproduces the kept epoch's figures:
    # the thresholds travel with the weights.
    results, table = evaluate_run(find_stage_checkpoints(out), out_dir=None, progress=False, random_policy=False)
    adamml = next(r for r in results if r.method == "AdaMML")
    assert (f"AdaMML's thresholds (fitted to its training budget of 0.5 x fusion's GFLOPs on its validation split): "
            f"rgb when p_use > {probabilities[0]:.4f}, audio when p_use > {probabilities[1]:.4f}.") in table
    assert adamml.gflops == pytest.approx(metrics["gflops"], rel=1e-6)
    assert adamml.accuracy == pytest.approx(100 * metrics["score"], abs=1e-6)
    assert "the policy's thresholds fitted to it on the validation split" in printed
    assert (f"(thresholds fitted to the budget: rgb p_use > {metrics['threshold_rgb']:.3f}, audio p_use > "
            f"{metrics['threshold_audio']:.3f})") in printed  # the run's closing verdict says so too


def test_the_argmax_figures_read_from_the_margins_equal_an_evaluation_of_the_argmax(budget_run):
    """A calibrated validation does not run the recognition networks at the argmax: its
    logged GFLOPs and selection rates come from the policy's margins, and equal evaluating
    the kept weights with the thresholds at zero."""
    from adamml.data.datasets import build_datasets
    from adamml.data.loader import make_loader
    from adamml.evaluation.evaluate import evaluate_model
    from adamml.models.build import input_modalities, model_from_checkpoint
    from adamml.runtime.distributed import Runtime

    out, _ = budget_run
    path = out / "adamml" / "best.pt"
    metrics = torch.load(path, weights_only=False)["metrics"]
    loaded = model_from_checkpoint(path)
    model, kind, model_cfg, cfg = loaded.network, loaded.kind, loaded.model_cfg, loaded.cfg
    model.policy.use_thresholds.zero_()
    _, val_set, _ = build_datasets(cfg, modalities=list(input_modalities(kind, model_cfg)), with_train=False)
    loader = make_loader(val_set, 4, Runtime(), train=False, seed=0, num_workers=0)
    argmax = evaluate_model(model, loader, kind, model_cfg, cfg, Runtime()).metrics
    for key in ("gflops", "selection_rgb", "selection_audio"):
        assert metrics[f"argmax_{key}"] == pytest.approx(argmax[key], rel=1e-9), key
    assert "argmax_score" not in metrics  # no second evaluation pass


def test_without_calibration_the_policy_keeps_its_argmax(budget_run, own_videos, tmp_path):
    import shutil

    out, _ = budget_run
    for stage in out.iterdir():  # stage 1 and fusion from the budget run; stage 3 again
        if stage.name.startswith(("unimodal_", "fusion_")) or stage.name == "splits":
            shutil.copytree(stage, tmp_path / stage.name)
    code, printed = _train(["--data", str(own_videos), "--output", str(tmp_path), "--budget", "0.5", "--stage", "adamml",
                            "train.batch_size=4", "train.adamml.warmup_epochs=1", "train.adamml.epochs=1",
                            "train.adamml.finetune_epochs=0", "train.adamml.calibrate=false"])
    assert code == 0
    rows = read_rows(tmp_path / "adamml" / "log.csv")
    assert rows[-1]["val_score"] and "val_argmax_score" not in rows[-1]
    assert torch.equal(torch.load(tmp_path / "adamml" / "best.pt", weights_only=False)["model"]["policy.use_thresholds"],
                       torch.zeros(2))
    assert "the policy's thresholds fitted" not in printed


def test_the_run_ends_with_each_stages_result_and_a_collapse_verdict(budget_run):
    out, printed = budget_run
    summary = (out / "summary.txt").read_text()
    verdict = next(line for line in summary.splitlines() if line.startswith("validation: "))
    for method in ("Audio", "RGB", "Weighted fusion", "AdaMML"):
        assert f"{method} " in verdict
    assert "of fusion's), running" in verdict
    assert "WARNING: " in summary or "no sign of a collapse" in summary
    assert verdict in printed


def test_a_run_that_misses_fusion_says_by_how_much_with_the_oracle_and_the_budget_that_meets_it(budget_run, own_videos,
                                                                                             tmp_path):
    import shutil

    out, _ = budget_run
    for stage in out.iterdir():  # stage 1 and fusion from the budget run; stage 3 at a budget too small
        if stage.name.startswith(("unimodal_", "fusion_")) or stage.name == "splits":
            shutil.copytree(stage, tmp_path / stage.name)
    code, printed = _train(["--data", str(own_videos), "--output", str(tmp_path), "--budget", "0.15", "--stage", "adamml",
                            "train.batch_size=4", "train.adamml.warmup_epochs=1", "train.adamml.epochs=1",
                            "train.adamml.finetune_epochs=0"])
    assert code == 0, printed
    verdict = next(line for line in printed.splitlines() if "points under weighted fusion" in line)
    import re

    adamml, fusion = (float(v) for v in re.search(r"\((\d+\.\d)% against (\d+\.\d)%\)", verdict).groups())
    assert fusion - adamml > 2
    oracle = float(re.search(r"the labels\) reaches (\d+\.\d)%", verdict).group(1))
    assert adamml <= oracle <= 100.0
    assert re.search(r"meets fusion at a budget of \d\.\d\d|stays under fusion at every budget", verdict)
    assert "no sign of a collapse" not in printed
