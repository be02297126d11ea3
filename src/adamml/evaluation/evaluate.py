"""Evaluate trained models the way the paper reports them (``adamml evaluate``).

Every method is scored on the same videos: top-1/top-5 accuracy, mean class accuracy, video
mAP, the per-modality selection rate and the GFLOPs per video (multiply-adds counted from the
real modules by adamml.models.flops). AdaMML is evaluated with real conditional execution and,
by ``--protocol``: "deterministic" (argmax decisions, our default), "paper" (the reference
code's test protocol: Gumbel samples, seeded, averaged over ``--draws`` passes) or "both"
(``--sample``). Every table ends with a line saying which protocol its rows used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from adamml.config import ExperimentConfig, ModelConfig
from adamml.data.catalog import headline_metric
from adamml.data.datasets import build_datasets
from adamml.data.loader import make_loader
from adamml.errors import AdamMLError
from adamml.evaluation.metrics import MetricAccumulator
from adamml.evaluation.report import (
    MethodResult,
    format_table,
    reference_note,
    write_csv,
    write_json,
)
from adamml.evaluation.sweep import budget_rows
from adamml.layouts import IMAGENET_MEAN, IMAGENET_STD
from adamml.modalities.table import title
from adamml.models.adamml import RandomPolicy
from adamml.models.build import input_modalities, model_from_checkpoint
from adamml.models.execution import ExecutionPlan
from adamml.models.flops import gflops_per_video, segment_costs
from adamml.models.thresholds import Thresholds
from adamml.runtime.distributed import Runtime
from adamml.runtime.files import atomic_write_text
from adamml.runtime.runs import stage


@dataclass
class EvalResult:
    metrics: dict  # fractions; "score" is top1 (or mAP for multi-label sets)
    gathered: dict  # per-video arrays: indices, scores, labels, decisions, gflops, videos


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader,
    kind: str,
    model_cfg: ModelConfig,
    cfg: ExperimentConfig,
    runtime: Runtime,
    *,
    decisions_fn=None,
    sample: bool = False,
    seed: int = 0,
    progress: bool = False,
    draws: int = 1,
) -> EvalResult:
    """Score ``model`` on ``loader``.

    kind: "unimodal" / "fusion" (every modality on every segment) or "adamml".
    decisions_fn(batch_size, K, modalities, device) -> (B, K, M) forces decisions (random
    policies); the policy network then does not run and its cost is not counted.
    draws: passes over the data for stochastic decisions (sampling, random policies); the
    metrics are their mean (``<name>_std`` holds the spread of each), the per-video arrays
    are the first pass's.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    passes = [
        _evaluate_pass(model, loader, kind, model_cfg, cfg, runtime, decisions_fn=decisions_fn,
                       sample=sample, seed=seed + 1_000_003 * d, progress=progress)
        for d in range(draws)
    ]
    if draws == 1:
        return passes[0]
    metrics = dict(passes[0].metrics)
    for key, value in passes[0].metrics.items():
        if isinstance(value, (int, float)):
            values = np.array([p.metrics[key] for p in passes], dtype=np.float64)
            metrics[key] = float(values.mean())
            metrics[f"{key}_std"] = float(values.std())
    metrics["draws"] = draws
    return EvalResult(metrics=metrics, gathered=passes[0].gathered)


