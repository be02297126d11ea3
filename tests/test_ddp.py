"""train.batch_size is global, split over the processes; DDP while the policy skips branches."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from adamml.config import ClipSettings, ModelConfig, PolicyConfig
from adamml.errors import AdamMLError
from adamml.models.adamml import build_adamml
from adamml.runtime.distributed import per_process_batch

B, K, T, H, C = 4, 3, 4, 32, 5
CLIP = ClipSettings(num_segments=K, frames_per_segment=T, stack_length=2, crop_size=H, audio_frames=32)
# Audio skipped on some segments, RGB on others, and one video that never runs audio: a
# parameter set no process uses in a step must not break the gradient all-reduce.
DECISIONS = torch.tensor(
    [[[1, 0], [1, 1], [0, 1]], [[1, 0], [1, 0], [1, 0]], [[0, 1], [1, 1], [1, 0]], [[1, 0], [0, 1], [1, 1]]],
    dtype=torch.float32,
)


def test_global_batch_is_split_and_a_remainder_is_refused():
    assert per_process_batch(72, 8) == 9 and per_process_batch(72, 1) == 72
    with pytest.raises(AdamMLError, match=r"train.batch_size=72 .* 5 processes.*75"):
        per_process_batch(72, 5)


def _model():
    torch.manual_seed(0)
    cfg = ModelConfig(
        modalities=["rgb", "audio"],
        backbones={"rgb": "resnet_tiny", "audio": "mobilenet_v2_tiny"},
        num_classes=C,
        fusion="weighted",
        fusion_mode="reference",
        policy=PolicyConfig(backbone="mobilenet_v2_tiny", frames=4, resolution=24, joint_dim=32, hidden_size=16),
    )
    # Batch norm in eval mode: without SyncBN (GPU only) statistics are per process, and the
    # equality below is about the gradient all-reduce.
    return build_adamml(cfg, CLIP).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    return {
        "rgb": torch.randn(B, K, T, 3, H, H, generator=g),
        "audio": torch.randn(B, K, 1, 32, 32, generator=g),
        "label": torch.tensor([0, 1, 2, 3]),
    }


def _step(model, batch, decisions):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(batch, mode="conditional", decisions=decisions)
    F.cross_entropy(out.logits, batch["label"]).backward()
    opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    per = per_process_batch(B, world)
    part = slice(rank * per, (rank + 1) * per)
    batch = {k: v[part] for k, v in _batch().items()}
    state = _step(ddp, batch, DECISIONS[part])
    if rank == 0:
        torch.save({k.removeprefix("module."): v for k, v in state.items()}, out)
    dist.destroy_process_group()


def test_two_gloo_processes_step_like_one_process_with_the_global_batch_while_branches_are_skipped(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    two = torch.load(out)
    torch.set_num_threads(1)
    one = _step(_model(), _batch(), DECISIONS)
    before = _model().state_dict()
    moved = [k for k in one if not torch.equal(one[k], before[k])]
    assert any(k.startswith("recognition.audio") for k in moved) and any(k.startswith("fusion") for k in moved)
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_sync_bn_converts_every_batch_norm_only_for_several_gpu_processes():
    from adamml.runtime.distributed import sync_batchnorm

    def batch_norms(model):
        return [type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    model = _model()
    assert not sync_batchnorm(model, torch.device("cpu"), distributed=True)  # CPU: torch cannot
    assert not sync_batchnorm(model, torch.device("cuda"), distributed=False)  # one process: nothing to sync
    assert set(batch_norms(model)) == {"BatchNorm2d"}
    # The conversion itself needs no GPU: every batch norm, in place (the model object stays).
    assert sync_batchnorm(model, torch.device("cuda"), distributed=True)
    assert batch_norms(model) and set(batch_norms(model)) == {"SyncBatchNorm"}


def _train_mode(model):
    """Batch statistics from the batch (train mode), dropout off so that two runs compare."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    return model


def _sync_bn_worker(rank: int, world: int, init: str, out: str) -> None:
    from adamml.runtime.distributed import sync_batchnorm

    # gloo carries CUDA tensors (through the host), so two processes can share one GPU.
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would differ by batch size
    torch.backends.cudnn.deterministic = True
    model = _train_mode(_model()).to(device)
    assert sync_batchnorm(model, device, distributed=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index], find_unused_parameters=True)
    per = per_process_batch(B, world)
    part = slice(rank * per, (rank + 1) * per)
    batch = {k: v[part].to(device) for k, v in _batch().items()}
    state = _step(ddp, batch, DECISIONS[part].to(device))
    if rank == 0:
        torch.save({k.removeprefix("module."): v.cpu() for k, v in state.items()}, out)
    dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's SyncBatchNorm runs on GPUs only")
def test_with_sync_bn_two_gpu_processes_step_like_one_process_with_the_global_batch(tmp_path):
    """Batch norm in train mode: with SyncBN the statistics are the global batch's, so the
    weights and running statistics after a step equal one process's on the whole batch."""
    out = tmp_path / "rank0.pt"
    mp.spawn(_sync_bn_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2, join=True)
    two = torch.load(out)
    device = torch.device("cuda", 0)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    one = _step(_train_mode(_model()).to(device), {k: v.to(device) for k, v in _batch().items()}, DECISIONS.to(device))
    stats = [k for k in one if k.endswith("running_mean")]
    assert stats and any(not torch.equal(one[k].cpu(), _model().state_dict()[k]) for k in stats)  # BN did update
    for key, value in one.items():
        torch.testing.assert_close(two[key], value.cpu(), rtol=1e-4, atol=1e-5, msg=key)
