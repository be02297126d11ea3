"""What a prediction returns, in plain Python: shared by the PyTorch pipeline and the runtimes
that run exported graphs without torch, so every path hands back the same object."""

from __future__ import annotations

from dataclasses import dataclass, field

# The timed stages of one prediction, in the order they run.
STAGES = ("decode", "modalities", "policy", "flow", "networks")


@dataclass
class Prediction:
    video: str
    top: list[tuple[str, float]]  # (class name, probability), best first
    segments: list[list[str]]  # modalities that ran in each segment
    gflops: float
    audio_missing: bool
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, STAGES
    flow_fields: int = 0  # optical flow fields computed (only for segments whose flow net ran)
