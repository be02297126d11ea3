"""The stage driver: runs a schedule of epochs for a task, validates, keeps checkpoints.

It runs the same under ``python`` and ``torchrun``: a distributed sampler with ``set_epoch``,
one checkpoint dict per epoch, the epoch list of ``schedule.py`` so a killed run resumes at the
next epoch with identical results (every epoch reseeds from (seed, epoch), so nothing depends
on what ran before; the task's temperature, the optimisers and the gradient scaler come back
from the checkpoint). Two small functions hold the policy of a run: :func:`validation_due`
(which epochs are validated) and :func:`is_better` (which validated epoch is ``best.pt``).
"""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adamml.config import ExperimentConfig, to_dict
from adamml.config_files import save_config
from adamml.data.loader import make_loader, set_loader_epoch
from adamml.errors import AdamMLError
from adamml.runtime import runs
from adamml.runtime.checkpoint import load_checkpoint, rng_state, save_checkpoint
from adamml.runtime.distributed import (
    Runtime,
    barrier,
    broadcast_buffers,
    per_process_batch,
    sync_batchnorm,
)
from adamml.runtime.lock import hold_folder
from adamml.training.engine import (
    Task,
    TrainingInterrupted,
    evaluate,
    make_scaler,
    seed_everything,
    set_learning_rates,
    train_one_epoch,
    wrap_distributed,
)
from adamml.training.schedule import Phase, validates
from adamml.training.schedule import validation_due as schedule_validation_due


class EpochLogger:
    """One CSV row per epoch, and TensorBoard scalars (``train.tensorboard``: None when
    tensorboard is installed, True requires it, False never)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool | None = None):
        self.path = run_dir / "log.csv"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard is not False:
            try:
                # tensorboard is optional and slow to import: only for a run that logs to it
                from torch.utils.tensorboard import SummaryWriter
            except Exception as exc:  # tensorboard not installed: CSV only, unless asked for
                if tensorboard:
                    raise AdamMLError(
                        "train.tensorboard is true but TensorBoard is not installed "
                        f"({exc}): pip install 'adamml[tensorboard]'"
                    ) from exc
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, row: dict, step: int) -> None:
        if not self.enabled:
            return
        rows, fields = [], list(row)
        if self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fields = list(reader.fieldnames or [])
        if set(row) - set(fields) or not self.path.exists():
            # A column appears (a validated epoch after unvalidated ones): rewrite the file
            # under the union of the columns, so every value stays under its own header.
            fields += [k for k in row if k not in fields]
            with self.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields, restval="")
                writer.writeheader()
                writer.writerows(rows + [row])
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields, restval="").writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Each epoch's (and process's) random stream: a function of these only."""
    return seed * 1009 + epoch * 7919 + rank


def validation_due(cfg: ExperimentConfig, schedule: list[Phase], epoch: int) -> bool:
    """Validate every ``train.eval_every``-th (0: never) of the epochs that may be validated
    (stage 3: not the warm-up, and an alternating epoch after its policy pass, as the
    reference; ``schedule.validates``), and after the last one."""
    return schedule_validation_due(schedule, epoch, cfg.train.eval_every)


def selection_score(metrics: dict, task: Task | None = None) -> float:
    """What ranks checkpoints: the validation score (top-1, or mAP for multi-label sets), or
    the task's hooks' rule (training to a budget: the score within the budget)."""
    if not metrics:
        return -math.inf
    if task is not None and task.hooks is not None:
        return task.hooks.selection_score(metrics)
    return metrics.get("score", -math.inf)


def is_better(metrics: dict, best: float, task: Task | None = None) -> bool:
    """Whether the latest validation beats the best so far (then it becomes ``best.pt``)."""
    return selection_score(metrics, task) > best


@dataclass
class RunState:
    """What the driver carries from epoch to epoch (and back from ``last.pt``)."""

    epoch: int = 0  # epochs done
    best: float = -math.inf
    best_alternate: float = -math.inf  # stage 3: the best alternating epoch (the fine-tune's start)
    best_record: dict = field(default_factory=dict)  # the kept epoch's score, GFLOPs, selection rates
    metrics: dict = field(default_factory=dict)  # the latest validation
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    optimizer_block: str | None = None  # the schedule block the optimisers belong to
    stopped: bool = False  # the task's hooks ended the stage early (a validation plateau)


class RunFolderError(AdamMLError, RuntimeError):
    """A stage folder holds another run's results, or a resume would mix two runs."""


# What a stage's earlier run leaves that a new run would overwrite or append to.
_RESULTS = (runs.LAST, runs.BEST, runs.BEST_ALTERNATE, runs.LOG)
# Settings that change nothing a stage computes: a resume may differ in these.
_RESUME_FREE = {"name", "description", "train.output_dir", "train.progress", "data.num_workers"}


