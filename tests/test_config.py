"""Configs: the stage sections, the ``base:`` rule, one override syntax, old layouts."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from adamml.config import ConfigError, ExperimentConfig, config_from_dict, to_dict
from adamml.config_files import CONFIG_DIR, load_config


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
    child = {"base": "a", "model": {"modalities": ["rgb"], "backbones": {"rgb": "resnet50"}}}
    cfg = load_config(write(tmp_path / "b.yaml", child))
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


# ---- a config is checked whole when it loads -----------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("model.fusion=wieghted", "model.fusion", "weighted"),
        ("model.backbones.rgb=resnet_tiyn", "model.backbones.rgb", "resnet_tiny"),
        ("model.modalities=[rgb,audoi]", "model.modalities[1]", "audio"),
        ("train.precision=fp33", "train.precision", None),
    ],
)
def test_train_with_a_wrong_name_exits_2_with_one_line_naming_the_key(tmp_path, capsys, override, key, suggestion):
    from adamml.cli import main

    code = main(["train", "--config", "demo", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"), override])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    bad = override.split("=")[1].strip("[]").split(",")[-1]
    assert f"{key}: got {bad!r}; expected one of" in err
    if suggestion:
        assert f"did you mean {suggestion!r}" in err
    assert not (tmp_path / "run").exists()  # nothing ran


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.modalities=[rgb,flow]", "model.backbones.flow=resnet_tiny", "train.adamml.cost_weights.flow=1.0"], "data.decode.flow"),
        (["model.modalities=[rgb,flow]", "data.decode.flow=tvl1", "train.adamml.cost_weights.flow=1.0"], "model.backbones"),
        (["model.modalities=[rgb,flow]", "data.decode.flow=tvl1", "model.backbones.flow=resnet_tiny"], "train.adamml.cost_weights"),
        (["model.modalities=[rgb,rgb]"], "model.modalities"),
        (["model.policy.frames=3"], "model.policy.frames"),
        (["model.policy.backbone=resnet18"], "model.policy.backbone"),
        (["model.policy.blocks=40"], "model.policy.blocks"),
        (["model.policy.audio_blocks=0"], "model.policy.audio_blocks"),
        (["train.adamml.budget_step=0"], "train.adamml.budget_step"),
        (["model.policy.flow_proxy=audio"], "model.policy.flow_proxy"),
        (["model.policy.backbone=efficientnet_b0", "model.policy.width_mult=0.5"], "model.policy.width_mult"),
        (["data.dataset=kinetics"], "data.dataset"),
        (["data.decode.flow=farneback"], "data.decode.flow"),
        (["data.clip.stack_length=0"], "data.clip.stack_length"),
        (["train.adamml.temperature_decay=1.5"], "train.adamml.temperature_decay"),
        (["train.unimodal.lr_steps=[6,2]"], "train.unimodal.lr_steps"),
        (["model.pretrained.rgb=/no/such/weights.pth"], "model.pretrained.rgb"),
    ],
)
def test_rules_between_fields_are_checked_at_load(overrides, key):
    with pytest.raises(ConfigError, match=rf"demo\.yaml: {re.escape(key)}: "):
        load_config("demo", overrides)


def test_a_catalogue_dataset_fixes_the_class_count():
    with pytest.raises(ConfigError, match="model.num_classes: got 30, but kinetics_sounds has 31 classes"):
        load_config("kinetics_sounds_rgb_audio", ["model.num_classes=30"])


def test_train_checks_its_fusion_and_modality_options(tmp_path, capsys):
    from adamml.cli import main

    assert main(["train", "--config", "demo", "--data", str(tmp_path), "--stage", "fusion", "--fusion", "avg"]) == 2
    assert "--fusion: got 'avg'" in capsys.readouterr().err
    assert main(["train", "--config", "demo", "--data", str(tmp_path), "--stage", "unimodal", "--modality", "flow"]) == 2
    assert "--modality: got 'flow'; expected one of rgb, audio" in capsys.readouterr().err


def test_flops_takes_the_same_overrides_and_errors(capsys):
    from adamml.cli import main

    assert main(["flops", "--config", "demo", "data.clip.crop_size=32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "demo"
    assert main(["flops", "--config", "demo", "model.fusion=wieghted"]) == 2
    assert "model.fusion: got 'wieghted'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_builds_on_meta_and_counts_its_flops(path):
    """timm's test over its model table, over our config table: every config is buildable."""
    import torch

    from adamml.models.adamml import build_adamml
    from adamml.models.flops import flops_report

    cfg = load_config(path)
    # Weights cannot be loaded into meta tensors: the architecture alone (their loading is
    # tested in test_imagenet_weights.py).
    cfg.model.pretrained, cfg.model.policy.pretrained = {}, {}
    with torch.device("meta"):
        model = build_adamml(cfg.model, cfg.data.clip)
    assert list(model.modalities) == cfg.model.modalities
    assert all(p.is_meta for p in model.parameters())
    report = flops_report(cfg)
    assert [r["name"] for r in report["modalities"]] == cfg.model.modalities
    assert all(r["per_segment"] > 0 for r in report["modalities"]) and report["policy"]["per_segment"] > 0
    assert report["adamml_max_per_video"] > report["all_modalities_per_video"]


