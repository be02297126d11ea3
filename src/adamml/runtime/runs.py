"""The stages of the recipe and the layout of a training run's folder, in one place.

The stage table (:data:`STAGE_TABLE`) says, per stage, its folder, the section of ``train:``
holding its schedule, the builder of its network, its title, and whether a policy decides
per segment (:attr:`Stage.adaptive`), so no caller tests a checkpoint's ``kind`` string.
``<train.output_dir>/`` holds one folder per stage::

    unimodal_<modality>/   stage 1, one per modality
    fusion_<method>/       stage 2, one per fusion head
    adamml/                stage 3

and each stage folder holds ``config.yaml`` (the resolved config), ``log.csv`` (one row per
epoch), ``last.pt`` (the resume point) and ``best.pt`` (the best validation score). Training
writes it, later stages and ``adamml evaluate`` / ``adamml demo`` / ``adamml.load`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adamml.errors import AdamMLError


@dataclass(frozen=True)
class Stage:
    name: str  # a checkpoint's "kind"
    folder: str  # the stage folder in a run, "{name}": the modality or fusion method
    named_by: str | None  # what fills the folder's {name}: "modality", "fusion" or nothing
    schedule: str  # the section of ``train:`` holding its epochs and learning rates
    builder: str  # "module:function" building the network from (model_cfg, clip)
    title: str  # what the demo says it trains
    adaptive: bool  # a policy decides per segment which modalities run (else all of them do)

    def folder_name(self, name: str | None = None) -> str:
        if self.named_by is not None and not name:
            raise AdamMLError(f"the {self.name} stage's folder needs a {self.named_by} name")
        return self.folder.format(name=name)

    def folder_names(self, modalities: list[str], fusion: str) -> list[str]:
        """The folders this stage writes for a model of ``modalities`` fused by ``fusion``."""
        if self.named_by == "modality":
            return [self.folder_name(m) for m in modalities]
        return [self.folder_name(fusion if self.named_by == "fusion" else None)]


STAGE_TABLE: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("unimodal", "unimodal_{name}", "modality", "unimodal", "adamml.models.multimodal:build_multimodal",
              "unimodal networks", adaptive=False),
        Stage("fusion", "fusion_{name}", "fusion", "fusion", "adamml.models.multimodal:build_multimodal",
              "weighted fusion", adaptive=False),
        Stage("adamml", "adamml", None, "adamml", "adamml.models.adamml:build_adamml", "AdaMML", adaptive=True),
    )
}


def stage(kind: str) -> Stage:
    """The row of a stage name (a checkpoint's ``kind``); an unknown one is named."""
    try:
        return STAGE_TABLE[kind]
    except KeyError:
        raise AdamMLError(f"unknown stage {kind!r}: expected one of {', '.join(STAGE_TABLE)}") from None


def stage_of_folder(folder_name: str) -> Stage | None:
    """The stage a run's stage folder belongs to, None for another folder."""
    for row in STAGE_TABLE.values():
        head = row.folder.split("{")[0]
        if (folder_name.startswith(head) and row.named_by) or folder_name == row.folder:
            return row
    return None


STAGES: tuple[str, ...] = tuple(STAGE_TABLE)  # the stage names, in training order

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
