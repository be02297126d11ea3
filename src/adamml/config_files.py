"""Experiment configs from files: find, read (``base:`` chains), override, check, save.

One rule shares settings between files: ``base: NAME`` names the config a file starts from
(a shipped name or a path relative to the file; bases may have bases), and the file states only
what differs from it. ``key.sub=value`` overrides from the command line, the same syntax for
every command, are applied on top, and the resolved config is saved beside every run so it can
be repeated (timm's habit).

:func:`check_config` checks every name against the table that holds it (datasets, flow
methods, modalities, backbones, fusion heads, the policy's extractors), so this module sits
above ``data``, ``modalities`` and ``models``; the dataclasses it fills are in
:mod:`adamml.config`, at the bottom.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import torch
import yaml

from adamml.config import (
    AUDIO_WINDOWS,
    CROPS,
    DATA_FORMATS,
    EVAL_POSITIONS,
    FROZEN_MODES,
    INFLATIONS,
    LOSSES,
    POLICY_ALLOCATIONS,
    POLICY_JOINTS,
    PRECISIONS,
    SPECTROGRAMS,
    STACK_NORMS,
    TRAIN_CROPS,
    VAL_DECISIONS,
    ConfigError,
    ExperimentConfig,
    _from_dict,
    check_choice,
    to_dict,
    upgrade_legacy,
)
from adamml.data.catalog import DATASETS, METRICS
from adamml.errors import AdamMLError
from adamml.modalities.flow import FLOW_METHODS
from adamml.modalities.table import MODALITIES, policy_source
from adamml.models.backbones import (
    BACKBONES,
    IMAGENET_PREFIX,
    IMAGENET_SOURCES,
    check_weights_source,
    is_torchvision,
)
from adamml.models.efficientnet_lite import INSTALL_HINT, weights_installed
from adamml.models.fusion import FUSION_MODES, FUSIONS
from adamml.models.policy import policy_extractor
from adamml.runtime.files import atomic_write_text

CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Accept a file path (also relative to ``relative_to``) or the name of a shipped config."""
    path = Path(name_or_path)
    candidates = [path] if relative_to is None or path.is_absolute() else [relative_to / path, path]
    for candidate in candidates:
        for option in (candidate, candidate.with_name(candidate.name + ".yaml")):
            if option.is_file():
                return option
    shipped = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {str(name_or_path)!r} not found: not a file, and not one of: {available}")


