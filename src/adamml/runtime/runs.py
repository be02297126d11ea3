"""The layout of a training run's folder, in one place.

``<train.output_dir>/`` holds one folder per stage of the recipe::

    unimodal_<modality>/   stage 1, one per modality
    fusion_<method>/       stage 2, one per fusion head
    adamml/                stage 3

and each stage folder holds ``config.yaml`` (the resolved config), ``log.csv`` (one row per
epoch), ``last.pt`` (the resume point) and ``best.pt`` (the best validation score). Training
writes it, later stages and ``adamml evaluate`` / ``adamml demo`` read it.
"""

from __future__ import annotations

from pathlib import Path

STAGES: tuple[str, ...] = ("unimodal", "fusion", "adamml")

LAST = "last.pt"
BEST = "best.pt"
BEST_ALTERNATE = "best_alternate.pt"  # stage 3: the best alternating epoch, the fine-tune's start
LOG = "log.csv"
CONFIG = "config.yaml"


def stage_dir(output_dir: str | Path, kind: str, name: str | None = None) -> Path:
    """The folder of one stage: ``name`` is the modality (unimodal) or fusion method."""
    root = Path(output_dir)
    if kind == "unimodal":
        return root / f"unimodal_{name}"
    if kind == "fusion":
        return root / f"fusion_{name}"
    if kind == "adamml":
        return root / "adamml"
    raise ValueError(f"unknown stage {kind!r}: expected one of {', '.join(STAGES)}")


def stage_of(folder: str | Path) -> str:
    """The stage a stage folder belongs to (its name up to the first underscore)."""
    return Path(folder).name.split("_")[0]


def find_stage_checkpoints(run_dir: str | Path) -> list[Path]:
    """best.pt of every stage folder of a run, unimodal first, AdaMML last."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    found = list(Path(run_dir).glob(f"*/{BEST}"))
    return sorted(found, key=lambda p: (order.get(stage_of(p.parent), len(STAGES)), p.parent.name))
