"""Nothing lost and nothing silently wrong: run folders that a rerun cannot clobber, one run
per folder, resumes that refuse to mix two runs, and user errors told in one line."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media import make_video

from adamml.cli import main

CLASSES = ["bee", "cow"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """train/<class>/*.mp4 (no val split): 4 short clips per class."""
    root = tmp_path_factory.mktemp("videos")
    for c, name in enumerate(CLASSES):
        for i in range(4):
            make_video(root / "train" / name / f"{name}{i}.mp4", num_frames=16, fps=8.0, height=40, width=40,
                       freq=300.0 + 500 * c, seed=10 * c + i)
    return root


def train(*args: str, overrides: tuple[str, ...] = ()) -> tuple[int, str]:
    """``adamml train --config tiny`` in this process: exit code, stdout and stderr together."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--config", "tiny", "--workers", "1", "--stage", "unimodal", "--modality", "audio",
                     *args, "train.unimodal.epochs=1", "train.batch_size=4", *overrides])
    return code, out.getvalue() + err.getvalue()


def rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(videos, tmp_path_factory) -> Path:
    """A finished one-epoch stage-1 audio run."""
    out = tmp_path_factory.mktemp("run")
    code, printed = train("--data", str(videos), "--output", str(out))
    assert code == 0, printed
    return out


def test_a_rerun_without_resume_is_refused_and_keeps_the_stage(videos, finished):
    stage = finished / "unimodal_audio"
    before = {name: (stage / name).read_bytes() for name in ("best.pt", "last.pt", "log.csv")}
    code, printed = train("--data", str(videos), "--output", str(finished))
    assert code == 2
    message = [line for line in printed.splitlines() if line.startswith("adamml train:")]
    assert len(message) == 1 and "--resume" in message[0] and "--overwrite" in message[0], printed
    assert {name: (stage / name).read_bytes() for name in before} == before  # nothing touched


def test_overwrite_moves_the_earlier_stage_aside(videos, finished, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    old_best = (out / "unimodal_audio" / "best.pt").read_bytes()
    code, printed = train("--data", str(videos), "--output", str(out), "--overwrite")
    assert code == 0, printed
    moved = list((out / "replaced").glob("*/unimodal_audio/best.pt"))
    assert len(moved) == 1 and moved[0].read_bytes() == old_best
    assert len(rows(out / "unimodal_audio" / "log.csv")) == 1  # a fresh log, not appended to
    assert f"moved to {moved[0].parent}" in printed
    assert f"moved to {moved[0].parent}" in (out / "summary.txt").read_text()
    from adamml.runtime.runs import find_stage_checkpoints

    assert find_stage_checkpoints(out) == [out / "unimodal_audio" / "best.pt"]  # the old one is not a result


def test_resume_and_overwrite_together_are_refused(videos, finished):
    code, printed = train("--data", str(videos), "--output", str(finished), "--resume", "--overwrite")
    assert code == 2 and "exclude each other" in printed


def test_resume_with_other_settings_is_refused_and_names_them(videos, finished):
    config = (finished / "unimodal_audio" / "config.yaml").read_text()
    code, printed = train("--data", str(videos), "--output", str(finished), "--resume",
                          overrides=("train.unimodal.lr=0.5", "train.progress=false"))
    assert code == 2, printed
    assert "train.unimodal.lr: 0.01 then, 0.5 now" in printed and "progress" not in printed
    assert (finished / "unimodal_audio" / "config.yaml").read_text() == config  # not rewritten


