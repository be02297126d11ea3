"""Live AdaMML: a decision and a score per segment of a stream, as soon as the segment is in.

The policy is causal (an LSTM over segments) and every fusion head averages per-segment
outputs, so a stream needs no window: each segment of the model's own span (the frames one
training clip covers, or its audio window if longer: :func:`segment_span`) is decided on and
scored as soon as its frames and its audio window (the spectrogram's look-ahead past the
segment's end) have arrived, and the LSTM state is carried to the next one.

Two threads: a reader decodes the source into complete segments and hands them to the
model through a queue of at most ``queue_segments``, so decoding never waits for compute.
When the model falls behind real time, a segment that starts while the queue is full is
dropped by the reader before its frames are converted (decoded, never turned into arrays
or resized), and the queue discards its oldest segment if it still overflows: nothing
queues without bound and the output stays close to the stream. ``max_lag_s`` drops
segments that would be reached more than that far behind the stream, in the reader (before
conversion) when the reader itself is that late, else when the model takes them.

At start, :func:`measure_plan` times the model's own networks on a dummy segment of the
real shapes and says whether the expected compute per segment keeps up with the segment
span, or the span it would keep up with (:class:`LivePlan`, ``LiveRun.plan``).

Modes: ``carry`` (the state runs through the whole stream; a running video-level score
over the last ``running`` segments), ``window`` (the state restarts every N segments, and
the running score is that window's, as ``predict --window`` scores a window of N
segments). ``budget`` holds the running mean cost over a sliding minute at a fraction of
weighted fusion's GFLOPs by moving the policy's thresholds online (:class:`BudgetController`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adamml.config import ClipSettings
from adamml.data.datasets import cut_modalities
from adamml.data.sampling import clip_indices
from adamml.data.stream import LiveSource, StreamAudio, StreamError, StreamFrame, describe
from adamml.errors import AdamMLError
from adamml.inference.pipeline import Predictor
from adamml.inference.windows import Timeline, WindowResult
from adamml.media import DecodedVideo
from adamml.modalities.flow import LazyFlow, flow_clip
from adamml.modalities.spatial import choose_crop
from adamml.modalities.table import MODALITIES
from adamml.models.execution import run_many
from adamml.models.thresholds import Budget, Thresholds, fit_thresholds, use_margins

__all__ = ["LiveEvent", "LiveSummary", "LivePlan", "LiveRun", "BudgetController", "SegmentQueue", "segment_span",
           "measure_plan", "run_live"]

MODES = ("carry", "window")
# Keeping up means computing a segment in at most this share of its span: the rest is left
# for decoding, converting and the jitter of a shared machine.
KEEP_UP_SHARE = 0.8


def segment_span(clip: ClipSettings, fps: float, modalities: list[str]) -> int:
    """Frames per live segment: what one training clip covers (its frames and stacks; no
    stack when no stacked modality is used), or the audio window when that is longer."""

    stacked = any(MODALITIES[m].stacked for m in modalities)
    frames = (clip.frames_per_segment - 1) * clip.frame_stride + (clip.stack_length if stacked else 0) + 1
    audio = round(clip.audio_window_s * fps) if "audio" in modalities else 0
    return max(frames, audio, 1)


@dataclass
class LiveEvent:
    """One segment's outcome. Times in seconds of the stream (``start_s``, ``end_s``) or
    of the wall clock: ``latency_s`` from the arrival of the segment's last frame to its
    decision and score, of which ``wait_s`` waiting for its audio look-ahead, ``queue_s`` in
    the queue and ``compute_s`` computing; ``lag_s``: how far the result is behind the
    stream: the wall time since the stream's t = 0 minus the time stamp of the segment's last
    frame (the stream's clock is anchored on the frame that arrived soonest after its time)."""

    index: int
    start_s: float
    end_s: float
    decisions: dict[str, bool]
    gflops: float
    top: list[tuple[str, float]]  # this segment's score
    running: list[tuple[str, float]]  # the window's (window mode) or the last N segments'
    latency_s: float
    wait_s: float
    queue_s: float
    compute_s: float
    lag_s: float
    dropped_frames: int  # so far, in the whole stream
    dropped_segments: int
    budget: dict[str, float] | None = None  # target and running mean GFLOPs per segment, their gap
    scores: np.ndarray | None = field(default=None, repr=False)  # (C,) this segment's probabilities
    running_scores: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        body = asdict(self)
        body.pop("scores")
        body.pop("running_scores")
        return body


@dataclass
class LiveSummary:
    """The whole run: what was scored, what was dropped, how fast, how far from the budget."""

    source: str
    segment_s: float
    segments: int = 0
    dropped_segments: int = 0
    dropped_frames: int = 0
    dropped_unconverted: int = 0  # of the dropped frames, those dropped before conversion
    frames: int = 0  # frames the stream delivered (at the model's rate)
    duration_s: float = 0.0  # stream time read
    wall_s: float = 0.0
    compute_s: float = 0.0
    latency_median_s: float = 0.0
    latency_p95_s: float = 0.0
    wait_median_s: float = 0.0
    lag_max_s: float = 0.0
    lag_last_s: float = 0.0
    gflops_per_segment: float = 0.0
    selection: dict[str, float] = field(default_factory=dict)
    realtime_fraction: float = 0.0  # compute time / stream time: under 1 keeps up
    queue_peak: int = 0
    budget: dict[str, float] | None = None
    error: str | None = None
    interrupted: bool = False

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LivePlan:
    """Whether the model keeps up, said at start: the compute per segment measured on the
    model's own networks (a dummy segment of the real shapes, after one warm-up pass) at
    the expected selection ``rates``, against the segment's span in wall time (the span
    over ``pace`` on a replay). ``min_span_s``: the shortest span it keeps up with (the
    networks see the same clip whatever the span, so their compute does not grow with it)."""

    compute_s: float  # expected seconds per segment: inputs + policy + fusion + sum(rate x network)
    parts_s: dict[str, float]  # measured: "inputs", "policy" (with fusion), then each modality at 100 %
    rates: dict[str, float]  # the expected share of segments each modality runs on
    segment_s: float | None  # stream seconds per segment (None until the source's frame rate is known)
    fps: float | None
    pace: float = 1.0
    keeps_up: bool | None = None
    min_span_s: float | None = None

    def resolve(self, segment_s: float, fps: float) -> LivePlan:
        """Fill in the verdict once the segment span is known."""
        self.segment_s, self.fps = float(segment_s), float(fps)
        wall = self.segment_s / self.pace
        self.keeps_up = self.compute_s <= KEEP_UP_SHARE * wall
        frames = math.ceil(self.compute_s * self.pace / KEEP_UP_SHARE * fps - 1e-9)
        self.min_span_s = round(max(frames / fps, self.segment_s if self.keeps_up else 0.0), 4)
        return self

    def describe(self) -> str:
        """One line: it keeps up, or it does not and the span it would keep up with."""
        rates = ", ".join(f"{m} {100 * r:.0f}%" for m, r in self.rates.items())
        parts = ", ".join(f"{k} {v:.3f}" for k, v in self.parts_s.items())
        if self.segment_s is None:
            return f"compute {self.compute_s:.2f} s per segment ({rates}; measured s: {parts})"
        wall = f" ({self.segment_s / self.pace:.2f} s of wall time at pace {self.pace:g})" if self.pace != 1 else ""
        head = f"compute {self.compute_s:.2f} s per {self.segment_s:.2f} s segment{wall} ({rates}; measured s: {parts})"
        if self.keeps_up:
            return f"keeps up: {head}"
        return (f"cannot keep up at this span: {head}; it keeps up with segments of >= {self.min_span_s:.2f} s "
                f"(--span {self.min_span_s:.2f}, or a data.clip whose training clips span that long)")

    def to_json(self) -> dict:
        return {**asdict(self), "statement": self.describe()}


class SegmentQueue:
    """At most ``capacity`` segments between reader and model. Full: ``drop`` discards the
    oldest waiting segment (live sources: the output stays near the stream), ``block`` makes
    the reader wait (a file read as fast as it decodes, nothing lost)."""

    def __init__(self, capacity: int, on_full: str = "drop") -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        if on_full not in ("drop", "block"):
            raise ValueError(f"on_full must be 'drop' or 'block', got {on_full!r}")
        self.capacity = capacity
        self.on_full = on_full
        self.items: deque = deque()
        self.cond = threading.Condition()
        self.dropped: list = []  # what was discarded, for the counts
        self.peak = 0
        self.closed = False

    def put(self, item) -> None:
        with self.cond:
            while len(self.items) >= self.capacity and not self.closed:
                if self.on_full == "drop":
                    self.dropped.append(self.items.popleft())
                else:
                    self.cond.wait(0.1)
            self.items.append(item)
            self.peak = max(self.peak, len(self.items))
            self.cond.notify_all()

    def get(self):
        with self.cond:
            while not self.items:
                self.cond.wait(0.1)
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def take_dropped(self) -> list:
        with self.cond:
            out, self.dropped = self.dropped, []
            return out

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


@dataclass
class _Segment:
    """A complete segment handed from the reader to the model."""

    index: int
    frames: np.ndarray  # (n <= S, H, W, 3) its frames
    audio: np.ndarray  # float32 piece of the track from sample ``audio_start``
    audio_start: int
    audio_missing: bool
    last_frame_at: float  # wall time its last frame arrived
    ready_at: float  # wall time its audio look-ahead arrived too


@dataclass
class _Skipped:
    """A segment the reader dropped before converting its frames (it was behind)."""

    index: int
    frames: int


class _End:
    """Sentinel: the source ended (``error`` None) or broke off."""

    def __init__(self, error: str | None = None, frames: int = 0) -> None:
        self.error = error
        self.frames = frames


class _Assembler:
    """Reader side: stream frames and audio -> complete segments of ``span`` frames, each with
    the audio its spectrogram window needs. Holds one segment's frames and a few seconds of
    audio, whatever the stream's length."""

    def __init__(self, span: int, fps: float, clip: ClipSettings, local: np.ndarray, rate: int, audio: bool) -> None:
        self.span, self.fps, self.clip, self.rate = span, fps, clip, rate
        self.local = local  # (T,) frame indices inside a segment
        self.frames: list[np.ndarray] = []
        self.first = 0  # stream index of frames[0] = start of the current segment
        self.index = 0
        self.audio_enabled = audio
        self.samples: list[np.ndarray] = []
        self.audio_first = 0
        self.audio_count = 0
        self.audio_at: deque = deque()  # (sample count reached, wall time)
        self.arrivals: list[float] = []  # wall time each held frame arrived
        self.required = int(round(clip.audio_window_s * rate))
        self.margin = rate // 10

    def _window(self, index: int) -> tuple[int, int]:
        """Absolute [start, stop) samples of segment ``index``'s spectrogram window."""
        local = self.local
        centre = (index * self.span + (local[0] + local[-1]) / 2.0) / self.fps
        # Shifted inside the track at its start, as the spectrogram's rule does.
        start = max(0, int(round((centre - self.clip.audio_window_s / 2.0) * self.rate)))
        return start, start + self.required

    def push(self, item: StreamFrame | StreamAudio) -> None:
        if isinstance(item, StreamFrame):
            self.frames.append(item.image)
            self.arrivals.append(item.arrival)
        else:
            self.samples.append(item.samples)
            self.audio_count = item.start + len(item.samples)
            self.audio_at.append((self.audio_count, item.arrival))

    def ready(self, final: bool) -> bool:
        if len(self.frames) < self.span and not (final and self.frames):
            return False
        if not self.audio_enabled or final:
            return True
        return self.audio_count >= self._window(self.index)[1]

    def emit(self, final: bool) -> _Segment | _Skipped:
        take = self.frames[: self.span]
        skipped = any(image is None for image in take)
        start, stop = self._window(self.index)
        joined = np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)
        available = self.audio_first + len(joined)
        stop = min(stop, available)
        # Enough before the window that the shift inside the track (at its end) stays inside.
        lo = max(0, min(start, stop - self.required) - self.margin, self.audio_first)
        piece = joined[lo - self.audio_first : max(lo, stop) - self.audio_first]
        frame_at = self.arrivals[len(take) - 1]
        ready_at = frame_at
        if self.audio_enabled and not final:
            reached = self._window(self.index)[1]
            ready_at = max(ready_at, next((t for n, t in self.audio_at if n >= reached), ready_at))
        segment = (_Skipped(self.index, len(take)) if skipped else
                   _Segment(self.index, np.stack(take), piece.astype(np.float32), lo,
                            not self.audio_enabled or piece.size == 0, frame_at, ready_at))
        # Keep only what later segments need.
        self.frames = self.frames[self.span :]
        self.arrivals = self.arrivals[self.span :]
        self.first += len(take)
        self.index += 1
        keep_from = max(0, self._window(self.index)[0] - self.required - self.margin)
        if keep_from > self.audio_first:
            joined = joined[min(keep_from - self.audio_first, len(joined)) :]
            self.audio_first = keep_from
        self.samples = [joined] if joined.size else []
        while len(self.audio_at) > 1 and self.audio_at[1][0] <= self.audio_first:
            self.audio_at.popleft()
        return segment


