"""The Python face of adamml: ``adamml.load(...)`` and the :class:`Model` it returns.

Every way to predict -- a file, a list of files, decoded arrays, the windows of a long video,
the command line, the batch engines -- goes through a :class:`Model`, whose
:class:`~adamml.inference.pipeline.Predictor` computes decisions, GFLOPs and top-k in one
place and returns :class:`~adamml.results.Prediction` objects.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adamml.errors import AdamMLError
from adamml.results import Prediction

# Runtimes a model can run on; exported graphs (ONNX, OpenVINO) plug in here.
RUNTIMES = ("torch", "onnx", "openvino")  # onnx, openvino: an export folder with graphs, run without torch

__all__ = ["load", "Model", "Embedding", "ArrayError", "resolve_checkpoint", "checkpoint_digest", "RUNTIMES"]


class ArrayError(AdamMLError, ValueError):
    """Arrays given to ``Model.predict`` that are not decoded media: the message names the argument."""


@dataclass
class Embedding:
    """Per-segment features of each sub-network and the decisions taken on them.

    features: modality -> float32 (K, D_m), every segment (whether or not it would run);
    decisions: float32 (K, M) in {0, 1}, the modalities in :attr:`modalities` order.
    """

    video: str
    modalities: list[str]
    features: dict[str, np.ndarray]
    decisions: np.ndarray


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, a stage folder or a run folder -> the file (a run: its last stage's
    best.pt) or, for an exported model folder, the folder."""
    from adamml.runtime.runs import best_checkpoint  # on first use: `import adamml` stays light

    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return path
        found = best_checkpoint(path)
        if found is not None:
            return found
        raise AdamMLError(f"{path}: no best.pt in this folder or its stage folders (is it a training run?)")
    raise AdamMLError(f"{path}: no such checkpoint file or run folder")


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 of what a model is read from (the file; a package folder's config and weights)."""
    path = resolve_checkpoint(path)
    files = [path / "config.json", path / "model.safetensors"] if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_state(path: Path) -> dict[str, Any]:
    """The checkpoint dict of a training checkpoint or of an exported model folder."""
    if path.is_dir():
        try:  # optional: the export feature, where it is installed
            package = importlib.import_module("adamml.export.package")
        except ImportError:
            raise AdamMLError(f"{path}: an exported model folder, but this installation cannot read it "
                              "(adamml.export is not available)") from None
        return package.read_package(path)
    from adamml.runtime.checkpoint import load_checkpoint  # torch: on first use, not on import

    return load_checkpoint(path)


def _parse_budget(budget):
    from adamml.models.thresholds import Budget, parse_budget  # torch: on first use

    if budget is None or isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool) or not isinstance(budget, str | int | float):
        raise AdamMLError(f"budget {budget!r}: give 0.5, '50%' (of weighted fusion's GFLOPs) or '12.3G'")
    return parse_budget(str(budget))


def load(path: str | Path, device: str = "cpu", budget: str | float | None = None, *,
         precision: str = "fp32", runtime: str = "torch", plan=None) -> Model:
    """A trained model ready to predict, from a training checkpoint of any stage (unimodal,
    fusion, AdaMML), a run or stage folder (its best checkpoint), or an exported model folder.

    ``budget``: 0.5 / "50%" (of weighted fusion's GFLOPs) or "12.3G" (GFLOPs per video): the
    policy's thresholds are fitted on each call's videos so their mean cost meets it.
    ``precision``: "fp32" or "bf16"; ``plan``: an :class:`~adamml.models.execution.ExecutionPlan`
    overriding the device's measured defaults.
    """
    if runtime not in RUNTIMES:
        raise AdamMLError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    source = resolve_checkpoint(path)
    if runtime in ("onnx", "openvino"):
        return _load_onnx(source, budget, runtime)
    parsed = _parse_budget(budget)  # before reading the file: a typo fails at once
    from adamml.models.build import model_from_state  # torch and the networks, on first use
    from adamml.models.execution import PRECISIONS, ExecutionPlan  # torch: on first use

    if precision not in PRECISIONS:
        raise AdamMLError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    loaded = model_from_state(_read_state(source), source)
    plan = plan or ExecutionPlan.for_device(device, precision=precision)
    return Model(loaded, plan=plan, budget=parsed, source=source)