def test_the_schema_imports_no_torch_and_nothing_of_the_package_but_errors():
    """Every layer reads the config's dataclasses, so importing them must not pull in the
    tables above (and torch with them)."""
    code = (
        "import sys, adamml.config; "
        "print(sorted(m for m in sys.modules if m.startswith('adamml')), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # the package's __init__ (lazy: only its version) comes with any of its modules
    assert out.split() == ["['adamml',", "'adamml.config',", "'adamml.errors',", "'adamml.version']", "False"]


def test_a_modality_the_table_lacks_is_refused_with_the_tables_names():
    from adamml.modalities.table import MODALITIES

    with pytest.raises(ConfigError, match="model.modalities") as info:
        load_config(None, ["model.modalities=[rgb, depth]", "model.backbones.depth=resnet18"])
    assert all(name in str(info.value) for name in MODALITIES)


def test_an_old_run_folders_config_yaml_loads_as_a_config_file(tmp_path):
    old = {"name": "old", "train": {"lr": 0.03, "adamml_lr": 0.002, "log_every": 10}, "eval": {"seed": 0}}
    cfg = load_config(write(tmp_path / "config.yaml", old))
    assert (cfg.train.unimodal.lr, cfg.train.fusion.lr, cfg.train.adamml.head_lr) == (0.03, 0.002, 0.03)


def test_the_default_recipe_starts_from_imagenet_lite0_with_a_policy_copied_from_the_stage1_networks():
    from adamml.models.efficientnet_lite import IMAGENET_SOURCE

    cfg = load_config("default")
    assert cfg.model.backbones == {"rgb": "efficientnet_lite0", "audio": "efficientnet_lite0"}
    assert cfg.model.pretrained == {"rgb": IMAGENET_SOURCE, "audio": IMAGENET_SOURCE}
    # the policy: the first blocks of the stage-1 networks on frames and on sound (copied:
    # neither modality is in policy.pretrained)
    assert cfg.model.policy.backbone == "efficientnet_lite0" and cfg.model.policy.blocks
    assert cfg.model.policy.pretrained == {}
    assert cfg.model.policy.audio_backbone == cfg.model.backbones["audio"]
    assert cfg.model.policy.audio_blocks and not cfg.train.unimodal.train_segments
    # every segment of a training video in stage 1 (the reference's one clip gives a wrong
    # label to a modality that names the class on some segments only)
    assert cfg.train.unimodal.train_segments is None


def test_modality_lr_names_modalities_of_the_model_and_positive_rates():
    with pytest.raises(ConfigError, match=r"train.unimodal.modality_lr: no modality 'flow'"):
        load_config("tiny", ["train.unimodal.modality_lr={flow: 0.001}"])
    with pytest.raises(ConfigError, match=r"train.unimodal.modality_lr: .*expected positive rates"):
        load_config("tiny", ["train.unimodal.modality_lr={rgb: 0}"])


def test_the_plan_prints_each_modalitys_stage1_rate(capsys):
    from adamml.cli import main

    assert main(["train", "--config", "tiny", "--plan", "train.unimodal.modality_lr={rgb: 0.004}",
                 "train.unimodal.lr=0.03", "train.unimodal.lr_steps=[1]", "train.unimodal.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "epochs 1-1: lr rgb 0.004, audio 0.03;" in out
    assert "epochs 2-2: lr rgb 0.0004, audio 0.003;" in out


def test_the_plan_says_a_budget_run_adapts_its_weights_and_fits_its_thresholds(capsys):
    from adamml.cli import main

    assert main(["train", "--config", "tiny", "--plan", "--budget", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "CE + efficiency (weights adapted to budget 0.4, gamma" in out and "rgb=" not in out.split("Stage 3")[1]
    assert "best.pt is the best validated epoch (never the warm-up) within the budget" in out
    assert "the policy's thresholds are fitted so that its cost on the validation split is 0.4 x" in out
    assert main(["train", "--config", "tiny", "--plan", "--budget", "0.4", "train.adamml.calibrate=false"]) == 0
    assert "thresholds are fitted" not in capsys.readouterr().out


def test_a_policy_backbone_with_a_width_knob_may_change_width():
    """The backbone table says which families have a width knob (``at_width``), not a name."""
    from adamml.models.backbones import BACKBONES

    narrowable = [n for n, spec in BACKBONES.items() if spec.framewise and spec.at_width is not None]
    assert narrowable
    for name in narrowable:
        assert load_config("demo", [f"model.policy.backbone={name}", "model.policy.width_mult=0.5"]).model.policy.width_mult == 0.5