class BudgetController:
    """Hold the mean cost per segment over a sliding window (a minute of stream) at
    ``target`` GFLOPs, with the threshold knob of ``--budget`` at evaluation
    (:class:`~adamml.models.thresholds.Thresholds`): after each segment the thresholds are
    refitted (:func:`fit_thresholds`) on the margins of the window's segments, for the
    cost the next segment may spend so that the window's mean comes back to the target."""

    def __init__(self, target: float, costs: list[float], policy_cost: float, modalities: list[str],
                 *, horizon: int, initial: Thresholds | None = None, gain: float = 0.25) -> None:
        self.target = float(target)
        self.costs = list(costs)
        self.policy_cost = float(policy_cost)
        self.modalities = list(modalities)
        self.horizon = max(1, int(horizon))
        self.gain = gain
        self.margins: deque = deque(maxlen=self.horizon)
        self.spent: deque = deque(maxlen=self.horizon)
        self.thresholds = initial or Thresholds.from_lambda(0.0, self.modalities, self.costs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.spent)) if self.spent else 0.0

    def update(self, margins: torch.Tensor, cost: float) -> Thresholds:
        """Record one segment's margins (M,) and what it cost; the thresholds for the next."""
        self.margins.append(margins.reshape(-1).double().cpu())
        self.spent.append(float(cost))
        n = len(self.spent)
        # Under (over) the target so far: the next segments may spend more (less).
        error = self.target * n - float(sum(self.spent))
        allowance = self.target + self.gain * error
        low, high = self.policy_cost, self.policy_cost + sum(self.costs)
        allowance = min(max(allowance, low), high)
        history = torch.stack(list(self.margins))[None]  # (1, n, M)
        self.thresholds = fit_thresholds(history, self.costs, self.policy_cost, allowance * n, self.modalities)
        return self.thresholds

    def report(self) -> dict[str, float]:
        mean = self.mean
        return {"target_gflops": self.target, "mean_gflops": mean,
                "gap": mean / self.target - 1.0 if self.target else 0.0}


