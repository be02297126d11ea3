"""One code path for one CPU, one GPU, several GPUs and several nodes (launched by torchrun).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them we run as a single process. CUDA
ranks use NCCL, CPU ranks use gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from adamml.errors import AdamMLError


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Runtime:
    """Initialise the process group when launched by torchrun; pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Every process takes ``src``'s buffers (batch-norm statistics, the policy's thresholds).

    Without SyncBN each process updates its own running statistics in training (DDP copies
    rank 0's at each forward, then the step's own batch moves them), so before validation the
    ranks hold slightly different models; rank 0's is the one saved, so it is the one every
    shard of the validation set must be scored with."""
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def per_process_batch(global_batch: int, world_size: int) -> int:
    """``train.batch_size`` is the global batch (the reference's ``-b``), split evenly over
    the processes; a split that leaves a remainder is refused rather than rounded."""
    if world_size < 1:
        raise AdamMLError(f"the number of processes must be >= 1, got {world_size}")
    if global_batch % world_size:
        raise AdamMLError(
            f"train.batch_size={global_batch} is the global batch and does not divide over "
            f"{world_size} processes; use a multiple of {world_size} (e.g. "
            f"{(global_batch // world_size + 1) * world_size})"
        )
    return global_batch // world_size


def sync_batchnorm(model: torch.nn.Module, device: torch.device, distributed: bool) -> bool:
    """Batch-norm statistics over the global batch (the reference's ``--sync_bn``): every
    BatchNorm of ``model`` becomes a SyncBatchNorm, in place, when several processes train on
    a GPU. PyTorch synchronises batch norm on GPUs only, so on CPU nothing changes. Returns
    whether the model was converted."""
    if not distributed or device.type != "cuda":
        return False
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:  # the model itself is a BatchNorm: not one of ours
        raise TypeError("sync_batchnorm converts the batch norms inside a model, not a bare BatchNorm")
    return True
