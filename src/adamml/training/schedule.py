"""The recipe's epochs as an explicit list, so a run can stop anywhere and resume exactly.

Stage 1 (unimodal) and stage 2 (fusion) are plain epochs. Stage 3 (AdaMML) follows the
reference's ``train_adamml.py``: a warm-up with the policy frozen, then alternating epochs
(recognition networks, then policy, the other frozen), then a fine-tune with the policy fixed
that starts from the best alternating epoch (weights and temperature).

Also as the reference: warm-up epochs are not validated (an untrained policy cannot be the
model kept), validation follows each alternating epoch's policy pass and each fine-tune
epoch, and the Gumbel temperature is multiplied by the decay after each alternating epoch
only (20 decays for 20 alternating epochs: 5.0 ... 5.0 x 0.965^19 = 2.54 in the last one).
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


def decays_temperature(phase: Phase) -> bool:
    """Whether the Gumbel temperature decays after this epoch: after each alternating epoch's
    policy pass, as the reference's ``decay_temperature()`` at the end of an alternating epoch."""
    return phase.block == "alternate" and phase.trains == "policy"


def validates(phase: Phase) -> bool:
    """Whether this epoch may be validated (and so become ``best.pt``): every epoch of the
    plain stages; in stage 3 each alternating epoch (after its policy pass) and each
    fine-tune epoch, never the warm-up."""
    if phase.block == "warmup":
        return False
    if phase.block == "alternate":
        return phase.trains == "policy"
    return True


def validation_due(schedule: list[Phase], epoch: int, every: int) -> bool:
    """Whether the driver validates after ``epoch`` (0-based): every ``every``-th of the epochs
    that may be validated (``validates``; counted among those only, so with an even
    ``every`` the alternating epochs, whose policy passes are every other epoch, are still
    reached), and the stage's last epoch always. ``every`` 0: the last epoch only."""
    if epoch == len(schedule) - 1:
        return True
    if every <= 0 or not validates(schedule[epoch]):
        return False
    rank = sum(validates(p) for p in schedule[: epoch + 1])  # 1-based among the validatable
    return rank % every == 0


def finetune_start(schedule: list[Phase], every: int) -> str:
    """Where the fine-tune starts, as the driver will find it: "best alternating" when at
    least one alternating epoch is validated (so ``best_alternate.pt`` exists), else "last"."""
    validated = [validation_due(schedule, e, every) for e in range(len(schedule))]
    if any(v and p.block == "alternate" for p, v in zip(schedule, validated, strict=True)):
        return "best alternating"
    return "last"


def temperature_plan(schedule: list[Phase], start: float, decay: float) -> list[float]:
    """The temperature each epoch of an AdaMML schedule trains with, before the fine-tune's
    reload (which takes the best alternating epoch's)."""
    out, tau = [], start
    for phase in schedule:
        out.append(tau)
        if decays_temperature(phase):
            tau *= decay
    return out