class LiveRun:
    """The events of a live run (iterate it); ``summary`` once it has ended. ``stop()``
    ends it from another thread (or after Ctrl-C), with the summary of what was scored."""

    def __init__(self, generator_factory, plan: LivePlan | None = None) -> None:
        self.summary: LiveSummary | None = None
        self.plan = plan  # said at start (None when not measured; resolved once the span is known)
        self._stop = threading.Event()
        self._iterator = generator_factory(self)

    def __iter__(self) -> Iterator[LiveEvent]:
        return self

    def __next__(self) -> LiveEvent:
        return next(self._iterator)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self._iterator.close()


def _fusion_scores(fusion, parts: list[tuple]) -> np.ndarray:
    """Fused probabilities (C,) over segments given as (logits (1,1,M,C), features, decisions)."""
    logits = torch.cat([p[0] for p in parts], dim=1)
    features = [torch.cat([p[1][m] for p in parts], dim=1) for m in range(len(parts[0][1]))]
    decisions = torch.cat([p[2] for p in parts], dim=1)
    return torch.softmax(fusion(logits, features, decisions).float(), dim=-1)[0].cpu().numpy()


def _top(scores: np.ndarray, names: list[str], k: int) -> list[tuple[str, float]]:
    return [(names[j], round(float(scores[j]), 6)) for j in np.argsort(-scores, kind="stable")[:k]]