def holds_results(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an earlier run's checkpoints or log."""
    return any((Path(run_dir) / name).exists() for name in _RESULTS)


def run_stage_folders(cfg: ExperimentConfig, stage: str = "all", modality: str | None = None,
                      fusion: str | None = None) -> list[Path]:
    """The stage folders a ``run_recipe`` call with these arguments writes, in order."""
    out = cfg.train.output_dir
    folders = []
    if stage in ("unimodal", "all"):
        folders += [runs.stage_dir(out, "unimodal", m) for m in ([modality] if modality else cfg.model.modalities)]
    if stage in ("fusion", "all"):
        folders.append(runs.stage_dir(out, "fusion", fusion or cfg.model.fusion))
    if stage in ("adamml", "all"):
        folders.append(runs.stage_dir(out, "adamml"))
    return folders


def claim_stage_folders(folders: list[Path], *, resume: bool, overwrite: bool, is_main: bool = True) -> list[str]:
    """Refuse to train into a stage folder holding an earlier run unless told what to do with it:
    ``resume`` continues it, ``overwrite`` moves it aside to ``<output>/replaced/<time>/``.
    Returns what was moved, as lines for the summary."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: continue the run, or start it again")
    taken = [f for f in folders if holds_results(f)]
    if not taken:
        return []
    if overwrite:
        lines = []
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for folder in taken:
            target = folder.parent / "replaced" / stamp / folder.name
            if is_main:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(folder), str(target))
            lines.append(f"--overwrite: the earlier {folder.name} moved to {target}")
        return lines
    if not resume:
        names = ", ".join(f.name for f in taken)
        raise RunFolderError(
            f"{taken[0].parent}: {names} already hold{'s' if len(taken) == 1 else ''} a run's results; "
            "pass --resume to continue it, or --overwrite to start again (the old folder is moved "
            "aside to replaced/), or choose another --output"
        )
    no_last = [f.name for f in taken if not (f / runs.LAST).exists()]
    if no_last:
        raise RunFolderError(
            f"{taken[0].parent}: --resume: {', '.join(no_last)} has results but no {runs.LAST} to continue "
            "from; pass --overwrite to start that stage again (the old folder is moved aside)"
        )
    return []


@contextmanager
def own_run_folder(cfg: ExperimentConfig, runtime: Runtime, *, stage: str = "all", modality: str | None = None,
                   fusion: str | None = None, resume: bool = False, overwrite: bool = False) -> Iterator[list[str]]:
    """Hold ``train.output_dir`` for one run (a second ``adamml train`` on it is refused) and
    settle its stage folders first (:func:`claim_stage_folders`); yields the summary lines."""


    with hold_folder(cfg.train.output_dir) if runtime.is_main else nullcontext():
        lines = claim_stage_folders(run_stage_folders(cfg, stage, modality, fusion), resume=resume,
                                    overwrite=overwrite, is_main=runtime.is_main)
        barrier()
        if runtime.is_main:
            for line in lines:
                print(f"[adamml] {line}", flush=True)
        yield lines


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and not name.endswith(
                ("cost_weights", "modality_lr", "backbones", "pretrained")):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def resume_differences(saved: dict, cfg: ExperimentConfig, saved_classes: list[str] | None,
                       classes: list[str] | None) -> list[str]:
    """What a resumed run would change against the run in ``last.pt``: its data's classes and
    its settings (the keys both configs hold, less those that change no result)."""
    found = []
    if saved_classes is not None and classes is not None and list(saved_classes) != list(classes):
        def show(names):
            names = list(names)
            return f"{len(names)} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"

        found.append(f"the data's classes: the run was trained on {show(saved_classes)}, the data has {show(classes)}")
    old, new = _flatten(saved or {}), _flatten(to_dict(cfg))
    for key in old:
        if key in new and key not in _RESUME_FREE and old[key] != new[key]:
            found.append(f"{key}: {old[key]!r} then, {new[key]!r} now")
    return found


def _resume(task: Task, schedule: list[Phase], state: dict, scaler: torch.amp.GradScaler) -> RunState:
    task.model.load_state_dict(state["model"])
    if "task" in state:
        task.load_state_dict(state["task"])
    elif task.temperature is not None and "temperature" in state:  # checkpoints before "task"
        task.temperature.value = float(state["temperature"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    run = RunState(
        epoch=state["epoch"], best=state.get("best", -math.inf), metrics=state.get("metrics") or {},
        stopped=bool(state.get("stopped", False)),
        best_alternate=state.get("best_alternate", -math.inf), best_record=state.get("best_record", {}),
    )
    # (checkpoints written before Phase.segment became Phase.block say "optimizer_segment")
    saved_block = state.get("optimizer_block", state.get("optimizer_segment"))
    if run.epoch < len(schedule) and saved_block == schedule[run.epoch].block:
        phase = schedule[run.epoch]
        task.set_trainable(phase)
        run.optimizers = task.make_optimizers(phase)
        for name, opt in run.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        run.optimizer_block = phase.block
    return run


def _checkpoint(task: Task, run: RunState, scaler: torch.amp.GradScaler, cfg: ExperimentConfig, extra_state: dict | None) -> dict:
    return {
        "kind": task.kind,
        "epoch": run.epoch,
        "model": task.model.state_dict(),
        "optimizers": {k: o.state_dict() for k, o in run.optimizers.items()},
        "optimizer_block": run.optimizer_block,
        "task": task.state_dict(),
        "scaler": scaler.state_dict(),
        "best": run.best,
        "best_alternate": run.best_alternate,
        "best_record": run.best_record,
        "metrics": run.metrics,
        "stopped": run.stopped,
        "config": to_dict(cfg),
        "rng": rng_state(),
        **(extra_state or {}),
    }


def _short(value):
    return round(value, 5) if isinstance(value, float) else value


def _reload_best_alternate(task: Task, run_dir: Path, runtime: Runtime) -> None:
    """The fine-tune starts from the best alternating epoch, weights and temperature, as the
    reference's; without one (alternating epochs not validated) it goes on from the last."""
    barrier()  # rank 0 wrote the file
    path = run_dir / runs.BEST_ALTERNATE
    if not path.exists():
        if runtime.is_main:
            print(f"{path}: no validated alternating epoch; the fine-tune goes on from the last one", flush=True)
        return
    state = load_checkpoint(path)
    task.model.load_state_dict(state["model"])
    tau = state.get("trained_temperature")
    if task.temperature is not None and tau is not None:
        task.temperature.value = float(tau)
    if runtime.is_main:
        print(f"fine-tune starts from {path} (epoch {state['epoch']}, temperature {tau})", flush=True)


def fit(
    task: Task,
    schedule: list[Phase],
    cfg: ExperimentConfig,
    train_set,
    val_set,
    runtime: Runtime,
    run_dir: Path,
    *,
    resume: bool = False,
    extra_state: dict | None = None,
    fault_after_steps: int | None = None,
) -> dict:
    """Run ``schedule`` for ``task``; checkpoint ``run_dir/last.pt`` after every epoch and
    ``best.pt`` when a validation improves (or at the end, if none was kept).

    Returns the kept (best) epoch's record: its score, GFLOPs, selection rates and epoch
    (the last validation metrics if none was kept). ``fault_after_steps`` raises TrainingInterrupted
    after that many optimiser steps of this call (a kill, for tests: nothing is saved then).
    """
    tcfg = cfg.train
    run_dir = Path(run_dir)
    model = task.model.to(runtime.device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    scaler = make_scaler(runtime, tcfg.precision)
    last_path = run_dir / "last.pt"
    run = RunState()
    resuming = resume and last_path.exists()
    if not resuming:
        claim_stage_folders([run_dir], resume=resume, overwrite=False)
        if resume and runtime.is_main:
            print(f"{run_dir}: no {runs.LAST} to resume from; the stage starts at epoch 1", flush=True)
    if resuming:
        state = load_checkpoint(last_path)
        differences = resume_differences(state.get("config"), cfg, state.get("class_names"),
                                         (extra_state or {}).get("class_names"))
        if differences:
            raise RunFolderError(
                f"{last_path}: --resume would continue this run with other settings: {'; '.join(differences)}. "
                "Rerun with the run's settings (its config.yaml), or pass --overwrite to start the stage "
                "again (the old folder is moved aside)"
            )
        run = _resume(task, schedule, state, scaler)
        if runtime.is_main:
            print(f"resumed {last_path} at epoch {run.epoch}/{len(schedule)}", flush=True)
        if run.stopped:
            if runtime.is_main:
                print(f"{last_path}: stage stopped at epoch {run.epoch} on a validation plateau", flush=True)
            return run.best_record or run.metrics
    if runtime.is_main and not resuming:  # a resumed run keeps the config it was started with
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = EpochLogger(run_dir, runtime.is_main, tcfg.tensorboard)
    loader_args = {"runtime": runtime, "seed": tcfg.seed, "num_workers": cfg.data.num_workers}
    batch = per_process_batch(tcfg.batch_size, runtime.world_size)  # train.batch_size is global
    train_loader = make_loader(train_set, batch, train=True, **loader_args)
    val_loader = make_loader(val_set, batch, train=False, **loader_args) if val_set is not None else None
    if runtime.distributed and tcfg.sync_bn and not sync_batchnorm(model, runtime.device, runtime.distributed):
        if runtime.is_main:
            print("train.sync_bn: PyTorch synchronises batch norm on GPUs only; "
                  "each CPU process keeps its own statistics", flush=True)
    steps_done = 0

    def count_step() -> None:
        nonlocal steps_done
        steps_done += 1
        if fault_after_steps is not None and steps_done >= fault_after_steps:
            raise TrainingInterrupted(f"fault injected after {steps_done} steps")

    for epoch in range(run.epoch, len(schedule)):
        phase = schedule[epoch]
        if phase.block == "finetune" and phase.block_epoch == 0:
            _reload_best_alternate(task, run_dir, runtime)
        seed_everything(epoch_seed(tcfg.seed, epoch, runtime.rank))
        task.set_trainable(phase)
        if phase.block != run.optimizer_block:
            run.optimizers = task.make_optimizers(phase)
            run.optimizer_block = phase.block
        lrs = set_learning_rates(task, phase, run.optimizers)
        set_loader_epoch(train_loader, epoch, tcfg.seed)
        started = time.time()
        title = f"{task.kind} {epoch + 1}/{len(schedule)} {phase.block}:{phase.trains}"
        stats = train_one_epoch(
            task, wrap_distributed(model, runtime), train_loader, phase, run.optimizers, scaler, runtime,
            precision=tcfg.precision, multi_label=cfg.data.multi_label, max_steps=tcfg.max_steps_per_epoch,
            progress=title if runtime.is_main and tcfg.progress else None, after_step=count_step,
        )
        row: dict = {
            "epoch": epoch + 1,
            "block": phase.block,
            "trains": phase.trains,
            "lr": ",".join(f"{k}={v:.2g}" for k, v in lrs.items()),
            **stats.row(),
        }
        trained_temperature = None
        if task.temperature is not None:
            trained_temperature = task.temperature.value
            row["temperature"] = round(trained_temperature, 5)
        task.end_epoch(phase)
        validated = val_loader is not None and task.model_cfg is not None and validation_due(cfg, schedule, epoch)
        metrics: dict = {}
        if validated:
            broadcast_buffers(task.model)  # every shard scored with rank 0's (the saved) model
            hooks = task.hooks
            run.metrics = hooks.validate(task, val_loader, cfg, runtime) if hooks else evaluate(task, val_loader, cfg, runtime)
            row.update({f"val_{k}": v for k, v in run.metrics.items() if isinstance(v, int | float)})
            if validates(phase):  # only such epochs may be kept (never the warm-up)
                metrics = run.metrics
        if task.hooks is not None:  # may add log columns; True ends the stage (before the cap)
            run.stopped = task.hooks.after_epoch(phase, run.metrics if validated else {}, row) and epoch < len(schedule) - 1
        row["seconds"] = round(time.time() - started, 2)
        improved = is_better(metrics, run.best, task)
        run.best = max(run.best, selection_score(metrics, task))
        improved_alternate = phase.block == "alternate" and is_better(metrics, run.best_alternate, task)
        if phase.block == "alternate":
            run.best_alternate = max(run.best_alternate, selection_score(metrics, task))
        if improved:
            # What the kept model costs, beside what it scores.
            run.best_record = {"epoch": epoch + 1, "block": phase.block, "temperature": trained_temperature} | {
                k: v for k, v in metrics.items() if k in ("score", "gflops") or k.startswith(("selection_", "threshold_"))
            }
        run.epoch = epoch + 1
        if runtime.is_main:
            logger.log(row, epoch + 1)
            state = _checkpoint(task, run, scaler, cfg, extra_state)
            save_checkpoint(state, last_path)
            if improved or epoch == len(schedule) - 1 and not (run_dir / runs.BEST).exists():
                save_checkpoint(state, run_dir / runs.BEST)
            if improved_alternate:
                save_checkpoint(state | {"trained_temperature": trained_temperature}, run_dir / runs.BEST_ALTERNATE)
            print(f"[{task.kind}] " + " ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if improved:
                print(f"[{task.kind}] best " + " ".join(f"{k}={_short(v)}" for k, v in run.best_record.items()), flush=True)
        if run.stopped:
            if runtime.is_main:
                print(f"[{task.kind}] stopping after epoch {epoch + 1} of {len(schedule)}: the validation "
                      "score has stopped improving (train.unimodal.patience)", flush=True)
            break
    logger.close()
    # The kept checkpoint's figures (what evaluate and the summary report), not the last epoch's.
    return run.best_record or run.metrics
