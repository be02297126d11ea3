"""What ``adamml train`` settles before the first epoch, so that ``--data ROOT`` is enough:

- the class count, from the data (a config's ``model.num_classes`` only binds the catalogue
  dataset it was written for);
- a validation split: the data's own, else a stratified, seeded part of train, recorded in
  ``<output_dir>/splits/``;
- the cache: videos not yet decoded with the config's decode settings are extracted first, in
  parallel, with progress; a video that fails is named and left out (the run's split lists in
  ``<output_dir>/splits/`` then say which videos it used);
- a short summary of these choices and why, printed and kept as ``<output_dir>/summary.txt``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

from adamml.config import ExperimentConfig
from adamml.data.cache import VideoCache
from adamml.data.catalog import DATASETS, discover, missing_evaluation_split, split_exists
from adamml.data.extract import default_workers, ensure_cached
from adamml.data.formats import DatasetError, DiscoveryWarning
from adamml.data.splits import VAL_FRACTION, carve_validation, write_split
from adamml.models.flops import segment_costs
from adamml.runtime.distributed import Runtime, barrier

SUMMARY_FILE = "summary.txt"


def _catalogue_name(cfg: ExperimentConfig) -> str | None:
    return cfg.data.dataset if cfg.data.dataset in DATASETS else None


def prepare_run(
    cfg: ExperimentConfig,
    runtime: Runtime,
    *,
    config_name: str = "",
    workers: int | None = None,
    progress: bool = True,
    log=lambda line: print(f"[adamml] {line}", flush=True),
) -> tuple[ExperimentConfig, list[str]]:
    """Resolve the data-dependent parts of ``cfg`` (returned as a new config) and extract what
    the cache lacks; returns the config and the summary lines. Every rank computes the same
    config; only rank 0 extracts, writes files and logs (each line as it is decided)."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data), model=dataclasses.replace(cfg.model))
    data = cfg.data
    if not data.root:
        raise DatasetError("no dataset given: pass --data ROOT (a folder with train/<class>/<video> ...)")
    root = Path(data.root)
    catalogue = _catalogue_name(cfg)
    out = Path(cfg.train.output_dir)
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if runtime.is_main:
            log(line)
    if config_name:
        why = f" ({cfg.description})" if cfg.description else ""
        say(f"config: {config_name}{why}")



    with warnings.catch_warnings(record=True) as noticed:  # told in the summary instead
        warnings.simplefilter("always", DiscoveryWarning)
        train, class_names = discover(root, data.train_split, catalogue)
        has_val = split_exists(root, data.val_split, catalogue)
        if has_val:
            val, class_names = discover(root, data.val_split, catalogue, class_names=class_names)
    for warning in noticed:
        if issubclass(warning.category, DiscoveryWarning):
            say(f"data: {warning.message}")
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    carved = False
    if catalogue is not None and not has_val:
        raise missing_evaluation_split(root, catalogue, data.val_split)
    if has_val:
        shared = sorted({str(e.path) for e in train} & {str(e.path) for e in val})
        if shared:
            say(f"data: WARNING: {len(shared)} video(s) are in both train and {data.val_split!r}, so validation "
                f"scores them after training on them: {', '.join(shared[:3])}{' ...' if len(shared) > 3 else ''}")
        val_note = f"{data.val_split!r} split of the data"
    else:
        train, val = carve_validation(train, class_names, fraction=VAL_FRACTION, seed=cfg.train.seed)
        carved = True
        val_note = (f"none in the data: {round(100 * VAL_FRACTION)}% of each class carved out of "
                    f"train (stratified, seed {cfg.train.seed}), listed in {out / 'splits'}")
    say(f"data: {root}: {len(class_names)} classes, {len(train)} train / {len(val)} validation videos; "
        f"validation: {val_note}")
    if cfg.model.num_classes != len(class_names):
        say(f"model.num_classes: {len(class_names)}, from the data (the config said {cfg.model.num_classes})")
        cfg.model.num_classes = len(class_names)

    failed = 0
    if data.use_cache:
        cache = VideoCache(Path(data.cache) if data.cache else root / "cache", data.decode)
        d = data.decode
        rate = "the source's own frame rate" if d.fps is None else f"{d.fps:g} fps"
        settings = f"{rate}, short side {d.short_side}, audio {d.sample_rate} Hz" + (f", {d.flow} flow" if d.flow else "")
        if runtime.is_main:
            t0 = time.perf_counter()
            n_workers = workers or default_workers()
            kept, report = ensure_cached({"train": train, "val": val}, cache, workers=n_workers, progress=progress, log=log)
            if report.done or report.failed:
                say(f"cache: {cache.folder} ({settings}): extracted {report.done} videos with {n_workers} "
                    f"worker(s) in {time.perf_counter() - t0:.0f} s, {report.skipped} already there, "
                    f"{len(report.failed)} failed and left out")
            else:
                say(f"cache: {cache.folder} ({settings}): all {report.skipped} videos already extracted")
        barrier()
        kept_train = [e for e in train if cache.has(e.path, e.frame_range)]
        kept_val = [e for e in val if cache.has(e.path, e.frame_range)]
        failed = len(train) + len(val) - len(kept_train) - len(kept_val)
        train, val = kept_train, kept_val
        if not train or not val:
            raise DatasetError(f"{root}: no {'training' if not train else 'validation'} video could be decoded")
    else:
        say("cache: none (data.use_cache: false): videos are decoded while training")

    if carved or failed:
        folder = out / "splits"
        if runtime.is_main:
            write_split(folder, "train", train, class_names, root)
            write_split(folder, "val", val, class_names, root)
        barrier()
        suffix = ".txt" if any(e.start is not None for e in train + val) else ".csv"
        data.train_split = str((folder / f"train{suffix}").absolute())
        data.val_split = str((folder / f"val{suffix}").absolute())
    return cfg, lines


