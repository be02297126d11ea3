"""The recipe's three stages as functions: unimodal networks, fusion baselines, AdaMML.

Each stage writes its folder of ``<train.output_dir>`` (the layout is
:mod:`adamml.runtime.runs`). Later stages initialise
their recognition networks from ``unimodal_<modality>/best.pt``, as the reference's
``train_adamml.py --unimodality_pretrained`` does (docs/method.md, "Training recipe").
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from adamml.config import ExperimentConfig, ModelConfig, to_dict
from adamml.data.datasets import build_datasets
from adamml.data.loader import make_loader, set_loader_epoch
from adamml.models.adamml import build_adamml
from adamml.models.build import input_modalities, load_unimodal, unimodal_model_config
from adamml.models.flops import segment_costs
from adamml.models.multimodal import build_multimodal
from adamml.runtime import runs
from adamml.runtime.checkpoint import load_checkpoint
from adamml.runtime.distributed import Runtime, per_process_batch
from adamml.training.budget import BudgetController
from adamml.training.driver import fit
from adamml.training.engine import (
    StepResult,
    Task,
    Temperature,
    adamml_step,
    make_scaler,
    multistep_lr,
    seed_everything,
    segment_loss_step,
    set_learning_rates,
    train_one_epoch,
    wrap_distributed,
)
from adamml.training.hooks import BudgetHook, PlateauStop
from adamml.training.schedule import Phase, adamml_schedule, plain_schedule


def stage_dir(cfg: ExperimentConfig, kind: str, name: str | None = None) -> Path:
    """This config's folder for a stage (see :mod:`adamml.runtime.runs`)."""
    if kind == "fusion":
        name = name or cfg.model.fusion
    return runs.stage_dir(cfg.train.output_dir, kind, name)


def load_recognition_from_unimodal(recognition: nn.ModuleDict, cfg: ExperimentConfig, *, required: bool = False) -> list[str]:
    """Copy stage-1 weights into each recognition network; returns the modalities loaded."""
    loaded = []
    for modality in recognition:
        path = stage_dir(cfg, "unimodal", modality) / runs.BEST
        if not path.exists():
            message = f"{path}: no stage-1 checkpoint for {modality}; its network starts from scratch"
            if required:
                raise FileNotFoundError(message + " (run `adamml train --stage unimodal` first)")
            warnings.warn(message, stacklevel=2)
            continue
        load_unimodal(recognition, modality, path, state=load_checkpoint(path)["model"])
        loaded.append(modality)
    return loaded


def init_policy_from_recognition(model: nn.Module) -> list[str]:
    """Start each policy feature extractor from the stage-1 network of its input, where the
    architectures match. Extractors that started from ``model.policy.pretrained`` are left
    alone (the reference starts every extractor, audio included, from ImageNet: set
    ``model.policy.pretrained`` for that). Returns what was copied."""
    copied = []
    for source, extractor in model.policy.extractors.items():
        if source not in model.recognition or source in model.policy.pretrained_sources:
            continue
        target = extractor.state_dict()
        donor = model.recognition[source].state_dict()
        if target and all(k in donor and donor[k].shape == v.shape for k, v in target.items()):
            extractor.load_state_dict({k: donor[k] for k in target})
            copied.append(source)
    return copied


class _ExtractorClassifier(nn.Module):
    """A policy feature extractor with a temporary linear head: segment scores averaged per
    video. The head is thrown away after pre-training."""

    def __init__(self, policy: nn.Module, source: str, num_classes: int):
        super().__init__()
        self.source = source
        self.extractor = policy.extractors[source]
        self.head = nn.Linear(self.extractor.output_dim, num_classes)
        self._policy_inputs = policy.policy_inputs  # not a submodule: only its extractor trains

    def forward(self, batch: dict) -> torch.Tensor:
        x = self._policy_inputs(batch)[self.source]
        b, k = x.shape[:2]
        return self.head(self.extractor(x.flatten(0, 1))).view(b, k, -1).mean(dim=1)


