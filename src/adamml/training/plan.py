"""``adamml train --plan``: the resolved recipe, printed before anything runs.

A run of the paper's configuration takes days on 8 GPUs; the plan shows what it will do
without reading data or building a network: per stage and epoch what trains and what is
frozen, the learning rate of every parameter group, the Gumbel temperature, the cost
weights, the batch each process gets, and where each stage starts from. It reads the same
functions the training loop does (``adamml_schedule``, ``temperature_plan``, the driver's
``validation_due`` for every stage, ``finetune_start``), so it cannot drift from it; and it
ends with this config's setting of every switch docs/fidelity.md names, beside the reference's.
"""

from __future__ import annotations

import copy

from adamml.config import ExperimentConfig
from adamml.modalities.table import policy_source
from adamml.models.backbones import is_torchvision, parse_torchvision_source, torchvision_sources
from adamml.models.policy import policy_extractor, policy_weight_sources
from adamml.runtime.distributed import per_process_batch
from adamml.runtime.runs import BEST, BEST_ALTERNATE
from adamml.training.driver import validation_due
from adamml.training.engine import multistep_lr
from adamml.training.schedule import (
    adamml_schedule,
    decays_temperature,
    finetune_start,
    plain_schedule,
    temperature_plan,
)

# The rows of docs/fidelity.md that have a config switch: (the row's "what", its keys, the
# reference's setting). ``--plan`` prints each with this config's values; a test holds the
# list and the document to each other.
REFERENCE_ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("Stage-3 validation", ("train.eval_every",), "1"),
    ("Fine-tune start", ("train.eval_every",), "from the best validated epoch"),
    ("Gumbel temperature", ("train.adamml.temperature", "train.adamml.temperature_decay"), "5.0 x 0.965"),
    ("Batch", ("train.batch_size",), "72, global"),
    ("Synchronised batch norm", ("train.sync_bn",), "true"),
    ("Learning-rate steps", ("train.adamml.lr_steps",), "[] (its schedulers have no effect)"),
    ("Fusion-weight learning rate", ("train.adamml.head_lr",), "0.001"),
    ("Policy extractor learning rate", ("train.adamml.policy_extractor_lr_scale",), "1.0"),
    ("Frozen side's batch norm and dropout", ("train.adamml.frozen_mode",), "train"),
    ("Validation decisions", ("train.adamml.val_decisions",), "sampled"),
    ("Precision", ("train.precision",), "32"),
    ("Stage 1 clips", ("train.unimodal.train_segments",), "1"),
    ("Stage 1 audio window", ("train.unimodal.audio_window",), "centre"),
    ("Stage 1 validation clips", ("train.unimodal.val_segments",), "1"),
    ("Losses on ActivityNet / FCVID", ("train.loss",), "ce"),
    ("Headline metric and selection score", ("data.metric",), "top1"),
    ("Policy pre-training", ("train.adamml.policy_pretrain_epochs",), "0"),
    ("Policy guidance", ("train.adamml.guidance",), "0"),
    ("Budget allocation", ("model.policy.allocation",), "threshold"),
    ("Late fusion", ("model.fusion_mode",), "reference"),
    ("Class-wise / FC fusion", ("model.fusion",), "weighted (class-wise and FC do not run)"),
    ("Recognition networks' start", ("model.pretrained",), "torchvision ImageNet"),
    ("Policy extractors' start", ("model.policy.pretrained", "model.policy.audio_backbone"),
     "ImageNet MobileNetV2 at 160x160, for every extractor"),
    ("ImageNet weights", ("model.pretrained", "model.policy.pretrained"), "downloaded at run time"),
    ("Policy joint head", ("model.policy.joint",), "reference"),
    ("First-conv inflation (flow, RGB difference, audio)", ("model.inflation",), "reference"),
    ("Test clips", ("data.clip.eval_positions",), "linspace"),
    ("Training crop", ("data.clip.train_crop",), "reference"),
    ("Crops of the visual inputs", ("data.clip.crops",), "independent"),
    ("Test crop", ("data.decode.short_side", "data.clip.crop_size"), "256, 224"),
    ("Frame rate", ("data.decode.fps",), "null (the source's own)"),
    ("Flow normalisation", ("data.clip.stack_norm",), "reference"),
    ("RGB-difference normalisation", ("data.clip.stack_norm",), "reference"),
]


