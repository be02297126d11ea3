"""DataLoaders that give the same batches on one process or many (torchrun), epoch by epoch."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from adamml.runtime.distributed import Runtime


def make_loader(dataset, batch_size: int, runtime: Runtime, *, train: bool, seed: int, num_workers: int) -> DataLoader:
    """Shuffled by a seeded generator for training (or a DistributedSampler under torchrun);
    in order for evaluation. Pair with :func:`set_loader_epoch` before each epoch."""
    if runtime.distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=train, seed=seed,
            drop_last=False,
        )
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=train and _last_batch_is_one_clip(len(sampler), batch_size, dataset),
        pin_memory=runtime.device.type == "cuda",
        persistent_workers=False,
        # Every iterator draws its workers' base seed; from the global generator that draw
        # would shift the dropout and Gumbel noise of the training steps after it, so that
        # anything starting an extra iterator (a progress bar did) changed the weights.
        generator=torch.Generator().manual_seed(seed),
    )


def _last_batch_is_one_clip(count: int, batch_size: int, dataset) -> bool:
    """Whether an epoch's last batch of ``count`` samples (this process's share) would hold a
    single clip, which batch norm cannot normalise while training: that batch is then left
    out (a different video each epoch, the order being shuffled). Every other size keeps it."""
    clips_per_sample = int(getattr(dataset, "num_segments", 1))
    return count > batch_size and count % batch_size == 1 and clips_per_sample == 1


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make the epoch's order and augmentation a function of (seed, epoch) only."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(seed * 100_003 + epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_019 + epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
