"""Accuracy at many budgets from one trained AdaMML model (``adamml evaluate --budget / --sweep``).

One pass over the evaluation set runs the policy and every sub-network on every segment and
keeps what the fusion head needs (segment logits and features) and the policy's margins
(logit of "use"). Every cost point is then only a choice of decisions followed by the fusion
head: the budget's thresholds (adamml.models.thresholds) for the learned policy, and a random
policy at the same per-modality rates beside it. Conditional execution with the same
decisions gives the same logits (tests/test_execution.py), so these are the accuracies the
model has when it really skips.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from adamml.evaluation.metrics import topk_accuracy, video_map
from adamml.evaluation.report import MethodResult
from adamml.models.adamml import RandomPolicy
from adamml.models.execution import ExecutionPlan, run_many
from adamml.models.flops import modality_costs
from adamml.models.thresholds import Budget, Thresholds, fit_thresholds, use_margins
from adamml.runtime.files import atomic_write_bytes, atomic_write_text

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SweepData:
    """What one pass over the set keeps: margins (N, K, M), segment logits (N, K, M, C),
    features (one (N, K, D_m) per modality), labels (N,) and multi-hot targets (N, C)."""

    margins: torch.Tensor
    segment_logits: torch.Tensor
    features: list[torch.Tensor]
    labels: torch.Tensor
    multi_hot: torch.Tensor


@dataclass
class SweepPoint:
    method: str  # "AdaMML" (thresholds) or "Random policy"
    budget: str
    accuracy: float  # percent (top-1, or mAP for multi-label sets)
    gflops: float  # per video
    rates: dict[str, float]  # percent of segments per modality
    thresholds: dict[str, float] = field(default_factory=dict)  # on p_use, learned policy only


@torch.inference_mode()
def collect(model, loader, plan: ExecutionPlan | None = None, progress: bool = False) -> SweepData:
    """Run the policy and every sub-network on every segment of ``loader``'s videos."""
    plan = plan or ExecutionPlan.for_device("cpu")
    fast = plan.prepare(model)
    device = torch.device(plan.device)
    margins, logits, labels, targets = [], [], [], []
    features: list[list[torch.Tensor]] = [[] for _ in fast.modalities]
    iterator = loader
    if progress:
        iterator = tqdm(loader, desc="budget sweep", leave=False, dynamic_ncols=True)
    with plan.context():
        for batch in iterator:
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            out = fast.policy(fast.policy.policy_inputs(batch), temperature=1.0, sample=False)
            margins.append(use_margins(out.logits.float()).cpu())
            seg = []
            outputs = run_many([(fast.recognition[m], batch[m].flatten(0, 1)) for m in fast.modalities], fast.execution)
            for i, (m, (lg, ft)) in enumerate(zip(fast.modalities, outputs, strict=True)):
                b, k = batch[m].shape[:2]
                seg.append(lg.float().view(b, k, -1).cpu())
                features[i].append(ft.float().view(b, k, -1).cpu())
            logits.append(torch.stack(seg, dim=2))
            labels.append(batch["label"].cpu())
            targets.append(batch["multi_hot"].cpu())
    return SweepData(
        margins=torch.cat(margins), segment_logits=torch.cat(logits),
        features=[torch.cat(f) for f in features], labels=torch.cat(labels), multi_hot=torch.cat(targets),
    )


def score(model, data: SweepData, decisions: torch.Tensor, multi_label: bool) -> float:
    """Percent top-1 accuracy (mAP for multi-label sets) of the fused prediction."""
    with torch.inference_mode():
        logits = model.fusion(data.segment_logits, data.features, decisions).float()
    if multi_label:
        return 100 * video_map(logits.numpy(), data.multi_hot.numpy())
    return 100 * topk_accuracy(logits.numpy(), data.labels.numpy(), k=1)["top1"]


def video_cost(decisions: torch.Tensor, costs: Sequence[float], policy_cost: float) -> float:
    """Mean GFLOPs per video of ``decisions`` (N, K, M): the selected pairs plus the policy on every segment."""
    per_video = (decisions.double() * torch.tensor(costs, dtype=torch.float64)).sum(dim=(1, 2))
    return float(per_video.mean()) + policy_cost * decisions.shape[1]


def budget_point(model, data: SweepData, budget: Budget, costs: dict[str, float], multi_label: bool) -> tuple[SweepPoint, Thresholds]:
    """The learned policy at ``budget``: thresholds fitted on this set, scored on it."""
    modalities = list(model.modalities)
    per_seg = [costs[m] for m in modalities]
    k = data.margins.shape[1]
    fusion_gflops = sum(per_seg) * k
    thresholds = fit_thresholds(data.margins, per_seg, costs["policy"], budget.gflops(fusion_gflops), modalities,
                                getattr(model.policy, "allocation", "threshold"))
    decisions = thresholds.decide(data.margins)
    point = SweepPoint(
        method="AdaMML", budget=str(budget), accuracy=score(model, data, decisions, multi_label),
        gflops=video_cost(decisions, per_seg, costs["policy"]),
        rates={m: 100 * float(decisions[..., i].mean()) for i, m in enumerate(modalities)},
        thresholds=thresholds.probabilities(),
    )
    return point, thresholds


