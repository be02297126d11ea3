"""Does skipping save time? Inference time of AdaMML's conditional execution vs the masked model.

The reference implementation runs every sub-network on every segment and multiplies the
outputs by the decisions ("masked"), so its run time does not fall with the selection rate;
adamml's "conditional" mode runs each sub-network once on only the selected segments. This
script builds a shipped config's model at full size (random weights; the evaluation segment
count, the policy at its configured resolution), forces the selection rate of the costliest
modality (RGB) to 0, 25, 50, 75 and 100 % (the others always on), and prints per-video
inference time in both modes, their ratio, and the GFLOPs per video counted from the real
modules (adamml.models.flops; GFLOPs = 1e9 multiply-adds). The policy runs in every row.
Both modes run under the same execution plan (adamml.models.execution: micro-batches on
worker threads, channels_last, folded batch norm and fused activations, inference mode;
``--plain`` turns it off).

The machine may be shared: every round times every row once (both modes of every rate back
to back, and the reference code when asked for), in an order that changes from round to
round, so a load that drifts during the run reaches every row alike; the table gives each
row's median over ``--rounds`` rounds, the time ratio as the median of the per-round
ratios of the two modes timed back to back, and the load average before and after.

    python benchmarks/conditional.py --config kinetics_sounds_rgb_audio --device cpu --threads 2
    python benchmarks/conditional.py --config kinetics_sounds_rgb_audio --device cpu --threads 2 \\
        --reference PATH/TO/AdaMML       # also time the reference code (IBM/AdaMML checkout)

``--runtime torch,onnx`` also exports the same model (adamml.export, ``--format onnx``) and
times its graphs under the torch-free orchestrator (adamml.runners.onnx: single-threaded
onnxruntime sessions on the same number of workers) in the same rounds, the policy and the
selected networks, beside the torch plan's conditional mode; its columns are its s/video
and its speed-up over the torch plan (the median of the per-round ratios).

    python benchmarks/conditional.py --config kinetics_sounds_rgb_audio --device cpu --threads 2 --runtime torch,onnx

``--reference CHECKOUT`` imports the reference's own model (RGB + audio configs only) from a
checkout (https://github.com/IBM/AdaMML) and times it in every round beside ours.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import numpy as np

from adamml.runtime.allocator import request_huge_pages

request_huge_pages()  # before torch starts (see adamml.runtime.allocator)

import torch  # noqa: E402

from adamml.config import ExperimentConfig  # noqa: E402
from adamml.config_files import load_config  # noqa: E402
from adamml.modalities.table import MODALITIES  # noqa: E402
from adamml.models.adamml import AdaMML, build_adamml  # noqa: E402
from adamml.models.execution import PRECISIONS, ExecutionPlan  # noqa: E402
from adamml.models.flops import gflops_per_video, modality_costs  # noqa: E402
from adamml.training.plan import without_torchvision_starts  # noqa: E402

RATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def make_batch(model: AdaMML, cfg: ExperimentConfig, batch: int, segments: int, device: torch.device) -> dict:
    """Random inputs of the real shapes for the recognition networks and the policy."""
    g = torch.Generator().manual_seed(0)
    clip = cfg.data.clip
    sources = set(model.modalities) | set(model.policy.sources.values())
    out = {}
    for name in sorted(sources):
        shape = MODALITIES[name].input_shape(clip)
        out[name] = torch.randn(batch, segments, *shape, generator=g).to(device)
    return out


def forced_decisions(rate: float, b: int, k: int, modalities: list[str], costly: str, seed: int = 0) -> torch.Tensor:
    """Exactly round(rate * b * k) segments of ``costly`` selected (at random places); the
    other modalities always."""
    m = len(modalities)
    d = torch.ones(b * k, m)
    i = modalities.index(costly)
    d[:, i] = 0
    n = round(rate * b * k)
    d[torch.randperm(b * k, generator=torch.Generator().manual_seed(seed))[:n], i] = 1
    return d.view(b, k, m)


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_rounds(groups: dict, rounds: int, device: torch.device, seed: int = 0) -> dict:
    """Seconds of each call, over ``rounds`` rounds: ``groups`` maps a key to a group of calls
    ({name: fn}) that run back to back, in a random order, every round; the groups run in a
    shuffled order each round, so that load drifting on a shared machine reaches every row
    alike, and the calls of a group (conditional and masked of one rate) share the load of
    the same seconds. One warm-up run each first. Returns {(key, name): [seconds per round]}.
    """
    for group in groups.values():
        for fn in group.values():
            fn()
    times: dict = {(key, name): [] for key, group in groups.items() for name in group}
    order = list(groups)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            names = list(groups[key])
            rng.shuffle(names)
            for name in names:
                times[key, name].append(_seconds(groups[key][name], device))
    return times


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "load average unknown"


def reference_model(checkout: str, cfg: ExperimentConfig, segments: int):
    """A call that runs the reference code's RGB + audio model on one video (batch 1, random
    weights, eval, no_grad), imported from an IBM/AdaMML checkout; its policy's ImageNet
    download skipped."""
    sys.path.insert(0, checkout)
    try:
        import models.policy_net as policy_net  # the reference's modules
        from models.adamml import adamml as reference_adamml
    finally:
        sys.path.remove(checkout)
    policy_net.MobileNetV2.load_imagenet_model = lambda self: None
    clip, frames = cfg.data.clip, cfg.data.clip.frames_per_segment
    depth = int(cfg.model.backbones["rgb"].removeprefix("resnet"))
    model = reference_adamml(
        groups=frames, modality=["rgb", "sound"], input_channels=[3, 1], num_segments=segments,
        rng_policy=False, rng_threshold=0.5, causality_modeling="lstm",
        num_classes=cfg.model.num_classes, depth=depth, without_t_stride=False, dropout=0.5,
        pooling_method="max", fusion_point="logits", unimodality_pretrained=[],
        learnable_lf_weights=True,
    ).eval()
    rgb = torch.randn(1, segments * frames * 3, clip.crop_size, clip.crop_size)
    sound = torch.randn(1, segments, 256, clip.audio_frames or 256)

    def fn():
        with torch.no_grad():
            return model([rgb, sound])

    return fn


def onnx_runner(model: AdaMML, cfg: ExperimentConfig, workers: int):
    """The model exported with ``--format onnx`` (into a temporary folder) and loaded by the
    torch-free orchestrator."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from adamml.config import to_dict
    from adamml.export.package import export_package
    from adamml.runners.onnx import OnnxModel
    from adamml.runtime.checkpoint import save_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="adamml-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # checkpoint and graphs: hundreds of MB
    checkpoint = save_checkpoint({"kind": "adamml", "model": model.state_dict(), "config": to_dict(cfg),
                                  "model_config": to_dict(cfg.model)}, folder / "best.pt")
    start = time.perf_counter()
    export_package(checkpoint, folder / "onnx", format="onnx")
    print(f"exported to ONNX in {time.perf_counter() - start:.1f} s")
    return OnnxModel(folder / "onnx", workers=workers)


