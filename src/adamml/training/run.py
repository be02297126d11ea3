"""What a finished run says about itself: each stage's validation result read back from its
``best.pt``, and the warnings against a silent collapse (the end of ``adamml train``'s summary).
"""

from __future__ import annotations

from pathlib import Path

from adamml.config import ModelConfig, _from_dict
from adamml.evaluation.evaluate import method_name
from adamml.evaluation.health import collapse_warnings, silent_inputs
from adamml.evaluation.report import MethodResult
from adamml.runtime.checkpoint import load_checkpoint
from adamml.runtime.runs import find_stage_checkpoints


def run_verdict(cfg) -> list[str]:
    """The end of the run's summary: each stage's validation result, then what looks wrong
    (adamml.evaluation.health), or that nothing does."""
    rows, num_classes, _ = run_rows(cfg.train.output_dir)
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
    lines += [f"WARNING: {w}" for w in warnings] or ["no sign of a collapse: AdaMML is at least as accurate as "
                                                      "each single modality and runs every modality"]
    return lines


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