def config_value(cfg: ExperimentConfig, key: str):
    """The value at a dotted key of ``cfg`` (``train.adamml.frozen_mode``)."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def show_value(value) -> str:
    """A config value as a YAML override would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def reference_lines(cfg: ExperimentConfig) -> list[str]:
    """One line per row of docs/fidelity.md with a switch: this config's setting, and the
    reference's."""
    lines = ["Against the reference (docs/fidelity.md: each row's switch, this config's setting; the reference's):"]
    for what, keys, reference in REFERENCE_ROWS:
        settings = ", ".join(f"{key}={show_value(config_value(cfg, key))}" for key in keys)
        lines.append(f"  {what}: {settings} (the reference: {reference})")
    return lines


def _validated_text(validated: list[int], epochs: list[int]) -> str:
    """Which of ``epochs`` (1-based) are validated, in a few words."""
    if not validated:
        return "not validated"
    if validated == epochs:
        return "validated each epoch"
    if len(validated) <= 4:
        return f"validated after epoch{'s' if len(validated) > 1 else ''} {', '.join(map(str, validated))}"
    steps = {b - a for a, b in zip(validated, validated[1:], strict=False)}
    if len(steps) == 1:
        return f"validated every {steps.pop()} epochs ({validated[0]}, {validated[1]}, ..., {validated[-1]})"
    return f"validated after epochs {validated[0]}, {validated[1]}, ..., {validated[-2]} and {validated[-1]}"


def describe_start(source: str | None) -> str:
    """Where a network starts, for the plan and the run summary: "random", a file, or
    torchvision weights with whether torch's hub cache holds them."""
    if not source:
        return "random"
    if not is_torchvision(source):
        return str(source)
    spec = parse_torchvision_source(source)
    held = "cached" if spec.cache_path.is_file() else f"not cached: {spec.cache_path} from {spec.url}"
    return f"{source} ({held})"


def _weights(cfg: ExperimentConfig, modality: str) -> str:
    return describe_start(cfg.model.pretrained.get(modality))


def without_torchvision_starts(cfg: ExperimentConfig) -> tuple[ExperimentConfig, list[str]]:
    """``--allow-random-start``: the config with every ``torchvision:`` start replaced by
    random weights, and the summary line that says which networks lost theirs."""

    named = torchvision_sources(cfg.model)
    if not named:
        return cfg, []
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    model.pretrained = {m: s for m, s in model.pretrained.items() if not is_torchvision(s)}
    if isinstance(model.policy.pretrained, str):
        model.policy.pretrained = "" if is_torchvision(model.policy.pretrained) else model.policy.pretrained
    else:
        model.policy.pretrained = {k: s for k, s in model.policy.pretrained.items() if not is_torchvision(s)}
    keys = ", ".join(named)
    return cfg, [f"starts: random weights (--allow-random-start) where the config names torchvision weights: {keys}"]


def start_lines(cfg: ExperimentConfig) -> list[str]:
    """One line on where every network of the recipe starts (run summary)."""
    nets = "; ".join(f"{m} {cfg.model.backbones[m]} from {_weights(cfg, m)}" for m in cfg.model.modalities)
    return [f"starts: {nets}; policy extractors: {_policy_starts(cfg)}; policy head {cfg.model.policy.joint}"]


def _extractor_backbone(cfg: ExperimentConfig, source: str) -> str | None:
    """The backbone of the policy's extractor for ``source``, or None when it is narrowed:
    then it cannot take a stage-1 network's weights. A cut one at full width takes that
    network's first blocks (as init_policy_from_recognition copies them)."""
    choice = policy_extractor(cfg.model, source)
    return choice.backbone if choice.own_audio or choice.width_mult == 1.0 else None


def _policy_starts(cfg: ExperimentConfig) -> str:
    sources = {policy_source(m, cfg.model.policy.flow_proxy) for m in cfg.model.modalities}
    given = policy_weight_sources(cfg.model)
    parts = []
    for source in sorted(sources):
        if source in given:
            parts.append(f"{source} from {describe_start(given[source])}")
        elif source in cfg.model.modalities and _extractor_backbone(cfg, source) == cfg.model.backbones.get(source):
            parts.append(f"{source} copied from the stage-1 {source} network")
        else:
            parts.append(f"{source} random")
    extra = ""
    if cfg.train.adamml.policy_pretrain_epochs:
        extra = f"; extractors not started otherwise pre-trained {cfg.train.adamml.policy_pretrain_epochs} epochs"
    return "; ".join(parts) + extra


