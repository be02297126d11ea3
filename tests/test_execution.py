"""The inference execution plan: micro-batched conditional execution gives the same result as
one call per network and as the masked model, on worker threads too; folding batch norm and
fusing activations into the convolutions keep the function."""

from __future__ import annotations

import copy
import dataclasses
import threading

import pytest
import torch
import torchvision
from numerics import assert_same_function
from test_adamml import CLIP, calibrate_batch_norm, count_inputs, patterns, tiny_batch, tiny_cfg

from adamml.models.adamml import AdaMML, build_adamml
from adamml.models.execution import (
    ExecutionPlan,
    FusedConv2d,
    fold_batchnorm,
    fuse_pointwise,
    pointwise_fusion_available,
    run_chunked,
    run_many,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> AdaMML:
    torch.manual_seed(0)
    net = build_adamml(tiny_cfg(), CLIP)
    calibrate_batch_norm(net, tiny_batch(seed=99))
    return net


def one_segment_plan(**kw) -> ExecutionPlan:
    """A plan whose micro-batches hold one segment of the tiny RGB clip (T x H x H pixels)."""
    rgb = tiny_batch()["rgb"]
    return ExecutionPlan(pixels_per_call=rgb.shape[2] * rgb.shape[-1] * rgb.shape[-2], **kw)


@pytest.mark.parametrize("index", range(7))
def test_micro_batched_conditional_equals_one_call_and_masked(model: AdaMML, index: int) -> None:
    decisions = patterns()[index]
    batch = tiny_batch()
    chunked = one_segment_plan().prepare(model)
    whole = ExecutionPlan(pixels_per_call=None, workers=1).prepare(model)  # same folded weights, one call
    with torch.inference_mode():
        a = chunked(batch, mode="conditional", decisions=decisions)
        b = whole(batch, mode="conditional", decisions=decisions)
        c = whole(batch, mode="masked", decisions=decisions)
        d = chunked(batch, mode="masked", decisions=decisions)
    for other in (b, c, d):
        torch.testing.assert_close(a.logits, other.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.segment_logits, other.segment_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("index", range(7))
def test_gpu_plan_conditional_equals_masked_and_the_cpu_model(model: AdaMML, index: int) -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    decisions = patterns()[index]
    batch = tiny_batch()
    gpu_plan = ExecutionPlan.for_device("cuda")
    gpu = gpu_plan.prepare(model)
    on_gpu = {k: v.cuda() for k, v in batch.items()}
    with gpu_plan.context():
        a = gpu(on_gpu, mode="conditional", decisions=decisions.cuda())
        b = gpu(on_gpu, mode="masked", decisions=decisions.cuda())
    with torch.inference_mode():
        c = model(batch, mode="conditional", decisions=decisions)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.logits.cpu(), c.logits, rtol=1e-4, atol=1e-4)


def test_micro_batches_hold_one_segment_each(model: AdaMML) -> None:
    chunked = one_segment_plan().prepare(model)
    seen, handles = count_inputs(chunked)
    decisions = torch.ones(2, 3, 2)
    with torch.inference_mode():
        chunked(tiny_batch(), mode="conditional", decisions=decisions)
    for h in handles:
        h.remove()
    assert seen["rgb"] == [1] * 6  # 6 selected segments, one per call
    assert len(seen["audio"]) < 6 and sum(seen["audio"]) == 6  # smaller inputs share calls


def test_prepared_model_matches_the_trained_one_with_its_own_policy(model: AdaMML) -> None:
    batch = tiny_batch(seed=3)
    with torch.no_grad():
        ref = model(batch, mode="conditional")
    fast = ExecutionPlan.for_device("cpu").prepare(model)
    with ExecutionPlan.for_device("cpu").context():
        out = fast(batch)
    assert torch.equal(out.decisions, ref.decisions)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


@pytest.mark.parametrize("index", [0, 3, 6])
def test_worker_threads_give_the_results_of_one_call(model: AdaMML, index: int) -> None:
    decisions = patterns()[index]
    batch = tiny_batch()
    workers = one_segment_plan(workers=2).prepare(model)
    whole = ExecutionPlan(pixels_per_call=None, workers=1, fuse_pointwise=False).prepare(model)
    with torch.inference_mode():
        a = workers(batch, mode="conditional", decisions=decisions)
        own = workers(batch, mode="conditional")  # with its own policy (on the workers too)
        b = whole(batch, mode="conditional", decisions=decisions)
        c = whole(batch, mode="masked", decisions=decisions)
        d = whole(batch, mode="conditional")
    # `whole` leaves activations unfused and splits work differently: the same function,
    # rounded differently, by an amount that depends on the host's kernels.
    for other in (b, c):
        assert_same_function(a.logits, other.logits)
        assert_same_function(a.segment_logits, other.segment_logits)
    assert torch.equal(own.decisions, d.decisions)
    assert_same_function(own.logits, d.logits)


@pytest.mark.parametrize("selected", [1, 3, 5])
def test_left_over_resnet_segments_are_split_over_the_workers(model: AdaMML, selected: int) -> None:
    """Odd numbers of RGB segments on 2 workers: the last one runs stage by stage on both,
    with the same result as one call."""
    batch = tiny_batch()
    decisions = torch.zeros(2, 3, 2)
    decisions.view(6, 2)[:selected, 0] = 1
    decisions[..., 1] = 1
    workers = one_segment_plan(workers=2).prepare(model)
    whole = ExecutionPlan(pixels_per_call=None, workers=1).prepare(model)
    rgb = workers.recognition["rgb"]
    split_calls = []
    original = type(rgb).forward_split

    def spy(self, x, parallel):
        split_calls.append(x.shape[0])
        return original(self, x, parallel)

    type(rgb).forward_split = spy
    try:
        with torch.inference_mode():
            a = workers(batch, mode="conditional", decisions=decisions)
    finally:
        type(rgb).forward_split = original
    assert split_calls == [1]  # one left-over segment, split
    with torch.inference_mode():
        b = whole(batch, mode="conditional", decisions=decisions)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.segment_logits, b.segment_logits, rtol=1e-5, atol=1e-5)


