"""``adamml weights check``: does a weights file hold the ImageNet network it claims to?

Key layouts differ between sources (torchvision, timm, TF conversions), and a file that loads
without error can still hold the wrong network or a wrong input normalisation. The check runs
the weights as an ImageNet classifier on the two photographs scikit-learn ships
(``china.jpg``, a temple; ``flower.jpg``, a daisy) and prints the top-3 classes with their
names (torchvision's weight enums carry the 1000 ImageNet names offline).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from adamml.layouts import IMAGENET_MEAN, IMAGENET_STD
from adamml.models.backbones import (
    BACKBONES,
    IMAGENET_SOURCES,
    PretrainedWeightsError,
    create_backbone,
    read_weights,
)

# Full-size table entries that make sense as ImageNet classifiers (not the tiny test nets).
CHECKABLE = [name for name in BACKBONES if not name.endswith("_tiny") and name != "resnet_tiny"]


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's weights metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def sample_images(size: int = 224) -> dict[str, torch.Tensor]:
    """scikit-learn's bundled photographs, short side resized to ``size * 256 / 224``, centre
    crop ``size``, ImageNet-normalised: {name: (3, size, size)}."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise PretrainedWeightsError(
            "the check uses scikit-learn's sample images: pip install scikit-learn"
        ) from None
    data = load_sample_images()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = {}
    for path, image in zip(data.filenames, data.images, strict=True):
        x = torch.tensor(image).permute(2, 0, 1).float().div(255)[None]
        h, w = x.shape[-2:]
        short = round(size * 256 / 224)
        new = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
        x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
        x = x[:, top : top + size, left : left + size]
        out[path.replace("\\", "/").rsplit("/", 1)[-1]] = (x - mean) / std
    return out


def build_classifier(source: str, arch: str | None = None) -> tuple[str, nn.Module]:
    """The ImageNet classifier a weights source holds: (architecture name, model in eval mode).

    Without ``arch`` the architecture is the one an ``imagenet:`` source names, or else the
    first table entry that the file's tensors fit exactly.
    """
    state = read_weights(source)
    if arch is None and str(source) in IMAGENET_SOURCES:
        arch = IMAGENET_SOURCES[str(source)]
    candidates = [arch] if arch else CHECKABLE
    if arch and arch not in BACKBONES:
        raise PretrainedWeightsError(
            f"--arch {arch!r}: unknown; expected one of {', '.join(CHECKABLE)}"
        )
    errors = []
    for name in candidates:
        model = create_backbone(name)
        own = model.state_dict()
        wrong = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
        extra = [k for k in state if k not in own]
        if not wrong and not extra:
            model.load_state_dict(state)
            return name, model.eval()
        errors.append(f"{name}: {len(wrong)} tensors missing or of another shape, {len(extra)} unknown")
    detail = errors[0] if arch else "no architecture of the table fits"
    raise PretrainedWeightsError(
        f"{source}: not a 1000-class ImageNet classifier in our key layout ({detail}); "
        f"name the architecture with --arch ({', '.join(CHECKABLE)})"
    )


@torch.no_grad()
def top_k(model: nn.Module, images: dict[str, torch.Tensor], k: int = 3) -> dict[str, list[tuple[int, float]]]:
    """{image name: [(class index, probability), ...]} best first."""
    out = {}
    for name, x in images.items():
        probs = model(x[None]).softmax(dim=-1)[0]
        values, indices = probs.topk(k)
        out[name] = [(int(i), float(v)) for i, v in zip(indices, values, strict=True)]
    return out


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
    add_import_reference(sub)


def add_import_reference(sub) -> None:
    """``adamml weights import-reference``: a reference (IBM/AdaMML) checkpoint as ours."""
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
    from adamml.config import load_config
    from adamml.models.reference_import import import_reference
    from adamml.runtime.checkpoint import save_checkpoint

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