def run_live(
    bundle,
    source: str,
    *,
    mode: str = "carry",
    window: int | None = None,
    running: int = 10,
    max_lag_s: float | None = None,
    budget: Budget | None = None,
    topk: int = 5,
    device: str = "cpu",
    pace: float | None = None,
    follow_idle_s: float = 3.0,
    timeout_s: float = 10.0,
    queue_segments: int = 2,
    on_full: str = "auto",
    span_frames: int | None = None,
    span_s: float | None = None,
    format: str | None = None,
    simulate_compute_s: float = 0.0,
    plan: bool = True,
    expect: dict[str, float] | None = None,
    skip_behind: bool = True,
    predictor=None,
) -> LiveRun:
    """Decide and score each segment of ``source`` as it arrives; ``bundle`` is a
    :class:`~adamml.models.build.LoadedModel` (or a checkpoint path).

    ``mode``: "carry" or "window" (the policy's state restarts every ``window`` segments,
    by default the model's evaluation segment count). ``running``: segments in carry mode's
    running score. ``max_lag_s``: drop segments the model would reach further behind the
    stream. ``budget``: hold the mean cost over the last minute at B. ``pace``: replay a
    finished file at that multiple of real time. ``on_full``: "drop" (the oldest waiting
    segment), "block" (the reader waits: nothing lost) or "auto": drop for URLs, cameras and
    paced replays, block for files and pipes (what waits there stays on disk or in the
    writer; ``max_lag_s`` then bounds the lag). ``span_frames`` or ``span_s``: frames (or
    seconds) per segment (default :func:`segment_span`; longer spans place the clip at the
    segment's centre). ``simulate_compute_s``: extra seconds of work per segment, to see how
    a slower machine would keep up. ``plan``: measure at start whether the model keeps up
    (``LiveRun.plan``, :class:`LivePlan`; a warm-up of two passes over the networks) at the
    selection rates ``expect`` (modality -> share of segments; default: what ``budget``
    allows, else every modality on every segment). ``skip_behind`` False: the reader converts
    every frame and only the queue drops (to compare).
    Source errors end the iteration with :class:`~adamml.data.stream.StreamError` after the
    events so far; ``LiveRun.summary`` then holds the error too.
    """
    if isinstance(bundle, str | Path):
        from adamml.models.build import model_from_checkpoint  # torch: only when a path is given

        bundle = model_from_checkpoint(bundle)
    cfg = bundle.cfg
    if not bundle.stage.adaptive:
        raise AdamMLError(f"live prediction needs an AdaMML checkpoint (a policy to step), got a {bundle.kind!r} model")
    if mode not in MODES:
        raise AdamMLError(f"live mode must be one of {', '.join(MODES)}, got {mode!r}")
    if running < 1:
        raise AdamMLError(f"the running score needs at least 1 segment, got {running}")

    predictor = predictor or Predictor(bundle, device=device)
    clip = cfg.data.clip
    settings = cfg.data.decode
    window = int(window or cfg.data.eval_segments or clip.num_segments) if mode == "window" else None
    if window is not None and window < 1:
        raise AdamMLError(f"--mode window needs N >= 1 segments, got {window}")
    modalities = list(predictor.model_cfg.modalities)
    if span_s is not None and settings.fps is not None:
        own = segment_span(clip, float(settings.fps), modalities)
        if round(span_s * settings.fps) < own:
            raise AdamMLError(f"--span {span_s:g}: shorter than the model's own segment "
                              f"({own / settings.fps:.2f} s, {own} frames at {settings.fps:g} fps)")
    rates = expected_rates(predictor, budget, expect)
    live_plan = None
    if plan:
        live_plan = measure_plan(predictor, rates, simulate_compute_s=simulate_compute_s, pace=pace or 1.0)
        if settings.fps is not None:
            fps = float(settings.fps)
            span = span_frames or (max(round(span_s * fps), segment_span(clip, fps, modalities)) if span_s
                                   else segment_span(clip, fps, modalities))
            live_plan.resolve(span / fps, fps)

    def generate(run: LiveRun) -> Iterator[LiveEvent]:
        yield from _live_events(run, predictor, source, mode=mode, window=window, running=running,
                                max_lag_s=max_lag_s, budget=budget, topk=topk, pace=pace,
                                follow_idle_s=follow_idle_s, timeout_s=timeout_s,
                                queue_segments=queue_segments, on_full=on_full, span_frames=span_frames,
                                span_s=span_s, format=format, simulate_compute_s=simulate_compute_s, clip=clip,
                                settings=settings, skip_behind=skip_behind)

    return LiveRun(generate, live_plan)


