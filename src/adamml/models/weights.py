"""Does a weights file hold the ImageNet network it claims to? (``adamml weights check``)

Key layouts differ between sources (torchvision, timm, TF conversions), and a file that loads
without error can still hold the wrong network or a wrong input normalisation. The check runs
the weights as an ImageNet classifier on the two photographs scikit-learn ships
(``china.jpg``, a temple; ``flower.jpg``, a daisy) and prints the top-3 classes with their
names (torchvision's weight enums carry the 1000 ImageNet names offline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights

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
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def sample_images(size: int = 224) -> dict[str, torch.Tensor]:
    """scikit-learn's bundled photographs, short side resized to ``size * 256 / 224``, centre
    crop ``size``, ImageNet-normalised: {name: (3, size, size)}."""
    try:
        # scikit-learn is optional: only this check needs it
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
