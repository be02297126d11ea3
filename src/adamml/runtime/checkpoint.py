"""Checkpoints that resume a run exactly: model, optimisers, schedulers, progress, RNG states.

Checkpoints are data, not code: everything in one is a tensor or plain data (numbers,
strings, lists, dicts), the config included, so every load uses ``torch.load(...,
weights_only=True)`` and a shared file cannot run anything when it is opened.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adamml.errors import AdamMLError
from adamml.runtime.files import atomic_path


def rng_state() -> dict:
    """The process's RNG states as tensors and plain values, so the checkpoint loads as data."""
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (also the numpy-array form of older checkpoints)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, *rest = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((name, key.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_plain(obj: Any) -> Any:
    """Tensors, numbers, strings, None and containers of them: what ``weights_only`` loads.

    numpy scalars and arrays (metrics, RNG states) become Python numbers and tensors;
    anything else is an error here, when saving, rather than a refused file later.
    """
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Tensor | str | bool | int | float | type(None)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):  # OrderedDict (state dicts) too
        return type(obj)((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(to_plain(v) for v in obj)
    raise TypeError(f"checkpoints hold tensors and plain data only, not {type(obj).__name__}")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write atomically: a run killed while saving keeps its previous checkpoint intact.

    The file holds tensors and plain data only, so :func:`load_checkpoint` reads it with
    ``weights_only=True``: loading a checkpoint never runs code.
    """
    path = Path(path)
    state = to_plain(state)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


class CheckpointError(AdamMLError, RuntimeError):
    """A checkpoint is missing, unreadable or refused; the message names the file and why."""


# Checkpoints written before RNG states were stored as tensors hold numpy arrays (uint32
# Mersenne-Twister keys). Rebuilding an array calls no other code: its elements still go
# through the weights-only unpickler, so these stay data.
_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / 1.26
_NUMPY_ARRAYS = [_multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch's weights-only refusal names the callable


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint as data (``weights_only=True``); a file that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAYS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found is None:  # not a pickle at all, or a damaged one
            raise CheckpointError(f"{path}: not a readable checkpoint (damaged or not a torch file)") from None
        raise CheckpointError(
            f"{path}: refused: it holds a pickled {found.group(1)}, which loading would call; adamml "
            "checkpoints hold only tensors and plain data (torch.load(weights_only=False) runs such "
            "calls: only for a file you trust)"
        ) from None
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an adamml checkpoint (holds a {type(state).__name__}, not a dict)")
    return state
