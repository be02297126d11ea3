"""Experiment configuration: YAML files loaded into typed dataclasses.

A config has four sections, ``data``, ``model``, ``train`` and ``eval``; every field has a
default, so a YAML file only says what differs. ``key.sub=value`` overrides from the command
line are applied on top, and the resolved config is saved beside every run so it can be
repeated (timm's habit).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adamml.data.types import ClipSettings, DecodeSettings

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    dataset: str = "folder"  # a name from adamml.data.catalog, or "folder"/"csv"/"list"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    cache: str | None = None  # None: <root>/cache
    use_cache: bool = True  # False: decode straight from the video files
    num_workers: int = 0
    multi_label: bool = False
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    clip: ClipSettings = field(default_factory=ClipSettings)
    eval_segments: int | None = None  # segments at test time (the reference uses 10 clips)


@dataclass
class PolicyConfig:
    """The light network that decides, per segment, which modalities to run (SPEC section 2)."""

    backbone: str = "mobilenet_v2"
    width_mult: float = 1.0
    # Keep only the visual extractor's first N feature blocks (None: all). At a few dozen
    # pixels a full MobileNetV2 shrinks the frame to 1x1 halfway through and, trained from
    # scratch, learns slowly; its first blocks see occlusion and object type well and cost less.
    blocks: int | None = None
    frames: int = 4  # RGB frames per segment it looks at (every other of the clip's frames)
    resolution: int = 160
    joint_dim: int = 2048  # the MLP over concatenated per-modality features
    hidden_size: int = 256  # LSTM cell
    flow_proxy: str = "rgbdiff"  # what the policy looks at to decide about flow


@dataclass
class ModelConfig:
    modalities: list[str] = field(default_factory=lambda: ["rgb", "audio"])
    # modality -> backbone name from adamml.models.backbones.BACKBONES
    backbones: dict[str, str] = field(
        default_factory=lambda: {"rgb": "resnet50", "audio": "mobilenet_v2"}
    )
    num_classes: int = 31
    temporal_pool: bool = True  # TSN-like max pooling over time between ResNet stages
    dropout: float = 0.5
    fusion: str = "weighted"  # average | weighted | classwise | fc
    pretrained: dict[str, str] = field(default_factory=dict)  # modality -> weights file
    policy: PolicyConfig = field(default_factory=PolicyConfig)


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 8
    output_dir: str = "runs/experiment"
    # stage 1 (unimodal) and 2 (fusion)
    epochs: int = 60
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: list[int] = field(default_factory=lambda: [20, 40, 50])
    warmup_iters: int = 0
    fusion_epochs: int = 10  # stage 2: recognition nets from stage 1, fusion head trained
    # stage 3 (AdaMML)
    adamml_epochs: int = 20
    warmup_epochs: int = 5
    finetune_epochs: int = 10
    alternate_every: int = 1  # epochs per block of the alternating stage
    adamml_lr: float = 0.001
    policy_lr: float = 0.01
    policy_extractor_lr_scale: float = 0.1  # the policy's CNN feature extractors learn slower
    policy_pretrain_epochs: int = 0  # classify with the policy's own extractors first (see stages)
    policy_pretrain_lr: float = 0.003  # Adam
    adamml_lr_steps: list[int] = field(default_factory=lambda: [10, 15])
    temperature: float = 5.0
    temperature_decay: float = 0.965
    cost_weights: dict[str, float] = field(default_factory=lambda: {"rgb": 1.0, "audio": 0.05})
    gamma: float = 10.0
    # runtime
    precision: str = "auto"  # auto | 32 | bf16 | 16 (mixed precision on GPU)
    log_every: int = 10
    eval_every: int = 1  # validate every N epochs (0: only at the end of each stage)
    progress: bool = True
    max_steps_per_epoch: int | None = None


@dataclass
class EvalConfig:
    deterministic_policy: bool = True  # argmax; False samples Gumbel noise with `seed`
    seed: int = 0
    random_policy: bool = True  # also report random policies at the learned rates


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and what."""


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Turn YAML data into the annotated type, so mistakes fail at load time."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return _from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, found {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, found {value!r}") from None
    return value


def _from_dict(cls: Any, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Accept a file path or the name of a config shipped with the package."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {str(name_or_path)!r} not found: not a file, and not one of: {available}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    data: dict = {}
    source = "<defaults>"
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    try:
        return _from_dict(ExperimentConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    tmp.replace(path)
