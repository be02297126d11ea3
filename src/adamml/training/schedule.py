"""The recipe's epochs as an explicit list, so a run can stop anywhere and resume exactly.

Stage 1 (unimodal) and stage 2 (fusion) are plain epochs. Stage 3 (AdaMML) follows the
reference's ``train_adamml.py``: a warm-up with the policy frozen, then alternating epochs
(recognition networks, then policy, the other frozen), then a fine-tune with the policy fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

from adamml.config import AdamMLTrainConfig


@dataclass(frozen=True)
class Phase:
    """One epoch of a stage's schedule."""

    block: str  # "train" | "warmup" | "alternate" | "finetune": optimisers restart per block
    trains: str  # "all" | "recognition" | "policy": what this epoch updates
    block_epoch: int  # epoch index inside the block (for LR schedules)
    block_epochs: int  # number of epochs (LR-schedule steps) of the block


def plain_schedule(epochs: int) -> list[Phase]:
    return [Phase("train", "all", e, epochs) for e in range(epochs)]


def adamml_schedule(cfg: AdamMLTrainConfig) -> list[Phase]:
    phases = [Phase("warmup", "recognition", e, cfg.warmup_epochs) for e in range(cfg.warmup_epochs)]
    span = max(1, cfg.alternate_every)
    epoch = 0
    while epoch < cfg.epochs:
        n = min(span, cfg.epochs - epoch)
        phases += [Phase("alternate", "recognition", epoch + i, cfg.epochs) for i in range(n)]
        phases += [Phase("alternate", "policy", epoch + i, cfg.epochs) for i in range(n)]
        epoch += n
    phases += [Phase("finetune", "recognition", e, cfg.finetune_epochs) for e in range(cfg.finetune_epochs)]
    return phases
