"""The three stages of the recipe, as a table: what each trains, where it lives, how it is built.

A checkpoint's ``kind`` names its row. Folders, the train-config section that holds the
schedule, the builder of the network and the demo's title are read from here, and "does this
network decide per segment" is :attr:`Stage.adaptive`, so no caller tests the kind's string.
Torch-free, so checkpoint discovery and the command line read it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

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


STAGES: dict[str, Stage] = {
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
        return STAGES[kind]
    except KeyError:
        raise AdamMLError(f"unknown stage {kind!r}: expected one of {', '.join(STAGES)}") from None


def stage_of_folder(folder_name: str) -> Stage | None:
    """The stage a run's stage folder belongs to, None for another folder."""
    for row in STAGES.values():
        head = row.folder.split("{")[0]
        if (folder_name.startswith(head) and row.named_by) or folder_name == row.folder:
            return row
    return None
