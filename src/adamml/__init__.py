"""adamml: adaptive multi-modal video recognition (AdaMML, Panda et al., ICCV 2021).

    import adamml
    model = adamml.load("runs/default/adamml/best.pt", device="cpu", budget="50%")
    result = model.predict("video.mp4")

The package is laid out the way data flows through it:
``data`` (video files -> cached decoded media) -> ``modalities`` (media -> per-segment tensors)
-> ``models`` (backbones, recognition sub-networks, policy, fusion, AdaMML) -> ``training``
-> ``evaluation`` -> ``inference`` -> ``api`` -> ``commands`` (the ``adamml`` command line).

The public names are loaded on first use, so ``import adamml`` imports neither torch nor PyAV.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a third of the import time)

from adamml.version import __version__  # noqa: E402  (after TYPE_CHECKING, which must not import typing)

__all__ = ["load", "Model", "Embedding", "Prediction", "AdamMLError", "__version__"]

# public name -> the module defining it
_PUBLIC = {
    "load": "adamml.api",
    "Model": "adamml.api",
    "Embedding": "adamml.api",
    "Prediction": "adamml.results",
    "AdamMLError": "adamml.errors",
}

if TYPE_CHECKING:
    from adamml.api import Embedding, Model, load
    from adamml.errors import AdamMLError
    from adamml.results import Prediction


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once: later look-ups skip this function
        return value
    raise AttributeError(f"module 'adamml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
