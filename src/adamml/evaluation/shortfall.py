"""When AdaMML lands under weighted fusion: by how much, what the oracle reaches at the same
cost, and at which budget the learned curve meets fusion. One pass of every network over the
validation split (adamml.evaluation.sweep.collect), then only fusion-head calls: seconds on
a split of a few hundred clips, so a run can afford it at its end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from adamml.data.datasets import build_datasets
from adamml.data.loader import make_loader
from adamml.evaluation.oracle import oracle_point
from adamml.evaluation.sweep import budget_point, collect, score, video_cost
from adamml.models.build import input_modalities, model_from_checkpoint
from adamml.models.execution import ExecutionPlan
from adamml.models.flops import modality_costs
from adamml.models.thresholds import Budget
from adamml.runtime.distributed import Runtime

MARGIN = 2.0  # points under fusion before the verdict speaks up
FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 21))


@dataclass
class Shortfall:
    accuracy: float  # AdaMML at its thresholds, on this pass (percent)
    gflops: float
    fusion_accuracy: float  # every modality on every segment, through AdaMML's fusion head
    fusion_gflops: float
    oracle_accuracy: float  # at AdaMML's recognition GFLOPs
    meets_at: float | None  # smallest budget fraction whose learned point reaches fusion
    best: tuple[float, float]  # (fraction, accuracy) of the best point on the curve


def measure(checkpoint: Path, fusion_accuracy: float, runtime: Runtime | None = None) -> Shortfall:
    """The learned policy of an AdaMML checkpoint against ``fusion_accuracy`` (the weighted
    fusion stage's, percent) on the checkpoint's validation split."""
    loaded = model_from_checkpoint(checkpoint)
    cfg, model_cfg = loaded.cfg, loaded.model_cfg
    runtime = runtime or Runtime()
    plan = ExecutionPlan.for_device(runtime.device)
    model = plan.prepare(loaded.network, inplace=True)
    _, val_set, _ = build_datasets(cfg, modalities=list(input_modalities(loaded.kind, model_cfg)), with_train=False)
    loader = make_loader(val_set, cfg.train.batch_size, runtime, train=False, seed=0, num_workers=cfg.data.num_workers)
    data = collect(model, loader, plan)
    costs = modality_costs(model_cfg, cfg.data.clip)
    per_segment = [costs[m] for m in model.modalities]
    k = data.margins.shape[1]
    full = sum(per_segment) * k
    decisions = model.policy.decide(data.margins)  # the checkpoint's own thresholds
    accuracy = score(model, data, decisions, multi_label=False)
    gflops = video_cost(decisions, per_segment, costs["policy"])
    fusion_here = score(model, data, torch.ones_like(data.margins), multi_label=False)
    oracle = oracle_point(model, data, per_segment, max(gflops - costs["policy"] * k, 0.0))
    affordable = [f for f in FRACTIONS if f * full > costs["policy"] * k]  # the policy alone costs the rest
    curve = [(f, budget_point(model, data, Budget(f, "fraction"), costs, False)[0]) for f in affordable]
    meets = next((f for f, p in curve if p.accuracy >= fusion_accuracy), None)
    best = max(curve, key=lambda fp: fp[1].accuracy)
    return Shortfall(accuracy=accuracy, gflops=gflops, fusion_accuracy=fusion_here, fusion_gflops=full,
                     oracle_accuracy=oracle.accuracy, meets_at=meets, best=(best[0], best[1].accuracy))
