"""``adamml export --format onnx --quantize int8 --calibrate VIDEOS``: static post-training
INT8 quantisation of the exported graphs, calibrated on the user's own clips.

Each graph's inputs are recorded while the fp32 orchestrator runs every network on every
segment of the calibration videos. Each graph then goes through onnxruntime's quantisation
pre-processing (symbolic shape inference and graph optimisation) and is quantised in place:
QDQ, weights signed 8-bit per output channel, activations unsigned 8-bit per tensor with
min-max ranges. Unsigned activations (U8S8) are what onnxruntime's x86 kernels run fastest:
with signed activations (S8S8) it left a third of a ResNet-50's convolutions in fp32 between
DequantizeLinear nodes and ran slower than fp32 on an AVX2 host. The manifest gets the new
SHA-256 and says which graphs are INT8.

The policy's graphs (its extractors and its step) stay fp32 unless asked for: they are
cheap next to the recognition networks, and every decision hangs on them. ``keep_fp32``
names the graphs to leave in fp32 instead (an empty list quantises every graph).
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
POLICY_ROLES = ("policy_extractor", "policy_step")


def default_fp32(manifest: dict[str, Any]) -> list[str]:
    """The graphs kept fp32 unless told otherwise: the policy's."""
    return [name for name, graph in manifest["graphs"].items() if graph.get("role") in POLICY_ROLES]


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


def quantize_folder(folder: str | Path, calibrate: str | Path, keep_fp32: Sequence[str] | None = None) -> dict[str, Any]:
    """Quantise the graphs of an ONNX export folder to INT8 in place, calibrated on the
    videos ``calibrate`` names (``keep_fp32`` None: the policy's graphs stay fp32); returns
    the manifest."""
    folder = Path(folder)
    keep_fp32 = _kept(folder, keep_fp32)
    videos = calibration_videos(calibrate)
    return quantize_graphs(folder, record_inputs(folder, videos), keep_fp32, len(videos))


def _kept(folder: Path, keep_fp32: Sequence[str] | None) -> list[str]:
    """``keep_fp32`` checked against the folder's graphs (None: the default's)."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    graphs = manifest["graphs"]
    if keep_fp32 is None:
        return default_fp32(manifest)
    unknown = sorted(set(keep_fp32) - set(graphs))
    if unknown:
        raise PackageError(f"--keep-fp32: no graph {', '.join(unknown)} (the graphs: {', '.join(graphs)})")
    return list(keep_fp32)


def quantize_graphs(folder: str | Path, feeds: dict[str, list[dict[str, Any]]], keep_fp32: Sequence[str] | None = None,
                    videos: int = 0) -> dict[str, Any]:
    """Quantise each graph but ``keep_fp32`` (None: the policy's) in place, calibrated on its
    recorded ``feeds``."""
    import onnxruntime  # onnxruntime: the `onnx` extra, only when graphs run
    from onnxruntime.quantization import (  # onnxruntime: the `onnx` extra, only when graphs run
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import (
        quant_pre_process,  # the `onnx` extra, as above
    )

    onnxruntime.set_default_logger_severity(3)  # not one warning per unused initialiser
    folder = Path(folder)
    keep_fp32 = _kept(folder, keep_fp32)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    quantized = []
    for name, graph in manifest["graphs"].items():
        if name in keep_fp32:
            continue
        path = folder / graph["file"]
        prepared, tmp = path.with_suffix(".pre.onnx"), path.with_suffix(".int8.onnx")
        try:
            quant_pre_process(str(path), str(prepared))
            quantize_static(str(prepared), str(tmp), _Feeds(feeds[name]), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            prepared.unlink(missing_ok=True)
        shutil.move(tmp, path)
        graph["sha256"] = sha256_file(path)
        graph["precision"] = "int8"
        quantized.append(name)
    manifest["quantization"] = {"graphs": quantized, "fp32": list(keep_fp32), "format": "QDQ",
                                "weights": "int8 per channel", "activations": "uint8 per tensor, min-max",
                                "calibration_videos": videos}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
