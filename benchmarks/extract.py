"""How fast does a video become model input? Videos per second for each stage of extraction.

Run: ``python benchmarks/extract.py`` (about 1-3 minutes on 2 cores; ``--help`` for sizes).

Stages are cumulative: decoding alone (the floor), + RGB clip, + audio spectrogram, + DIS flow
(computed at decode time, then stacked), + RGB difference; TV-L1 flow (the paper's, ~100x
slower than DIS) is timed on a small subset. Each stage runs over the same clips of the
embedded synthetic dataset (written with ``adamml.data.synth.generate_dataset`` if absent)
with 1 worker and with every core (spawned processes, one thread each; the pool is started
and warmed before timing, so start-up cost is not counted).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from adamml.config import ClipSettings, DecodeSettings

CLIP = ClipSettings(num_segments=5, frames_per_segment=4, frame_stride=1, stack_length=3, crop_size=56)

# stage name -> (flow method or None, modalities built after decoding)
STAGES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "decode (floor)": (None, ()),
    "+ rgb": (None, ("rgb",)),
    "+ audio spectrogram": (None, ("rgb", "audio")),
    "+ DIS flow": ("dis", ("rgb", "audio", "flow")),
    "+ rgbdiff": ("dis", ("rgb", "audio", "flow", "rgbdiff")),
    "rgb + audio + TV-L1 flow": ("tvl1", ("rgb", "audio", "flow")),
}


def _init() -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def process(path: str, short_side: int, sample_rate: int, flow: str | None, modalities: tuple[str, ...]) -> int:
    """Decode one video and build the requested modality tensors as a dataset would."""
    from adamml.data.video import decode_video
    from adamml.modalities.audio import log_spectrogram
    from adamml.modalities.flow import flow_clip
    from adamml.modalities.rgb import rgb_clip
    from adamml.modalities.rgbdiff import rgbdiff_clip
    from adamml.modalities.spatial import choose_crop

    settings = DecodeSettings(fps=8.0, short_side=short_side, sample_rate=sample_rate, flow=flow)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        video = decode_video(path, settings)
    n, h, w, _ = video.frames.shape
    k, t = CLIP.num_segments, CLIP.frames_per_segment
    starts = np.linspace(0, max(n - t * CLIP.frame_stride, 0), k).astype(int)
    indices = np.minimum(starts[:, None] + np.arange(t) * CLIP.frame_stride, n - 1)  # (K, T)
    crop = choose_crop(h, w, CLIP.crop_size, train=True, rng=np.random.default_rng(0))
    total = 0
    if "rgb" in modalities:
        total += rgb_clip(video.frames, indices, crop, CLIP.crop_size).size
    if "audio" in modalities:
        centres = (indices[:, t // 2] + 0.5) / video.fps
        total += log_spectrogram(video.audio, video.sample_rate, centres, CLIP, video.audio_missing).size
    if "flow" in modalities and video.flow is not None:
        total += flow_clip(video.flow, indices, CLIP.stack_length, crop, CLIP.crop_size).size
    if "rgbdiff" in modalities:
        total += rgbdiff_clip(video.frames, indices, CLIP.stack_length, crop, CLIP.crop_size).size
    return total


def _run_stage(
    pool: ProcessPoolExecutor,
    videos: list[str],
    short_side: int,
    sample_rate: int,
    flow: str | None,
    modalities: tuple[str, ...],
) -> float:
    """Seconds to process every video once on ``pool``."""
    m = len(videos)
    t0 = time.perf_counter()
    list(pool.map(process, videos, [short_side] * m, [sample_rate] * m, [flow] * m, [modalities] * m))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="synthetic dataset folder (default: a temp dir)")
    parser.add_argument("--videos", type=int, default=48, help="clips per stage (default 48)")
    parser.add_argument("--tvl1-videos", type=int, default=4, help="clips for the TV-L1 stage (default 4)")
    parser.add_argument("--short-side", type=int, default=64)
    parser.add_argument("--sample-rate", type=int, default=16_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="the 'all cores' setting")
    args = parser.parse_args(argv)

    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="adamml-bench-")
        root = Path(tmp.name)
    videos = sorted(str(p) for p in root.rglob("*.mp4"))
    if len(videos) < args.videos:
        from adamml.data.synth import generate_dataset

        per_class = -(-args.videos // 12)
        print(f"generating {per_class * 12} synthetic clips in {root} ...", file=sys.stderr)
        generate_dataset(root, train_per_class=per_class, val_per_class=0, progress=False)
        videos = sorted(str(p) for p in root.rglob("*.mp4"))
    videos = videos[: args.videos]
    print(f"{len(videos)} clips (4 s, 8 fps, 64 px, 16 kHz); short side {args.short_side}; "
          f"{CLIP.num_segments} segments x {CLIP.frames_per_segment} frames, crop {CLIP.crop_size}")

    worker_counts = sorted({1, max(1, args.workers)})
    rows = []
    pools = {
        n: ProcessPoolExecutor(n, mp_context=get_context("spawn"), initializer=_init) for n in worker_counts
    }
    try:
        for n, pool in pools.items():  # warm up: import everything in every worker
            list(pool.map(process, videos[:n], [args.short_side] * n, [args.sample_rate] * n,
                          ["dis"] * n, [("rgb", "audio", "flow", "rgbdiff")] * n))
        for stage, (flow, modalities) in STAGES.items():
            subset = videos[: args.tvl1_videos] if flow == "tvl1" else videos
            rates = []
            for n in worker_counts:
                seconds = _run_stage(pools[n], subset, args.short_side, args.sample_rate, flow, modalities)
                rates.append(len(subset) / seconds)
            rows.append((stage, len(subset), rates))
    finally:
        for pool in pools.values():
            pool.shutdown()
        if tmp is not None:
            tmp.cleanup()

    header = "| stage | clips | " + " | ".join(f"videos/s, {n} worker{'s' * (n > 1)}" for n in worker_counts) + " |"
    print(header)
    print("|" + " --- |" * (2 + len(worker_counts)))
    for stage, m, rates in rows:
        print(f"| {stage} | {m} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
