"""The layout of a training run's folder, in one place.

``<train.output_dir>/`` holds one folder per stage of the recipe (the folders are in the stage
table, :mod:`adamml.stages`)::

    unimodal_<modality>/   stage 1, one per modality
    fusion_<method>/       stage 2, one per fusion head
    adamml/                stage 3

and each stage folder holds ``config.yaml`` (the resolved config), ``log.csv`` (one row per
epoch), ``last.pt`` (the resume point) and ``best.pt`` (the best validation score). Training
writes it, later stages and ``adamml evaluate`` / ``adamml demo`` / ``adamml.load`` read it.
"""

from __future__ import annotations

from pathlib import Path

from adamml.stages import STAGES as STAGE_TABLE
from adamml.stages import stage, stage_of_folder

STAGES: tuple[str, ...] = tuple(STAGE_TABLE)

LAST = "last.pt"
BEST = "best.pt"
BEST_ALTERNATE = "best_alternate.pt"  # stage 3: the best alternating epoch, the fine-tune's start
LOG = "log.csv"
CONFIG = "config.yaml"


def stage_dir(output_dir: str | Path, kind: str, name: str | None = None) -> Path:
    """The folder of one stage: ``name`` is the modality (unimodal) or fusion method."""
    return Path(output_dir) / stage(kind).folder_name(name)


def stage_of(folder: str | Path) -> str:
    """The stage a stage folder belongs to (its name up to the first underscore for others)."""
    row = stage_of_folder(Path(folder).name)
    return row.name if row is not None else Path(folder).name.split("_")[0]


def find_stage_checkpoints(run_dir: str | Path) -> list[Path]:
    """best.pt of every stage folder of a run, unimodal first, AdaMML last."""
    order = {name: i for i, name in enumerate(STAGES)}
    found = list(Path(run_dir).glob(f"*/{BEST}"))
    return sorted(found, key=lambda p: (order.get(stage_of(p.parent), len(STAGES)), p.parent.name))


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a run folder is used through: its last stage's best.pt (AdaMML when
    trained, else fusion, else a unimodal network); a stage folder's own best.pt."""
    folder = Path(run_dir)
    if (folder / BEST).is_file():
        return folder / BEST
    found = find_stage_checkpoints(folder)
    return found[-1] if found else None