def test_forward_split_equals_forward(model: AdaMML) -> None:
    net = ExecutionPlan.for_device("cpu").prepare(model).recognition["rgb"]
    x = tiny_batch()["rgb"][0]
    pieces = []

    def parallel(fn, y):
        parts = y.tensor_split(min(2, y.shape[0]))
        pieces.append(len(parts))
        return torch.cat([fn(p) for p in parts])

    with torch.inference_mode():
        a, fa = net(x)
        b, fb = net.forward_split(x, parallel)
    assert len(pieces) == 4 and pieces[0] == 2  # four stages; frames split
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-5)


def test_micro_batches_run_on_the_worker_threads_in_the_callers_modes(model: AdaMML) -> None:
    seen = []

    def net(v):
        seen.append((threading.current_thread().name, torch.get_num_threads(),
                     torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))
        return v * 2

    x = torch.arange(8.0).view(8, 1, 1, 1)
    plan = ExecutionPlan(pixels_per_call=1, workers=2)  # 1 pixel per segment -> 8 calls
    before = torch.get_num_threads()
    y = torch.arange(12.0).view(3, 1, 2, 2)  # larger inputs: handed out first
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, again = run_many([(net, x), (net, y)], plan)
    assert torch.equal(out, x * 2) and torch.equal(again, y * 2)  # in order
    assert len(seen) == 11
    assert all(name.startswith("adamml-exec") and threads == 1 and inf and cast for name, threads, inf, cast in seen)
    assert torch.get_num_threads() == before  # the caller's threads are untouched
    seen.clear()
    with torch.no_grad():
        run_chunked(net, x, plan)
    assert not any(inf or cast for _, _, inf, cast in seen)
    seen.clear()
    run_chunked(net, x, ExecutionPlan(pixels_per_call=1, workers=1))
    assert {name for name, *_ in seen} == {threading.current_thread().name}


def _calibrated(net: torch.nn.Module) -> torch.nn.Module:
    net.train()
    with torch.no_grad():
        net(torch.randn(6, 3, 64, 64))  # running statistics far from the initial ones
    return net.eval()


