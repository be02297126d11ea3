"""What the package declares is what it imports: no unused requirement, optional ones say how
to install them."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from adamml.errors import AdamMLError
from adamml.training.driver import EpochLogger

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() for req in project["dependencies"]]


def test_dropped_packages_are_neither_declared_nor_imported() -> None:
    declared = _declared()
    assert "torchaudio" not in declared and "torchmetrics" not in declared
    assert "tensorboard" not in declared  # an extra: adamml[tensorboard]
    pattern = re.compile(r"^\s*(import|from)\s+(torchaudio|torchmetrics)\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("src", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_tensorboard_asked_for_but_missing_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(AdamMLError, match=r"pip install 'adamml\[tensorboard\]'"):
        EpochLogger(tmp_path, enabled=True, tensorboard=True)
    assert EpochLogger(tmp_path, enabled=True).writer is None  # default: CSV only
    assert EpochLogger(tmp_path, enabled=True, tensorboard=False).writer is None


def test_tensorboard_writes_when_installed(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    logger = EpochLogger(tmp_path, enabled=True, tensorboard=True)
    logger.log({"epoch": 1, "loss": 0.5}, step=1)
    logger.close()
    assert (tmp_path / "log.csv").exists() and any((tmp_path / "tensorboard").iterdir())