def _extractor_pretrain_task(policy: nn.Module, source: str, cfg: ExperimentConfig, device: torch.device) -> Task:
    model = _ExtractorClassifier(policy, source, cfg.model.num_classes).to(device)
    lr = cfg.train.adamml.policy_pretrain_lr

    def step(net: nn.Module, batch: dict, phase: Phase) -> StepResult:
        logits = net(batch)
        return StepResult(loss=torch.nn.functional.cross_entropy(logits, batch["label"]), logits=logits)

    return Task(
        kind="policy_pretrain",
        model=model,
        modalities=[source],
        step=step,
        make_optimizers=lambda phase: {"all": torch.optim.Adam(model.parameters(), lr=lr)},
        phase_lrs=lambda phase: {"all": lr},
    )


def pretrain_policy_extractors(model: nn.Module, cfg: ExperimentConfig, train_set, runtime: Runtime, *, skip: list[str]) -> dict[str, float]:
    """Teach the policy's other feature extractors the task before the policy learns to decide.

    The reference starts them from ImageNet-trained MobileNetV2s; no weights can be downloaded
    here, and a randomly initialised extractor gives the policy almost the same features for
    every input, so it cannot tell an informative segment from an occluded one. A few epochs
    of plain classification (a temporary linear head on the extractor's features, segment
    scores averaged per video) are our stand-in, run by the training loop of every stage.
    Returns the last epoch's training accuracy per source.
    ``train.adamml.policy_pretrain_epochs: 0`` turns it off.
    """
    epochs = cfg.train.adamml.policy_pretrain_epochs
    accuracy: dict[str, float] = {}
    if epochs <= 0:
        return accuracy
    tcfg = cfg.train
    loader = make_loader(train_set, per_process_batch(tcfg.batch_size, runtime.world_size), runtime, train=True, seed=tcfg.seed, num_workers=cfg.data.num_workers)
    policy = model.policy.to(runtime.device)
    scaler = make_scaler(runtime, tcfg.precision)
    for source in policy.extractors:
        if source in skip:
            continue
        task = _extractor_pretrain_task(policy, source, cfg, runtime.device)
        optimizers = task.make_optimizers(Phase("pretrain", "all", 0, epochs))
        for epoch in range(epochs):
            phase = Phase("pretrain", "all", epoch, epochs)
            seed_everything(tcfg.seed * 1009 + 104_729 + epoch)
            set_learning_rates(task, phase, optimizers)
            set_loader_epoch(loader, epoch, tcfg.seed + 1)
            title = f"policy extractor {source} {epoch + 1}/{epochs}"
            stats = train_one_epoch(
                task, wrap_distributed(task.model, runtime), loader, phase, optimizers, scaler, runtime,
                precision=tcfg.precision, multi_label=cfg.data.multi_label, max_steps=tcfg.max_steps_per_epoch,
                progress=title if runtime.is_main and tcfg.progress else None,
            )
            accuracy[source] = stats.accuracy
            if runtime.is_main:
                print(f"[adamml] policy extractor '{source}' pre-training epoch {epoch + 1}/{epochs}: "
                      f"train acc {100 * accuracy[source]:.1f}%", flush=True)
    return accuracy


def _will_resume(cfg: ExperimentConfig, kind: str, name: str | None, resume: bool) -> bool:
    """Stage-1 weights seed a new run; a resumed run already holds its own."""
    return resume and (stage_dir(cfg, kind, name) / runs.LAST).exists()


def _sgd(params, cfg: ExperimentConfig, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)


def _plain_task(kind: str, model: nn.Module, model_cfg: ModelConfig, cfg: ExperimentConfig, base_lr: float,
                milestones: list[int], head_lr: float | None = None) -> Task:
    def make_optimizers(phase: Phase) -> dict[str, torch.optim.Optimizer]:
        groups = [{"params": [p for p in model.recognition.parameters() if p.requires_grad], "lr_scale": 1.0}]
        head = [p for p in model.fusion.parameters() if p.requires_grad]
        if head:
            groups.append({"params": head, "lr_scale": (head_lr or base_lr) / base_lr})
        return {"all": _sgd(groups, cfg, base_lr)}

    def phase_lrs(phase: Phase) -> dict[str, float]:
        return {"all": multistep_lr(base_lr, milestones, phase.block_epoch)}

    return Task(
        kind=kind,
        model=model,
        modalities=list(model.modalities),
        step=segment_loss_step(cfg.data.multi_label, cfg.train.loss),
        make_optimizers=make_optimizers,
        phase_lrs=phase_lrs,
        model_cfg=model_cfg,
    )


