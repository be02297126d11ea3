"""Live AdaMML: a decision and a score per segment of a stream, as soon as the segment is in.

The policy is causal (an LSTM over segments) and every fusion head averages per-segment
outputs, so a stream needs no window: each segment of the model's own span (the frames one
training clip covers, or its audio window if longer: :func:`segment_span`) is decided on and
scored as soon as its frames and its audio window (the spectrogram's look-ahead past the
segment's end) have arrived, and the LSTM state is carried to the next one.

Two threads: a reader decodes the source into complete segments and hands them to the
model through a queue of at most ``queue_segments``; when the model falls behind real time
the oldest waiting segment is dropped (its frames counted), so nothing queues without
bound and the output stays close to the stream. ``max_lag_s`` also drops a segment the
model would reach more than that far behind the stream.

Modes: ``carry`` (the state runs through the whole stream; a running video-level score
over the last ``running`` segments), ``window`` (the state restarts every N segments, and
the running score is that window's, as ``predict --window`` scores a window of N
segments). ``budget`` holds the running mean cost over a sliding minute at a fraction of
weighted fusion's GFLOPs by moving the policy's thresholds online (:class:`BudgetController`).
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["LiveEvent", "LiveSummary", "LiveRun", "BudgetController", "SegmentQueue", "segment_span", "run_live"]

MODES = ("carry", "window")


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

    def emit(self, final: bool) -> _Segment:
        take = self.frames[: self.span]
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
        segment = _Segment(self.index, np.stack(take), piece.astype(np.float32), lo,
                           not self.audio_enabled or piece.size == 0, frame_at, ready_at)
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

    def __init__(self, generator_factory) -> None:
        self.summary: LiveSummary | None = None
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
    format: str | None = None,
    simulate_compute_s: float = 0.0,
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
    writer; ``max_lag_s`` then bounds the lag). ``span_frames``: frames per segment (default :func:`segment_span`;
    longer spans place the clip at the segment's centre). ``simulate_compute_s``: extra
    seconds of work per segment, to see how a slower machine would keep up.
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

    def generate(run: LiveRun) -> Iterator[LiveEvent]:
        yield from _live_events(run, predictor, source, mode=mode, window=window, running=running,
                                max_lag_s=max_lag_s, budget=budget, topk=topk, pace=pace,
                                follow_idle_s=follow_idle_s, timeout_s=timeout_s,
                                queue_segments=queue_segments, on_full=on_full, span_frames=span_frames,
                                format=format, simulate_compute_s=simulate_compute_s, clip=clip,
                                settings=settings)

    return LiveRun(generate)


def _live_events(run: LiveRun, predictor, source: str, *, mode, window, running, max_lag_s, budget, topk, pace,
                 follow_idle_s, timeout_s, queue_segments, on_full, span_frames, format, simulate_compute_s,
                 clip: ClipSettings, settings) -> Iterator[LiveEvent]:


    model, model_cfg, names = predictor.model, predictor.model_cfg, predictor.class_names
    policy = model.policy
    modalities = list(model_cfg.modalities)
    needed = list(predictor.needed)
    flow_needed = predictor.defer_flow
    source_obj = LiveSource(source, settings, pace=pace, follow_idle_s=follow_idle_s, timeout_s=timeout_s, format=format)
    stacked = any(MODALITIES[m].stacked for m in needed) or flow_needed
    sampling = clip if stacked else dataclasses.replace(clip, stack_length=0)
    if on_full == "auto":

        on_full = "drop" if pace is not None or describe(source) in ("network", "camera") else "block"
    queue = SegmentQueue(queue_segments, on_full)
    speed = pace or 1.0  # stream seconds per wall second (a replay may run faster than real time)
    started = threading.Event()
    info: dict = {}

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
                    queue.put(assembler.emit(final=False))
            if assembler is not None:
                while assembler.ready(final=True):
                    queue.put(assembler.emit(final=True))
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
            # The segment's tensors, cut as a dataset cuts them (layouts.py), K = 1.
            n, height, width = item.frames.shape[:3]
            indices = np.minimum(info["local"], n - 1)[None]
            decoded = DecodedVideo(frames=item.frames, fps=seg_fps, audio=item.audio,
                                   sample_rate=int(settings.sample_rate), audio_missing=item.audio_missing)
            crop = choose_crop(height, width, clip.crop_size, False)
            audio_offset = start_s - item.audio_start / settings.sample_rate
            sample = cut_modalities(decoded, indices, crop, clip, audio_offset, needed, predictor.frame_subsets)
            batch = {k: v.unsqueeze(0).to(predictor.device) for k, v in sample.items()}
            with predictor.plan.context():
                features = policy.joint_features(policy.policy_inputs(batch))[:, 0]
                out, state = policy.step(features, state)
                margins = use_margins(out.logits.float()).cpu()  # (1, 1, M)
                decisions = (controller.thresholds.decide(margins) if controller is not None
                             else policy.decide(margins))
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
                lag_s=round(done - info["wall0"] - last_frame_s / speed, 4), dropped_frames=dropped_frames,
                dropped_segments=dropped_segments, budget=controller.report() if controller is not None else None,
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
        summary.dropped_frames, summary.dropped_segments = dropped_frames, dropped_segments
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