def test_resume_on_data_with_another_class_count_is_refused(videos, finished, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(videos / "train", data / "train")
    for i in range(4):
        make_video(data / "train" / "owl" / f"owl{i}.mp4", num_frames=16, fps=8.0, height=40, width=40, seed=50 + i)
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    code, printed = train("--data", str(data), "--output", str(out), "--resume")
    assert code == 2, printed
    assert "Traceback" not in printed
    assert "the data's classes: the run was trained on 2 (bee, cow), the data has 3 (bee, cow, owl)" in printed


def test_resume_of_a_finished_stage_with_the_same_settings_goes_on(videos, finished):
    code, printed = train("--data", str(videos), "--output", str(finished), "--resume")
    assert code == 0, printed
    assert len(rows(finished / "unimodal_audio" / "log.csv")) == 1


def test_resume_without_last_pt_says_the_stage_starts_at_epoch_1(videos, tmp_path):
    code, printed = train("--data", str(videos), "--output", str(tmp_path), "--resume")
    assert code == 0, printed
    assert "no last.pt to resume from; the stage starts at epoch 1" in printed


def test_a_stage_with_results_but_no_last_pt_is_not_resumed_silently(videos, finished, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "unimodal_audio" / "last.pt").unlink()
    code, printed = train("--data", str(videos), "--output", str(out), "--resume")
    assert code == 2 and "no last.pt to continue from" in printed


HOLDER = """
import sys, time
from adamml.runtime.lock import hold_folder
with hold_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_train_on_a_held_output_is_refused_and_a_killed_holder_frees_it(videos, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, printed = train("--data", str(videos), "--output", str(tmp_path))
        assert code == 2, printed
        assert f"in use by pid {holder.pid}" in printed
        assert not (tmp_path / "unimodal_audio").exists() and not (tmp_path / "summary.txt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    code, printed = train("--data", str(videos), "--output", str(tmp_path))  # kill -9 leaves no stale lock
    assert code == 0, printed


def test_an_output_folder_that_cannot_be_written_is_one_line(videos, tmp_path):
    # A file where the folder should be fails for root too (a read-only folder would not).
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    code, printed = train("--data", str(videos), "--output", str(blocker / "run"))
    assert code == 2 and "Traceback" not in printed, printed
    assert f"{blocker / 'run'}: cannot write the run folder" in printed


def test_evaluate_refuses_data_whose_classes_are_not_the_checkpoints(finished, tmp_path):
    from adamml.errors import AdamMLError
    from adamml.evaluation.evaluate import evaluate_run

    for name in ("beep", "red"):  # two classes, as the checkpoint's, but other ones
        make_video(tmp_path / "val" / name / f"{name}.mp4", num_frames=16, fps=8.0, height=40, width=40)
    with pytest.raises(AdamMLError, match=r"trained on 2 classes \(bee, cow\), the data at .* has 2 \(beep, red\): "
                                          r"not in the data: bee, cow; not in the checkpoint: beep, red"):
        evaluate_run([finished / "unimodal_audio" / "best.pt"], data_root=str(tmp_path), split="val", progress=False, plots=False)


def test_evaluate_on_the_runs_own_data_is_not_refused(finished):
    from adamml.evaluation.evaluate import evaluate_run

    results, _ = evaluate_run([finished / "unimodal_audio" / "best.pt"], progress=False, plots=False)
    assert [r.method for r in results] == ["Audio"]



def test_a_checkpoint_given_as_config_is_one_line(finished):
    code, printed = train("--config", str(finished / "unimodal_audio" / "best.pt"))
    assert code == 2 and "Traceback" not in printed
    assert "best.pt: not a YAML config, not even text (a checkpoint: a run's config is the config.yaml beside it)" in printed


@pytest.mark.parametrize("window", [float("nan"), float("inf"), -5.0])
def test_a_window_that_is_not_a_positive_number_is_one_line(window, capsys, tmp_path):
    from adamml.cli import main

    # refused before the checkpoint is read: it need not exist
    assert main(["predict", str(tmp_path / "v.mp4"), "--checkpoint", str(tmp_path / "none.pt"),
                 "--window", str(window)]) == 2
    err = capsys.readouterr().err
    assert f"--window must be a positive number of seconds, got {window}" in err
    assert "Traceback" not in err


def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_one_line(monkeypatch, capsys):
    from adamml.models import execution

    monkeypatch.setattr(execution, "_said", set())
    monkeypatch.setattr(execution, "cpu_has_native_bf16", lambda: False)
    assert execution.ExecutionPlan.for_device("cpu", precision="bf16").precision == "fp32"
    execution.ExecutionPlan.for_device("cpu", precision="bf16")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "has no native bf16" in err[0] and "running fp32 instead" in err[0]
    monkeypatch.setattr(execution, "cpu_has_native_bf16", lambda: True)
    assert execution.ExecutionPlan.for_device("cpu", precision="bf16").precision == "bf16"
    assert execution.ExecutionPlan.for_device("cpu").precision == "fp32" and not capsys.readouterr().err


def test_native_bf16_is_read_from_onednn():
    import torch

    from adamml.models.execution import cpu_has_native_bf16

    assert cpu_has_native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_the_run_summary_names_what_discovery_passed_over_and_a_train_val_overlap(videos, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(videos / "train", data / "train", ignore=shutil.ignore_patterns("cache"))
    (data / "train" / "cow" / "extra").mkdir()
    shutil.copy(videos / "train" / "cow" / "cow0.mp4", data / "train" / "cow" / "extra" / "nested.mp4")
    (data / "val.csv").write_text("path,label\ntrain/bee/bee0.mp4,bee\ntrain/cow/cow1.mp4,cow\n")
    code, printed = train("--data", str(data), "--output", str(tmp_path / "run"))
    assert code == 0, printed
    summary = (tmp_path / "run" / "summary.txt").read_text()
    assert "1 subfolder(s) inside class folders skipped" in summary and "nested" not in summary.split("skipped")[0]
    assert "2 video(s) are in both train and 'val'" in summary
