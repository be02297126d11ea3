"""Local engine vs Ray engine: videos/s for extraction and prediction, and per-stage times.

Run: ``python benchmarks/scale_out.py`` (a few minutes on 2 cores; needs ``pip install
'adamml[ray]'``; ``--help`` for sizes).

Both engines work on the same clips of the embedded dataset (4 s, 8 fps, 64 px, 16 kHz):
extraction of rgb + audio + DIS flow into the cache (the local engine with ``--workers`` =
the CPUs, the Ray engine on a local Ray with those CPUs), then prediction with a randomly
initialised model of ``--config`` (the local engine: one process, ``--local-threads`` torch
threads; Ray: one actor per CPU that decodes and predicts, batched). Ray is started and its workers warmed on
other clips before timing (a cluster is started once for a corpus); the local engine's process
pool start is part of each of its runs. The per-stage seconds are measured inside the Ray tasks
(one CPU each) and are what a cluster's throughput is estimated from: with W one-CPU workers,
videos/s ~= W / (seconds per video). Two rates per engine: end to end (start-up included: the
local engine's process pool, Ray's actors loading the model) and steady (after the first result,
by when the worker finished each video: the cache files' times for extraction, the manifest's
and the actors' clocks for prediction). The last table measures TV-L1 flow and the rest of
extraction at the Kinetics-Sounds settings (25 fps, short side 256, a 16:9 clip) and estimates
the 22,521 training videos on N workers (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

KINETICS_SOUNDS_TRAIN = 22_521
KINETICS_CLIP_S = 10.0


def make_checkpoint(config: str, folder: Path) -> Path:
    import torch

    from adamml.config import to_dict
    from adamml.config_files import load_config
    from adamml.models.build import build_model
    from adamml.runtime.checkpoint import save_checkpoint

    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model("adamml", cfg.model, cfg.data.clip)
    path = folder / "random_adamml.pt"
    classes = [f"class{i}" for i in range(cfg.model.num_classes)]
    save_checkpoint({"kind": "adamml", "model": model.state_dict(), "config": to_dict(cfg),
                     "model_config": to_dict(cfg.model), "class_names": classes}, path)
    return path


def clips(folder: Path, count: int) -> list[str]:
    from adamml.data.synth import generate_dataset

    per_class = -(-count // 12)
    generate_dataset(folder, seed=0, train_per_class=per_class, val_per_class=1, progress=False)
    return sorted(str(p) for p in (folder / "train").rglob("*.mp4"))[:count]


def kinetics_costs(folder: Path, frames: int) -> tuple[float, float]:
    """(CPU seconds per frame without flow, per TV-L1 frame pair) at the Kinetics settings,
    measured in this process before Ray starts, on one thread."""
    import numpy as np

    from adamml.config import DecodeSettings
    from adamml.data.cache import VideoCache
    from adamml.data.extract import extract_one, limit_threads
    from adamml.data.types import VideoEntry
    from adamml.data.writer import write_video

    limit_threads()
    rng = np.random.default_rng(0)
    import cv2

    base = cv2.GaussianBlur(rng.random((288, 560)).astype(np.float32), (0, 0), 3.0)
    base = (255 * (base - base.min()) / np.ptp(base)).astype(np.uint8)
    video = np.stack([np.repeat(base[:256, 3 * i : 3 * i + 456, None], 3, axis=2) for i in range(frames)])
    t = np.arange(int(frames / 25 * 24_000)) / 24_000
    path = write_video(folder / "kinetics_like.mp4", video, 25.0, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24_000)
    entry = VideoEntry(path=path, labels=[])
    times = {}
    for flow in (None, "tvl1"):
        cache = VideoCache(folder / f"k-{flow}", DecodeSettings(fps=25.0, short_side=256, sample_rate=24_000, flow=flow))
        t0 = time.process_time()  # CPU time: what a one-CPU worker spends, whatever else runs here
        extract_one(entry, cache)
        times[flow] = time.process_time() - t0
    return times[None] / frames, (times["tvl1"] - times[None]) / (frames - 1)


def steady_rate(times: list[float]) -> float:
    """Videos per second after the first result (start-up excluded): the videos finished after
    it over the time from it to the last. A batch finishes its videos at one time stamp."""
    times = sorted(times)
    after = [t for t in times if t > times[0]]
    return len(after) / max(times[-1] - times[0], 1e-9)


def finished_at(manifest: Path) -> list[float]:
    from adamml.scale.manifest import Manifest

    return [r["t"] for r in Manifest(manifest).records.values() if r["status"] == "done"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=64, help="timed clips (default 64)")
    parser.add_argument("--warmup", type=int, default=4, help="other clips that warm Ray's workers first")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for both engines")
    parser.add_argument("--config", default="demo", help="model of the prediction runs (random weights)")
    parser.add_argument("--batch-size", type=int, default=8, help="Ray: videos per model call")
    parser.add_argument("--actors", type=int, default=None, help="Ray: model actors (default: one per CPU)")
    parser.add_argument("--local-threads", type=int, default=1, help="torch threads of local prediction (default 1: "
                        "tiny models run faster on one thread than on two contended ones)")
    parser.add_argument("--kinetics-frames", type=int, default=6, help="frames of the Kinetics-sized clip; 0 skips it")
    parser.add_argument("--workers-estimate", default="1,16,64,256,1024", help="N of the Kinetics-Sounds estimate")
    args = parser.parse_args(argv)

    import ray

    from adamml.config import DecodeSettings
    from adamml.data.cache import VideoCache
    from adamml.data.extract import extract_videos
    from adamml.scale.batch import local_records, predict_to_jsonl
    from adamml.scale.extract import extract_videos_ray
    from adamml.scale.manifest import Manifest
    from adamml.scale.predict import ray_records

    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="adamml-scale-out-"))
    every = clips(work / "synth", args.videos + args.warmup)
    warm, videos = every[: args.warmup], every[args.warmup :]
    settings = DecodeSettings(fps=8.0, short_side=64, sample_rate=16_000, flow="dis")
    print(f"{len(videos)} clips (4 s, 8 fps, 64 px) + {len(warm)} warm-up clips, {args.cpus} CPUs", file=sys.stderr)

    kinetics = kinetics_costs(work, args.kinetics_frames) if args.kinetics_frames > 1 else None

    # --- extraction
    t0 = time.perf_counter()
    local_x = extract_videos(videos, VideoCache(work / "local", settings), workers=args.cpus, progress=False)
    local_x_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    extract_videos_ray(warm, VideoCache(work / "warm", settings), progress=False)
    ray_warm_s = time.perf_counter() - t0
    cache = VideoCache(work / "ray", settings)
    t0 = time.perf_counter()
    ray_x = extract_videos_ray(videos, cache, progress=False)
    ray_x_s = time.perf_counter() - t0
    assert local_x.done == ray_x.done == len(videos), (local_x.summary(), ray_x.summary())
    same = all(a.read_bytes() == b.read_bytes() for a, b in zip(VideoCache(work / "local", settings).entries(), cache.entries(), strict=True))
    extract_task_s = [r["seconds"] for r in Manifest(cache.folder / "manifest.jsonl").records.values() if r["status"] == "done"]

    # --- prediction
    checkpoint = make_checkpoint(args.config, work)
    import adamml

    model = adamml.load(checkpoint)
    import torch

    torch.set_num_threads(args.local_threads)
    t0 = time.perf_counter()
    local_p = predict_to_jsonl(videos, work / "local.jsonl", lambda todo: local_records(todo, model), progress=False)
    local_p_s = time.perf_counter() - t0
    list(ray_records(warm, checkpoint, batch_size=args.batch_size, actors=args.actors))  # start the actors' workers
    timings: list[tuple[float, float, float]] = []
    ray_p_start = time.time()
    t0 = time.perf_counter()
    ray_p = predict_to_jsonl(
        videos, work / "ray.jsonl",
        lambda todo: ray_records(todo, checkpoint, batch_size=args.batch_size, actors=args.actors, timings=timings),
        progress=False,
    )
    ray_p_s = time.perf_counter() - t0
    assert local_p.done == ray_p.done == len(videos), (local_p.summary(), ray_p.summary())

    n = len(videos)
    local_cache = VideoCache(work / "local", settings)
    rates = {
        "extract": (n / local_x_s, n / ray_x_s,
                    steady_rate([f.stat().st_mtime for f in local_cache.entries()]),
                    steady_rate([f.stat().st_mtime for f in cache.entries()])),
        "predict": (n / local_p_s, n / ray_p_s,
                    steady_rate(finished_at(work / "local.manifest.jsonl")),
                    steady_rate([t[2] for t in timings])),
    }
    print(f"\nRay start {ray_start_s:.1f} s; first Ray extraction of {len(warm)} warm-up clips {ray_warm_s:.1f} s (not counted); "
          f"Ray prediction's first result after {min(t[2] for t in timings) - ray_p_start:.1f} s (actors loading the model)")
    print(f"same cache bytes from both engines: {'yes' if same else 'NO'}\n")
    print("| job | local, end to end | Ray, end to end | local, steady | Ray, steady | Ray / local, steady |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    names = {"extract": f"extract rgb + audio + DIS flow (local: {args.cpus} processes)",
             "predict": f"predict ({args.config} model; local: {args.local_threads} torch thread(s); Ray: batch {args.batch_size})"}
    for job, (a, b, c, d) in rates.items():
        print(f"| {names[job]} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} | {d / c:.2f} |")
    decode_s = statistics.median(t[0] for t in timings)
    model_s = statistics.median(t[1] for t in timings)
    print("\n| stage (one Ray task or actor, 1 CPU) | median s/video | videos/s per CPU |")
    print("| --- | ---: | ---: |")
    for name, value in (
        ("extract: decode, rgb, audio, DIS flow, cache write", statistics.median(extract_task_s)),
        ("predict: decode and model inputs", decode_s),
        (f"predict: policy + selected sub-networks (batch {args.batch_size})", model_s),
    ):
        print(f"| {name} | {value:.4f} | {1 / value:.1f} |")

    if kinetics is not None:
        per_frame, per_pair = kinetics
        frames = int(KINETICS_CLIP_S * 25)
        per_video = frames * per_frame + (frames - 1) * per_pair
        core_hours = KINETICS_SOUNDS_TRAIN * per_video / 3600
        print(f"\nKinetics settings (25 fps, 456x256, 24 kHz; {args.kinetics_frames}-frame clip, one thread, CPU time): "
              f"{per_frame:.3f} s per frame without flow, {per_pair:.2f} s per TV-L1 frame pair; "
              f"a {KINETICS_CLIP_S:g} s clip: {per_video:.0f} s, {core_hours:,.0f} CPU-hours for the {KINETICS_SOUNDS_TRAIN:,} training videos")
        print("\n| one-CPU workers | Kinetics-Sounds train, rgb + audio + TV-L1 flow |")
        print("| ---: | ---: |")
        for w in (int(v) for v in args.workers_estimate.split(",")):
            hours = core_hours / w
            print(f"| {w} | {hours:,.1f} h ({hours / 24:,.1f} days) |")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