def train_unimodal(cfg: ExperimentConfig, modality: str, runtime: Runtime, *, resume: bool = False, fault_after_steps: int | None = None) -> dict:
    model_cfg = unimodal_model_config(cfg.model, modality)
    # The reference trains and validates each unimodal network on one clip per video
    # (train.unimodal.train_segments, train.unimodal.val_segments).
    train_set, val_set, class_names = build_datasets(
        cfg, modalities=[modality], train_segments=cfg.train.unimodal.train_segments,
        audio_window=cfg.train.unimodal.audio_window, val_segments=cfg.train.unimodal.val_segments,
    )
    seed_everything(cfg.train.seed)  # the initial weights are part of a reproducible run
    model = build_multimodal(model_cfg, cfg.data.clip)
    plateau = None
    if cfg.train.unimodal.patience > 0:
        # Patience runs once the network beats chance clearly (top-1 above 2 / classes). The
        # hook may take an lr step early; the task reads its rates from the hook's list.
        floor = 0.0 if cfg.data.multi_label else 2.0 / max(1, len(class_names))
        plateau = PlateauStop(cfg.train.unimodal.patience, floor, cfg.train.unimodal.lr_steps)
    milestones = plateau.milestones if plateau else list(cfg.train.unimodal.lr_steps)
    task = _plain_task("unimodal", model, model_cfg, cfg, cfg.train.unimodal.lr_for(modality), milestones)
    task.hooks = plateau
    return fit(
        task, plain_schedule(cfg.train.unimodal.epochs), cfg, train_set, val_set, runtime,
        stage_dir(cfg, "unimodal", modality), resume=resume, extra_state={"model_config": to_dict(model_cfg), "class_names": class_names},
        fault_after_steps=fault_after_steps,
    )


def train_fusion(cfg: ExperimentConfig, method: str, runtime: Runtime, *, resume: bool = False) -> dict:
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.fusion = method
    train_set, val_set, class_names = build_datasets(cfg, modalities=list(model_cfg.modalities))
    seed_everything(cfg.train.seed)
    model = build_multimodal(model_cfg, cfg.data.clip, fusion=method)
    if not _will_resume(cfg, "fusion", method, resume):
        load_recognition_from_unimodal(model.recognition, cfg)
    task = _plain_task("fusion", model, model_cfg, cfg, cfg.train.fusion.lr, [], head_lr=cfg.train.fusion.head_lr)
    return fit(
        task, plain_schedule(cfg.train.fusion.epochs), cfg, train_set, val_set, runtime,
        stage_dir(cfg, "fusion", method), resume=resume,
        extra_state={"model_config": to_dict(model_cfg), "class_names": class_names},
    )


