"""``adamml train --plan``: the validated epochs of every stage are the driver's decisions, the
plan names every switch docs/fidelity.md names with the config's setting, and missing
weights files are all reported at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from adamml.cli import main
from adamml.config_files import load_config
from adamml.training.driver import validation_due
from adamml.training.plan import REFERENCE_ROWS, config_value, format_plan, show_value
from adamml.training.schedule import plain_schedule

FIDELITY = Path(__file__).parents[1] / "docs" / "fidelity.md"
KEY = re.compile(r"^((?:data|model|train)\.[a-z_.0-9]*[a-z_0-9])")


def documented_switches() -> dict[str, tuple[str, ...]]:
    """{row's "what": the config keys its switch column names} for every table row of
    docs/fidelity.md whose switch is a config key."""
    rows = {}
    for line in FIDELITY.read_text().splitlines():
        if not line.startswith("| ") or line.startswith(("| what", "| ---")):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        keys = []
        for code in re.findall(r"`([^`]+)`", cells[-1]):
            match = KEY.match(code)
            if match and match.group(1) not in keys:
                keys.append(match.group(1))
        if keys:
            rows[cells[0]] = tuple(keys)
    return rows


def test_every_documented_switch_is_a_plan_row_and_every_plan_row_is_documented():
    documented = documented_switches()
    planned = {what: keys for what, keys, _ in REFERENCE_ROWS}
    assert documented == planned
    cfg = load_config("kinetics_sounds_rgb_audio")
    for keys in planned.values():
        for key in keys:
            config_value(cfg, key)  # a key the config has


@pytest.mark.parametrize("name", ["kinetics_sounds_rgb_audio", "kinetics_sounds_rgb_rgbdiff_audio", "fcvid_rgb_audio", "tiny"])
def test_the_plan_prints_each_rows_setting_of_this_config(name, capsys):
    assert main(["train", "--config", name, "--plan"]) == 0
    out = capsys.readouterr().out
    cfg = load_config(name)
    section = out[out.index("Against the reference"):].splitlines()
    for what, keys, reference in REFERENCE_ROWS:
        line = next(x for x in section if x.strip().startswith(f"{what}:"))
        for key in keys:
            assert f"{key}={show_value(config_value(cfg, key))}" in line
        assert f"(the reference: {reference})" in line


def test_the_paper_configs_plan_shows_the_references_settings(capsys):
    assert main(["train", "--config", "kinetics_sounds_rgb_flow", "--plan"]) == 0
    out = capsys.readouterr().out
    for setting in ("train.adamml.frozen_mode=train", "train.adamml.val_decisions=sampled", "train.precision=32",
                    "train.unimodal.audio_window=centre", "data.clip.crops=independent", "data.decode.fps=null"):
        assert setting in out
    assert "validation decisions sampled" in out and "stay in train mode" in out


def _unimodal_lines(out: str) -> list[str]:
    return [x.strip() for x in out.split("Stage 1")[1].split("Stage 2")[0].splitlines() if x.strip().startswith("epochs ")]


def _validated_in(text: str, a: int, b: int) -> list[int]:
    """The epochs of a..b a unimodal plan line says are validated."""
    if text.endswith("not validated"):
        return []
    if text.endswith("validated each epoch"):
        return list(range(a, b + 1))
    listed = re.search(r"validated (?:after epochs? |every \d+ epochs \()(.*?)\)?$", text).group(1)
    step = re.search(r"validated every (\d+) epochs", text)
    numbers = [int(x) for x in re.findall(r"\d+", listed)]
    if step:
        return list(range(numbers[0], numbers[-1] + 1, int(step.group(1))))
    assert "..." not in listed, text
    return numbers


@pytest.mark.parametrize("every", [0, 1, 2, 3, 4])
def test_the_unimodal_validated_epochs_are_the_drivers(every):
    cfg = load_config("kinetics_sounds_rgb_audio", [f"train.eval_every={every}"])
    schedule = plain_schedule(cfg.train.unimodal.epochs)
    due = [e + 1 for e in range(len(schedule)) if validation_due(cfg, schedule, e)]
    said = []
    for line in _unimodal_lines(format_plan(cfg)):
        a, b = (int(x) for x in re.match(r"epochs (\d+)-(\d+)", line).groups())
        said += _validated_in(line, a, b)
    assert said == due
    if every == 0:
        assert due == [60]
    if every == 2:
        assert due == list(range(2, 61, 2))
    if every == 4:  # 4, 8, ... 60: the last epoch is among them
        assert due[-1] == 60 and len(due) == 15


def test_a_fusion_stage_not_validated_each_epoch_says_so():
    cfg = load_config("kinetics_sounds_rgb_audio", ["train.eval_every=0"])
    fusion = format_plan(cfg).split("Stage 2")[1].splitlines()[0]
    assert fusion.endswith(f"validated after epoch {cfg.train.fusion.epochs}")


# ---- every missing weights file at once --------------------------------------------------------


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and a download that fails if it is tried."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ADAMML_OFFLINE", raising=False)

    def no_network(url, *args, **kwargs):
        raise OSError("no network in the tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


EFFICIENTNET_FILES = {
    "efficientnet_b3_rwightman-b3899882.pth": "https://download.pytorch.org/models/efficientnet_b3_rwightman-b3899882.pth",
    "efficientnet_b0_rwightman-7f5810bc.pth": "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
    "mobilenet_v2-b0353104.pth": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
}


def test_every_missing_weights_file_is_named_in_one_error(empty_hub):
    from adamml.models.backbones import PretrainedWeightsError, require_torchvision_weights

    cfg = load_config("activitynet_efficientnet")
    with pytest.raises(PretrainedWeightsError) as err:
        require_torchvision_weights(cfg.model)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("3 weights files the config names are missing")
    assert len(lines) == 4
    for line, (name, url) in zip(lines[1:], EFFICIENTNET_FILES.items(), strict=True):
        assert name in line and str(empty_hub) in line and url in line


def test_the_cli_names_every_missing_file_on_its_line_and_exits_2(empty_hub, tmp_path, capsys):
    # One file cached: only the two others are missing.
    empty_hub.mkdir(parents=True)
    torch.save({}, empty_hub / "mobilenet_v2-b0353104.pth")
    data = tmp_path / "no_such_dataset"
    assert main(["train", "--config", "activitynet_efficientnet", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1  # the CLI's one line
    assert err.count("efficientnet_b") >= 2 and "2 weights files" in err
    for name in ("efficientnet_b3_rwightman-b3899882.pth", "efficientnet_b0_rwightman-7f5810bc.pth"):
        assert name in err and EFFICIENTNET_FILES[name] in err
    assert "mobilenet_v2-b0353104.pth" not in err and str(data) not in err