def _load_onnx(source: Path, budget, runtime: str = "onnx"):
    """The torch-free runner of an ONNX export folder (adamml.runners.onnx): the same
    Prediction for a video, with the thresholds the export carries."""
    if not (source.is_dir() and (source / "manifest.json").is_file()):
        raise AdamMLError(f"{source}: runtime={runtime!r} reads an export folder with graphs "
                          "(adamml export CKPT --to DIR --format onnx)")
    if budget is not None:
        raise AdamMLError(f"runtime={runtime!r} runs the thresholds the export carries; a budget needs "
                          "the torch runtime (or export a model trained to that budget)")
    from adamml.runners.onnx import load_onnx  # onnxruntime: only for this runtime

    return load_onnx(source, runtime=runtime)


class Model:
    """A trained model: its classes, modalities, costs and device plan, and the ways to predict."""

    def __init__(self, loaded, *, plan, budget=None, source: str | Path = "") -> None:
        from adamml.inference.pipeline import Predictor  # torch: on first use

        self.predictor = Predictor(loaded, plan=plan)
        self.loaded = loaded
        self.budget = budget
        self.source = str(source)

    def __repr__(self) -> str:
        return (f"Model({self.kind}, modalities={self.modalities}, classes={len(self.class_names)}, "
                f"device={self.plan.device!r}, budget={self.budget})")

    # ------------------------------------------------------------------ what it is

    @property
    def class_names(self) -> list[str]:
        return list(self.predictor.class_names)

    @property
    def modalities(self) -> list[str]:
        return list(self.predictor.modalities)

    @property
    def kind(self) -> str:
        """The stage it was trained as: "unimodal", "fusion" or "adamml"."""
        return self.loaded.kind

    @property
    def adaptive(self) -> bool:
        """Whether a policy picks modalities per segment (else every one runs everywhere)."""
        return self.predictor.adaptive

    @property
    def segments(self) -> int:
        clip = self.loaded.cfg.data.clip
        return int(self.loaded.cfg.data.eval_segments or clip.num_segments)

    @property
    def gflops(self) -> dict[str, float]:
        """GFLOPs (multiply-adds) per segment of each sub-network, and of the policy ("policy",
        0 for a fixed network)."""
        return {**{m: self.predictor.costs[m] for m in self.modalities}, "policy": self.predictor.policy_cost}

    @property
    def thresholds(self):
        """The :class:`~adamml.models.thresholds.Thresholds` the policy carries (None for a fixed
        network); a budget replaces them per call."""
        if not self.adaptive:
            return None
        from adamml.models.thresholds import Thresholds  # torch: on first use

        policy = self.predictor.model.policy
        margins = tuple(float(t) for t in policy.use_thresholds.tolist())
        return Thresholds(tuple(self.modalities), margins, 0.0, policy.quota)

    @property
    def plan(self):
        """The device's :class:`~adamml.models.execution.ExecutionPlan` the network runs under."""
        return self.predictor.plan

    # ------------------------------------------------------------------ predicting

    def predict(self, videos: str | Path | Sequence[str | Path] | None = None, *, frames: np.ndarray | None = None,
                fps: float | None = None, audio: np.ndarray | None = None, sample_rate: int | None = None,
                topk: int = 5, budget: str | float | None = None,
                failures: list[tuple[str, str]] | None = None) -> Prediction | list[Prediction]:
        """Classify a video file, a list of them, or decoded arrays (``frames`` uint8 (T, H, W, 3)
        at ``fps``, optionally ``audio`` float32 mono (S,) at ``sample_rate``).

        A path gives one :class:`Prediction`, a list one per video. With a budget (this call's
        or ``load``'s) the thresholds are fitted over the videos of the call that decoded.
        ``failures``: for a list, undecodable videos are appended here as (video, message) and
        skipped; without it the first one raises its :class:`~adamml.data.types.VideoDecodeError`.
        """
        budget = _parse_budget(budget) if budget is not None else self.budget
        if frames is not None or audio is not None:
            if videos is not None:
                raise ArrayError("give a video path or frames=..., not both")
            prepared = self._prepare_arrays(frames, fps, audio, sample_rate)
            return self._finish([prepared], budget, topk)[0]
        if videos is None:
            raise ArrayError("give a video path (or a list of them) or frames=... with fps=...")
        if isinstance(videos, str | Path):
            return self._finish([self.predictor.prepare(videos)], budget, topk)[0]
        from adamml.data.types import VideoDecodeError  # on first use: `import adamml` stays light

        prepared = []
        for video in videos:
            try:
                prepared.append(self.predictor.prepare(video))
            except VideoDecodeError as exc:
                if failures is None:
                    raise
                failures.append((str(video), str(exc)))
        return self._finish(prepared, budget, topk)

    def _finish(self, prepared: list, budget, topk: int) -> list[Prediction]:
        thresholds = self.predictor.fit_budget(prepared, budget) if budget is not None else None
        return [self.predictor.finish(p, thresholds, topk) for p in prepared]

    def predict_samples(self, samples: list[dict[str, Any]], *, topk: int = 5) -> list[Prediction]:
        """A batch of samples decoded elsewhere (:func:`~adamml.inference.pipeline.prediction_dataset`,
        e.g. in a Ray task); the carried thresholds (a budget needs the whole set of videos)."""
        return self.predictor.finish_all(self.predictor.prepare_samples(samples), None, topk)

    def stream(self, source: str | Path, **options):
        """Decisions and scores per segment of a live source as it arrives (a URL, a camera,
        a growing file, ``-``): a :class:`~adamml.inference.live.LiveRun` to iterate for
        :class:`~adamml.inference.live.LiveEvent`; ``options`` are
        :func:`~adamml.inference.live.run_live`'s (mode, running, max_lag_s, budget, span_s,
        expect, ...). Its ``plan`` (:class:`~adamml.inference.live.LivePlan`), measured before
        the stream is read, says whether the model keeps up or the span it would keep up with."""
        from adamml.inference.live import run_live  # PyAV streams: only when one is read

        return run_live(self.loaded, str(source), predictor=self.predictor, **options)

    def predict_windows(self, path: str | Path, seconds: float, *, topk: int = 5):
        """A :class:`~adamml.inference.windows.Timeline`: the video read once, front to back,
        and classified per window of ``seconds`` (K segments each), with bounded memory."""
        from adamml.inference.windows import predict_windows  # torch: on first use

        return predict_windows(path, self.predictor, window_s=float(seconds), topk=topk)

    def embed(self, video: str | Path | None = None, *, frames: np.ndarray | None = None, fps: float | None = None,
              audio: np.ndarray | None = None, sample_rate: int | None = None) -> Embedding:
        """Per-segment, per-modality features of a video (or arrays) and the decisions taken."""
        if frames is not None:
            prepared = self._prepare_arrays(frames, fps, audio, sample_rate)
        elif video is not None:
            prepared = self.predictor.prepare(video)
        else:
            raise ArrayError("give a video path or frames=... with fps=...")
        decisions = self.predictor.decisions(prepared, None)
        features = self.predictor.features(prepared)
        return Embedding(prepared.video, self.modalities, {m: f[0].numpy() for m, f in features.items()},
                         decisions[0].float().numpy())

    # ------------------------------------------------------------------ arrays

    def _prepare_arrays(self, frames, fps, audio, sample_rate):
        """Decoded arrays -> the sample a file holding them gives: frames and audio resampled and
        resized as decoding does, then cut as one whole-clip window."""
        from adamml.data.video import (  # PyAV: on first use
            MissingAudioWarning,
            resample_audio,
            resample_frames,
        )
        from adamml.inference.windows import Window  # torch: on first use

        settings = self.loaded.cfg.data.decode
        frames = _check_frames(frames, fps)
        clip = resample_frames(frames, float(fps), settings)
        out_fps = float(settings.fps or fps)
        rate = int(settings.sample_rate)
        if audio is None:
            if "audio" in self.predictor.needed:
                warnings.warn("no audio given: its spectrograms are all zeros", MissingAudioWarning, stacklevel=3)
            samples, missing = np.zeros(0, np.float32), True
        else:
            audio = _check_audio(audio, sample_rate)
            samples = resample_audio(audio, int(sample_rate), rate)
            missing = samples.size == 0
        window = Window(0, 0.0, clip, out_fps, samples, 0.0, rate, missing)
        return self.predictor.prepare_window(window, "<arrays>")


def _check_frames(frames, fps) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise ArrayError(f"frames: expected a numpy array uint8 (T, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ArrayError(f"frames: expected dtype uint8 (RGB 0..255), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ArrayError(f"frames: expected shape (T, H, W, 3) with T, H, W > 0, got {frames.shape}")
    if fps is None or isinstance(fps, bool) or not isinstance(fps, int | float) or not math.isfinite(fps) or fps <= 0:
        raise ArrayError(f"fps: expected the frames' positive frame rate, got {fps!r}")
    return frames


def _check_audio(audio, sample_rate) -> np.ndarray:
    if not isinstance(audio, np.ndarray):
        raise ArrayError(f"audio: expected a numpy array float32 (S,), got {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise ArrayError(f"audio: expected dtype float32 samples in [-1, 1], got {audio.dtype}")
    if audio.ndim != 1:
        raise ArrayError(f"audio: expected mono samples of shape (S,), got {audio.shape}")
    if (sample_rate is None or isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer)
            or sample_rate <= 0):
        raise ArrayError(f"sample_rate: expected the audio's positive integer rate in Hz, got {sample_rate!r}")
    return audio