def _ranges(values: list, first: int = 1) -> list[tuple[int, int, object]]:
    """[(from, to, value)] runs of equal values (1-based epochs)."""
    out: list[tuple[int, int, object]] = []
    for i, v in enumerate(values, start=first):
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i, v)
        else:
            out.append((i, i, v))
    return out


def format_plan(cfg: ExperimentConfig, nproc: int = 1) -> str:
    """The recipe of ``cfg`` on ``nproc`` processes, as text (raises on a batch that does
    not divide)."""
    t = cfg.train
    per = per_process_batch(t.batch_size, nproc)
    lines = [
        f"Recipe of {cfg.name}: {', '.join(cfg.model.modalities)} on {cfg.data.dataset}",
        f"  batch {t.batch_size} global = {per} per process x {nproc} process{'es' if nproc != 1 else ''}; "
        f"sync_bn {'on' if t.sync_bn and nproc > 1 else 'off'}"
        + (" (train.sync_bn is set; it applies under DDP)" if t.sync_bn and nproc == 1 else ""),
        f"  loss {t.loss}; fusion {cfg.model.fusion} ({cfg.model.fusion_mode}); output {t.output_dir}",
        "",
    ]
    u = t.unimodal
    clips = u.train_segments or cfg.data.clip.num_segments
    val_clips = u.val_segments or cfg.data.eval_segments or cfg.data.clip.num_segments
    lines.append(
        f"Stage 1, unimodal ({', '.join(cfg.model.modalities)}, each alone): {u.epochs} epochs SGD "
        f"momentum {t.momentum} wd {t.weight_decay}, {clips} clip{'s' if clips != 1 else ''} per training video, "
        f"validated on {val_clips} clip{'s' if val_clips != 1 else ''} per video"
    )
    for m in cfg.model.modalities:
        lines.append(f"  {m}: {cfg.model.backbones[m]}, starts from {_weights(cfg, m)}")
    if "audio" in cfg.model.modalities:
        where = ("near the video's centre (the middle eighth), as the reference" if u.audio_window == "centre"
                 else "at the clip's centre, the clip drawn as for any modality")
        lines.append(f"  audio windows for training drawn {where} (train.unimodal.audio_window: {u.audio_window})")
    rates = {m: u.lr_for(m) for m in cfg.model.modalities}
    # The driver's own decision (validation_due), epoch by epoch: train.eval_every holds here too.
    unimodal = plain_schedule(u.epochs)
    validated = [e + 1 for e in range(u.epochs) if validation_due(cfg, unimodal, e)]
    for a, b, lrs in _ranges([tuple(multistep_lr(r, u.lr_steps, e) for r in rates.values()) for e in range(u.epochs)]):
        said = f"lr {lrs[0]:g}" if len(set(lrs)) == 1 else "lr " + ", ".join(
            f"{m} {lr:g}" for m, lr in zip(rates, lrs, strict=True))
        inside = list(range(a, b + 1))
        checks = _validated_text([e for e in validated if a <= e <= b], inside)
        lines.append(f"  epochs {a}-{b}: {said}; everything trains; {checks}")
    f = t.fusion
    fusion = plain_schedule(f.epochs)
    fusion_checks = _validated_text([e + 1 for e in range(f.epochs) if validation_due(cfg, fusion, e)],
                                    list(range(1, f.epochs + 1)))
    lines += [
        "",
        f"Stage 2, fusion ({cfg.model.fusion}): {f.epochs} epochs SGD, recognition lr {f.lr:g}, "
        f"fusion head lr {f.head_lr:g}; starts from each stage-1 {BEST}; {fusion_checks}",
        "",
    ]
    a = t.adamml
    schedule = adamml_schedule(a)
    taus = temperature_plan(schedule, a.temperature, a.temperature_decay)
    decays = sum(decays_temperature(p) for p in schedule)
    alt_taus = [tau for p, tau in zip(schedule, taus, strict=True) if p.block == "alternate" and p.trains == "policy"]
    lines.append(
        f"Stage 3, AdaMML: {a.warmup_epochs} warm-up + {a.epochs} alternating + {a.finetune_epochs} fine-tune epochs; "
        f"starts from each stage-1 {BEST}; policy extractors: {_policy_starts(cfg)}"
    )
    p = cfg.model.policy
    head = ("reference: concatenation -> Linear -> ReLU -> Linear -> ReLU" if p.joint == "reference"
            else "adamml: per-source LayerNorm + projection, summed, ReLU -> Linear -> ReLU -> LayerNorm")
    lines.append(f"  policy head {head} ({p.joint_dim}) -> LSTMCell ({p.hidden_size}); "
                 f"first convolutions inflated {cfg.model.inflation}")
    if alt_taus:
        lines.append(
            f"  temperature {a.temperature:g} x {a.temperature_decay:g} after each alternating epoch: "
            f"{decays} decays, {alt_taus[0]:.3f} in the first policy epoch, {alt_taus[-1]:.2f} in the last"
        )
    lines.append(
        f"  recognition SGD (lr {a.lr:g}, fusion head {a.head_lr:g}); policy Adam (lr {a.policy_lr:g}, "
        f"extractors x{a.policy_extractor_lr_scale:g}); LR x0.1 at alternating epochs {a.lr_steps}"
    )
    header = f"  {'epoch':>5}  {'block':<9}  {'trains':<11}  {'frozen':<11}  {'learning rates':<44}  {'tau':>6}  {'loss':<46}  validated"
    lines += [header, "  " + "-" * (len(header) - 2)]
    weights = " ".join(f"{m}={a.cost_weights.get(m, 0):g}" for m in cfg.model.modalities)
    if a.budget is not None:  # the weights follow the budget's multiplier (training/budget.py)
        weights = f"weights adapted to budget {a.budget:g}"
    first_finetune = None
    for i, (phase, tau) in enumerate(zip(schedule, taus, strict=True), start=1):
        milestones = a.lr_steps if phase.block == "alternate" else []
        rec = multistep_lr(a.lr, milestones, phase.block_epoch)
        pol = multistep_lr(a.policy_lr, milestones, phase.block_epoch)
        if phase.trains == "policy":
            frozen, lrs = "recognition", f"policy {pol:g}, extractors {pol * a.policy_extractor_lr_scale:g}"
            loss = f"CE + efficiency ({weights}, gamma {a.gamma:g})" + (f" + {a.guidance:g} x guidance" if a.guidance else "")
        else:
            frozen = "policy"
            lrs = f"recognition {rec:g}, fusion head {rec * a.head_lr / a.lr:g}"
            loss = "CE"
        if phase.block == "finetune" and phase.block_epoch == 0:
            first_finetune = i
        tau_text = "best's" if phase.block == "finetune" else f"{tau:.3f}"
        lines.append(
            f"  {i:>5}  {phase.block:<9}  {phase.trains:<11}  {frozen:<11}  {lrs:<44}  {tau_text:>6}  {loss:<46}  "
            + ("yes" if validation_due(cfg, schedule, i - 1) else "no")
        )
    if first_finetune is not None:
        if finetune_start(schedule, t.eval_every) == "best alternating":
            lines.append(
                f"  fine-tune (epoch {first_finetune}) starts from the best validated alternating checkpoint "
                f"({BEST_ALTERNATE}): its weights and its temperature"
            )
        else:
            lines.append(
                f"  fine-tune (epoch {first_finetune}) goes on from the last alternating epoch: "
                "no alternating epoch is validated (train.eval_every)"
            )
    lines.append(
        "  validated: "
        + (f"every {t.eval_every}-th of the epochs that may be (after an alternating epoch's policy pass, "
           "each fine-tune epoch), and the last" if t.eval_every > 0 else "the stage's last epoch only")
        + f"; {BEST} is the best validated epoch (never the warm-up)"
        + (" within the budget" if a.budget is not None else "")
    )
    if a.budget is not None and a.calibrate:
        lines.append(f"  at each validation the policy's thresholds are fitted so that its cost on the validation "
                     f"split is {a.budget:g} x weighted fusion's; the epoch is scored and saved with them")
    decided = ("sampled (one seeded Gumbel draw per segment, as the reference)"
               if a.val_decisions == "sampled" and a.budget is None else "deterministic")
    frozen = ("stay in train mode (batch-norm statistics move, dropout on), as the reference"
              if a.frozen_mode == "train" else "are in eval mode")
    lines.append(f"  validation decisions {decided}; the frozen side's batch norm and dropout {frozen}")
    lines += ["", *reference_lines(cfg)]
    return "\n".join(lines)
