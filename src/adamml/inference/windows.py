"""Long videos (``Model.predict_windows``, ``adamml predict --window SECONDS``): class scores and modality decisions per
window, a timeline in the JSON and as a PNG.

The file is read once, front to back (:func:`stream_windows`): frames are resampled and resized
as they are decoded, the audio is downmixed and resampled as it comes, and each window is
handed on as soon as it is complete and then dropped. So memory is one window's frames and
audio (plus the audio margin of one spectrogram window on each side), whatever the length
of the video: an hour-long file costs what a ten-second one does. Each window is one sample of
K segments (the model's evaluation sampling), on which the policy decides per segment which
modalities run, and only those run.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adamml.config import ClipSettings, DecodeSettings
from adamml.data.datasets import cut_modalities
from adamml.data.sampling import sample_indices
from adamml.errors import AdamMLError
from adamml.media import DecodedVideo
from adamml.modalities.spatial import choose_crop
from adamml.modalities.table import MODALITIES


class WindowError(AdamMLError, ValueError):
    """A window length that is not a positive number of seconds."""


@dataclass
class Window:
    """Decoded media of one window: frames uint8 (N, H, W, 3) at ``fps`` from ``start_s``;
    audio float32 mono from ``audio_start_s`` (a margin before the window where there is one)."""

    index: int
    start_s: float
    frames: np.ndarray
    fps: float
    audio: np.ndarray
    audio_start_s: float
    sample_rate: int
    audio_missing: bool

    @property
    def duration_s(self) -> float:
        return len(self.frames) / self.fps


def stream_windows(
    path: str | Path, settings: DecodeSettings, window_s: float, *, audio_margin_s: float = 0.0
) -> Iterator[Window]:
    """Yield consecutive windows of ``window_s`` seconds (the last may be shorter), decoding the
    file once and holding only the current window (and ``audio_margin_s`` of audio around it)."""
    from adamml.data.video import source_frame_rate, stream_media  # PyAV: only when a file is read

    if not (window_s > 0 and np.isfinite(window_s)):
        raise WindowError(f"window must be a positive number of seconds, got {window_s}")
    if settings.fps is None:  # every frame at the source's own rate (data.decode.fps: null)
        settings = dataclasses.replace(settings, fps=source_frame_rate(path))
    fps, rate_out = float(settings.fps), int(settings.sample_rate)
    per_window = max(1, round(window_s * fps))
    frames: list[np.ndarray] = []  # output frames from frame index `first`
    first = 0
    samples: list[np.ndarray] = []  # audio from sample index `audio_first`
    audio_first = 0
    audio_count = 0
    has_audio = True
    index = 0
    margin = int(round(audio_margin_s * rate_out))

    def ready(final: bool) -> bool:
        have_frames = len(frames) >= per_window or (final and frames)
        end = int(round((first + per_window) / fps * rate_out)) + margin
        return bool(have_frames) and (not has_audio or final or audio_count >= end)

    def emit() -> Window:
        nonlocal frames, first, samples, audio_first, index
        take = frames[:per_window]
        start_s = first / fps
        lo = max(0, int(round(start_s * rate_out)) - margin)
        hi = int(round((first + len(take)) / fps * rate_out)) + margin
        joined = np.concatenate(samples) if samples else np.zeros(0, np.float32)
        piece = joined[max(0, lo - audio_first) : max(0, hi - audio_first)]
        window = Window(index, start_s, np.stack(take), fps, np.clip(piece, -1, 1).astype(np.float32),
                        max(lo, audio_first) / rate_out, rate_out, not has_audio)
        # Drop what no later window needs: its frames, and audio before the next margin.
        frames = frames[per_window:]
        first += len(take)
        keep_from = max(0, int(round(first / fps * rate_out)) - margin)
        rest = joined[max(0, keep_from - audio_first) :]
        samples = [rest] if rest.size else []
        audio_first = max(audio_first, keep_from)
        index += 1
        return window

    for chunk in stream_media(Path(path), settings):
        has_audio = chunk.has_audio
        frames.extend(chunk.frames)
        samples.extend(chunk.audio)
        audio_count += sum(len(piece) for piece in chunk.audio)
        while ready(final=chunk.final):
            yield emit()


def window_sample(window: Window, modalities: list[str], clip: ClipSettings, num_segments: int,
                  flow_method: str | None = None, frame_subsets: dict[str, list[int]] | None = None,
                  ) -> tuple[dict, np.ndarray]:
    """The evaluation sample of one window (layouts.py) as a batch of one, and its (K, T)
    frame indices: K segments, centre crops, each segment's spectrogram centred on it (in the
    window's own audio, margin included). Every modality is cut by the modality table, as a
    dataset does (the same normalisation); ``frame_subsets`` as in VideoDataset; flow (when
    asked for) from ``flow_method``."""
    from adamml.modalities.flow import compute_flow  # OpenCV: only for a model that reads flow

    needs_stack = any(MODALITIES[m].stacked for m in modalities)
    sampling = clip if needs_stack else ClipSettings(**{**asdict(clip), "stack_length": 0})
    n, height, width = window.frames.shape[:3]
    indices = sample_indices(n, sampling, False, None, num_segments=num_segments)
    fields = None
    if "flow" in modalities:
        fields = (compute_flow(window.frames, flow_method or "tvl1") if n > 1
                  else np.zeros((1, height, width, 2), np.uint8) + 128)
    decoded = DecodedVideo(frames=window.frames, fps=window.fps, audio=window.audio, sample_rate=window.sample_rate,
                           audio_missing=window.audio_missing or window.audio.size == 0, flow=fields)
    crop = choose_crop(height, width, clip.crop_size, False)
    start_s = window.start_s - window.audio_start_s  # frame 0's time in the window's audio
    sample = cut_modalities(decoded, indices, crop, clip, start_s, modalities, frame_subsets)
    sample["audio_missing"] = torch.tensor(bool(decoded.audio_missing))
    return {k: v.unsqueeze(0) for k, v in sample.items()}, indices


@dataclass
class WindowResult:
    start_s: float
    end_s: float
    top: list[tuple[str, float]]
    segments: list[list[str]]  # modalities that ran in each segment
    gflops: float


@dataclass
class Timeline:
    video: str
    window_s: float
    duration_s: float
    modalities: list[str]
    windows: list[WindowResult] = field(default_factory=list)
    top: list[tuple[str, float]] = field(default_factory=list)  # mean of the windows' scores
    gflops: float = 0.0  # the whole video
    selection: dict[str, float] = field(default_factory=dict)  # fraction of segments per modality
    audio_missing: bool = False
    scores: np.ndarray | None = None  # (windows, classes), for the plot; not in the JSON

    def to_json(self) -> dict:
        body = asdict(self)
        body.pop("scores")
        return body


@torch.no_grad()
def predict_windows(video: str | Path, predictor, *, window_s: float, topk: int = 5) -> Timeline:
    """Classify each ``window_s`` window of ``video`` with a
    :class:`~adamml.inference.pipeline.Predictor` (the model prepared once for many videos).

    Each window goes through the staged pipeline of ``adamml predict`` (the execution plan,
    the policy, flow only for the segments whose flow network it selected, the selected
    networks only); only decoding differs (one streaming pass for the whole file)."""
    from adamml.data.video import MissingAudioWarning  # PyAV: only when a file is read

    if not (window_s > 0 and np.isfinite(window_s)):
        raise WindowError(f"window must be a positive number of seconds, got {window_s}")
    class_names = predictor.class_names
    clip = predictor.cfg.data.clip
    modalities = list(predictor.modalities)
    timeline = Timeline(video=str(video), window_s=window_s, duration_s=0.0, modalities=modalities)
    all_scores, all_decisions = [], []
    for window in stream_windows(video, predictor.cfg.data.decode, window_s, audio_margin_s=clip.audio_window_s / 2):
        if window.audio_missing and not timeline.audio_missing and "audio" in predictor.needed:
            warnings.warn(f"{video}: has no audio track; its spectrograms are all zeros", MissingAudioWarning, stacklevel=2)
        timeline.audio_missing = window.audio_missing
        prediction = predictor.finish(predictor.prepare_window(window, str(video)), topk=len(class_names))  # every class
        score_of = dict(prediction.top)
        probs = np.array([score_of[c] for c in class_names])
        decisions = np.array([[float(m in ran) for m in modalities] for ran in prediction.segments])
        all_scores.append(probs)
        all_decisions.append(decisions)
        timeline.windows.append(WindowResult(
            start_s=round(window.start_s, 3),
            end_s=round(window.start_s + window.duration_s, 3),
            top=[(name, round(p, 5)) for name, p in prediction.top[:topk]],
            segments=prediction.segments,
            gflops=prediction.gflops,
        ))
        timeline.duration_s = round(window.start_s + window.duration_s, 3)
    scores = np.stack(all_scores)
    mean = scores.mean(axis=0)
    timeline.scores = scores
    timeline.top = [(class_names[j], round(float(mean[j]), 5)) for j in np.argsort(-mean)[:topk]]
    timeline.gflops = float(sum(w.gflops for w in timeline.windows))
    stacked = np.concatenate(all_decisions)
    timeline.selection = {m: round(float(stacked[:, i].mean()), 5) for i, m in enumerate(modalities)}
    return timeline


def plot_timeline(timeline: Timeline, class_names: list[str], path: str | Path, *, classes: int = 5) -> Path:
    """Top classes' scores over time (above) and, per modality, the segments it ran on (below)."""
    import matplotlib  # only to plot: a second of imports


    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen: no display needed

    path = Path(path)
    scores = timeline.scores if timeline.scores is not None else np.zeros((0, len(class_names)))
    centres = np.array([(w.start_s + w.end_s) / 2 for w in timeline.windows])
    # The classes that lead some window, then the best on average, up to `classes`.
    leaders = list(dict.fromkeys(int(i) for i in scores.argmax(axis=1)))
    for j in np.argsort(-scores.mean(axis=0)):
        if len(leaders) >= classes:
            break
        if int(j) not in leaders:
            leaders.append(int(j))
    leaders = leaders[:classes]
    mods = timeline.modalities
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 0.5 + 0.4 * len(mods)]})
    for j in leaders:
        top.plot(centres, scores[:, j], marker="o", markersize=3, label=class_names[j])
    top.set_ylabel("probability")
    top.set_ylim(0, 1.02)
    top.legend(loc="upper right", fontsize=8, ncol=min(len(leaders), 3))
    top.set_title(f"{Path(timeline.video).name}: top classes per {timeline.window_s:g} s window")
    for row, m in enumerate(mods):
        spans = []
        for w in timeline.windows:
            k = len(w.segments)
            step = (w.end_s - w.start_s) / max(k, 1)
            spans += [(w.start_s + i * step, step) for i, seg in enumerate(w.segments) if m in seg]
        bottom.broken_barh(spans, (row - 0.4, 0.8), color=f"C{row}")
    bottom.set_yticks(range(len(mods)), mods)
    bottom.set_ylim(-0.6, len(mods) - 0.4)
    bottom.set_xlabel("time (s)")
    bottom.set_xlim(0, max(timeline.duration_s, 1e-3))
    bottom.set_title("segments on which each modality ran", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_timeline(timeline: Timeline) -> list[str]:
    """Text lines for the terminal: one per window."""
    lines = [f"{timeline.video}: {len(timeline.windows)} windows of {timeline.window_s:g} s "
             f"({timeline.duration_s:.1f} s){'  (no audio track)' if timeline.audio_missing else ''}"]
    for w in timeline.windows:
        best = ", ".join(f"{name} {100 * p:.0f}%" for name, p in w.top[:3])
        ran = " ".join("+".join(s) or "-" for s in w.segments)
        lines.append(f"  {_clock(w.start_s)}-{_clock(w.end_s)}  {best}  [{ran}]  {w.gflops:.4f} GFLOPs")
    overall = ", ".join(f"{name} {100 * p:.1f}%" for name, p in timeline.top[:3])
    rates = ", ".join(f"{m} {100 * r:.0f}%" for m, r in timeline.selection.items())
    lines.append(f"  whole video: {overall}; ran {rates} of the segments; {timeline.gflops:.4f} GFLOPs")
    return lines


def _clock(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes)}:{s:04.1f}" if minutes < 60 else f"{int(minutes // 60)}:{int(minutes % 60):02d}:{s:04.1f}"


__all__ = ["Window", "Timeline", "WindowError", "stream_windows", "window_sample", "predict_windows",
           "plot_timeline", "format_timeline"]
