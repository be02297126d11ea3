"""Does skipping save time? Inference time of AdaMML's conditional execution vs the masked model.

The reference implementation runs every sub-network on every segment and multiplies the
outputs by the decisions ("masked"), so its run time does not fall with the selection rate;
adamml's "conditional" mode runs each sub-network once on only the selected segments. This
script forces the RGB selection rate to 0, 25, 50, 75 and 100 % (audio always on, it is
cheap), and prints per-video inference time (median over repeats, eval mode, no_grad) in
both modes, their ratio, and the GFLOPs per video counted from the real modules
(adamml.models.flops; GFLOPs = 1e9 multiply-adds). The policy network runs in both modes
(its cost is in every row).

    python benchmarks/conditional.py                 # CPU, and CUDA too when available
    python benchmarks/conditional.py --device cpu --repeats 3 --threads 1

Default model: ResNet-18 RGB on 8 frames at 112x112 + MobileNetV2 audio on a 1x128x128
spectrogram, MobileNetV2 policy at 112x112, 8 segments per video: the paper's ResNet-18
pairing (docs/method.md, "Architecture") at a size that runs in about two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adamml.config import ClipSettings, ModelConfig, PolicyConfig
from adamml.evaluation.metrics import gflops_per_video
from adamml.models.adamml import AdaMML, build_adamml
from adamml.models.flops import modality_costs

RATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def bench_config(args: argparse.Namespace) -> tuple[ModelConfig, ClipSettings]:
    clip = ClipSettings(
        num_segments=args.segments,
        frames_per_segment=args.frames,
        crop_size=args.size,
        n_fft=2 * args.spec - 1,  # args.spec frequency bins
        audio_frames=args.spec,
    )
    model_cfg = ModelConfig(
        modalities=["rgb", "audio"],
        backbones={"rgb": args.rgb_backbone, "audio": "mobilenet_v2"},
        num_classes=31,
        fusion="weighted",
        policy=PolicyConfig(backbone="mobilenet_v2", resolution=args.size, frames=args.frames // 2),
    )
    return model_cfg, clip


def make_batch(args: argparse.Namespace, clip: ClipSettings, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    b, k, t, s = args.batch, args.segments, args.frames, args.size
    batch = {
        "rgb": torch.randn(b, k, t, 3, s, s, generator=g),
        "audio": torch.randn(b, k, 1, clip.n_fft // 2 + 1, args.spec, generator=g),
    }
    return {key: v.to(device) for key, v in batch.items()}


def forced_decisions(rate: float, b: int, k: int, seed: int = 0) -> torch.Tensor:
    """Exactly round(rate * b * k) RGB segments selected (at random places); audio always."""
    d = torch.zeros(b * k, 2)
    n = round(rate * b * k)
    d[torch.randperm(b * k, generator=torch.Generator().manual_seed(seed))[:n], 0] = 1
    d[:, 1] = 1
    return d.view(b, k, 2)


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_pair(fn_a, fn_b, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of two calls, alternated run by run so that a CPU shared with other
    work (load drifting during the benchmark) biases neither; one warm-up run each."""
    fn_a(), fn_b()
    a, b = [], []
    for _ in range(repeats):
        a.append(_seconds(fn_a, device))
        b.append(_seconds(fn_b, device))
    return statistics.median(a), statistics.median(b)


def run_device(model: AdaMML, args, clip, costs: dict[str, float], device: torch.device) -> None:
    model = model.to(device).eval()
    batch = make_batch(args, clip, device)
    b, k = args.batch, args.segments
    per_seg = [costs[m] for m in model.modalities]

    def infer(decisions: torch.Tensor, mode: str):
        def fn():
            with torch.no_grad():
                # The policy runs in every row: its time is part of AdaMML's inference.
                model.policy(model.policy.policy_inputs(batch), temperature=1.0, sample=False)
                return model(batch, mode=mode, decisions=decisions)

        return fn

    full = forced_decisions(1.0, b, k).to(device)
    masked_gf = statistics.fmean(gflops_per_video(full, per_seg, costs["policy"]))
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{name}{threads}: {b} video(s) x {k} segments per call, median of {args.repeats}")
    header = (
        f"{'RGB rate':>8} | {'conditional s/video':>19} {'GFLOPs':>8} | "
        f"{'masked s/video':>14} {'GFLOPs':>8} | {'time ratio':>10} {'GFLOPs ratio':>12}"
    )
    print(header)
    print("-" * len(header))
    for rate in RATES:
        d = forced_decisions(rate, b, k).to(device)
        # Masked runs everything whatever the decisions: the reference's cost at every rate.
        cond_s, masked_s = time_pair(
            infer(d, "conditional"), infer(d, "masked"), args.repeats, device
        )
        cond_s, masked_s = cond_s / b, masked_s / b
        cond_gf = statistics.fmean(gflops_per_video(d, per_seg, costs["policy"]))
        print(
            f"{rate:>8.0%} | {cond_s:>19.4f} {cond_gf:>8.2f} | "
            f"{masked_s:>14.4f} {masked_gf:>8.2f} | {cond_s / masked_s:>10.2f} "
            f"{cond_gf / masked_gf:>12.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CPU, then CUDA when available")
    parser.add_argument("--batch", type=int, default=1, help="videos per call")
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8, help="RGB frames per segment")
    parser.add_argument("--size", type=int, default=112, help="RGB crop (and policy) size")
    parser.add_argument("--spec", type=int, default=128, help="spectrogram is 1 x spec x spec")
    parser.add_argument("--rgb-backbone", default="resnet18")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_cfg, clip = bench_config(args)
    costs = modality_costs(model_cfg, clip)  # GMACs per segment, counted on the meta device
    print(
        f"AdaMML: {args.rgb_backbone} RGB {args.frames}x{args.size}^2, MobileNetV2 audio "
        f"1x{args.spec}x{args.spec}, policy MobileNetV2 {args.frames // 2}x{args.size}^2; "
        "GFLOPs per segment: "
        + ", ".join(f"{m} {c:.3f}" for m, c in costs.items())
    )
    torch.manual_seed(0)
    model = build_adamml(model_cfg, clip)
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    for device in devices:
        run_device(model, args, clip, costs, device)


if __name__ == "__main__":
    main()
