"""``adamml weights check``: run a weights file as an ImageNet classifier on two photographs;
``adamml weights import-reference``: a checkpoint of the reference code as an adamml one."""

from __future__ import annotations

import argparse
import sys

from adamml.config_files import load_config
from adamml.models.backbones import IMAGENET_SOURCES
from adamml.models.reference_import import import_reference
from adamml.models.weights import (
    CHECKABLE,
    build_classifier,
    imagenet_categories,
    sample_images,
    top_k,
)
from adamml.runtime.checkpoint import save_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="ImageNet top-3 on two sample photographs",
        description="Run a weights source as an ImageNet classifier on scikit-learn's "
        "china.jpg and flower.jpg and print the top-3 classes.",
    )
    check.add_argument(
        "source",
        help=f"a local weights file or {', '.join(IMAGENET_SOURCES)}",
    )
    check.add_argument(
        "--arch",
        choices=CHECKABLE,
        default=None,
        help="the architecture (default: the one the source names, or the one its tensors fit)",
    )
    imp = sub.add_parser(
        "import-reference",
        help="an IBM/AdaMML checkpoint (unimodal or AdaMML) as an adamml checkpoint",
        description="Map a checkpoint of the reference code (train_unimodal.py: RGB / flow "
        "ResNet-50, sound MobileNetV2; train_adamml.py: policy, main_net.nets.*, late-fusion "
        "weights) onto the model a config builds, and write it as an adamml checkpoint that "
        "`adamml evaluate` reads.",
    )
    imp.add_argument("file", help="the reference's .pth.tar ({'state_dict': ...})")
    imp.add_argument("--config", required=True, help="the config whose model the weights fit (e.g. kinetics_sounds_rgb_audio)")
    imp.add_argument("--out", required=True, help="the adamml checkpoint to write")
    imp.add_argument("--modality", default=None, help="a unimodal file's modality (default: from its input channels)")
    imp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="a config override, section.key=value (repeatable)")


def run_import_reference(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, list(args.overrides))
    checkpoint, kind = import_reference(args.file, cfg, modality=args.modality)
    save_checkpoint(checkpoint, args.out)
    what = kind if kind == "adamml" else f"unimodal {checkpoint['model_config']['modalities'][0]}"
    print(f"{args.file}: {what} network of {cfg.name}, {len(checkpoint['model'])} tensors -> {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "import-reference":
        return run_import_reference(args)
    arch, model = build_classifier(args.source, args.arch)
    names = imagenet_categories()
    results = top_k(model, sample_images())
    print(f"{args.source} as {arch}, ImageNet top-3 (input: resize 256, centre crop 224, ImageNet mean/std)")
    for image, best in results.items():
        ranked = ", ".join(f"{names[i]} ({i}) {p:.1%}" for i, p in best)
        print(f"  {image:<11} {ranked}")
    sys.stdout.flush()
    return 0
