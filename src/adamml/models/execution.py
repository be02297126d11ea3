"""How a trained model runs at inference: micro-batches, worker threads, memory format,
fused layers, precision.

Training keeps its own settings (adamml.training); this is only for evaluation, ``adamml
predict`` and the benchmarks. Each default has a reason; the measurements behind them are in
docs/inference.md:

- **Micro-batches.** A ResNet-50 on 80 frames at 224² in one call overflows the CPU's caches
  and page-faults; one segment (8 frames) per call stays in cache. So on a CPU each sub-network
  sees at most ``pixels_per_call`` frame pixels per call (default: one paper-size segment,
  8 x 224 x 224), i.e. one RGB segment, six 256² spectrograms, three policy segments of
  4 x 160²; with worker threads a call is also cut into at least as many micro-batches as
  there are workers. On a GPU large batches are what it is good at: no limit.
- **Worker threads** (``workers``, CPU): the micro-batches of all the sub-networks that run
  at one point (the policy's extractors; the recognition networks) run concurrently on as
  many worker threads as torch has intra-op threads, each worker single-threaded. On a busy
  CPU one call spread over OpenMP threads waits at every layer's barrier for a thread the
  scheduler has taken away, and small layers (the MobileNets) suffer most; single-threaded
  workers never synchronise inside a layer. Segments that do not divide among the workers (5 RGB
  segments on 2) are spread stage by stage where the network can (``forward_split``).
- **channels_last** memory format: oneDNN's preferred layout.
- **Batch norm folded into the preceding convolution** (eval mode only): in channels_last
  the separate batch-norm pass is a large share of the small networks' time.
- **Pointwise ops fused into the convolutions** (``fuse_pointwise``, CPU, fp32): ReLU/ReLU6
  and the residual additions of torchvision's MobileNetV2 and ResNet blocks run as oneDNN
  post-ops of the convolution before them instead of as separate passes over the
  activations (the MobileNets' small layers are memory-bound).
- **bf16 autocast** (``precision="bf16"``), an option for CPUs with bf16 instructions and for
  GPUs (no fusion then); its accuracy change on the demo is in docs/inference.md.
- ``torch.compile``, an option; it did not pay on a CPU (docs/inference.md).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

PRECISIONS = ("fp32", "bf16")
# One paper-size RGB segment (8 frames at 224x224): the CPU default of pixels_per_call.
CPU_PIXELS_PER_CALL = 8 * 224 * 224


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX, as oneDNN reports): elsewhere
    bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


_said: set[str] = set()


def _say_once(line: str) -> None:
    if line not in _said:
        _said.add(line)

        print(f"adamml: {line}", file=sys.stderr, flush=True)


def usable_precision(device: str | torch.device, precision: str) -> str:
    """``precision``, except bf16 on a CPU without native bf16 (emulated there, several times
    slower than fp32): "fp32" then, said once. Inference plans and training both ask here."""
    if precision == "bf16" and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        _say_once(f"precision bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 "
                  "instructions, where bf16 runs several times slower than fp32; running fp32 instead")
        return "fp32"
    return precision


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
    # ReLU/ReLU6 and residual additions as oneDNN post-ops of the convolutions (CPU, fp32,
    # after fold_batchnorm; see fuse_pointwise).
    fuse_pointwise: bool = True
    precision: str = "fp32"
    compile: bool = False
    # Worker threads that run micro-batches concurrently, one intra-op thread each (CPU).
    # None: as many as torch's intra-op threads when the model runs; 1: every call in the
    # caller's thread with torch's intra-op threads.
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.pixels_per_call is not None and self.pixels_per_call < 1:
            raise ValueError(f"pixels_per_call must be >= 1 or None, got {self.pixels_per_call}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {self.workers}")

    @classmethod
    def for_device(cls, device: str | torch.device = "cpu", **overrides) -> ExecutionPlan:
        """The measured defaults for ``device`` ("cpu", "cuda", "cuda:1"), then ``overrides``."""
        device = str(device)
        if device.startswith("cuda"):
            plan = cls(device=device, pixels_per_call=None, fuse_pointwise=False, workers=1)
        else:
            plan = cls(device=device, pixels_per_call=CPU_PIXELS_PER_CALL)
        plan = replace(plan, **overrides)
        return replace(plan, precision=usable_precision(device, plan.precision))

    def worker_count(self) -> int:
        """Worker threads a call uses now (1 on a GPU: its kernels are asynchronous anyway)."""
        if torch.device(self.device).type != "cpu":
            return 1
        return self.workers if self.workers is not None else torch.get_num_threads()

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
            if self.fuse_pointwise and self.precision == "fp32" and torch.device(self.device).type == "cpu":
                fuse_pointwise(model)
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
    return run_many([(net, x)], plan)[0]


def run_many(
    calls: Sequence[tuple[Callable[[torch.Tensor], tuple[torch.Tensor, ...] | torch.Tensor], torch.Tensor]],
    plan: ExecutionPlan | None,
) -> list:
    """``[net(x) for net, x in calls]``, each over micro-batches of x's first dimension
    (outputs concatenated), the micro-batches of all calls spread over the plan's worker
    threads. Without a plan: one call each, in this thread.

    With workers, a call is cut into at least as many micro-batches as there are workers
    (when it has that many segments), and the largest inputs are handed out first so the
    workers finish together.
    """
    workers = plan.worker_count() if plan is not None else 1
    jobs: list[tuple[int, Callable, torch.Tensor]] = []
    counts = []
    for i, (net, x) in enumerate(calls):
        size = plan.segments_per_call(x) if plan is not None else None
        if workers > 1:
            size = min(size or x.shape[0], max(1, math.ceil(x.shape[0] / workers)))
        # As many micro-batches as the size limit needs, of equal size (10 segments at 3 per
        # call: 3, 3, 2, 2 rather than 3, 3, 3, 1), so the workers finish together.
        chunks = [x] if size is None or x.shape[0] <= size else list(x.tensor_split(math.ceil(x.shape[0] / size)))
        counts.append(len(chunks))
        jobs.extend((i, net, chunk) for chunk in chunks)
    if workers > 1 and (len(jobs) > 1 or any(_splits(net) for _, net, _ in jobs)):
        results = _run_on_workers(jobs, workers)
    else:
        results = [net(chunk) for _, net, chunk in jobs]
    out, start = [], 0
    for n in counts:
        parts = results[start:start + n]
        start += n
        if n == 1:
            out.append(parts[0])
        elif isinstance(parts[0], torch.Tensor):
            out.append(torch.cat(parts))
        else:
            out.append(tuple(torch.cat(items) for items in zip(*parts, strict=True)))
    return out


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads, each with one intra-op thread."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            caller_threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(workers, thread_name_prefix="adamml-exec",
                                      initializer=torch.set_num_threads, initargs=(1,))
            start = threading.Barrier(workers)
            list(pool.map(lambda _: start.wait(), range(workers)))  # every worker started now
            # torch.set_num_threads in a worker also set the count torch gives threads it
            # has not seen yet; this thread's own count is unchanged. Put the default back.
            torch.set_num_threads(caller_threads)
            _POOLS[workers] = pool
        return pool


def _splits(net: Callable) -> bool:
    """Whether ``net`` can spread one micro-batch over several workers (``forward_split``)."""
    return callable(getattr(net, "forward_split", None))


def _run_on_workers(jobs: list[tuple[int, Callable, torch.Tensor]], workers: int) -> list:
    """Results of ``net(chunk)`` for each job, in order, computed on the worker pool under
    the caller's grad, inference and autocast modes (thread-local in torch).

    Micro-batches are whole segments, so when the chunks of the costly networks do not
    divide among the workers (5 selected RGB segments on 2 workers) one worker would run
    alone at the end. Those left-over chunks of networks that have ``forward_split`` (the
    TSN ResNet: its frame-wise stages) run last, each stage's frames spread over all the
    workers; the rest run as one chunk per worker call, largest first.
    """
    modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled(),
             torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
    pool = _worker_pool(workers)
    splittable = [j for j, (_, net, _) in enumerate(jobs) if _splits(net)]
    later = splittable[len(splittable) - len(splittable) % workers:]
    waiting = set(later)
    now = [j for j in range(len(jobs)) if j not in waiting]
    order = sorted(now, key=lambda j: -jobs[j][2].numel())  # largest first
    futures = {j: pool.submit(_in_modes, modes, jobs[j][1], jobs[j][2]) for j in order}
    results = {j: future.result() for j, future in futures.items()}

    def parallel(fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        parts = y.tensor_split(min(workers, y.shape[0]))
        return torch.cat([f.result() for f in [pool.submit(_in_modes, modes, fn, p) for p in parts]])

    for j in later:
        results[j] = jobs[j][1].forward_split(jobs[j][2], parallel)
    return [results[j] for j in range(len(jobs))]


def _in_modes(modes: tuple, fn: Callable, x: torch.Tensor):
    inference, grad, autocast, dtype = modes
    with torch.inference_mode(inference), torch.set_grad_enabled(grad), torch.autocast(
        "cpu", dtype=dtype, enabled=autocast
    ):
        return fn(x)


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


class FusedConv2d(nn.Module):
    """A Conv2d and the ReLU/ReLU6 after it as one oneDNN convolution with a post-op;
    :meth:`add` also adds a tensor (a residual) to the result before that activation.
    Inference only (CPU, fp32); built by :func:`fuse_pointwise`."""

    _UNARY = {None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0])}

    def __init__(self, conv: nn.Conv2d, activation: str | None = None):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation = activation
        self._attr, self._scalars = self._UNARY[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            self._attr, self._scalars, None,
        )

    def add(self, x: torch.Tensor, other: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """activation(conv(x) + other); activation None or "relu"."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", None, activation, [], None,
        )

    def extra_repr(self) -> str:
        out, cin = self.weight.shape[:2]
        return (f"{cin * self.groups}, {out}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={tuple(self.stride)}, groups={self.groups}, activation={self.activation}")


class FusedInvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block with its last convolution fused with the residual add."""

    def __init__(self, body: nn.Sequential, last: FusedConv2d, residual: bool):
        super().__init__()
        self.body, self.last, self.residual = body, last, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.last.add(h, x) if self.residual else self.last(h)


class FusedResidualBlock(nn.Module):
    """torchvision's ResNet BasicBlock / Bottleneck: convolutions with fused ReLUs, the last
    fused with the shortcut addition and the ReLU after it."""

    def __init__(self, convs: list[FusedConv2d], downsample: nn.Module | None):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        h = x
        for conv in self.convs[:-1]:
            h = conv(h)
        return self.convs[-1].add(h, shortcut, "relu")


def _fusable(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


def pointwise_fusion_available() -> bool:
    """Whether this torch has the oneDNN convolution with post-ops (CPU builds with mkldnn)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def fuse_pointwise(model: nn.Module) -> int:
    """Fuse activations and residual additions into the convolutions, in place (eval mode,
    after :func:`fold_batchnorm`; CPU fp32 inference only). Returns the convolutions fused.

    Recognised: a Conv2d followed in an ``nn.Sequential`` by ReLU or ReLU6 (Identity left by
    folded batch norms in between), and torchvision's InvertedResidual (MobileNetV2),
    BasicBlock and Bottleneck (ResNet) with folded batch norms. Other Conv2d in an
    ``nn.Sequential`` become fused convolutions without a post-op (oneDNN's kernel, also
    single-threaded, where torch would take its own 1x1 path). Results equal the unfused
    model to float rounding (tests/test_execution.py). Nothing happens without oneDNN.
    """
    if model.training:
        raise ValueError("fuse_pointwise needs a model in eval mode")
    if not pointwise_fusion_available():
        return 0

    fused = 0
    # Residual blocks first (they need the plain modules), then the remaining sequences.
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (BasicBlock, Bottleneck)):
                names = ["1", "2"] + (["3"] if isinstance(child, Bottleneck) else [])
                convs = [getattr(child, "conv" + n) for n in names]
                if all(_fusable(c) for c in convs) and all(
                    isinstance(getattr(child, "bn" + n), nn.Identity) for n in names
                ):
                    ops = [FusedConv2d(c, "relu") for c in convs[:-1]] + [FusedConv2d(convs[-1])]
                    setattr(parent, name, FusedResidualBlock(ops, child.downsample))
                    fused += len(ops)
            elif isinstance(child, InvertedResidual):
                layers = [m for m in child.conv if not isinstance(m, nn.Identity)]
                if layers and _fusable(layers[-1]):
                    body = nn.Sequential(*layers[:-1])  # its convolutions: fused below
                    setattr(parent, name, FusedInvertedResidual(body, FusedConv2d(layers[-1]), child.use_res_connect))
                    fused += 1
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            fused += _fuse_sequential(module)
    return fused


def _fuse_sequential(seq: nn.Sequential) -> int:
    """Conv2d (+ ReLU/ReLU6) children of ``seq`` -> FusedConv2d (+ Identity), in place."""
    fused = 0
    children = [(n, c) for n, c in seq.named_children() if not isinstance(c, nn.Identity)]
    for (name, conv), nxt in zip(children, [*children[1:], (None, None)], strict=True):
        if not _fusable(conv):
            continue
        act_name, act = nxt
        activation = {nn.ReLU: "relu", nn.ReLU6: "relu6"}.get(type(act))
        setattr(seq, name, FusedConv2d(conv, activation))
        if activation is not None:
            setattr(seq, act_name, nn.Identity())
        fused += 1
    return fused


def compile_subnetworks(model: nn.Module) -> None:
    """``torch.compile`` each recognition sub-network and policy extractor in place (the
    control flow around them, which depends on the decisions, stays eager)."""
    for holder in ("recognition", "extractors"):
        for module in model.modules():
            table = getattr(module, holder, None)
            if isinstance(table, nn.ModuleDict):
                for name in list(table):
                    table[name] = torch.compile(table[name], dynamic=True)
