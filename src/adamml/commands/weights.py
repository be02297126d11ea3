"""``adamml weights check``: run a weights file as an ImageNet classifier on two photographs."""

from __future__ import annotations

import argparse
import sys

from adamml.models.backbones import IMAGENET_SOURCES
from adamml.models.weights import (
    CHECKABLE,
    build_classifier,
    imagenet_categories,
    sample_images,
    top_k,
)


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


def run(args: argparse.Namespace) -> int:
    arch, model = build_classifier(args.source, args.arch)
    names = imagenet_categories()
    results = top_k(model, sample_images())
    print(f"{args.source} as {arch}, ImageNet top-3 (input: resize 256, centre crop 224, ImageNet mean/std)")
    for image, best in results.items():
        ranked = ", ".join(f"{names[i]} ({i}) {p:.1%}" for i, p in best)
        print(f"  {image:<11} {ranked}")
    sys.stdout.flush()
    return 0
