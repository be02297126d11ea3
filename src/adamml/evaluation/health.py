"""No silent collapse: what a run's numbers say about how it went, in words, with the likely fix.

A policy that learned to run almost nothing scores near chance, and a table alone does not
say why. After ``adamml train`` (from each stage's ``best.pt``) and after ``adamml evaluate``
(from the rows it just measured) these checks flag:

- AdaMML below its best single modality (it should be at least as accurate: it can run that
  modality everywhere);
- a modality the policy (almost) never runs: selection rate under 5 %;
- a recognition network near chance after stage 1 (the usual root cause of both);
- a GFLOPs budget missed by more than 10 %;
- an input with no signal at all (every training video silent or without an audio track):
  no amount of training helps there, the modality is better dropped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from adamml.modalities.table import title
from adamml.runtime.checkpoint import load_checkpoint

MIN_SELECTION = 5.0  # percent of segments
BUDGET_TOLERANCE = 0.10


def _modality(row) -> str | None:
    """The one modality a single-modality row runs."""
    used = [m for m, v in row.selection.items() if v is not None]
    return used[0] if len(used) == 1 else None


def collapse_warnings(rows: list, *, num_classes: int | None = None, budget: float | None = None,
                      silent: dict[str, str] | None = None) -> list[str]:
    """Warnings for a list of ``MethodResult`` rows (percent figures), one line each.
    ``silent``: modality -> why its input carries no signal (:func:`silent_inputs`)."""
    silent = silent or {}
    adamml = next((r for r in rows if r.method == "AdaMML"), None)
    single = [r for r in rows if not r.adaptive and sum(v is not None for v in r.selection.values()) == 1]
    fusion = next((r for r in rows if r.method.endswith("fusion")), None)
    lines: list[str] = []
    chance = 100.0 / num_classes if num_classes else None
    used = list(adamml.selection) if adamml is not None else [m for r in single if (m := _modality(r))]
    for modality, reason in silent.items():
        own = next((r for r in single if _modality(r) == modality), None)
        scored = f" ({own.method} {own.accuracy:.1f}% after stage 1{f', chance {chance:.1f}%' if chance else ''})" if own else ""
        rest = [m for m in used if m not in silent]
        drop = f"drop it (model.modalities=[{','.join(rest)}])" if rest else "drop it"
        lines.append(
            f"{title(modality)} carries no signal: {reason}, so every spectrogram is the same and its network "
            f"can only guess{scored}; training longer cannot help: {drop}, or give videos with sound"
        )
    weak = [r for r in single if chance is not None and r.accuracy < 2 * chance and _modality(r) not in silent]
    for r in weak:
        lines.append(
            f"{r.method} reaches only {r.accuracy:.1f}% after stage 1 (chance {chance:.1f}%): its network "
            "has not learned yet; train stage 1 longer (train.unimodal.epochs, train.unimodal.patience) "
            "or start it from ImageNet (model.pretrained)"
        )
    if adamml is None:
        return lines
    best = max(single, key=lambda r: r.accuracy, default=None)
    if best is not None and adamml.accuracy < best.accuracy:
        knob = "raise --budget" if budget is not None else "lower train.adamml.cost_weights or raise --budget"
        if weak:
            cause, fix = "the recognition networks are weak (above)", "train stage 1 longer"
        elif silent:
            cause, fix = f"{', '.join(map(title, silent))} carries no signal (above)", f"drop {', '.join(silent)}"
        else:
            cause, fix = "the policy skips segments the networks need", f"{knob}, or give the policy more epochs (train.adamml.epochs)"
        lines.append(
            f"AdaMML {adamml.accuracy:.1f}% is below its best single modality ({best.method} "
            f"{best.accuracy:.1f}%): {cause}; likely fix: {fix}"
        )
    for modality, rate in adamml.selection.items():
        if modality in silent:  # skipping an input without signal is right: said above
            continue
        if rate is not None and rate < MIN_SELECTION:
            # Trained to a budget, the cost weights are not the user's: the budget is the knob.
            knob = "raise --budget" if budget is not None else f"lower train.adamml.cost_weights.{modality} or raise --budget"
            own = next((r for r in single if r.selection.get(modality) is not None), None)
            alone = ""
            if own is not None and best is not None and own is not best:
                alone = f" ({own.method} alone {own.accuracy:.1f}% against {best.method}'s {best.accuracy:.1f}%: it adds little for its cost)"
            lines.append(
                f"AdaMML runs {modality} on only {rate:.1f}% of segments (< {MIN_SELECTION:g}%): the policy "
                f"has all but dropped it{alone}; likely fix: {knob}, and check that stage 1 trained the "
                "networks (accuracies above)"
            )
    if budget is not None and fusion is not None and fusion.gflops > 0:
        share = adamml.gflops / fusion.gflops
        if abs(share - budget) > BUDGET_TOLERANCE * budget:
            lines.append(
                f"AdaMML uses {adamml.gflops:.4f} GFLOPs = {100 * share:.1f}% of {fusion.method}'s "
                f"{fusion.gflops:.4f}, not the {100 * budget:.0f}% budget (+-{100 * BUDGET_TOLERANCE:.0f}%); "
                "likely fix: more policy epochs (train.adamml.epochs), and train.adamml.calibrate: true (fits "
                "the policy's thresholds to the budget on the validation split; on other videos the cost can differ)"
            )
    return lines


def silent_inputs(cfg) -> dict[str, str]:
    """Modalities of ``cfg``'s model whose input carries no signal on any training video,
    with why: audio, when every cached training video has no audio track or a silent
    (constant) one. Stops at the first video with sound, so a dataset with sound costs one
    read; says nothing where the cache cannot tell (no cache, videos not extracted)."""
    # the cache and discovery only when the check runs: `adamml evaluate --help` stays light
    from adamml.data.cache import CacheError, VideoCache
    from adamml.data.catalog import DATASETS, discover
    from adamml.data.formats import DatasetError, DiscoveryWarning

    data = cfg.data
    if "audio" not in cfg.model.modalities or not data.use_cache or not data.root:
        return {}
    cache = VideoCache(Path(data.cache) if data.cache else Path(data.root) / "cache", data.decode)
    try:
        with warnings.catch_warnings():  # what discovery passed over was said when the run began
            warnings.simplefilter("ignore", DiscoveryWarning)
            entries, _ = discover(data.root, data.train_split, data.dataset if data.dataset in DATASETS else None)
    except DatasetError:
        return {}
    silent = absent = 0
    for entry in entries:
        try:
            audio, missing = cache.audio_track(entry.path, entry.frame_range)
        except CacheError:
            continue
        if not missing and audio.size and audio.max() != audio.min():
            return {}
        absent += missing
        silent += not missing
    if not silent + absent:
        return {}
    parts = [f"{absent} without an audio track" if absent else "", f"{silent} silent" if silent else ""]
    return {"audio": f"all {silent + absent} training videos have no sound ({', '.join(p for p in parts if p)})"}


def checkpoint_context(checkpoints: list[Path]) -> dict:
    """``num_classes``, ``budget`` and ``silent`` for :func:`collapse_warnings`, from the last
    checkpoint (AdaMML's, when the list is a run's) and the training data it names."""
    # only when a checkpoint is read
    from adamml.config import ConfigError, config_from_dict

    if not checkpoints:
        return {}
    config = load_checkpoint(checkpoints[-1]).get("config") or {}
    train = (config.get("train") or {}).get("adamml") or {}
    context = {"num_classes": (config.get("model") or {}).get("num_classes"), "budget": train.get("budget")}
    try:
        context["silent"] = silent_inputs(config_from_dict(config))
    except (ConfigError, OSError):
        pass
    return context
