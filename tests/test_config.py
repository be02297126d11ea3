"""Configs: the stage sections, the ``base:`` rule, one override syntax, old layouts."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from adamml.config import (
    CONFIG_DIR,
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_config,
    to_dict,
)


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_file_states_only_what_differs_from_its_base(tmp_path):
    write(tmp_path / "parent.yaml", {"name": "parent", "model": {"num_classes": 7, "dropout": 0.3}})
    child = write(tmp_path / "child.yaml", {"base": "parent", "name": "child", "model": {"num_classes": 9}})
    cfg = load_config(child)
    assert (cfg.name, cfg.model.num_classes, cfg.model.dropout) == ("child", 9, 0.3)


def test_bases_chain_and_a_shipped_name_works_as_base(tmp_path):
    write(tmp_path / "mid.yaml", {"base": "kinetics_sounds_rgb_audio", "train": {"adamml": {"gamma": 3.0}}})
    cfg = load_config(write(tmp_path / "leaf.yaml", {"base": "mid.yaml", "name": "leaf"}))
    assert cfg.data.dataset == "kinetics_sounds" and cfg.train.batch_size == 72
    assert cfg.train.adamml.gamma == 3.0 and cfg.train.adamml.lr == 0.001


def test_a_table_value_replaces_the_base_table_whole(tmp_path):
    write(tmp_path / "a.yaml", {"model": {"backbones": {"rgb": "resnet18", "audio": "resnet18"}}})
    cfg = load_config(write(tmp_path / "b.yaml", {"base": "a", "model": {"backbones": {"rgb": "resnet50"}}}))
    assert cfg.model.backbones == {"rgb": "resnet50"}


def test_a_cycle_of_bases_is_an_error_naming_the_chain(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b"})
    write(tmp_path / "b.yaml", {"base": "a"})
    with pytest.raises(ConfigError, match="cycle: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_a_missing_base_names_the_file_that_asked_for_it(tmp_path):
    with pytest.raises(ConfigError, match="child.yaml: base: config 'nowhere' not found"):
        load_config(write(tmp_path / "child.yaml", {"base": "nowhere"}))


def test_each_stage_has_its_own_learning_rate():
    cfg = load_config("demo", ["train.adamml.lr=0.5"])
    assert (cfg.train.unimodal.lr, cfg.train.fusion.lr, cfg.train.adamml.lr) == (0.02, 0.005, 0.5)


def test_output_dir_defaults_to_runs_slash_name():
    assert load_config("mini_sports1m_rgb_audio").train.output_dir == "runs/mini_sports1m_rgb_audio"
    assert load_config("demo", ["train.output_dir=x"]).train.output_dir == "x"


def test_an_old_flat_key_override_says_where_it_went():
    with pytest.raises(ConfigError, match=r"train\.adamml_lr is now train\.fusion\.lr and train\.adamml\.lr"):
        load_config("demo", ["train.adamml_lr=0.1"])


def test_an_old_run_config_loads_to_the_values_the_code_read_before():
    old = {
        "name": "old",
        "train": {"epochs": 3, "lr": 0.02, "lr_steps": [2], "fusion_epochs": 1, "adamml_lr": 0.004,
                  "adamml_epochs": 5, "adamml_lr_steps": [4], "cost_weights": {"rgb": 2.0, "audio": 0.1},
                  "warmup_iters": 0, "log_every": 10, "seed": 4},
        "eval": {"deterministic_policy": True, "seed": 0, "random_policy": True},
    }
    cfg = config_from_dict(old)
    t = cfg.train
    assert (t.unimodal.epochs, t.unimodal.lr, t.unimodal.lr_steps) == (3, 0.02, [2])
    assert (t.fusion.epochs, t.fusion.lr, t.fusion.head_lr) == (1, 0.004, 0.02)
    assert (t.adamml.epochs, t.adamml.lr, t.adamml.head_lr, t.adamml.lr_steps) == (5, 0.004, 0.02, [4])
    assert t.adamml.cost_weights == {"rgb": 2.0, "audio": 0.1} and t.seed == 4


def test_the_resolved_config_round_trips(tmp_path):
    cfg = load_config("kinetics_sounds_rgb_rgbdiff_audio")
    write(tmp_path / "saved.yaml", to_dict(cfg))
    assert load_config(tmp_path / "saved.yaml") == cfg


def _restated(cls, stated: dict, inherited: dict, where: str = "") -> list[str]:
    """Keys of ``stated`` whose value equals what the file would get without them."""
    hints = typing.get_type_hints(cls)
    out = []
    for key, value in stated.items():
        if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            out += _restated(hints[key], value, inherited[key], f"{where}{key}.")
        elif inherited.get(key) == value:
            out.append(f"{where}{key}")
    return out


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_state_only_what_differs_from_their_base(path):
    data = yaml.safe_load(path.read_text())
    assert "eval" not in data and data["name"] == path.stem
    base = data.pop("base", None)
    inherited = to_dict(load_config(base) if base else ExperimentConfig())
    inherited["train"]["output_dir"] = f"runs/{path.stem}"
    assert _restated(ExperimentConfig, data, inherited) == []
