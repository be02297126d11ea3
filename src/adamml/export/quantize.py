"""``adamml export --format onnx --quantize int8 --calibrate VIDEOS``: static post-training
INT8 quantisation of the exported graphs, calibrated on the user's own clips.

Each graph's inputs are recorded while the fp32 orchestrator runs every network on every
segment of the calibration videos, then onnxruntime quantises it (QDQ, signed 8-bit weights
and activations, per-channel weights, min-max ranges) in place; the manifest gets the new
SHA-256 and says which graphs are INT8. Graphs named in ``keep_fp32`` stay as they are: the
policy's step (tiny and the decisions hang on it) by default; the policy's extractors are
the most sensitive networks after it, so keep them too when the decisions move.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adamml.export.format import MANIFEST_FILE, PackageError, sha256_file
from adamml.runners.onnx import OnnxModel

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
DEFAULT_FP32 = ("policy_step",)


def calibration_videos(source: str | Path) -> list[Path]:
    """A video, a folder (its videos, recursively) or a text file of paths, one a line."""
    path = Path(source)
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        videos = [path]
    elif path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines()]
        videos = [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines if line and not line.startswith("#")]
    else:
        raise PackageError(f"{path}: no such calibration video, folder or list")
    missing = [str(v) for v in videos if not v.is_file()]
    if missing:
        raise PackageError(f"{path}: calibration videos not found: {', '.join(missing[:5])}")
    if not videos:
        raise PackageError(f"{path}: no calibration videos in it ({', '.join(VIDEO_SUFFIXES)})")
    return videos


def record_inputs(folder: Path, videos: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    """Every feed each graph receives while the fp32 graphs run everything on ``videos``."""

    runner = OnnxModel(folder, workers=1)
    feeds: dict[str, list[dict[str, Any]]] = {name: [] for name in runner.sessions}
    run = runner._run

    def recording(name: str, feed: dict) -> list:
        feeds[name].append({k: v.copy() for k, v in feed.items()})
        return run(name, feed)

    runner._run = recording
    try:
        for video in videos:
            runner.run(video, thresholds=[-float("inf")] * len(runner.modalities))
    finally:
        runner.close()
    return feeds


class _Feeds:
    """onnxruntime's calibration reader over recorded feeds."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


def quantize_folder(folder: str | Path, calibrate: str | Path, keep_fp32: Sequence[str] = DEFAULT_FP32) -> dict[str, Any]:
    """Quantise the graphs of an ONNX export folder to INT8 in place, calibrated on the
    videos ``calibrate`` names; returns the manifest."""
    folder = Path(folder)
    _check_names(folder, keep_fp32)
    videos = calibration_videos(calibrate)
    return quantize_graphs(folder, record_inputs(folder, videos), keep_fp32, len(videos))


def _check_names(folder: Path, keep_fp32: Sequence[str]) -> None:
    graphs = json.loads((folder / MANIFEST_FILE).read_text())["graphs"]
    unknown = sorted(set(keep_fp32) - set(graphs))
    if unknown:
        raise PackageError(f"--keep-fp32: no graph {', '.join(unknown)} (the graphs: {', '.join(graphs)})")


def quantize_graphs(folder: str | Path, feeds: dict[str, list[dict[str, Any]]], keep_fp32: Sequence[str] = DEFAULT_FP32,
                    videos: int = 0) -> dict[str, Any]:
    """Quantise each graph but ``keep_fp32`` in place, calibrated on its recorded ``feeds``."""
    import onnxruntime  # onnxruntime: the `onnx` extra, only when graphs run
    from onnxruntime.quantization import (  # onnxruntime: the `onnx` extra, only when graphs run
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    onnxruntime.set_default_logger_severity(3)  # not one warning per unused initialiser
    folder = Path(folder)
    _check_names(folder, keep_fp32)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    quantized = []
    for name, graph in manifest["graphs"].items():
        if name in keep_fp32:
            continue
        path = folder / graph["file"]
        tmp = path.with_suffix(".int8.onnx")
        quantize_static(str(path), str(tmp), _Feeds(feeds[name]), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        shutil.move(tmp, path)
        graph["sha256"] = sha256_file(path)
        graph["precision"] = "int8"
        quantized.append(name)
    manifest["quantization"] = {"graphs": quantized, "fp32": list(keep_fp32), "format": "QDQ",
                                "weights": "int8 per channel", "activations": "int8 per tensor, min-max",
                                "calibration_videos": videos}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