@pytest.mark.skipif(not pointwise_fusion_available(), reason="needs torch with oneDNN")
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "resnet50"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fuse_pointwise_keeps_the_function(name: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    net = _calibrated(getattr(torchvision.models, name)(num_classes=7))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
    fused = copy.deepcopy(net)
    fold_batchnorm(fused)
    count = fuse_pointwise(fused)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    # Every convolution but a ResNet's stem (an attribute, not in a block or a sequence).
    assert count == convs - (name != "mobilenet_v2")
    assert sum(isinstance(m, FusedConv2d) for m in fused.modules()) == count
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)) for m in fused.features.modules()) \
        if name == "mobilenet_v2" else True
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = fused(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (ref - ref.mean()).abs().max() > 1e-2  # outputs that differ, so equality means something


@pytest.mark.skipif(not pointwise_fusion_available(), reason="needs torch with oneDNN")
def test_cpu_plan_fuses_the_model_and_keeps_its_results(model: AdaMML) -> None:
    plan = ExecutionPlan.for_device("cpu")
    fast = plan.prepare(model)
    assert any(isinstance(m, FusedConv2d) for m in fast.modules())
    plain = ExecutionPlan.for_device("cpu", fuse_pointwise=False).prepare(model)
    assert not any(isinstance(m, FusedConv2d) for m in plain.modules())
    bf16 = dataclasses.replace(ExecutionPlan.for_device("cpu"), precision="bf16")  # kept bf16 on any CPU
    assert not any(isinstance(m, FusedConv2d) for m in bf16.prepare(model).modules())
    decisions = torch.ones(2, 3, 2)
    with plan.context():
        a, b = fast(tiny_batch(), decisions=decisions), plain(tiny_batch(), decisions=decisions)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_removes_every_batch_norm_of_the_model(model: AdaMML) -> None:
    import copy

    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded)
    assert count == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(copy.deepcopy(model).train())


def test_bf16_plan_runs_and_stays_close(model: AdaMML) -> None:
    batch = tiny_batch()
    plan = dataclasses.replace(ExecutionPlan.for_device("cpu"), precision="bf16")  # bf16 even where emulated
    fast = plan.prepare(model)
    decisions = torch.ones(2, 3, 2)
    with plan.context():
        out = fast(batch, decisions=decisions)
    with torch.no_grad():
        ref = model(batch, mode="conditional", decisions=decisions)
    assert (out.logits.float() - ref.logits).abs().max() < 0.1 * ref.logits.abs().max() + 0.05


def test_run_chunked_concatenates_tuples_and_tensors() -> None:
    x = torch.arange(10.0).view(10, 1, 1, 1)
    plan = ExecutionPlan(pixels_per_call=3)  # 1 pixel per segment -> 3 segments per call
    calls = []

    def net(v):
        calls.append(v.shape[0])
        return v * 2, v + 1

    a, b = run_chunked(net, x, plan)
    assert calls == [3, 3, 2, 2]  # as few calls as the limit allows, of equal size
    assert torch.equal(a, x * 2) and torch.equal(b, x + 1)
    assert torch.equal(run_chunked(lambda v: v * 3, x, plan), x * 3)


def test_plan_defaults_per_device_and_rejects_bad_settings() -> None:
    assert ExecutionPlan.for_device("cpu").pixels_per_call == 8 * 224 * 224
    assert ExecutionPlan.for_device("cuda").pixels_per_call is None
    assert ExecutionPlan.for_device("cuda").worker_count() == 1
    assert not ExecutionPlan.for_device("cuda").fuse_pointwise
    assert ExecutionPlan.for_device("cpu", workers=3).worker_count() == 3
    assert ExecutionPlan.for_device("cpu").worker_count() == torch.get_num_threads()
    with pytest.raises(ValueError, match="workers"):
        ExecutionPlan(workers=0)
    with pytest.raises(ValueError, match="precision"):
        ExecutionPlan(precision="fp8")
    with pytest.raises(ValueError, match="pixels_per_call"):
        ExecutionPlan(pixels_per_call=0)


def test_huge_pages_are_requested_before_torch_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from adamml.runtime import allocator

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert allocator.request_huge_pages() is False  # torch is imported in this process already
    assert allocator.os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the environment's own choice wins
    assert allocator.request_huge_pages() is False
    code = ("import os, sys; from adamml.runtime.allocator import request_huge_pages as r; "
            "print(r(), os.environ['THP_MEM_ALLOC_ENABLE'], 'torch' in sys.modules)")
    env = {k: v for k, v in allocator.os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "1", "False"]