def expected_rates(predictor, budget: Budget | None, expect: dict[str, float] | None) -> dict[str, float]:
    """The share of segments each modality is expected to run on: ``expect`` where given,
    else the uniform share a fraction ``budget`` allows, else 1 (every segment: the most a
    segment can cost)."""
    modalities = list(predictor.model_cfg.modalities)
    unknown = sorted(set(expect or {}) - set(modalities))
    if unknown:
        raise AdamMLError(f"expected rate for {', '.join(unknown)}: not a modality of this model ({', '.join(modalities)})")
    default = 1.0
    if budget is not None:
        costs = predictor.costs
        total = sum(costs[m] for m in modalities)
        target = budget.gflops(total) if budget.unit == "fraction" else budget.value
        default = min(max((target - costs["policy"]) / total, 0.0), 1.0) if total else 1.0
    rates = {m: float((expect or {}).get(m, default)) for m in modalities}
    bad = {m: r for m, r in rates.items() if not 0.0 <= r <= 1.0}
    if bad:
        raise AdamMLError(f"expected rates must be between 0 and 1, got {bad}")
    return rates


def _segment_batch(predictor, frames: np.ndarray, audio: np.ndarray, audio_start: int, audio_missing: bool,
                   local: np.ndarray, fps: float, start_s: float) -> tuple[dict[str, torch.Tensor], np.ndarray, tuple]:
    """One segment's input tensors, cut as a dataset cuts them (layouts.py), K = 1; with the
    frame indices and the crop (flow is computed later, only when it runs)."""
    clip, settings = predictor.cfg.data.clip, predictor.cfg.data.decode
    n, height, width = frames.shape[:3]
    indices = np.minimum(local, n - 1)[None]
    decoded = DecodedVideo(frames=frames, fps=fps, audio=audio, sample_rate=int(settings.sample_rate),
                           audio_missing=audio_missing)
    crop = choose_crop(height, width, clip.crop_size, False)
    audio_offset = start_s - audio_start / settings.sample_rate
    sample = cut_modalities(decoded, indices, crop, clip, audio_offset, list(predictor.needed), predictor.frame_subsets)
    return {k: v.unsqueeze(0).to(predictor.device) for k, v in sample.items()}, indices, crop