def _evaluate_pass(model, loader, kind, model_cfg, cfg, runtime, *, decisions_fn, sample, seed, progress) -> EvalResult:
    costs = segment_costs(model_cfg, cfg.data.clip)
    modalities = list(model_cfg.modalities)
    modality_cost = [costs[m] for m in modalities]
    acc = MetricAccumulator(modalities=modalities)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=runtime.device).manual_seed(seed) if sample else None
    bar = None
    if progress and runtime.is_main:
        # Told about each batch rather than wrapping the loader: tqdm.auto's bar starts an
        # iterator of its own (the loader's workers twice).
        bar = tqdm(total=len(loader), desc=f"evaluate {kind}", leave=False, dynamic_ncols=True)
    for batch in loader:
        if bar is not None:
            bar.update()
        batch = {k: (v.to(runtime.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if stage(kind).adaptive:
            forced = None
            if decisions_fn is not None:
                x = batch[modalities[0]]
                forced = decisions_fn(x.shape[0], x.shape[1], modalities, runtime.device)
            out = model(batch, mode="conditional", decisions=forced, sample=sample, generator=generator)
            decisions = out.decisions
            policy_cost = 0.0 if forced is not None else costs["policy"]
        else:
            out = model(batch)
            x = batch[modalities[0]]
            decisions = torch.ones(x.shape[0], x.shape[1], len(modalities))
            policy_cost = 0.0
        gflops = gflops_per_video(decisions.float().cpu(), modality_cost, policy_cost)
        acc.update(
            indices=batch["index"].cpu(),
            scores=out.logits.float().cpu(),
            labels=batch["label"].cpu(),
            multi_hot=batch["multi_hot"].cpu() if cfg.data.multi_label else None,
            decisions=decisions.float().cpu(),
            gflops=gflops,
            videos=list(batch["video"]),
        )
    if bar is not None:
        bar.close()
    model.train(was_training)
    metrics = acc.compute()
    metrics["score"] = metrics[headline_metric(cfg.data.dataset, cfg.data.multi_label, cfg.data.metric)]
    return EvalResult(metrics=metrics, gathered=acc.gathered())


# ---- naming and running -------------------------------------------------------------------


def method_name(kind: str, model_cfg: ModelConfig) -> str:
    if kind == "unimodal":
        return title(model_cfg.modalities[0])
    if kind == "fusion":
        names = {"average": "Average", "weighted": "Weighted", "classwise": "Class-wise weighted", "fc": "FC"}
        return f"{names.get(model_cfg.fusion, model_cfg.fusion)} fusion"
    return "AdaMML"


def evaluate_run(
    checkpoints: list[Path],
    *,
    data_root: str | None = None,
    split: str | None = None,
    runtime: Runtime | None = None,
    random_policy: bool = True,
    sample: bool = False,
    seed: int = 0,
    draws: int = 1,
    protocol: str = "deterministic",
    out_dir: Path | None = None,
    batch_size: int | None = None,
    plots: bool = True,
    progress: bool = True,
    budgets: list | None = None,
    sweep: bool = False,
    precision: str = "fp32",
) -> tuple[list, str]:
    """Evaluate checkpoints on one split; returns (MethodResult list, the paper-style table).

    ``protocol`` "deterministic": AdaMML is scored with deterministic decisions ("AdaMML": the
    argmax, or the thresholds a budget run fitted);
    "paper": with sampled decisions, as the reference code does at test time ("AdaMML,
    sampled"), averaged over ``draws`` passes; "both" (or ``sample``): both rows. Each gets a
    random policy at its own selection rates beside it.
    Models run under the device's execution plan (adamml.models.execution) at ``precision``.
    ``budgets`` (adamml.models.thresholds.Budget) add AdaMML rows with the policy's thresholds
    moved to meet each; ``sweep`` writes the accuracy-vs-GFLOPs curve (adamml.evaluation.sweep).
    """
    if sample:
        protocol = "both"
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    runtime = runtime or Runtime()
    results: list = []
    all_modalities: list[str] = []
    adamml_outputs = None
    loaders: dict = {}
    for path in checkpoints:
        loaded = model_from_checkpoint(path)
        model, kind, model_cfg, cfg = loaded.network, loaded.kind, loaded.model_cfg, loaded.cfg
        state = loaded.state
        # Inference settings (micro-batches, channels_last, folded batch norm, precision).
        plan = ExecutionPlan.for_device(runtime.device, precision=precision)
        model = plan.prepare(model, inplace=True)
        if data_root:
            cfg.data.root = data_root
        if split:
            cfg.data.val_split = split
        needed = tuple(input_modalities(kind, model_cfg))
        if needed not in loaders:
            _, val_set, class_names = build_datasets(cfg, modalities=list(needed), with_train=False)
            loaders[needed] = (make_loader(val_set, batch_size or cfg.train.batch_size, runtime, train=False, seed=0, num_workers=cfg.data.num_workers), class_names)
        loader, class_names = loaders[needed]
        check_class_names(path, state.get("class_names"), class_names, cfg.data.root)
        for m in model_cfg.modalities:
            if m not in all_modalities:
                all_modalities.append(m)
        metric_name = headline_metric(cfg.data.dataset, cfg.data.multi_label, cfg.data.metric)
        protocols = []
        adaptive = loaded.stage.adaptive
        if not adaptive or protocol in ("deterministic", "both"):
            protocols.append((False, method_name(kind, model_cfg), "AdaMML's rates"))
        if adaptive and protocol in ("paper", "both"):
            protocols.append((True, f"{method_name(kind, model_cfg)}, sampled", "sampled AdaMML's rates"))
        for sampled, name, rates_name in protocols:
            with plan.context():
                res = evaluate_model(model, loader, kind, model_cfg, cfg, runtime, sample=sampled, seed=seed,
                                     progress=progress, draws=draws if sampled else 1)
            rates = {m: res.metrics[f"selection_{m}"] for m in model_cfg.modalities}
            results.append(MethodResult(
                method=name, accuracy=100 * res.metrics["score"], metric=metric_name,
                selection={m: 100 * r for m, r in rates.items()}, gflops=res.metrics["gflops"],
                extra={k: v for k, v in res.metrics.items() if k not in ("score",)} | {"checkpoint": str(path)},
            ))
            if not adaptive:
                continue
            if adamml_outputs is None:
                adamml_outputs = (model, model_cfg, cfg, res, loader, class_names)
            if random_policy:
                rnd = RandomPolicy(rates, seed=seed)
                with plan.context():
                    rres = evaluate_model(model, loader, kind, model_cfg, cfg, runtime, decisions_fn=rnd,
                                          progress=progress, draws=draws)
                results.append(MethodResult(
                    method=f"Random policy ({rates_name})", accuracy=100 * rres.metrics["score"], metric=metric_name,
                    selection={m: 100 * rres.metrics[f"selection_{m}"] for m in model_cfg.modalities},
                    gflops=rres.metrics["gflops"], extra=dict(rres.metrics),
                ))
    if budgets or sweep:
        results += budget_rows(adamml_outputs, results, budgets=budgets or [], sweep_curve=sweep,
                               out_dir=out_dir if runtime.is_main else None, seed=seed, progress=progress)
    metric = results[0].metric if results else "top1"
    fusion_gflops = None
    if adamml_outputs is not None:  # what weighted fusion costs, for a run evaluated without it
        _, adamml_cfg, adamml_run_cfg, adamml_res = adamml_outputs[:4]
        costs = segment_costs(adamml_cfg, adamml_run_cfg.data.clip)
        segments = np.asarray(adamml_res.gathered["decisions"]).shape[1]
        fusion_gflops = segments * sum(costs[m] for m in adamml_cfg.modalities)
    table = format_table(results, all_modalities, metric=metric, fusion_gflops=fusion_gflops)
    if note := reference_note(results, fusion_gflops):
        table += "\n" + note
    table += "\n" + protocol_note(protocol, draws, seed)
    if adamml_outputs is not None and (note := threshold_note(adamml_outputs[0], adamml_outputs[2])):
        table += "\n" + note
    if out_dir is not None and runtime.is_main:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(results, out_dir / "results.csv", all_modalities, fusion_gflops=fusion_gflops)
        write_json(results, out_dir / "results.json")
        atomic_write_text(out_dir / "results.txt", table + "\n")
        if plots:
            write_plots(results, adamml_outputs, out_dir)
    return results, table


PROTOCOLS = ("deterministic", "paper", "both")


def check_class_names(checkpoint: Path, trained: list[str] | None, data: list[str], root: str) -> None:
    """Scores are compared by position: data whose classes are not the checkpoint's, in its
    order, would be scored against the wrong names. Checkpoints without names pass."""
    if trained is None or list(trained) == list(data):
        return

    def show(names: list[str]) -> str:
        return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")

    if sorted(trained) == sorted(data):
        problem = "the same classes in another order"
    else:
        missing, extra = [c for c in trained if c not in data], [c for c in data if c not in trained]
        problem = "; ".join(part for part in (
            f"not in the data: {show(missing)}" if missing else "",
            f"not in the checkpoint: {show(extra)}" if extra else "") if part)
    raise AdamMLError(
        f"{checkpoint}: trained on {len(trained)} classes ({show(list(trained))}), the data at {root} has "
        f"{len(data)} ({show(list(data))}): {problem}; evaluate on data with the checkpoint's classes"
    )


def threshold_note(model, cfg) -> str | None:
    """The line that says which thresholds AdaMML's deterministic decisions used, when they
    are not the argmax (a run trained to a budget fitted them)."""
    policy = getattr(model, "policy", None)
    if policy is None or not bool(policy.use_thresholds.any()):
        return None
    budget = cfg.train.adamml.budget
    fitted = f"fitted to its training budget of {budget:g} x fusion's GFLOPs on its validation split" if budget else "carried by its checkpoint"

    probs = Thresholds(tuple(policy.modalities), tuple(policy.use_thresholds.tolist()), 0.0).probabilities()
    quota = "" if not any(policy.quota) else "; and every video uses its " + ", ".join(
        f"{q} best {m} segment{'s' if q != 1 else ''}" for m, q in zip(policy.modalities, policy.quota, strict=True) if q)
    return f"AdaMML's thresholds ({fitted}): " + ", ".join(f"{m} when p_use > {p:.4f}" for m, p in probs.items()) + quota + "."


def protocol_note(protocol: str, draws: int, seed: int) -> str:
    """The line under every table that says how AdaMML's decisions were taken."""
    paper = (
        f"sampled Gumbel decisions as the reference's test protocol, averaged over {draws} "
        f"draw{'s' if draws != 1 else ''} (seed {seed})"
    )
    text = {
        "deterministic": "deterministic (no sampling: the argmax, or the thresholds a budget run fitted)",
        "paper": f"paper ({paper})",
        "both": f"deterministic (argmax) rows, and paper rows ', sampled' ({paper})",
    }[protocol]
    return f"Protocol: {text}."


def _thumbnail(rgb: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) normalised clip -> uint8 (H, W, 3) middle frame for the figures."""
    frame = rgb[rgb.shape[0] // 2].float().cpu()
    frame = frame * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return (frame.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()


def write_plots(results: list, adamml_outputs, out_dir: Path, num_videos: int = 6) -> list[Path]:
    # matplotlib takes half a second to import: only when plots are drawn, not for `--help`.
    from adamml.evaluation.plots import (
        plot_accuracy_vs_gflops,
        plot_policy_strips,
        plot_selection_by_class,
    )

    written = [plot_accuracy_vs_gflops(results, out_dir / "accuracy_vs_gflops.png")]
    if adamml_outputs is None:
        return written
    model, model_cfg, cfg, res, loader, class_names = adamml_outputs
    g = res.gathered
    written.append(plot_selection_by_class(g["decisions"], g["labels"], class_names, model_cfg.modalities, out_dir / "selection_by_class.png"))
    # One video per class where possible, in class order: the paper's qualitative figure.
    dataset = loader.dataset
    chosen, seen = [], set()
    for row, idx in enumerate(g["indices"]):
        label = int(g["labels"][row])
        if label not in seen:
            seen.add(label)
            chosen.append((row, int(idx)))
        if len(chosen) >= num_videos:
            break
    videos = []
    for row, idx in chosen:
        sample = dataset[idx]
        entry: dict = {
            "title": Path(str(sample["video"])).name,
            "decisions": g["decisions"][row],
            "modalities": list(model_cfg.modalities),
            "label": class_names[int(g["labels"][row])],
            "prediction": class_names[int(np.argmax(g["scores"][row]))],
        }
        if "rgb" in sample:
            entry["thumbnails"] = np.stack([_thumbnail(seg) for seg in sample["rgb"]])
        if "audio" in sample:
            entry["spectrogram"] = sample["audio"][:, 0].numpy()
        videos.append(entry)
    written.append(plot_policy_strips(videos, out_dir / "policy_strips.png"))
    return written