def int8_runner(runner, inputs: dict, decisions, workers: int):
    """A copy of ``runner``'s folder quantised to INT8 (the policy's graphs kept fp32, the
    export's default), calibrated on the benchmark's own inputs, every network on every segment."""
    import shutil

    from adamml.export.quantize import quantize_graphs
    from adamml.runners.onnx import OnnxModel

    feeds: dict = {name: [] for name in runner.sessions}
    run = runner._run

    def recording(name, feed):
        feeds[name].append(feed)
        return run(name, feed)

    runner._run = recording
    runner.policy_margins(inputs)
    runner.networks(inputs, decisions)
    runner._run = run
    folder = runner.folder.with_name("int8")
    shutil.copytree(runner.folder, folder)
    start = time.perf_counter()
    quantize_graphs(folder, feeds)
    print(f"quantised to INT8 in {time.perf_counter() - start:.1f} s")
    return OnnxModel(folder, workers=workers)


def run_device(model: AdaMML, cfg: ExperimentConfig, args, costs: dict[str, float], device: torch.device,
               reference=None) -> None:
    overrides = {"precision": args.precision, "compile": args.compile}
    if args.pixels_per_call:
        overrides["pixels_per_call"] = args.pixels_per_call
    if args.workers:
        overrides["workers"] = args.workers
    plan = ExecutionPlan.for_device(device, **overrides)
    if args.plain:
        plan = ExecutionPlan(device=str(device), pixels_per_call=None, channels_last=False,
                             fold_batchnorm=False, fuse_pointwise=False, workers=1, precision=args.precision)
    unprepared = model  # what training saves (the export folds it itself)
    model = plan.prepare(model)
    b, k = args.batch, args.segments
    batch = make_batch(model, cfg, b, k, device)
    per_seg = [costs[m] for m in model.modalities]
    costly = next(m for m in model.modalities if m != "audio")

    def infer(decisions: torch.Tensor, mode: str):
        def fn():
            with plan.context():
                # The policy runs in every row: its time is part of AdaMML's inference.
                model.policy(model.policy.policy_inputs(batch), temperature=1.0, sample=False)
                return model(batch, mode=mode, decisions=decisions)

        return fn

    # The exported graphs under the torch-free orchestrator: one column per runtime (and INT8).
    graph_runtimes = [r for r in args.runtimes if r in ("onnx", "openvino")]
    runners: dict = {}
    if graph_runtimes and device.type == "cpu":
        from adamml.runners.onnx import OnnxModel

        if b != 1:
            raise SystemExit("--runtime onnx/openvino times one video per call: use --batch 1")
        first = onnx_runner(unprepared, cfg, plan.worker_count())
        inputs = {name: x[0].cpu().numpy() for name, x in batch.items()}
        int8_folder = None
        if args.int8:
            int8_folder = int8_runner(first, inputs, np.ones((k, len(model.modalities)), np.float32), plan.worker_count()).folder
        for runtime in graph_runtimes:
            runners[runtime] = first if runtime == "onnx" else OnnxModel(first.folder, workers=plan.worker_count(), runtime=runtime)
            if int8_folder is not None:
                runners[f"{runtime} int8"] = OnnxModel(int8_folder, workers=plan.worker_count(), runtime=runtime)

    def infer_graphs(decisions: torch.Tensor, runtime):
        numpy_decisions = decisions[0].cpu().numpy()

        def fn():
            runtime.policy_margins(inputs)
            return runtime.networks(inputs, numpy_decisions)

        return fn

    full = torch.ones(b, k, len(model.modalities), device=device)
    masked_gf = statistics.fmean(gflops_per_video(full, per_seg, costs["policy"]))
    decisions = {rate: forced_decisions(rate, b, k, model.modalities, costly).to(device) for rate in args.rates}
    groups: dict = {}
    for rate in args.rates:
        # Masked runs everything whatever the decisions: the reference's cost at every rate.
        groups[rate] = {"conditional": infer(decisions[rate], "conditional"),
                        "masked": infer(decisions[rate], "masked")}
        for key, runtime in runners.items():
            groups[rate][key] = infer_graphs(decisions[rate], runtime)
    if reference is not None:
        groups["reference"] = {"reference": reference}
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}{threads}: {b} video(s) x {k} segments per call, {args.rounds} rounds; {plan}")
    print(f"before: {load_average()}", flush=True)
    times = time_rounds(groups, args.rounds, device)
    print(f"after:  {load_average()}")
    med = statistics.median
    ref_s = med(times["reference", "reference"]) if reference is not None else None
    if ref_s is not None:
        print(f"reference code (IBM/AdaMML), timed in the same rounds: {ref_s:.3f} s/video (median)")
    print("s/video: medians over the rounds; time ratio: the median over the rounds of conditional / "
          "masked timed back to back (the same load)")
    header = (
        f"{costly.upper() + ' rate':>8} | {'conditional s/video':>19} {'GFLOPs':>8} | "
        f"{'masked s/video':>14} {'GFLOPs':>8} | {'time ratio':>10} {'GFLOPs ratio':>12} {'time/GFLOPs':>11}"
        + (f" | {'vs reference':>12}" if ref_s is not None else "")
        + "".join(f" | {key + ' s/video':>18} {'speed-up':>8}" for key in runners)
    )
    print(header)
    print("-" * len(header))
    for rate in args.rates:
        cond, masked = times[rate, "conditional"], times[rate, "masked"]
        cond_s, masked_s = med(cond) / b, med(masked) / b
        time_ratio = med([c / m for c, m in zip(cond, masked, strict=True)])
        cond_gf = statistics.fmean(gflops_per_video(decisions[rate], per_seg, costs["policy"]))
        gf_ratio = cond_gf / masked_gf
        print(
            f"{rate:>8.0%} | {cond_s:>19.4f} {cond_gf:>8.2f} | "
            f"{masked_s:>14.4f} {masked_gf:>8.2f} | {time_ratio:>10.3f} "
            f"{gf_ratio:>12.3f} {time_ratio / gf_ratio:>11.2f}"
            + (f" | {cond_s / ref_s:>11.2f}x" if ref_s is not None else "")
            + "".join(f" | {med(times[rate, key]):>18.4f} "
                      f"{med([c / o for c, o in zip(cond, times[rate, key], strict=True)]):>7.2f}x" for key in runners)
        )
    every_masked = [t for rate in args.rates for t in times[rate, "masked"]]
    print(f"masked, all {len(every_masked)} runs: median {med(every_masked) / b:.4f} s/video, "
          f"min {min(every_masked) / b:.4f}, max {max(every_masked) / b:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="kinetics_sounds_rgb_audio", help="a shipped config name or a YAML path")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU, then CUDA when available")
    parser.add_argument("--batch", type=int, default=1, help="videos per call")
    parser.add_argument("--segments", type=int, default=None, help="default: the config's evaluation segments")
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=5,
                        help="timing rounds; every round times every row once (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--pixels-per-call", type=int, default=None, help="micro-batch size (frame pixels)")
    parser.add_argument("--workers", type=int, default=None,
                        help="CPU worker threads for micro-batches (default: the thread count; 1: none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the sub-networks")
    parser.add_argument("--plain", action="store_true", help="no execution plan: one call per network, NCHW")
    parser.add_argument("--reference", default=None, help="an IBM/AdaMML checkout to time beside ours")
    parser.add_argument("--runtime", dest="runtimes", default="torch", type=lambda s: s.split(","),
                        help="torch, or torch,onnx[,openvino]: also time the ONNX export under the torch-free "
                        "orchestrator on onnxruntime / OpenVINO (CPU)")
    parser.add_argument("--int8", action="store_true",
                        help="with --runtime torch,onnx[,openvino]: also the graphs quantised to INT8 (calibrated on the "
                        "benchmark's inputs)")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), type=lambda s: [float(r) for r in s.split(",")],
                        help="the RGB rates to time, comma-separated fractions (default: 0,0.25,0.5,0.75,1)")
    parser.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=True,
                        help="random weights where the config names torchvision ImageNet weights (timing needs none)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config, args.overrides)
    if args.random_start:
        cfg, _ = without_torchvision_starts(cfg)
    args.segments = args.segments or cfg.data.eval_segments or cfg.data.clip.num_segments
    costs = modality_costs(cfg.model, cfg.data.clip)  # GMACs per segment, counted on the meta device
    print(
        f"{cfg.name}: {', '.join(f'{m} {cfg.model.backbones[m]}' for m in cfg.model.modalities)}, "
        f"{cfg.data.clip.frames_per_segment}x{cfg.data.clip.crop_size}^2 frames, policy "
        f"{cfg.model.policy.backbone} at {cfg.model.policy.resolution}^2, {args.segments} segments; "
        "GFLOPs per segment: " + ", ".join(f"{m} {c:.3f}" for m, c in costs.items())
    )
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip)
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    for device in devices:
        reference = None
        if args.reference and device.type == "cpu":
            reference = reference_model(args.reference, cfg, args.segments)
        run_device(model, cfg, args, costs, device, reference)


if __name__ == "__main__":
    main()