def measure_plan(predictor, rates: dict[str, float], *, simulate_compute_s: float = 0.0, pace: float = 1.0,
                 repeats: int = 1) -> LivePlan:
    """Time one segment's work on the model's own networks, on a dummy segment of the real
    shapes (random frames of the config's short side, 16:9, and random audio), after one
    warm-up pass: cutting the inputs, the policy step with fusion, and each modality's
    network (with its flow) alone; the expected compute adds the networks at ``rates``."""
    cfg = predictor.cfg
    clip, settings = cfg.data.clip, cfg.data.decode
    modalities = list(predictor.model_cfg.modalities)
    stacked = any(MODALITIES[m].stacked for m in predictor.needed) or predictor.defer_flow
    sampling = clip if stacked else dataclasses.replace(clip, stack_length=0)
    fps = float(settings.fps or 25.0)
    span = segment_span(clip, fps, modalities)
    local = clip_indices(np.array([max(0, (span - sampling.segment_span) // 2)]), sampling, span)[0]
    rng = np.random.default_rng(0)
    short = int(settings.short_side or clip.crop_size)
    frames = rng.integers(0, 256, (span, short, max(short, round(short * 16 / 9)), 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(int(span / fps * settings.sample_rate) + int(settings.sample_rate))).astype(np.float32)
    timings: dict[str, list[float]] = {}
    for _ in range(1 + repeats):
        started = time.perf_counter()
        batch, indices, crop = _segment_batch(predictor, frames, audio, 0, False, local, fps, 0.0)
        timings.setdefault("inputs", []).append(time.perf_counter() - started)
        for name, seconds in _time_networks(predictor, batch, frames, indices, crop).items():
            timings.setdefault(name, []).append(seconds)
    parts = {k: float(np.median(v[1:])) for k, v in timings.items()}
    compute = parts["inputs"] + parts["policy"] + sum(rates[m] * parts[m] for m in modalities) + simulate_compute_s
    if simulate_compute_s:
        parts["simulated"] = float(simulate_compute_s)
    return LivePlan(compute_s=round(compute, 4), parts_s={k: round(v, 4) for k, v in parts.items()},
                    rates=dict(rates), segment_s=None, fps=None, pace=float(pace))


def _live_events(run: LiveRun, predictor, source: str, *, mode, window, running, max_lag_s, budget, topk, pace,
                 follow_idle_s, timeout_s, queue_segments, on_full, span_frames, span_s, format, simulate_compute_s,
                 clip: ClipSettings, settings, skip_behind: bool = True) -> Iterator[LiveEvent]:
    model, model_cfg, names = predictor.model, predictor.model_cfg, predictor.class_names
    policy = model.policy
    modalities = list(model_cfg.modalities)
    needed = list(predictor.needed)
    flow_needed = predictor.defer_flow
    stacked = any(MODALITIES[m].stacked for m in needed) or flow_needed
    sampling = clip if stacked else dataclasses.replace(clip, stack_length=0)
    if on_full == "auto":
        on_full = "drop" if pace is not None or describe(source) in ("network", "camera") else "block"
    queue = SegmentQueue(queue_segments, on_full)
    speed = pace or 1.0  # stream seconds per wall second (a replay may run faster than real time)
    started = threading.Event()
    info: dict = {"skipped_frames": 0, "skipped_segments": 0}
    decided = [-1, False]  # the segment last decided on by the reader, and whether it is skipped

    def skip(index: int) -> bool:
        """Asked by the reader before converting output frame ``index``: drop its segment
        unconverted when the model cannot take it (the queue is full when it starts, on a
        dropping source) or the reader is already more than ``max_lag_s`` behind."""
        span = info.get("span")
        if not span:
            return False
        segment = index // span
        if segment != decided[0]:
            full = on_full == "drop" and len(queue.items) >= queue.capacity
            late = (max_lag_s is not None and
                    time.perf_counter() - info["wall0"] - index / info["fps"] / speed > max_lag_s)
            decided[:] = [segment, full or late]
        return decided[1]

    source_obj = LiveSource(source, settings, pace=pace, follow_idle_s=follow_idle_s, timeout_s=timeout_s,
                            format=format, skip=skip if skip_behind else None)

    def hand_on(segment) -> None:
        if isinstance(segment, _Skipped):
            info["skipped_frames"] += segment.frames
            info["skipped_segments"] += 1
        else:
            queue.put(segment)

    def read() -> None:
        assembler = None
        frames = 0
        try:
            for item in source_obj:
                if run._stop.is_set():
                    break
                if assembler is None:
                    rate = source_obj.fps
                    span = span_frames or segment_span(clip, rate, modalities)
                    if span_s and not span_frames:
                        span = max(span, round(span_s * rate))
                    offset = max(0, (span - sampling.segment_span) // 2)
                    local = clip_indices(np.array([offset]), sampling, span)[0]
                    info.update(fps=rate, span=span, local=local, wall0=float("inf"),
                                has_audio=bool(source_obj.has_audio))
                    assembler = _Assembler(span, rate, clip, local, int(settings.sample_rate), bool(source_obj.has_audio))
                    started.set()
                if isinstance(item, StreamFrame):
                    # The stream's clock: the wall time of its t = 0, from the frame that came
                    # soonest after its time stamp (the first frames may come late, in a burst).
                    info["wall0"] = min(info["wall0"], item.arrival - item.index / info["fps"] / speed)
                    frames += 1
                assembler.push(item)
                while assembler.ready(final=False):
                    hand_on(assembler.emit(final=False))
            if assembler is not None:
                while assembler.ready(final=True):
                    hand_on(assembler.emit(final=True))
            queue.put(_End(None, frames))
        except StreamError as exc:
            queue.put(_End(str(exc), frames))
        except Exception as exc:  # noqa: BLE001 (handed to the consumer, which re-raises it)
            info["crash"] = exc
            queue.put(_End(f"{source}: {exc}", frames))
        finally:
            started.set()

    reader = threading.Thread(target=read, name="adamml-live-reader", daemon=True)
    reader.start()
    costs = predictor.costs
    per_seg = [costs[m] for m in modalities]
    summary = LiveSummary(source=str(source), segment_s=0.0)
    run.summary = summary
    controller = None
    history: deque = deque(maxlen=window or running)
    state = None
    latencies, waits, dropped_frames, dropped_segments = [], [], 0, 0
    selected = np.zeros(len(modalities))
    warned_audio = False
    first_wall = time.perf_counter()
    end: _End | None = None
    try:
        while True:
            if run._stop.is_set():
                break
            item = queue.get()
            for lost in queue.take_dropped():
                dropped_segments += 1
                dropped_frames += len(lost.frames)
            if isinstance(item, _End):
                end = item
                break
            span, seg_fps = info["span"], info["fps"]
            summary.segment_s = span / seg_fps
            if run.plan is not None and run.plan.segment_s is None:
                run.plan.resolve(summary.segment_s, seg_fps)
            if controller is None and budget is not None:
                horizon = max(1, int(round(60.0 / summary.segment_s)))
                initial = Thresholds(tuple(modalities), tuple(float(t) for t in policy.use_thresholds), 0.0)
                controller = BudgetController(budget.gflops(sum(per_seg)) if budget.unit == "fraction" else budget.value,
                                              per_seg, costs["policy"], modalities, horizon=horizon, initial=initial)
            start_s, end_s = item.index * span / seg_fps, (item.index * span + len(item.frames)) / seg_fps
            picked = time.perf_counter()
            last_frame_s = end_s - 1.0 / seg_fps  # the time stamp of its last frame
            if max_lag_s is not None and picked - info["wall0"] - last_frame_s / speed > max_lag_s:
                dropped_segments += 1
                dropped_frames += len(item.frames)
                continue
            if item.audio_missing and "audio" in needed and not warned_audio:
                warned_audio = True
                warnings.warn(f"{source}: no audio track; the spectrograms are all zeros", stacklevel=2)
            if window is not None and item.index % window == 0:
                state = None
                history.clear()
            batch, indices, crop = _segment_batch(predictor, item.frames, item.audio, item.audio_start,
                                                  item.audio_missing, info["local"], seg_fps, start_s)
            with predictor.plan.context():
                features = policy.joint_features(policy.policy_inputs(batch))[:, 0]
                out, state = policy.step(features, state)
                margins = use_margins(out.logits.float()).cpu()  # (1, 1, M)
                # Causal: a stream's segment is decided as it comes, by thresholds only (no
                # per-video quota, which needs the whole video's margins).
                decisions = (controller.thresholds.decide(margins, whole_videos=False) if controller is not None
                             else policy.decide(margins, whole_videos=False))
                chosen = [i for i, m in enumerate(modalities) if decisions[0, 0, i] > 0.5]
                if flow_needed and modalities.index("flow") in chosen:
                    batch["flow"] = _flow_input(item.frames, indices, clip, crop, predictor.flow_method).to(predictor.device)
                outputs = run_many([(model.recognition[modalities[i]], batch[modalities[i]][:, 0]) for i in chosen],
                                   model.execution)
                got = dict(zip(chosen, outputs, strict=True))
                logits, feats = [], []
                for i, m in enumerate(modalities):
                    net = model.recognition[m]
                    lg, ft = got.get(i, (torch.zeros(1, net.num_classes), torch.zeros(1, net.feature_dim)))
                    logits.append(lg.float().cpu())
                    feats.append(ft.float().cpu()[:, None])
                part = (torch.stack(logits, dim=1)[:, None], feats, decisions.float())
                scores = _fusion_scores(model.fusion, [part])
                history.append(part)
                running_scores = _fusion_scores(model.fusion, list(history))
            if simulate_compute_s > 0:
                time.sleep(simulate_compute_s)
            done = time.perf_counter()
            gflops = float(sum(per_seg[i] for i in chosen)) + costs["policy"]
            if controller is not None:
                controller.update(margins[0, 0], gflops)
            selected += decisions[0, 0].numpy()
            latency = done - item.last_frame_at
            latencies.append(latency)
            waits.append(item.ready_at - item.last_frame_at)
            summary.segments += 1
            summary.compute_s += done - picked
            summary.gflops_per_segment += gflops
            event = LiveEvent(
                index=item.index, start_s=round(start_s, 4), end_s=round(end_s, 4),
                decisions={m: bool(decisions[0, 0, i] > 0.5) for i, m in enumerate(modalities)},
                gflops=gflops, top=_top(scores, names, topk), running=_top(running_scores, names, topk),
                latency_s=round(latency, 4), wait_s=round(item.ready_at - item.last_frame_at, 4),
                queue_s=round(picked - item.ready_at, 4), compute_s=round(done - picked, 4),
                lag_s=round(done - info["wall0"] - last_frame_s / speed, 4),
                dropped_frames=dropped_frames + info["skipped_frames"],
                dropped_segments=dropped_segments + info["skipped_segments"], budget=controller.report() if controller is not None else None,
                scores=scores, running_scores=running_scores,
            )
            summary.lag_last_s = event.lag_s
            summary.lag_max_s = max(summary.lag_max_s, event.lag_s)
            summary.duration_s = event.end_s
            yield event
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        run.stop()
        source_obj.closed = True
        queue.close()
        summary.wall_s = time.perf_counter() - first_wall
        summary.dropped_frames = dropped_frames + info["skipped_frames"]
        summary.dropped_segments = dropped_segments + info["skipped_segments"]
        summary.dropped_unconverted = info["skipped_frames"]
        summary.queue_peak = queue.peak
        if end is not None:
            summary.frames = end.frames
        if "fps" in info and summary.frames:
            summary.duration_s = max(summary.duration_s, summary.frames / info["fps"])
        if summary.segments:
            summary.gflops_per_segment /= summary.segments
            summary.selection = {m: round(float(selected[i] / summary.segments), 4) for i, m in enumerate(modalities)}
            summary.latency_median_s = float(np.median(latencies))
            summary.latency_p95_s = float(np.percentile(latencies, 95))
            summary.wait_median_s = float(np.median(waits))
        if summary.duration_s:
            summary.realtime_fraction = summary.compute_s / (summary.duration_s / speed)
        if controller is not None:
            summary.budget = controller.report()
    if end is not None and end.error is not None:
        summary.error = end.error
        if "crash" in info:
            raise info["crash"]
        raise StreamError(end.error)


def _time_networks(predictor, batch: dict[str, torch.Tensor], frames: np.ndarray, indices: np.ndarray,
                   crop) -> dict[str, float]:
    """Seconds of the policy step with fusion, then of each modality's network (with its
    flow) alone, on one segment's inputs."""
    model, clip = predictor.model, predictor.cfg.data.clip
    policy = model.policy
    modalities = list(predictor.model_cfg.modalities)
    nets = [model.recognition[m] for m in modalities]
    out: dict[str, float] = {}
    with predictor.plan.context():
        started = time.perf_counter()
        features = policy.joint_features(policy.policy_inputs(batch))[:, 0]
        step, _ = policy.step(features, None)
        policy.decide(use_margins(step.logits.float()).cpu(), whole_videos=False)
        part = (torch.zeros(1, 1, len(modalities), nets[0].num_classes),
                [torch.zeros(1, 1, net.feature_dim) for net in nets], torch.ones(1, 1, len(modalities)))
        _fusion_scores(model.fusion, [part])
        out["policy"] = time.perf_counter() - started
        for m, net in zip(modalities, nets, strict=True):
            started = time.perf_counter()
            if m == "flow" and predictor.defer_flow:
                x = _flow_input(frames, indices, clip, crop, predictor.flow_method).to(predictor.device)[:, 0]
            else:
                x = batch[m][:, 0]
            run_many([(net, x)], model.execution)
            out[m] = time.perf_counter() - started
    return out


def _flow_input(frames: np.ndarray, indices: np.ndarray, clip: ClipSettings, crop, method: str) -> torch.Tensor:
    """(1, 1, T, 2L, S, S) flow of one segment, computed on its frames only."""

    values = flow_clip(LazyFlow(frames, method), indices, clip.stack_length, crop, clip.crop_size)
    return torch.from_numpy(np.ascontiguousarray(values)).float()[None]


def events_timeline(events: list[LiveEvent], source: str, modalities: list[str]):
    """A :class:`~adamml.inference.windows.Timeline` of per-segment results, for its plot."""

    timeline = Timeline(video=str(source), window_s=(events[0].end_s - events[0].start_s) if events else 0.0,
                        duration_s=events[-1].end_s if events else 0.0, modalities=list(modalities))
    for e in events:
        timeline.windows.append(WindowResult(start_s=e.start_s, end_s=e.end_s, top=e.running,
                                             segments=[[m for m, d in e.decisions.items() if d]], gflops=e.gflops))
    if events and events[0].running_scores is not None:
        timeline.scores = np.stack([e.running_scores for e in events])
    return timeline



# Colours (BGR, as OpenCV draws) of the timeline's class curves, then its modality strips.
_CURVES = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]


def draw_timeline(events: list[LiveEvent], class_names: list[str], modalities: list[str], *, segments: int = 60,
                  width: int = 960, classes: int = 5) -> np.ndarray:
    """The live timeline as a BGR image (for ``cv2.imshow``): the running score of the
    currently leading classes over the last ``segments`` segments, a strip per modality
    (filled where it ran), and a line with the latest time, latency, lag and drops."""
    import cv2  # OpenCV: only when a timeline is drawn

    recent = [e for e in events[-segments:] if e.running_scores is not None]
    plot_h, strip_h, text_h, left = 220, 22, 30, 150
    height = plot_h + strip_h * len(modalities) + text_h + 10
    image = np.full((height, width, 3), 255, np.uint8)
    step = (width - left - 10) / segments
    cv2.rectangle(image, (left, 5), (width - 10, plot_h - 5), (200, 200, 200), 1)
    if recent:
        latest = recent[-1].running_scores
        leaders = [int(j) for j in np.argsort(-latest, kind="stable")[:classes]]
        for rank, j in enumerate(leaders):
            colour = _CURVES[rank % len(_CURVES)]
            points = np.array([[left + (i + 0.5) * step, plot_h - 5 - (plot_h - 10) * float(e.running_scores[j])]
                               for i, e in enumerate(recent)], np.int32)
            cv2.polylines(image, [points.reshape(-1, 1, 2)], False, colour, 2)
            cv2.putText(image, f"{class_names[j][:14]} {100 * latest[j]:.0f}%", (5, 22 + 20 * rank),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    for row, m in enumerate(modalities):
        top = plot_h + row * strip_h
        cv2.putText(image, m, (5, top + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for i, e in enumerate(recent):
            if e.decisions.get(m):
                cv2.rectangle(image, (int(left + i * step), top + 3), (int(left + (i + 1) * step) - 1, top + strip_h - 3),
                              (90, 90, 90), -1)
    if recent:
        e = recent[-1]
        text = (f"{e.end_s:.1f} s  {e.gflops:.3f} GFLOPs  latency {1000 * e.latency_s:.0f} ms  lag {e.lag_s:+.2f} s"
                f"  dropped {e.dropped_frames} frames")
        cv2.putText(image, text, (5, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def display_problem() -> str | None:
    """Why a live window cannot be shown here (None: it can): no display, or an OpenCV built
    without a GUI (the headless wheels)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    import cv2  # OpenCV's build information only when a window is asked for

    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "")
    if gui.upper() == "NONE":
        return "this OpenCV has no window support (a headless build: opencv-python-headless or -contrib-headless)"
    return None
