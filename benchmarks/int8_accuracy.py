"""What INT8 costs in accuracy: a trained model exported to ONNX, quantised as ``adamml export
--quantize int8 --calibrate`` does on clips of its own training split, and run on its
validation split beside the fp32 graphs.

    python benchmarks/int8_accuracy.py RUN_OR_CHECKPOINT [--root DATA] [--calibration-clips 24]

Rows: the fp32 graphs; INT8 with the policy's graphs kept fp32 (the default); INT8 with every
graph quantised (``--keep-fp32 ''``). Columns: top-1 accuracy on the validation videos (the
first label), its change against fp32 in points, the fraction of the policy's segment
decisions (segment x modality) that INT8 leaves as fp32 takes them, the fraction of videos
whose top-1 class is unchanged, and the GFLOPs per video the decisions give. The videos run
through the torch-free orchestrator (adamml.runners.onnx) exactly as ``adamml predict
--runtime onnx`` runs them. The data root is the checkpoint's ``data.root`` unless ``--root``
says otherwise (a folder of class folders or any layout ``adamml train`` reads).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from adamml.data.catalog import discover
from adamml.export.package import export_package, resolve_checkpoint
from adamml.export.quantize import quantize_folder
from adamml.runners.onnx import OnnxModel
from adamml.runtime.checkpoint import load_checkpoint


def spread(items: list, n: int) -> list:
    """``n`` items spread evenly over the list (every class of a sorted split, not the first)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def evaluate(folder: Path, videos: list[Path]) -> list:
    runner = OnnxModel(folder)
    try:
        return [runner.run(v) for v in videos]
    finally:
        runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a trained checkpoint (best.pt), stage folder or run folder")
    parser.add_argument("--root", default=None, help="the dataset root (default: the checkpoint's data.root)")
    parser.add_argument("--calibration-clips", type=int, default=24, help="training clips to calibrate on")
    parser.add_argument("--limit", type=int, default=None, help="at most this many validation videos")
    args = parser.parse_args()

    checkpoint = resolve_checkpoint(args.source)
    state = load_checkpoint(checkpoint)
    data = state["config"]["data"]
    root = Path(args.root or data["root"])
    class_names = state.get("class_names")
    train, _ = discover(root, "train", data.get("dataset"), class_names=class_names)
    val, _ = discover(root, "val", data.get("dataset"), class_names=class_names)
    val = spread(val, args.limit) if args.limit else val
    calibration = spread(train, args.calibration_clips)
    print(f"{checkpoint}: {len(val)} validation videos, calibrated on {len(calibration)} training clips of {root}")

    work = Path(tempfile.mkdtemp(prefix="adamml-int8-"))
    try:
        fp32 = export_package(checkpoint, work / "fp32", format="onnx")
        (work / "calibration.txt").write_text("".join(f"{e.path.resolve()}\n" for e in calibration))
        variants = {"fp32": fp32}
        for name, keep in (("INT8, policy fp32 (default)", None), ("INT8, every graph", [])):
            folder = work / f"int8-{len(variants)}"
            shutil.copytree(fp32, folder)
            start = time.perf_counter()
            manifest = quantize_folder(folder, work / "calibration.txt", keep_fp32=keep)
            print(f"{name}: {', '.join(manifest['quantization']['graphs'])} quantised in {time.perf_counter() - start:.1f} s")
            variants[name] = folder
        labels = np.array([e.labels[0] for e in val])
        videos = [e.path for e in val]
        outcomes = {name: evaluate(folder, videos) for name, folder in variants.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = outcomes["fp32"]
    reference_top1 = float(np.mean([o.logits.argmax() for o in reference] == labels))
    header = (f"{'graphs':<28} | {'top-1':>7} | {'change':>9} | {'segment decisions unchanged':>27} | "
              f"{'top-1 class unchanged':>21} | {'GFLOPs/video':>12}")
    print(header)
    print("-" * len(header))
    for name, got in outcomes.items():
        top1 = float(np.mean([o.logits.argmax() for o in got] == labels))
        same = np.concatenate([(o.decisions == r.decisions).ravel() for o, r in zip(got, reference, strict=True)])
        same_class = np.mean([o.logits.argmax() == r.logits.argmax() for o, r in zip(got, reference, strict=True)])
        gflops = statistics.fmean(o.prediction.gflops for o in got)
        print(f"{name:<28} | {100 * top1:>6.2f}% | {100 * (top1 - reference_top1):>+6.2f} pt | "
              f"{100 * same.mean():>26.2f}% | {100 * same_class:>20.2f}% | {gflops:>12.4f}")


if __name__ == "__main__":
    main()