def describe_recipe(cfg: ExperimentConfig, budget: float | None = None) -> list[str]:
    """One line on the models and their cost, one on the stages (what the run will do)."""
    m, t, clip = cfg.model, cfg.train, cfg.data.clip
    costs = segment_costs(m, clip)
    k = cfg.data.eval_segments or clip.num_segments
    fusion = k * sum(costs[x] for x in m.modalities)
    nets = ", ".join(
        f"{x} {m.backbones[x]}" + (" (ImageNet)" if x in m.pretrained else "") + f" {costs[x]:.4f}"
        for x in m.modalities
    )
    lines = [
        f"models: {nets} GFLOPs per segment; policy {m.policy.backbone} {costs['policy']:.4f}; "
        f"{clip.num_segments} segments per video in training, {k} in evaluation; "
        f"weighted fusion {fusion:.4f} GFLOPs per video",
    ]
    u, a = t.unimodal, t.adamml
    patience = getattr(u, "patience", 0)
    unimodal = (f"up to {u.epochs} epochs, stopping after {patience} without a better validation score "
                "(taking a learning-rate step early instead while one is ahead)"
                if patience else f"{u.epochs} epochs")
    if budget is not None:
        cost = f"cost weights adapted to a budget of {budget:g} x fusion's GFLOPs ({budget * fusion:.4f})"
        if a.calibrate:
            cost += ", the policy's thresholds fitted to it on the validation split at each validation"
    else:
        cost = "cost weights " + ", ".join(f"{x} {a.cost_weights.get(x, 0):g}" for x in m.modalities)
    lines.append(
        f"stages: unimodal {unimodal}; {m.fusion} fusion {t.fusion.epochs} epochs; AdaMML "
        f"{a.warmup_epochs} warm-up + {a.epochs} alternating + {a.finetune_epochs} fine-tune "
        f"epochs, {cost}"
    )
    lines.append(f"output: {cfg.train.output_dir}")
    return lines


def write_summary(cfg: ExperimentConfig, lines: list[str], *, append: bool = False) -> Path:
    path = Path(cfg.train.output_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        handle.writelines(f"{line}\n" for line in lines)
    return path
