"""Run an ONNX export (``adamml export --format onnx``) without torch: numpy, PyAV, OpenCV
and onnxruntime (``runtime="onnx"``) or OpenVINO (``runtime="openvino"``).

The same staged pipeline as ``adamml.inference.pipeline``: decode only the frames a sample
reads -> the cheap inputs (RGB crops, spectrogram, RGB difference on the policy's frames) ->
the policy's extractor graphs and its step graph over the segments -> optical flow for the
segments whose flow network was selected only -> each selected recognition graph on its
selected segments only -> late fusion from the manifest's weights. The inputs are the torch
path's own numpy functions (adamml.modalities, adamml.data.video); the spectrogram is its
numpy twin (adamml.runners.spectrogram).

Each graph is one single-threaded onnxruntime session (or OpenVINO compiled model), and the
micro-batches of the graphs that run at one point share a pool of worker threads, as the
execution plan runs the torch model on a CPU (two single-threaded executors measured fastest
on 2 cores, with both runtimes).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adamml.data.sampling import sample_indices, segment_centres_s
from adamml.data.video import decode_video
from adamml.export.format import PackageError, read_config, read_manifest
from adamml.modalities.flow import LazyFlow, flow_clip
from adamml.modalities.rgb import rgb_clip
from adamml.modalities.rgbdiff import rgbdiff_clip
from adamml.modalities.spatial import choose_crop
from adamml.results import STAGES, Prediction
from adamml.runners.spectrogram import log_spectrogram

RUNTIMES = ("onnx", "openvino")


def _settings(name: str, values: dict[str, Any], **properties: Any) -> Any:
    """A dataclass instance with the exported settings' fields (decode or clip), so the torch
    path's functions read them as they read adamml.config's."""
    cls = dataclasses.make_dataclass(name, list(values), namespace={k: property(v) for k, v in properties.items()})
    return cls(**values)


def clip_settings(values: dict[str, Any], stack_length: int | None = None) -> Any:
    """The clip settings of config.json (``segment_span`` as adamml.config.ClipSettings)."""
    values = dict(values) if stack_length is None else {**values, "stack_length": stack_length}
    return _settings("ClipSettings", values, segment_span=lambda c: (c.frames_per_segment - 1) * c.frame_stride + c.stack_length + 1)


@dataclass
class Outcome:
    """One video's prediction and what led to it: logits (C,), margins (K, M) (the policy's
    logit of "use"; None without a policy), decisions (K, M) in {0, 1}."""

    prediction: Prediction
    logits: np.ndarray
    decisions: np.ndarray
    margins: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def late_fusion(segment_logits: np.ndarray, mask: np.ndarray, fusion: dict[str, Any]) -> np.ndarray:
    """(K, M, C) segment logits, (K, M) decisions -> (C,) video logits, as adamml.models.fusion
    fuses one video (normalised: over what ran; reference: the reference code's sums)."""
    mask = mask.astype(segment_logits.dtype)
    weights = fusion["weights"]
    w = np.ones((mask.shape[1], 1)) if weights is None else np.asarray(weights, np.float64)
    if w.ndim == 1:
        w = w[:, None]
    w = w.astype(segment_logits.dtype)
    if fusion["mode"] == "reference":
        return (w[None] * mask[..., None] * segment_logits).sum(axis=1).mean(axis=0)
    scaled = w[None] * mask[..., None]  # (K, M, C)
    norm = scaled.sum(axis=1)
    norm = np.where(norm > 0, norm, np.ones_like(norm))
    fused = (scaled * segment_logits).sum(axis=1) / norm  # (K, C)
    used = mask.max(axis=1)
    return fused.sum(axis=0) / max(float(used.sum()), 1.0)


def _onnxruntime_sessions(folder: Path, graphs: dict[str, Any], providers: Sequence[str] | None) -> dict[str, Any]:
    import onnxruntime as ort  # onnxruntime: the `onnx` extra, only when graphs run

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread per session: the workers run them side by side
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return {name: ort.InferenceSession(str(folder / graph["file"]), options, providers=list(providers or ["CPUExecutionProvider"]))
            for name, graph in graphs.items()}


class _OpenVinoGraph:
    """An OpenVINO compiled graph behind onnxruntime's ``run(None, feeds)``: one inference
    thread and stream (the workers run graphs side by side), fp32 inference (an AVX-512 host
    would otherwise run bf16), one infer request per worker thread (a request is not
    shareable across threads)."""

    def __init__(self, core: Any, path: Path) -> None:
        self.compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        self.outputs = list(self.compiled.outputs)
        self._local = threading.local()

    def run(self, _names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer(feeds)
        return [np.array(result[o]) for o in self.outputs]  # copies: the request's buffers are reused


def _openvino_sessions(folder: Path, graphs: dict[str, Any]) -> dict[str, Any]:
    try:
        import openvino  # openvino: the `openvino` extra, only for this runtime
    except ImportError:
        raise PackageError("runtime 'openvino' needs OpenVINO: pip install adamml[openvino]") from None
    core = openvino.Core()
    return {name: _OpenVinoGraph(core, folder / graph["file"]) for name, graph in graphs.items()}


class OnnxModel:
    """An ONNX export folder, ready for videos: :meth:`predict` gives a Prediction.

    ``runtime``: "onnx" (onnxruntime) or "openvino", the same graphs and orchestration.
    ``calls`` counts the graph runs by graph name and ``flow_fields`` the flow fields
    computed, so what was skipped can be checked."""

    def __init__(self, folder: str | Path, *, workers: int = 2, providers: Sequence[str] | None = None,
                 runtime: str = "onnx") -> None:
        if runtime not in RUNTIMES:
            raise PackageError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
        self.runtime = runtime
        self.folder = Path(folder)
        self.config = read_config(self.folder)
        self.manifest = read_manifest(self.folder)  # every graph checked against its SHA-256
        self.kind = self.config["kind"]
        self.modalities = list(self.config["modalities"])
        self.class_names = list(self.config["class_names"])
        self.costs = self.config["gflops_per_segment"]
        self.pipeline = self.manifest["pipeline"]
        self.policy = self.manifest["policy"]
        self.fusion = self.manifest["fusion"]
        self.clip = clip_settings(self.config["clip"])
        self.sampling_clip = clip_settings(self.config["clip"], self.pipeline["sampling_stack_length"])
        self.segments = int(self.config["segments"])
        decode = dict(self.config["decode"])
        decode["flow"] = None if self.pipeline["defer_flow"] or "flow" not in self.pipeline["inputs"] else self.config["flow_method"]
        self.decode = _settings("DecodeSettings", decode)
        self.workers = max(1, int(workers))
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="adamml-onnx")
        graphs = self.manifest["graphs"]
        if runtime == "openvino":
            self.sessions = _openvino_sessions(self.folder, graphs)
        else:
            self.sessions = _onnxruntime_sessions(self.folder, graphs, providers)
        self.calls: Counter[str] = Counter()
        self.flow_fields = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # ---- running graphs -----------------------------------------------------------------

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self.calls[name] += 1
        return self.sessions[name].run(None, feeds)

    def _chunks(self, x: np.ndarray) -> list[slice]:
        """Micro-batches: at most ``pixels_per_call`` frame pixels, at least one per worker."""
        n = len(x)
        per_segment = x.shape[-2] * x.shape[-1] * (x.shape[1] if x.ndim == 5 else 1)
        size = max(1, self.pipeline["pixels_per_call"] // per_segment)
        size = min(size, max(1, math.ceil(n / self.workers)))
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def run_many(self, jobs: list[tuple[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Every (graph, input) of one stage, cut into micro-batches on the worker pool;
        each graph's outputs concatenated back in order."""
        futures = [[self.pool.submit(self._run, name, {"x": np.ascontiguousarray(x[s])}) for s in self._chunks(x)]
                   for name, x in jobs]
        out = []
        for parts in futures:
            results = [f.result() for f in parts]
            out.append([np.concatenate([r[i] for r in results]) for i in range(len(results[0]))])
        return out

    # ---- the stages ----------------------------------------------------------------------

    def _frames_read(self, num_frames: int) -> np.ndarray:

        indices = sample_indices(num_frames, self.sampling_clip, False, None, num_segments=self.segments)
        steps = np.arange(self.sampling_clip.stack_length + 1)
        return np.minimum(indices[..., None] + steps, num_frames - 1)

    def prepare(self, video: str | Path) -> dict[str, Any]:
        """Decode once and cut the cheap inputs (and flow when the policy looks at flow)."""

        start = time.perf_counter()
        decoded = decode_video(Path(video), self.decode, keep_frames=self._frames_read)
        if decoded.num_frames < 1:
            raise PackageError(f"{video}: decoded to zero frames")
        seconds = {"decode": time.perf_counter() - start}
        start = time.perf_counter()
        clip = self.clip
        indices = sample_indices(decoded.num_frames, self.sampling_clip, False, None, num_segments=self.segments)
        crop = None
        if any(self.pipeline["visual"][m] for m in self.pipeline["inputs"]):
            crop = choose_crop(decoded.frames.shape[1], decoded.frames.shape[2], clip.crop_size, False)
        reference = clip.stack_norm == "reference"
        inputs: dict[str, np.ndarray] = {}
        for m in self.pipeline["inputs"]:
            at = indices[:, self.pipeline["frame_subsets"][m]] if m in self.pipeline["frame_subsets"] else indices
            if m == "rgb":
                inputs[m] = rgb_clip(decoded.frames, at, crop, clip.crop_size)
            elif m == "rgbdiff":
                inputs[m] = rgbdiff_clip(decoded.frames, at, clip.stack_length, crop, clip.crop_size, reference=reference)
            elif m == "flow":
                inputs[m] = flow_clip(decoded.flow, at, clip.stack_length, crop, clip.crop_size, reference=reference)
            elif m == "audio":
                centres = segment_centres_s(at, decoded.fps)
                inputs[m] = log_spectrogram(decoded.audio, decoded.sample_rate, centres, clip, decoded.audio_missing)
            else:
                raise PackageError(f"{self.folder}: modality {m!r} unknown to this runtime")
        seconds["modalities"] = time.perf_counter() - start
        return {"video": str(video), "decoded": decoded, "indices": indices, "crop": crop, "inputs": inputs,
                "seconds": seconds, "flow_fields": 0}

    def decide(self, prepared: dict[str, Any]) -> np.ndarray | None:
        """The policy: its extractors on every segment, then its step over the segments;
        (K, M) margins, logit(p_use) = use - skip (float64, as the torch path)."""
        if self.policy is None:
            return None
        start = time.perf_counter()
        prepared["margins"] = self.policy_margins(prepared["inputs"])
        prepared["seconds"]["policy"] = time.perf_counter() - start
        return prepared["margins"]

    def policy_margins(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(K, M) margins of one video's inputs (each (K, ...), as :meth:`prepare` cuts them)."""
        frames = self.policy["frame_indices"]
        jobs = []
        for source in self.policy["extractors"]:
            x = inputs[source]
            if self.pipeline["visual"][source] and source not in self.pipeline["frame_subsets"]:
                x = x[:, frames]
            jobs.append((f"policy_{source}", x))
        features = [out[0] for out in self.run_many(jobs)]
        k = features[0].shape[0]
        m = len(self.policy["modalities"])
        hidden = self.policy["hidden_size"]
        previous = np.zeros((1, 2 * m), np.float32)
        h = np.zeros((1, hidden), np.float32)
        c = np.zeros((1, hidden), np.float32)
        steps = []
        for t in range(k):
            feeds = {f"features_{s}": f[t : t + 1] for s, f in zip(self.policy["extractors"], features, strict=True)}
            logits, h, c = self._run("policy_step", {**feeds, "previous": previous, "h": h, "c": c})
            steps.append(logits[0])
            previous = logits.reshape(1, -1)
        logits = np.stack(steps)  # (K, M, 2)
        return logits[..., 1].astype(np.float64) - logits[..., 0].astype(np.float64)

    def add_flow(self, prepared: dict[str, Any], segments: np.ndarray) -> None:
        """Flow for the given segments only (zeros elsewhere, never read)."""

        start = time.perf_counter()
        clip = self.clip
        frames = prepared["decoded"].frames
        lazy = LazyFlow(frames, self.config["flow_method"])
        k, t = prepared["indices"].shape
        out = np.zeros((k, t, 2 * clip.stack_length, clip.crop_size, clip.crop_size), np.float32)
        if len(segments):
            out[segments] = flow_clip(lazy, prepared["indices"][segments], clip.stack_length, prepared["crop"],
                                      clip.crop_size, reference=clip.stack_norm == "reference")
        prepared["inputs"]["flow"] = out
        prepared["flow_fields"] = lazy.computed
        self.flow_fields += lazy.computed
        prepared["seconds"]["flow"] = time.perf_counter() - start

    def finish(self, prepared: dict[str, Any], thresholds: Sequence[float] | None = None, topk: int = 5) -> Outcome:
        """Decisions (``thresholds`` on the margins, else the exported ones), flow where
        selected, the selected graphs on their segments, fusion."""
        k = prepared["indices"].shape[0]
        margins = None
        if self.policy is not None:
            margins = prepared.get("margins")
            if margins is None:
                margins = self.decide(prepared)
            limits = np.asarray(self.policy["thresholds"] if thresholds is None else thresholds, np.float64)
            decisions = (margins > limits).astype(np.float32)
            quota = (self.policy.get("quota") or []) if thresholds is None else []
            for j, q in enumerate(int(q) for q in quota):
                if q > 0:  # the video's q best segments of modality j (ties: the earlier), as the torch path
                    best = np.argsort(-margins[:, j], kind="stable")[:q]
                    decisions[best, j] = 1.0
        else:
            decisions = np.ones((k, len(self.modalities)), np.float32)
        if self.pipeline["defer_flow"]:
            self.add_flow(prepared, np.flatnonzero(decisions[:, self.modalities.index("flow")]))
        start = time.perf_counter()
        video_logits = self.networks(prepared["inputs"], decisions)
        prepared["seconds"]["networks"] = time.perf_counter() - start
        probs = _softmax(video_logits.astype(np.float64))
        order = np.argsort(-probs, kind="stable")[: min(topk, len(probs))]
        policy_cost = self.costs.get("policy", 0.0) if self.policy is not None else 0.0
        gflops = float((decisions.astype(np.float64) * np.asarray([self.costs[m] for m in self.modalities])).sum()) + policy_cost * k
        prediction = Prediction(
            video=prepared["video"],
            top=[(self.class_names[j], float(probs[j])) for j in order],
            segments=[[m for m, d in zip(self.modalities, row, strict=True) if d > 0.5] for row in decisions.tolist()],
            gflops=gflops,
            audio_missing=bool(prepared["decoded"].audio_missing),
            seconds={s: prepared["seconds"].get(s, 0.0) for s in STAGES},
            flow_fields=prepared["flow_fields"],
        )
        return Outcome(prediction, video_logits, decisions, margins, prediction.seconds)

    def networks(self, inputs: dict[str, np.ndarray], decisions: np.ndarray) -> np.ndarray:
        """(C,) video logits: each recognition graph on its selected segments only (one
        stage on the worker pool), zeros elsewhere, then the late fusion."""
        k = decisions.shape[0]
        selected = {m: np.flatnonzero(decisions[:, i]) for i, m in enumerate(self.modalities)}
        todo = [m for m in self.modalities if len(selected[m])]
        outputs = self.run_many([(f"recognition_{m}", inputs[m][selected[m]]) for m in todo])
        segment_logits = np.zeros((k, len(self.modalities), len(self.class_names)), np.float32)
        for m, (logits, _features) in zip(todo, outputs, strict=True):
            segment_logits[selected[m], self.modalities.index(m)] = logits
        return late_fusion(segment_logits, decisions, self.fusion)

    def run(self, video: str | Path, thresholds: Sequence[float] | None = None, topk: int = 5) -> Outcome:
        prepared = self.prepare(video)
        self.decide(prepared)
        return self.finish(prepared, thresholds, topk)

    def predict(self, video: str | Path, thresholds: Sequence[float] | None = None, topk: int = 5) -> Prediction:
        """One video's Prediction, running only what the policy selects."""
        return self.run(video, thresholds, topk).prediction


def load_onnx(folder: str | Path, *, workers: int = 2, runtime: str = "onnx") -> OnnxModel:
    """An ONNX export folder as an :class:`OnnxModel` on ``runtime`` (refused if a graph's
    SHA-256 or the adamml version does not match)."""
    return OnnxModel(folder, workers=workers, runtime=runtime)


def predict_videos(folder: str | Path, videos: Sequence[str | Path], *, topk: int = 5) -> list[Prediction]:
    """``adamml predict --runtime onnx FOLDER VIDEO...``: one Prediction per video."""
    model = load_onnx(folder)
    try:
        return [model.predict(v, topk=topk) for v in videos]
    finally:
        model.close()
