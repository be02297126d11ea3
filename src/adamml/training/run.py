"""What a finished run says about itself: each stage's validation result read back from its
``best.pt``, and the warnings against a silent collapse (the end of ``adamml train``'s summary).
"""

from __future__ import annotations

import csv
from pathlib import Path

from adamml.config import ModelConfig, _from_dict
from adamml.evaluation.evaluate import method_name
from adamml.evaluation.health import collapse_warnings, silent_inputs
from adamml.evaluation.report import MethodResult
from adamml.evaluation.shortfall import MARGIN, measure
from adamml.runtime.checkpoint import load_checkpoint
from adamml.runtime.runs import find_stage_checkpoints


def run_verdict(cfg) -> list[str]:
    """The end of the run's summary: each stage's validation result, then what looks wrong
    (adamml.evaluation.health), or that nothing does."""
    rows, num_classes, _ = run_rows(cfg.train.output_dir)
    checkpoints = find_stage_checkpoints(Path(cfg.train.output_dir))
    fusion = next((r for r in rows if r.method.endswith("fusion")), None)
    parts = []
    for r in rows:
        part = f"{r.method} {r.accuracy:.1f}% at {r.gflops:.4f} GFLOPs"
        if r.adaptive:
            if fusion is not None and fusion.gflops > 0:
                part += f" ({100 * r.gflops / fusion.gflops:.0f}% of fusion's)"
            part += ", running " + ", ".join(f"{m} on {v:.0f}%" for m, v in r.selection.items()) + " of segments"
            if r.extra.get("thresholds"):
                part += " (thresholds fitted to the budget: " + ", ".join(
                    f"{m} p_use > {p:.3f}" for m, p in r.extra["thresholds"].items()) + ")"
        parts.append(part)
    lines = ["validation: " + "; ".join(parts)]
    warnings = collapse_warnings(rows, num_classes=num_classes, budget=cfg.train.adamml.budget, silent=silent_inputs(cfg))
    warnings += still_improving(Path(cfg.train.output_dir), cfg.train.unimodal.epochs, cfg.train.unimodal.patience)
    adamml = next((r for r in rows if r.adaptive), None)
    if adamml is not None and fusion is not None and adamml.accuracy < fusion.accuracy - MARGIN and checkpoints:
        warnings.append(shortfall_line(checkpoints[-1], adamml, fusion, cfg.train.output_dir))
    lines += [f"WARNING: {w}" for w in warnings] or ["no sign of a collapse: AdaMML is at least as accurate as "
                                                      "each single modality and runs every modality, and within "
                                                      f"{MARGIN:g} points of fusion"]
    return lines


def still_improving(run_dir: Path, cap: int, patience: int) -> list[str]:
    """Stage-1 networks that reached the epoch cap while their validation score was still
    climbing (the best epoch among the last two validated, up by more than a point over the
    last ``patience``): the plateau stop did not end them, the cap did, and AdaMML starts from
    them."""
    out = []
    for log in sorted(run_dir.glob("unimodal_*/log.csv")):
        with log.open(newline="") as f:
            rows = list(csv.DictReader(f))
        scores = [100 * float(r["val_score"]) for r in rows if r.get("val_score")]
        window = max(int(patience), 2) + 1
        if len(rows) < cap or len(scores) < window:
            continue
        recent = scores[-window:]
        if max(scores) in recent[-2:] and recent[-1] - recent[0] > 1.0:
            modality = log.parent.name.removeprefix("unimodal_")
            curve = " -> ".join(f"{v:.0f}" for v in recent)
            out.append(f"the {modality} network was still improving when stage 1 reached its cap of {cap} epochs "
                       f"(validation {curve} % over its last {window} epochs): AdaMML starts from it; raise "
                       f"train.unimodal.epochs (the plateau stop still ends it early)")
    return out


def shortfall_line(checkpoint: Path, adamml, fusion, run_dir) -> str:
    """AdaMML more than MARGIN points under fusion: the numbers, the oracle at the same cost
    and the budget at which the learned curve meets fusion (adamml.evaluation.shortfall)."""
    found = measure(checkpoint, fusion.accuracy)
    share = 100 * adamml.gflops / fusion.gflops if fusion.gflops > 0 else float("nan")
    line = (f"AdaMML is {fusion.accuracy - adamml.accuracy:.1f} points under weighted fusion ({adamml.accuracy:.1f}% "
            f"against {fusion.accuracy:.1f}%) at {share:.0f}% of its GFLOPs. At the same cost the oracle (the best "
            f"choice of modalities per segment, given every network's segment predictions and the labels) reaches "
            f"{found.oracle_accuracy:.1f}%: ")
    if found.oracle_accuracy >= fusion.accuracy:
        line += "the networks could match fusion at this cost, the policy does not find the segments that matter. "
    else:
        line += "even a perfect policy could not match fusion at this cost. "
    if found.meets_at is not None:
        line += (f"The learned policy meets fusion at a budget of {found.meets_at:.2f} (train with --budget "
                 f"{found.meets_at:.2f}")
    else:
        line += (f"The learned policy stays under fusion at every budget up to 1.0 (best {found.best[1]:.1f}% at "
                 f"{found.best[0]:.2f}; train stage 3 longer: train.adamml.epochs")
    return line + f"; the curve: adamml evaluate --run-dir {run_dir} --sweep --out DIR)"


def run_rows(run_dir: str | Path) -> tuple[list, int | None, float | None]:
    """MethodResult rows from the validation metrics stored in every stage's ``best.pt`` of a
    run, the class count, and the budget the run trained to (None without one)."""
    rows, num_classes, budget = [], None, None
    for path in find_stage_checkpoints(Path(run_dir)):
        state = load_checkpoint(path)
        metrics = state.get("metrics") or {}
        if "score" not in metrics:
            continue
        mc = _from_dict(ModelConfig, state.get("model_config") or state["config"]["model"], "model")
        num_classes = mc.num_classes
        budget = ((state["config"].get("train") or {}).get("adamml") or {}).get("budget", budget)
        rows.append(MethodResult(
            method=method_name(state["kind"], mc), accuracy=100 * metrics["score"],
            selection={m: 100 * metrics.get(f"selection_{m}", 1.0) for m in mc.modalities},
            gflops=metrics.get("gflops", 0.0),
            extra={"thresholds": {m: metrics[f"threshold_{m}"] for m in mc.modalities if f"threshold_{m}" in metrics}},
        ))
    return rows, num_classes, budget