def _merge(cls: Any, base: dict, child: dict) -> dict:
    """``child`` over ``base``: a section (a dataclass field) merges key by key; any other
    value, lists and tables such as ``model.backbones`` included, replaces the base's whole."""
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out = dict(base)
    for key, value in child.items():
        tp = hints.get(key)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(tp, out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A YAML config as plain data, its ``base:`` chain merged in (each file over its base)."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise ConfigError(f"{_chain[0]}: base configs form a cycle: {cycle}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except UnicodeDecodeError:
        hint = " (a checkpoint: a run's config is the config.yaml beside it)" if path.suffix in (".pt", ".pth") else ""
        raise ConfigError(f"{path}: not a YAML config, not even text{hint}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    data = upgrade_legacy(data)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the name or path of a config, found {base!r}")
    try:
        base_path = resolve_config_path(base, relative_to=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: base: {exc}") from None
    return _merge(ExperimentConfig, read_config_file(base_path, (*_chain, path)), data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _policy_blocks(name: str) -> int:
    """Feature blocks of a framewise backbone (built on the meta device: no memory, instant)."""
    with torch.device("meta"):
        return len(BACKBONES[name].constructor().features)


def _check_weights_source(key: str, source: str, backbone: str) -> None:
    """A local file that exists, ImageNet weights that fit the backbone and are installed, or
    torchvision weights of the backbone's architecture (their file is looked for when the
    run starts, not here: ``--plan`` works without it)."""
    if is_torchvision(source):
        try:
            check_weights_source(source, backbone, key)
        except AdamMLError as exc:
            raise ConfigError(str(exc)) from None
        return
    if not str(source).startswith(IMAGENET_PREFIX):
        _require(Path(source).is_file(), key, f"no file {source!r}")
        return
    check_choice(key, source, IMAGENET_SOURCES)
    fits = IMAGENET_SOURCES[source]
    _require(backbone == fits, key, f"{source} holds {fits} weights, but the backbone is {backbone!r}")

    _require(weights_installed(), key,
             f"{source} needs the ImageNet weights package, not installed: {INSTALL_HINT}")


def check_config(cfg: ExperimentConfig) -> None:
    """Check every name against its table and the rules between fields, before anything runs.

    Raises ConfigError naming the first key that is wrong, what it holds and what is valid.
    """
    data, model, train = cfg.data, cfg.model, cfg.train
    if data.dataset not in DATASETS:
        check_choice("data.dataset", data.dataset, [*DATASETS, *DATA_FORMATS])
    if data.decode.flow is not None:
        check_choice("data.decode.flow", data.decode.flow, FLOW_METHODS)
    check_choice("data.clip.spectrogram", data.clip.spectrogram, SPECTROGRAMS)
    check_choice("data.clip.eval_positions", data.clip.eval_positions, EVAL_POSITIONS)
    check_choice("data.clip.train_crop", data.clip.train_crop, TRAIN_CROPS)
    check_choice("data.clip.stack_norm", data.clip.stack_norm, STACK_NORMS)
    check_choice("data.clip.crops", data.clip.crops, CROPS)
    if data.metric is not None:
        check_choice("data.metric", data.metric, METRICS)
    _require(data.decode.fps is None or data.decode.fps > 0, "data.decode.fps",
             f"got {data.decode.fps}; expected a positive rate (or null: the source's own)")
    clip = data.clip
    for key in ("num_segments", "frames_per_segment", "frame_stride", "stack_length", "crop_size", "n_fft"):
        _require(getattr(clip, key) >= 1, f"data.clip.{key}", f"got {getattr(clip, key)}; expected 1 or more")
    _require(data.eval_segments is None or data.eval_segments >= 1, "data.eval_segments",
             f"got {data.eval_segments}; expected 1 or more (or null: data.clip.num_segments)")

    _require(bool(model.modalities), "model.modalities", f"empty; expected one or more of {', '.join(MODALITIES)}")
    for i, m in enumerate(model.modalities):
        check_choice(f"model.modalities[{i}]", m, MODALITIES)
    dupes = sorted({m for m in model.modalities if model.modalities.count(m) > 1})
    _require(not dupes, "model.modalities", f"{', '.join(dupes)} given twice")
    for m, name in model.backbones.items():
        check_choice("model.backbones", m, MODALITIES)
        check_choice(f"model.backbones.{m}", name, BACKBONES)
    missing = [m for m in model.modalities if m not in model.backbones]
    _require(not missing, "model.backbones",
             f"no backbone for {', '.join(missing)}; every modality in model.modalities needs one")
    for m, path in model.pretrained.items():
        check_choice("model.pretrained", m, model.modalities)
        _check_weights_source(f"model.pretrained.{m}", path, model.backbones.get(m, ""))
    check_choice("model.inflation", model.inflation, INFLATIONS)
    check_choice("model.fusion_mode", model.fusion_mode, FUSION_MODES)
    check_choice("model.fusion", model.fusion, [f for f in FUSIONS if f != "unimodal"])
    _require(model.num_classes >= 1, "model.num_classes", f"got {model.num_classes}; expected 1 or more")
    info = DATASETS.get(data.dataset)
    _require(info is None or model.num_classes == info.num_classes, "model.num_classes",
             f"got {model.num_classes}, but {data.dataset} has {info.num_classes if info else 0} classes")
    _require(0.0 <= model.dropout < 1.0, "model.dropout", f"got {model.dropout}; expected 0 <= dropout < 1")
    if "flow" in model.modalities:
        _require(data.decode.flow is not None, "data.decode.flow",
                 f"null, but model.modalities has flow; set one of {', '.join(FLOW_METHODS)}")

    policy = model.policy
    check_choice("model.policy.backbone", policy.backbone, BACKBONES)
    framewise = [n for n, spec in BACKBONES.items() if spec.family == "framewise"]
    check_choice("model.policy.backbone", policy.backbone, framewise)  # the light per-frame nets
    narrowable = [n for n in framewise if BACKBONES[n].at_width is not None]
    _require(policy.width_mult == 1.0 or BACKBONES[policy.backbone].at_width is not None, "model.policy.width_mult",
             f"got {policy.width_mult}; {policy.backbone} has no width knob (one of {', '.join(narrowable)} has)")
    if policy.blocks is not None:
        total = _policy_blocks(policy.backbone)
        _require(1 <= policy.blocks <= total, "model.policy.blocks",
                 f"got {policy.blocks}; {policy.backbone} has blocks 1 to {total}")
    # What the policy may look at in place of a modality with a proxy: the proxy or the
    # modality itself (the table's rule, modalities.table.policy_source).
    check_choice("model.policy.flow_proxy", policy.flow_proxy, [MODALITIES["flow"].proxy, "flow"])
    check_choice("model.policy.joint", policy.joint, POLICY_JOINTS)
    check_choice("model.policy.allocation", policy.allocation, POLICY_ALLOCATIONS)
    if policy.audio_backbone is not None:
        check_choice("model.policy.audio_backbone", policy.audio_backbone, framewise)
    if policy.audio_blocks is not None and "audio" in model.modalities:
        audio = policy_extractor(model, "audio").backbone
        total = _policy_blocks(audio)
        _require(1 <= policy.audio_blocks <= total, "model.policy.audio_blocks",
                 f"got {policy.audio_blocks}; {audio} has blocks 1 to {total}")
    sources = {policy_source(m, policy.flow_proxy) for m in model.modalities}
    given = {s: policy.pretrained for s in sources} if isinstance(policy.pretrained, str) else policy.pretrained
    for source, weights in given.items():
        if not weights:
            continue
        check_choice("model.policy.pretrained", source, sorted(sources))
        _check_weights_source(f"model.policy.pretrained.{source}", weights, policy_extractor(model, source).backbone)
    looks_at = len(range(0, clip.frames_per_segment, 2))
    _require(1 <= policy.frames <= looks_at, "model.policy.frames",
             f"got {policy.frames}; the policy looks at every other frame of the segment's "
             f"{clip.frames_per_segment} (data.clip.frames_per_segment), so 1 to {looks_at}")
    for key in ("resolution", "joint_dim", "hidden_size"):
        _require(getattr(policy, key) >= 1, f"model.policy.{key}", f"got {getattr(policy, key)}; expected 1 or more")

    check_choice("train.precision", train.precision, PRECISIONS)
    check_choice("train.loss", train.loss, LOSSES)
    check_choice("train.unimodal.audio_window", train.unimodal.audio_window, AUDIO_WINDOWS)
    check_choice("train.adamml.frozen_mode", train.adamml.frozen_mode, FROZEN_MODES)
    check_choice("train.adamml.val_decisions", train.adamml.val_decisions, VAL_DECISIONS)
    _require(train.loss != "bce" or data.multi_label, "train.loss",
             "bce needs a multi-label dataset (data.multi_label: true)")
    unknown = sorted(set(train.unimodal.modality_lr) - set(model.modalities))
    _require(not unknown, "train.unimodal.modality_lr",
             f"no modality {', '.join(map(repr, unknown))} in model.modalities ({', '.join(model.modalities)})")
    bad = {m: v for m, v in train.unimodal.modality_lr.items() if not v > 0}
    _require(not bad, "train.unimodal.modality_lr", f"got {bad}; expected positive rates")
    segs = train.unimodal.train_segments
    _require(segs is None or segs >= 1, "train.unimodal.train_segments",
             f"got {segs}; expected 1 or more (or null: data.clip.num_segments)")
    segs = train.unimodal.val_segments
    _require(segs is None or segs >= 1, "train.unimodal.val_segments",
             f"got {segs}; expected 1 or more (or null: data.eval_segments)")
    _require(train.batch_size >= 1, "train.batch_size", f"got {train.batch_size}; expected 1 or more")
    _require(train.eval_every >= 0, "train.eval_every", f"got {train.eval_every}; expected 0 or more")
    stages = {"unimodal": train.unimodal, "fusion": train.fusion, "adamml": train.adamml}
    for stage, section in stages.items():
        for key in ("epochs", "warmup_epochs", "finetune_epochs", "policy_pretrain_epochs", "patience"):
            if hasattr(section, key):
                value = getattr(section, key)
                _require(value >= 0, f"train.{stage}.{key}", f"got {value}; expected 0 or more")
        for key in ("lr", "head_lr", "policy_lr", "policy_pretrain_lr"):
            if hasattr(section, key):
                value = getattr(section, key)
                _require(value > 0, f"train.{stage}.{key}", f"got {value}; expected a positive rate")
        steps = getattr(section, "lr_steps", [])
        _require(steps == sorted(steps) and all(s > 0 for s in steps), f"train.{stage}.lr_steps",
                 f"got {steps}; expected positive epochs in increasing order")
    adamml = train.adamml
    _require(adamml.alternate_every >= 1, "train.adamml.alternate_every", f"got {adamml.alternate_every}; expected 1 or more")
    _require(adamml.temperature > 0, "train.adamml.temperature", f"got {adamml.temperature}; expected > 0")
    _require(0 < adamml.temperature_decay <= 1, "train.adamml.temperature_decay",
             f"got {adamml.temperature_decay}; expected 0 < decay <= 1")
    missing = [m for m in model.modalities if m not in adamml.cost_weights]
    _require(not missing, "train.adamml.cost_weights",
             f"no weight for {', '.join(missing)}; every modality in model.modalities needs one")
    negative = [m for m, w in adamml.cost_weights.items() if w < 0]
    _require(not negative, "train.adamml.cost_weights", f"negative weight for {', '.join(negative)}")
    _require(adamml.gamma >= 0, "train.adamml.gamma", f"got {adamml.gamma}; expected 0 or more")
    _require(adamml.budget is None or 0 < adamml.budget <= 1, "train.adamml.budget",
             f"got {adamml.budget}; expected a fraction of weighted fusion's GFLOPs, 0 < budget <= 1")
    _require(adamml.budget_step > 0, "train.adamml.budget_step", f"got {adamml.budget_step}; expected more than 0")


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a config (a file or a shipped name; its ``base:`` chain merged), apply overrides
    and check the result whole (``check_config``)."""
    data: dict = {}
    source = "<defaults>"
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        source = str(path)
        data = read_config_file(path)
    data = apply_overrides(data, overrides or [])
    try:
        cfg = _from_dict(ExperimentConfig, data, "")
        check_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
