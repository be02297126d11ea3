"""The command line as a user types it: ``key=value`` overrides before, between or after the
options of every command that takes them, through the real parser."""

from __future__ import annotations

import json

import pytest

from adamml.cli import main, parse_command


def test_train_takes_overrides_between_and_after_options(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", "--config", "tiny", "train.unimodal.epochs=1", "--output", str(out),
                 "train.adamml.epochs=5", "--no-progress", "train.seed=3", "--plan"])
    text = capsys.readouterr().out
    assert code == 0
    assert f"output {out}" in text
    assert "Stage 1, unimodal (rgb, audio, each alone): 1 epochs" in text
    assert "1 warm-up + 5 alternating + 1 fine-tune epochs" in text


def test_train_flags_and_overrides_in_any_order_give_the_same_settings(tmp_path) -> None:
    first = parse_command("train", ["--data", "ROOT", "--budget", "0.5", "train.progress=false", "--no-progress"])
    second = parse_command("train", ["train.progress=false", "--data", "ROOT", "--no-progress", "--budget", "0.5"])
    assert vars(first) == vars(second)
    assert first.overrides == ["train.progress=false"] and first.budget == 0.5 and first.no_progress


def test_flops_takes_overrides_around_its_options(capsys) -> None:
    code = main(["flops", "--config", "tiny", "model.num_classes=7", "--json", "data.clip.crop_size=64"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["modalities"][0]["input_shape"][-1] == 64


def test_demo_takes_overrides_around_its_options() -> None:
    args = parse_command("demo", ["train.seed=1", "--out", "X", "train.batch_size=2", "--no-progress"])
    assert args.overrides == ["train.seed=1", "train.batch_size=2"] and args.out == "X" and args.no_progress


def test_an_unknown_option_is_still_refused(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "tiny", "train.seed=1", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_a_command_with_actions_of_its_own_still_parses() -> None:
    args = parse_command("weights", ["check", "some.pth", "--arch", "resnet18"])
    assert (args.command, args.action, args.source, args.arch) == ("weights", "check", "some.pth", "resnet18")
