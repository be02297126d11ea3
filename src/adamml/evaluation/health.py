"""No silent collapse: what a run's numbers say about how it went, in words, with the likely fix.

A policy that learned to run almost nothing scores near chance, and a table alone does not
say why. After ``adamml train`` (from each stage's ``best.pt``) and after ``adamml evaluate``
(from the rows it just measured) these checks flag:

- AdaMML below its best single modality (it should be at least as accurate: it can run that
  modality everywhere);
- a modality the policy (almost) never runs: selection rate under 5 %;
- a recognition network near chance after stage 1 (the usual root cause of both);
- a GFLOPs budget missed by more than 10 %.
"""

from __future__ import annotations

from pathlib import Path

from adamml.runtime.checkpoint import load_checkpoint

MIN_SELECTION = 5.0  # percent of segments
BUDGET_TOLERANCE = 0.10


def collapse_warnings(rows: list, *, num_classes: int | None = None, budget: float | None = None) -> list[str]:
    """Warnings for a list of ``MethodResult`` rows (percent figures), one line each."""
    adamml = next((r for r in rows if r.method == "AdaMML"), None)
    single = [r for r in rows if not r.adaptive and sum(v is not None for v in r.selection.values()) == 1]
    fusion = next((r for r in rows if r.method.endswith("fusion")), None)
    lines: list[str] = []
    chance = 100.0 / num_classes if num_classes else None
    weak = [r for r in single if chance is not None and r.accuracy < 2 * chance]
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
        cause = ("the recognition networks are weak (above)" if weak else
                 "the policy skips segments the networks need")
        knob = "raise --budget" if budget is not None else "lower train.adamml.cost_weights or raise --budget"
        fix = "train stage 1 longer" if weak else f"{knob}, or give the policy more epochs (train.adamml.epochs)"
        lines.append(
            f"AdaMML {adamml.accuracy:.1f}% is below its best single modality ({best.method} "
            f"{best.accuracy:.1f}%): {cause}; likely fix: {fix}"
        )
    for modality, rate in adamml.selection.items():
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


def checkpoint_context(checkpoints: list[Path]) -> dict:
    """``num_classes`` and ``budget`` for :func:`collapse_warnings`, from the last checkpoint
    (AdaMML's, when the list is a run's)."""
    if not checkpoints:
        return {}
    config = load_checkpoint(checkpoints[-1]).get("config") or {}
    train = (config.get("train") or {}).get("adamml") or {}
    return {"num_classes": (config.get("model") or {}).get("num_classes"), "budget": train.get("budget")}
