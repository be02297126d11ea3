"""Why the 0 % row of benchmarks/conditional.py costs more time than its share of GFLOPs.

At 0 % of the costly modality (RGB) AdaMML still runs its fixed part on every segment: the
policy's extractors and the networks of the cheap modalities (audio). This script times each
of those networks alone on one thread over one video's segments (micro-batched as the CPU
plan does), prints its multiply-adds per second beside the costly network's, and compares
the best the plan's workers could do with that work (the sum of the one-thread times over
the workers, as if they shared it perfectly and did not slow each other) against what the
conditional benchmark's target allows the 0 % row: at most ``--tolerance`` times its GFLOPs
share of the masked model's time, timed in the same rounds. A last table gives, for every rate,
the time ratio no schedule can beat (each network at its one-thread speed, the work shared
perfectly) beside the GFLOPs ratio.

    python benchmarks/fixed_part.py --config kinetics_sounds_rgb_audio --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from adamml.runtime.allocator import request_huge_pages

request_huge_pages()  # before torch starts (see adamml.runtime.allocator)

import torch  # noqa: E402
from einops import rearrange  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conditional import RATES, forced_decisions, load_average, make_batch, time_rounds  # noqa: E402

from adamml.config_files import load_config  # noqa: E402
from adamml.models.adamml import build_adamml  # noqa: E402
from adamml.models.execution import ExecutionPlan, run_many  # noqa: E402
from adamml.models.flops import (  # noqa: E402
    gflops_per_video,  # noqa: E402
    modality_costs,
    policy_cost,
)


def one_thread_seconds(net, x: torch.Tensor, plan: ExecutionPlan, rounds: int) -> float:
    """Median seconds of ``net`` over ``x`` on this thread alone, micro-batched as ``plan``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = time_rounds({0: {"net": lambda: run_many([(net, x)], plan)}}, rounds, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times[0, "net"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="kinetics_sounds_rgb_audio", help="a shipped config name or a YAML path")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads = the plan's workers (torch default)")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (medians reported)")
    parser.add_argument("--tolerance", type=float, default=1.1,
                        help="allowed time ratio / GFLOPs ratio at 0 %% (within 10 %%: 1.1)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    segments = cfg.data.eval_segments or cfg.data.clip.num_segments
    costs = modality_costs(cfg.model, cfg.data.clip)  # GMACs per segment
    policy_parts = {k: v / 2e9 for k, v in policy_cost(cfg.model, cfg.data.clip).parts.items()}
    torch.manual_seed(0)
    plan = ExecutionPlan.for_device("cpu")
    model = plan.prepare(build_adamml(cfg.model, cfg.data.clip))
    alone = ExecutionPlan.for_device("cpu", workers=1)
    batch = make_batch(model, cfg, 1, segments, torch.device("cpu"))
    costly = next(m for m in model.modalities if m != "audio")
    workers = plan.worker_count()

    with plan.context():
        policy_inputs = model.policy.policy_inputs(batch)
        flat = {m: rearrange(x, "b k ... -> (b k) ...") for m, x in batch.items()}
        rows = []  # (network, input, GMACs per video, seconds on one thread)
        for source, extractor in model.policy.extractors.items():
            x = rearrange(policy_inputs[source], "b k ... -> (b k) ...")
            rows.append((f"policy extractor ({source})", tuple(x.shape), policy_parts[source] * segments,
                         one_thread_seconds(extractor, x, alone, args.rounds)))
        for m in model.modalities:
            if m != costly:
                rows.append((f"{m} network", tuple(flat[m].shape), costs[m] * segments,
                             one_thread_seconds(model.recognition[m], flat[m], alone, args.rounds)))
        one_segment = flat[costly][:1]
        costly_s = one_thread_seconds(model.recognition[costly], one_segment, alone, args.rounds)

        zero = forced_decisions(0.0, 1, segments, model.modalities, costly)
        full = torch.ones_like(zero)

        def row(decisions: torch.Tensor, mode: str):
            def fn():
                model.policy(model.policy.policy_inputs(batch), temperature=1.0, sample=False)
                return model(batch, mode=mode, decisions=decisions)
            return fn

        print(f"before: {load_average()}", flush=True)
        times = time_rounds({0: {"zero": row(zero, "conditional"), "masked": row(full, "masked")}},
                            args.rounds, torch.device("cpu"))
        print(f"after:  {load_average()}")

    per_seg = [costs[m] for m in model.modalities]
    zero_gf = statistics.fmean(gflops_per_video(zero, per_seg, costs["policy"]))
    masked_gf = statistics.fmean(gflops_per_video(full, per_seg, costs["policy"]))
    print(f"\n{cfg.name}, {segments} segments, one video; one thread per network, median of {args.rounds}")
    print(f"{'network':<28} {'input':<24} {'GMACs':>7} {'1 thread s':>10} {'GMAC/s':>7}")
    for name, shape, gmacs, seconds in rows:
        print(f"{name:<28} {str(shape):<24} {gmacs:>7.2f} {seconds:>10.4f} {gmacs / seconds:>7.1f}")
    print(f"{costly + ' network, 1 segment':<28} {str(tuple(one_segment.shape)):<24} {costs[costly]:>7.2f} "
          f"{costly_s:>10.4f} {costs[costly] / costly_s:>7.1f}")
    work = sum(r[3] for r in rows)
    zero_s, masked_s = statistics.median(times[0, "zero"]), statistics.median(times[0, "masked"])
    allowed = args.tolerance * zero_gf / masked_gf * masked_s
    fixed_gmacs = sum(r[2] for r in rows)
    print(f"\nfixed part: {fixed_gmacs:.2f} GMACs, {work:.4f} s on one thread; on {workers} workers at best "
          f"{work / workers:.4f} s (shared perfectly, no slow-down when they run together)")
    print(f"0 % row (policy and fixed networks on the plan's {workers} workers): {zero_s:.4f} s; "
          f"masked model: {masked_s:.4f} s")
    print(f"target: time ratio <= {args.tolerance} x GFLOPs ratio {zero_gf / masked_gf:.3f}, i.e. the 0 % row "
          f"<= {allowed:.4f} s; the best the workers could do is {work / workers / allowed:.2f}x that")
    print(f"to meet it the fixed networks would need {fixed_gmacs / (allowed * workers):.1f} GMAC/s per thread "
          f"(they run at {fixed_gmacs / work:.1f} on average; the {costly} network at "
          f"{costs[costly] / costly_s:.1f})")
    # Every rate, as if each network ran at its one-thread speed and the workers shared the
    # work perfectly: the time ratio no schedule can beat, beside the GFLOPs ratio.
    print(f"\n{costly.upper() + ' rate':>8} | {'GFLOPs ratio':>12} | {'best time ratio':>15} | {'best time/GFLOPs':>16}")
    everything = work + segments * costly_s
    for rate in RATES:
        decisions = forced_decisions(rate, 1, segments, model.modalities, costly)
        n = int(decisions[..., model.modalities.index(costly)].sum())
        gf_ratio = statistics.fmean(gflops_per_video(decisions, per_seg, costs["policy"])) / masked_gf
        best = (work + n * costly_s) / everything
        print(f"{rate:>8.0%} | {gf_ratio:>12.3f} | {best:>15.3f} | {best / gf_ratio:>16.2f}")


if __name__ == "__main__":
    main()
