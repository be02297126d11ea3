"""Training throughput of a paper configuration at full size: clips per second and memory.

Run: ``python benchmarks/train_throughput.py [--config kinetics_sounds_rgb_audio] [--steps 20]
[--batch-size 8] [--device auto]`` (on a GPU: ``--steps 300 --batch-size 32``).

What it times: AdaMML stage-3 training steps (masked execution, the efficiency loss, the
engine's own step, optimisers, autocast and gradient scaler) in both kinds of alternating
epoch, recognition and policy, on batches of random tensors with the config's full input
shapes (data loading is not included: ``benchmarks/extract.py`` times that). The first
``--warmup`` steps are not timed. Memory: peak allocated CUDA memory on a GPU, the process's
peak resident set on a CPU.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def make_batch(cfg, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    from adamml.modalities.table import MODALITIES
    from adamml.models.build import input_modalities

    clip = cfg.data.clip
    g = torch.Generator().manual_seed(0)
    batch: dict[str, torch.Tensor] = {}
    for m in input_modalities("adamml", cfg.model):  # the model's, then the policy's proxies
        batch[m] = torch.randn(batch_size, clip.num_segments, *MODALITIES[m].input_shape(clip), generator=g)
    batch["label"] = torch.randint(0, cfg.model.num_classes, (batch_size,), generator=g)
    batch["multi_hot"] = torch.nn.functional.one_hot(batch["label"], cfg.model.num_classes).float()
    return {key: v.to(device) for key, v in batch.items()}


def run_phase(task, batch, phase, runtime, precision: str, steps: int, warmup: int) -> tuple[float, float]:
    from adamml.training.engine import make_scaler, optimisation_step

    model = task.model
    task.set_trainable(phase)
    optimizers = task.make_optimizers(phase)
    scaler = make_scaler(runtime, precision)
    model.train()
    task.set_modes(phase)
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = None
    for i in range(warmup + steps):
        if i == warmup:
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        optimisation_step(task, model, batch, phase, optimizers, scaler, runtime, precision)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
        memory = torch.cuda.max_memory_allocated() / 2**30
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    seconds = time.perf_counter() - started
    return steps * batch["label"].shape[0] / seconds, memory


def main() -> None:
    from adamml.config_files import load_config
    from adamml.models.adamml import build_adamml
    from adamml.runtime.distributed import setup
    from adamml.training.schedule import Phase
    from adamml.training.stages import adamml_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="kinetics_sounds_rgb_audio")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on GPUs that have it) | 16 | 32")
    args = parser.parse_args()

    runtime = setup(args.device)
    torch.manual_seed(0)
    cfg = load_config(args.config, [])
    model = build_adamml(cfg.model, cfg.data.clip).to(runtime.device)
    task = adamml_task(model, cfg)
    batch = make_batch(cfg, args.batch_size, runtime.device)
    clip = cfg.data.clip
    name = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.config}: {', '.join(f'{m} {cfg.model.backbones[m]}' for m in cfg.model.modalities)}; "
          f"{clip.num_segments} segments x {clip.frames_per_segment} frames at {clip.crop_size}^2; "
          f"batch {args.batch_size}; precision {args.precision}; {name}\n")
    print("| epoch kind (what trains) | clips/s | segments/s | peak memory (GiB) |")
    print("| --- | ---: | ---: | ---: |")
    for trains in ("recognition", "policy"):
        rate, memory = run_phase(task, batch, Phase("alternate", trains, 0, 1), runtime, args.precision, args.steps, args.warmup)
        print(f"| alternating ({trains}) | {rate:.2f} | {rate * clip.num_segments:.1f} | {memory:.2f} |", flush=True)


if __name__ == "__main__":
    main()
