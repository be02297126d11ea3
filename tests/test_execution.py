"""The inference execution plan: micro-batched conditional execution gives the same result as
one call per network and as the masked model; folding batch norm keeps the function."""

from __future__ import annotations

import pytest
import torch
from test_adamml import CLIP, calibrate_batch_norm, count_inputs, patterns, tiny_batch, tiny_cfg

from adamml.models.adamml import AdaMML, build_adamml
from adamml.models.execution import ExecutionPlan, fold_batchnorm, run_chunked

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
    whole = ExecutionPlan(pixels_per_call=None).prepare(model)  # same folded weights, one call
    with torch.inference_mode():
        a = chunked(batch, mode="conditional", decisions=decisions)
        b = whole(batch, mode="conditional", decisions=decisions)
        c = whole(batch, mode="masked", decisions=decisions)
        d = chunked(batch, mode="masked", decisions=decisions)
    for other in (b, c, d):
        torch.testing.assert_close(a.logits, other.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.segment_logits, other.segment_logits, rtol=1e-5, atol=1e-5)


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
    plan = ExecutionPlan.for_device("cpu", precision="bf16")
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
    assert calls == [3, 3, 3, 1]
    assert torch.equal(a, x * 2) and torch.equal(b, x + 1)
    assert torch.equal(run_chunked(lambda v: v * 3, x, plan), x * 3)


def test_plan_defaults_per_device_and_rejects_bad_settings() -> None:
    assert ExecutionPlan.for_device("cpu").pixels_per_call == 8 * 224 * 224
    assert ExecutionPlan.for_device("cuda").pixels_per_call is None
    with pytest.raises(ValueError, match="precision"):
        ExecutionPlan(precision="fp8")
    with pytest.raises(ValueError, match="pixels_per_call"):
        ExecutionPlan(pixels_per_call=0)
