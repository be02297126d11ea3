"""The exported folder's layout and its checks, without torch: the runtimes that run the
exported graphs (adamml.runners) read it too.

A folder holds ``config.json`` (everything but the weights), ``model.safetensors`` (the
weights), ``README.md`` (the model card) and, exported with ``--format onnx``, one graph per
component beside ``manifest.json`` (opset, inputs, SHA-256 of each graph). Every file is
data: nothing in it is unpickled or run when it is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from adamml.errors import AdamMLError
from adamml.version import __version__

FORMAT = "adamml-export"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
MANIFEST_FILE = "manifest.json"


class PackageError(AdamMLError, ValueError):
    """An export folder is missing, incomplete, changed since export or from another version."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in blocks (checkpoints and graphs run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise PackageError(f"{path.parent}: not an adamml export folder (no {path.name}; make one with `adamml export`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: not an adamml {what} (holds a {type(data).__name__})")
    return data


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of an export folder, refused unless this adamml version wrote it: the
    layouts, normalisations and graphs it describes are this version's."""
    path = Path(folder) / CONFIG_FILE
    config = _read_json(path, "export config")
    if config.get("format") != FORMAT:
        raise PackageError(f"{path}: not an adamml export (format {config.get('format')!r}, expected {FORMAT!r})")
    made_by = config.get("adamml_version")
    if made_by != __version__ or config.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{path}: exported by adamml {made_by} (format {config.get('format_version')}), this is adamml "
            f"{__version__} (format {FORMAT_VERSION}): export the checkpoint again with this version"
        )
    return config


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """manifest.json of an ONNX export, each graph checked against its SHA-256: a graph
    changed after export (damaged, or edited to run something else) is refused."""
    folder = Path(folder)
    read_config(folder)
    manifest = _read_json(folder / MANIFEST_FILE, "ONNX manifest")
    for name, graph in manifest.get("graphs", {}).items():
        path = folder / graph["file"]
        if not path.is_file():
            raise PackageError(f"{path}: graph {name!r} listed in {MANIFEST_FILE} is missing")
        if sha256_file(path) != graph["sha256"]:
            raise PackageError(
                f"{path}: SHA-256 does not match {MANIFEST_FILE} (the graph was changed after export); "
                "refusing to run it: export the checkpoint again"
            )
    return manifest