def random_point(model, data: SweepData, rates: dict[str, float], costs: dict[str, float], multi_label: bool,
                 *, budget: str = "", seed: int = 0, draws: int = 5) -> SweepPoint:
    """A random policy at ``rates`` (percent per modality), mean of ``draws`` seeded draws;
    it has no policy network, so no policy cost."""
    modalities = list(model.modalities)
    n, k = data.margins.shape[:2]
    policy = RandomPolicy({m: rates[m] / 100 for m in modalities}, seed=seed)
    accs, gfs, used = [], [], []
    for _ in range(draws):
        d = policy(n, k, modalities)
        accs.append(score(model, data, d, multi_label))
        gfs.append(video_cost(d, [costs[m] for m in modalities], 0.0))
        used.append(d.mean(dim=(0, 1)))
    mean_used = torch.stack(used).mean(0)
    return SweepPoint(
        method="Random policy", budget=budget, accuracy=float(np.mean(accs)), gflops=float(np.mean(gfs)),
        rates={m: 100 * float(mean_used[i]) for i, m in enumerate(modalities)},
    )


def sweep(model, data: SweepData, budgets: Sequence[Budget], costs: dict[str, float], multi_label: bool,
          *, seed: int = 0, draws: int = 5) -> list[SweepPoint]:
    """The learned policy at every budget, each followed by a random policy at its rates."""
    points = []
    for budget in budgets:
        learned, _ = budget_point(model, data, budget, costs, multi_label)
        points.append(learned)
        points.append(random_point(model, data, learned.rates, costs, multi_label, budget=str(budget),
                                   seed=seed, draws=draws))
    return points


def write_sweep_csv(points: Sequence[SweepPoint], path: str | os.PathLike[str], modalities: Sequence[str]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "budget", "accuracy", "gflops", *(f"selection_{m}" for m in modalities),
                     *(f"threshold_{m}" for m in modalities)])
    for p in points:
        writer.writerow([p.method, p.budget, f"{p.accuracy:.4f}", f"{p.gflops:.6f}",
                         *(f"{p.rates.get(m, 0.0):.4f}" for m in modalities),
                         *((f"{p.thresholds[m]:.6f}" if m in p.thresholds else "") for m in modalities)])
    return atomic_write_text(Path(path), buf.getvalue())


def plot_sweep(points: Sequence[SweepPoint], fixed: Sequence, path: str | os.PathLike[str], metric: str = "top1",
               dpi: float = 120) -> Path:
    """Accuracy vs GFLOPs: the learned policy's curve, the random policy's curve at the same
    rates, and one labelled point per fixed method (``fixed``: MethodResult rows)."""
    # matplotlib (about 0.5 s) only when the curve is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, colour, marker in (("AdaMML", "#d62728", "o"), ("Random policy", "#7f7f7f", "s")):
        rows = sorted((p for p in points if p.method == method), key=lambda p: p.gflops)
        label = "AdaMML, thresholds moved to each budget" if method == "AdaMML" else "random policy at the same rates"
        ax.plot([p.gflops for p in rows], [p.accuracy for p in rows], marker=marker, color=colour, label=label, ms=4)
    for r in fixed:
        ax.scatter([r.gflops], [r.accuracy], color="#1f77b4", zorder=3, s=30)
        ax.annotate(r.method, (r.gflops, r.accuracy), xytext=(5, -10), textcoords="offset points", fontsize=8)
    ax.set_xlabel("GFLOPs per video (multiply-adds)")
    ax.set_ylabel("mAP (%)" if metric == "mAP" else "top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(Path(path), buf.getvalue())


def budget_rows(adamml_outputs, fixed: Sequence, *, budgets: Sequence[Budget], sweep_curve: bool,
                out_dir: Path | None, seed: int = 0, progress: bool = False) -> list:
    """``adamml evaluate --budget/--sweep``: table rows (MethodResult) for each requested
    budget (the learned policy and a random policy at its rates), and with ``sweep_curve``
    the curve over DEFAULT_FRACTIONS written to ``out_dir``/budget_sweep.{csv,png} beside
    the ``fixed`` methods (unimodal and fusion rows)."""
    if adamml_outputs is None:
        raise ValueError("--budget/--sweep need an AdaMML checkpoint among those evaluated")
    model, model_cfg, cfg, _res, loader, _names = adamml_outputs
    device = next(model.parameters()).device
    costs = modality_costs(model_cfg, cfg.data.clip)
    multi_label = bool(cfg.data.multi_label)
    metric = "mAP" if multi_label else "top1"
    data = collect(model, loader, ExecutionPlan.for_device(device), progress=progress)
    rows = []
    for point in sweep(model, data, budgets, costs, multi_label, seed=seed):
        name = f"AdaMML, budget {point.budget}" if point.method == "AdaMML" else f"Random policy (budget {point.budget}'s rates)"
        rows.append(MethodResult(method=name, accuracy=point.accuracy, metric=metric, selection=dict(point.rates),
                                 gflops=point.gflops, adaptive=point.method == "AdaMML",
                                 extra={"thresholds": point.thresholds} if point.thresholds else {}))
    if sweep_curve and out_dir is not None:
        k = data.margins.shape[1]
        fusion_gflops = sum(costs[m] for m in model.modalities) * k
        # Budgets under the policy's own cost cannot be met by any thresholds: the curve starts above it.
        fractions = [f for f in DEFAULT_FRACTIONS if f * fusion_gflops > costs["policy"] * k]
        points = sweep(model, data, [Budget(f, "fraction") for f in fractions], costs, multi_label, seed=seed)
        write_sweep_csv(points, Path(out_dir) / "budget_sweep.csv", model.modalities)
        plot_sweep(points, [r for r in fixed if not r.method.startswith(("AdaMML", "Random"))],
                   Path(out_dir) / "budget_sweep.png", metric=metric)
    return rows
