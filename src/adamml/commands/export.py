"""``adamml export CKPT_OR_RUN --to DIR [--format onnx]``: a trained model as a portable
folder (safetensors weights, config.json, a model card; with onnx one graph per component)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adamml.export.format import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE
from adamml.export.package import export_package


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a checkpoint (best.pt), a stage folder or a training run's folder")
    parser.add_argument("--to", required=True, metavar="DIR", help="the folder to write (new, empty or a previous export)")
    parser.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                        help="onnx: also one ONNX graph per component, for runtimes without torch")
    parser.add_argument("--license", default="apache-2.0", help="licence of the weights, for the model card")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (--format onnx)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="static INT8 quantisation of the ONNX graphs (onnxruntime QDQ, per-channel weights)")
    parser.add_argument("--calibrate", metavar="DATA_OR_LIST", default=None,
                        help="with --quantize: calibration videos (a video, a folder of videos or a text file of paths)")
    parser.add_argument("--keep-fp32", default=None, metavar="GRAPHS",
                        help="with --quantize: graphs left in fp32, comma-separated (default: the policy's, "
                        "policy_step and each policy_<source>; '' quantises all)")


def run(args: argparse.Namespace) -> int:

    keep = None if args.keep_fp32 is None else [g for g in args.keep_fp32.split(",") if g]
    out = export_package(args.source, args.to, format=args.format, license=args.license, opset=args.opset,
                         quantize=args.quantize, calibrate=args.calibrate, keep_fp32=keep)
    config = json.loads((out / CONFIG_FILE).read_text())
    files = sorted(p.name for p in Path(out).iterdir())
    size = sum(p.stat().st_size for p in Path(out).iterdir())
    print(f"exported {config['source']['file']} ({config['kind']}, {', '.join(config['modalities'])}) to {out}: "
          f"{len(files)} files, {size / 1e6:.1f} MB (weights {(out / WEIGHTS_FILE).stat().st_size / 1e6:.1f} MB, "
          f"checkpoint {config['source']['bytes'] / 1e6:.1f} MB)")
    if (out / MANIFEST_FILE).is_file():
        graphs = json.loads((out / MANIFEST_FILE).read_text())["graphs"]
        print("  ONNX graphs: " + ", ".join(f"{n} ({g.get('precision', 'fp32')})" for n, g in graphs.items()))
    return 0
