"""How a trained model runs at inference: micro-batches, memory format, precision.

Training keeps its own settings (adamml.training); this is only for evaluation, ``adamml
predict`` and the benchmarks. What was measured on a 2-core CPU (full-size Kinetics-Sounds
RGB + audio, 10 segments, ``benchmarks/conditional.py``) decided the defaults:

- **Micro-batches.** A ResNet-50 on 80 frames at 224² in one call overflows the caches
  (4.7 s); one segment (8 frames) per call takes half the time. So on a CPU each sub-network
  sees at most ``pixels_per_call`` frame pixels per call (default: one paper-size segment,
  8 x 224 x 224), i.e. one RGB segment, six 256² spectrograms. On a GPU large batches are
  what it is good at: no limit.
- **channels_last** memory format: another 1.9x on the CPU (oneDNN's preferred layout).
- **Batch norm folded into the preceding convolution** (eval mode only): in channels_last
  the separate batch-norm pass took 40 % of the policy's time.
- **bf16 autocast** (``precision="bf16"``), an option for CPUs with bf16 instructions and for
  GPUs; its accuracy change is measured, see the README.
- ``torch.compile``, an option; it did not pay on the 2-core CPU (see the README).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PRECISIONS = ("fp32", "bf16")
# One paper-size RGB segment (8 frames at 224x224): the CPU default of pixels_per_call.
CPU_PIXELS_PER_CALL = 8 * 224 * 224


@dataclass(frozen=True)
class ExecutionPlan:
    """Inference settings for one device. Build with :meth:`for_device`, apply with
    :meth:`prepare`, run under :meth:`context`."""

    device: str = "cpu"
    # Frame pixels (frames x H x W of the inputs, channels not counted) one sub-network call
    # may take; a call holds at least one segment. None: every selected segment in one call.
    pixels_per_call: int | None = CPU_PIXELS_PER_CALL
    channels_last: bool = True
    fold_batchnorm: bool = True
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.pixels_per_call is not None and self.pixels_per_call < 1:
            raise ValueError(f"pixels_per_call must be >= 1 or None, got {self.pixels_per_call}")

    @classmethod
    def for_device(cls, device: str | torch.device = "cpu", **overrides) -> ExecutionPlan:
        """The measured defaults for ``device`` ("cpu", "cuda", "cuda:1"), then ``overrides``."""
        device = str(device)
        plan = cls(device=device, pixels_per_call=None if device.startswith("cuda") else CPU_PIXELS_PER_CALL)
        return replace(plan, **overrides)

    def segments_per_call(self, x: torch.Tensor) -> int | None:
        """Segments per call for an input (N, T, C, H, W) or (N, C, H, W); None: all at once."""
        if self.pixels_per_call is None:
            return None
        per_segment = x.shape[-2] * x.shape[-1] * (x.shape[1] if x.dim() == 5 else 1)
        return max(1, self.pixels_per_call // per_segment)

    def prepare(self, model: nn.Module, *, inplace: bool = False) -> nn.Module:
        """The model ready to run under this plan: eval mode, on the device, batch norm
        folded, channels_last, optionally compiled, and the plan attached where the model
        runs sub-networks (``model.execution``). A copy unless ``inplace`` (folding changes
        the weights, so a model that will be trained or saved again must not be folded)."""
        if not inplace:
            model = copy.deepcopy(model)
        model.eval()
        if self.fold_batchnorm:
            fold_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        for module in model.modules():
            if hasattr(module, "execution"):
                module.execution = self
        if self.compile:
            compile_subnetworks(model)
        return model

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """inference_mode, and bf16 autocast when asked for."""
        device_type = torch.device(self.device).type
        with torch.inference_mode(), torch.autocast(
            device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            yield


def run_chunked(
    net: Callable[[torch.Tensor], tuple[torch.Tensor, ...] | torch.Tensor],
    x: torch.Tensor,
    plan: ExecutionPlan | None,
):
    """``net(x)`` over micro-batches of x's first dimension (segments), outputs concatenated.

    Works for networks returning a tensor or a tuple of tensors. Without a plan: one call.
    """
    size = plan.segments_per_call(x) if plan is not None else None
    if size is None or x.shape[0] <= size:
        return net(x)
    parts = [net(chunk) for chunk in x.split(size)]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return tuple(torch.cat(items) for items in zip(*parts, strict=True))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into that convolution.

    Two shapes are recognised, the ones torchvision's ResNets and MobileNets (and our TSN
    ResNet) use: consecutive (Conv2d, BatchNorm2d) children of an ``nn.Sequential``, and
    sibling attributes ``convX`` / ``bnX`` of a module whose forward applies bnX to convX's
    output. The batch norm becomes an Identity. Returns how many were folded.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (running statistics)")
    folded = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs = list(zip(names, names[1:], strict=False))
        else:
            pairs = [("conv" + n[2:], n) for n in children if n.startswith("bn")]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def compile_subnetworks(model: nn.Module) -> None:
    """``torch.compile`` each recognition sub-network and policy extractor in place (the
    control flow around them, which depends on the decisions, stays eager)."""
    for holder in ("recognition", "extractors"):
        for module in model.modules():
            table = getattr(module, holder, None)
            if isinstance(table, nn.ModuleDict):
                for name in list(table):
                    table[name] = torch.compile(table[name], dynamic=True)
