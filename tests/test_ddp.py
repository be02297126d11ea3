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