def adamml_task(model: nn.Module, cfg: ExperimentConfig) -> Task:
    tcfg = cfg.train.adamml
    modalities = list(cfg.model.modalities)
    missing = [m for m in modalities if m not in tcfg.cost_weights]
    if missing:
        raise ValueError(f"train.adamml.cost_weights has no weight for {', '.join(missing)}")
    weights = torch.tensor([tcfg.cost_weights[m] for m in modalities], dtype=torch.float32)
    temperature = Temperature(tcfg.temperature, tcfg.temperature_decay)
    hooks = None
    if tcfg.budget is not None:  # cost weights adapted to the budget instead (training/budget.py)

        costs = segment_costs(cfg.model, cfg.data.clip)
        controller = BudgetController(tcfg.budget, [costs[m] for m in modalities], costs["policy"], step=tcfg.budget_step)
        weights = controller.weights  # the step reads it; the controller updates it in place
        hooks = BudgetHook(controller, cfg.data.eval_segments or cfg.data.clip.num_segments, tcfg.calibrate,
                           allocation=cfg.model.policy.allocation)

    def set_trainable(phase: Phase) -> None:
        if phase.trains == "policy":
            model.freeze_recognition()
            model.unfreeze_policy()
        else:
            model.freeze_policy()
            model.unfreeze_recognition()

    def set_modes(phase: Phase) -> None:
        # The frozen side only supplies logits or decisions; "eval" stops its dropout and its
        # batch-norm statistics, "train" (the reference) leaves both on. Sampling follows
        # model.training either way, so a frozen policy keeps drawing decisions.
        if tcfg.frozen_mode == "eval":
            (model.recognition if phase.trains == "policy" else model.policy).eval()

    def make_optimizers(phase: Phase) -> dict[str, torch.optim.Optimizer]:
        fusion_params = list(model.fusion.parameters())
        fusion_ids = {id(p) for p in fusion_params}
        recognition = [p for p in model.recognition_parameters() if id(p) not in fusion_ids]
        groups = [{"params": recognition, "lr_scale": 1.0}]
        if fusion_params:
            groups.append({"params": fusion_params, "lr_scale": tcfg.head_lr / tcfg.lr})
        return {
            "recognition": _sgd(groups, cfg, tcfg.lr),
            "policy": torch.optim.Adam(
                [
                    # The feature extractors start from trained networks (or are big and
                    # random): a tenth of the rate keeps Adam from wiping them out early.
                    {"params": list(model.policy.extractors.parameters()), "lr_scale": tcfg.policy_extractor_lr_scale},
                    {"params": [p for n, p in model.policy.named_parameters() if not n.startswith("extractors.")], "lr_scale": 1.0},
                ],
                lr=tcfg.policy_lr, weight_decay=cfg.train.weight_decay,
            ),
        }

    def phase_lrs(phase: Phase) -> dict[str, float]:
        milestones = tcfg.lr_steps if phase.block == "alternate" else []
        return {
            "recognition": multistep_lr(tcfg.lr, milestones, phase.block_epoch),
            "policy": multistep_lr(tcfg.policy_lr, milestones, phase.block_epoch),
        }

    return Task(
        kind="adamml",
        model=model,
        modalities=modalities,
        step=adamml_step(weights, tcfg.gamma, cfg.data.multi_label, temperature, cfg.train.loss, tcfg.guidance),
        make_optimizers=make_optimizers,
        phase_lrs=phase_lrs,
        set_trainable=set_trainable,
        set_modes=set_modes,
        model_cfg=cfg.model,
        temperature=temperature,
        hooks=hooks,
    )


def train_adamml(cfg: ExperimentConfig, runtime: Runtime, *, resume: bool = False, fault_after_steps: int | None = None) -> dict:
    train_set, val_set, class_names = build_datasets(cfg, modalities=input_modalities("adamml", cfg.model))
    seed_everything(cfg.train.seed)
    model = build_adamml(cfg.model, cfg.data.clip)
    if not _will_resume(cfg, "adamml", None, resume):
        load_recognition_from_unimodal(model.recognition, cfg)
        initialised = init_policy_from_recognition(model)
        skip = initialised + list(model.policy.pretrained_sources)
        pretrain_policy_extractors(model, cfg, train_set, runtime, skip=skip)
    return fit(
        adamml_task(model, cfg), adamml_schedule(cfg.train.adamml), cfg, train_set, val_set, runtime,
        stage_dir(cfg, "adamml"), resume=resume,
        extra_state={"model_config": to_dict(cfg.model), "class_names": class_names}, fault_after_steps=fault_after_steps,
    )


def run_recipe(cfg: ExperimentConfig, runtime: Runtime, *, stage: str = "all", modality: str | None = None,
               fusion: str | None = None, resume: bool = False) -> dict[str, dict]:
    """Run one stage, or the whole recipe in order (stage="all")."""
    results: dict[str, dict] = {}
    if stage in ("unimodal", "all"):
        for m in [modality] if modality else cfg.model.modalities:
            results[f"unimodal_{m}"] = train_unimodal(cfg, m, runtime, resume=resume)
    if stage in ("fusion", "all"):
        method = fusion or cfg.model.fusion
        results[f"fusion_{method}"] = train_fusion(cfg, method, runtime, resume=resume)
    if stage in ("adamml", "all"):
        results["adamml"] = train_adamml(cfg, runtime, resume=resume)
    return results
