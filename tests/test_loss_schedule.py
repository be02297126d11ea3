"""The efficiency loss against hand-computed values, and the recipe's epoch schedule."""

import pytest
import torch

from adamml.config import AdamMLTrainConfig
from adamml.training.engine import multistep_lr
from adamml.training.loss import (
    adamml_loss,
    efficiency_loss,
    guidance_loss,
    guidance_targets,
    is_correct,
)
from adamml.training.schedule import adamml_schedule, plain_schedule


def test_efficiency_loss_uses_squared_usage_when_correct_and_gamma_when_wrong():
    # Two videos, C = 4 segments, modalities (rgb, audio) with lambda = (1.0, 0.05).
    decisions = torch.tensor(
        [
            [[1, 1], [0, 1], [1, 1], [0, 0]],  # rgb used 2/4, audio 3/4
            [[1, 0], [1, 0], [1, 0], [1, 1]],  # rgb 4/4, audio 1/4
        ],
        dtype=torch.float32,
    )
    weights = torch.tensor([1.0, 0.05])
    correct = torch.tensor([True, False])
    video0 = 1.0 * (2 / 4) ** 2 + 0.05 * (3 / 4) ** 2  # 0.278125
    video1 = 1.0 * 10.0 + 0.05 * 10.0  # wrong: gamma for every modality
    expected = (video0 + video1) / 2
    got = efficiency_loss(decisions, correct, weights, gamma=10.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_efficiency_loss_gradient_reaches_decisions_only_for_correct_videos():
    decisions = torch.ones(2, 3, 2, requires_grad=True)
    loss = efficiency_loss(decisions, torch.tensor([True, False]), torch.tensor([1.0, 0.5]), 10.0)
    loss.backward()
    # d/dU of lambda*(sum U / C)^2 / B = lambda * 2 * usage / C / B, usage = 1
    assert decisions.grad[0, :, 0].tolist() == pytest.approx([1.0 * 2 / 3 / 2] * 3)
    assert decisions.grad[0, :, 1].tolist() == pytest.approx([0.5 * 2 / 3 / 2] * 3)
    assert decisions.grad[1].abs().sum().item() == 0.0


def test_adamml_loss_adds_cross_entropy_and_efficiency():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    batch = {"label": torch.tensor([0, 2]), "multi_hot": torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])}
    decisions = torch.tensor([[[1.0], [0.0]], [[1.0], [1.0]]])  # one modality, C = 2
    parts = adamml_loss(logits, decisions, batch, torch.tensor([1.0]), gamma=10.0)
    ce = torch.nn.functional.cross_entropy(logits, batch["label"])
    assert parts.classification.item() == pytest.approx(ce.item())
    assert parts.efficiency.item() == pytest.approx(((0.5**2) + 10.0) / 2)
    assert parts.total.item() == pytest.approx(ce.item() + parts.efficiency.item())


def test_correctness_for_multi_label_means_top1_is_one_of_the_labels():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.9, 0.1, 0.0]])
    batch = {"label": torch.tensor([0, 2]), "multi_hot": torch.tensor([[1.0, 1.0, 0], [0, 0, 1.0]])}
    assert is_correct(logits, batch, multi_label=True).tolist() == [True, False]
    assert is_correct(logits, batch, multi_label=False).tolist() == [False, False]


def test_guidance_targets_are_the_share_of_the_labels_uncertainty_a_segment_removes():
    # One video, 2 segments, 2 modalities, 4 classes; label 2.
    certain = torch.tensor([-20.0, -20.0, 20.0, -20.0])  # p(label) ~ 1
    uniform = torch.zeros(4)  # p(label) = 1/4: tells nothing
    wrong = torch.tensor([20.0, -20.0, -20.0, -20.0])  # confident and wrong
    half = torch.log(torch.tensor([0.25, 0.25, 0.5, 1e-9]))  # p(label) = 1/2
    seg = torch.stack([torch.stack([certain, uniform]), torch.stack([wrong, half])])[None]
    got = guidance_targets(seg, {"label": torch.tensor([2])})
    assert got.shape == (1, 2, 2)
    assert got[0].flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5], abs=1e-4)  # 1 + log(1/2)/log(4) = 0.5
    multi = guidance_targets(seg, {"multi_hot": torch.tensor([[1, 0, 1, 0]])}, multi_label=True)
    assert multi[0, 1, 0].item() == pytest.approx(1.0, abs=1e-4)  # "wrong" names the other label
    assert multi[0, 1, 1].item() == pytest.approx(1 + torch.log(torch.tensor(0.75)).item() / torch.log(torch.tensor(4.0)).item(), abs=1e-4)


def test_guidance_loss_pushes_use_up_where_a_segment_tells_and_down_where_it_does_not():
    seg = torch.tensor([[[[5.0, -5.0]], [[-5.0, 5.0]]]])  # (1, K=2, M=1, C=2); label 0: segment 0 tells
    policy_logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    guidance_loss(policy_logits, seg, {"label": torch.tensor([0])}).backward()
    use_grad = policy_logits.grad[..., 1] - policy_logits.grad[..., 0]
    assert use_grad[0, 0, 0] < 0 < use_grad[0, 1, 0]  # descent raises "use" on segment 0, lowers it on 1


def test_adamml_schedule_warms_up_alternates_then_finetunes():
    cfg = AdamMLTrainConfig(warmup_epochs=2, epochs=2, alternate_every=1, finetune_epochs=1)
    phases = [(p.block, p.trains) for p in adamml_schedule(cfg)]
    assert phases == [
        ("warmup", "recognition"),
        ("warmup", "recognition"),
        ("alternate", "recognition"),
        ("alternate", "policy"),
        ("alternate", "recognition"),
        ("alternate", "policy"),
        ("finetune", "recognition"),
    ]
    assert [p.trains for p in plain_schedule(3)] == ["all"] * 3


def test_multistep_lr_is_a_pure_function_of_the_epoch():
    assert multistep_lr(0.1, [2, 4], 0) == pytest.approx(0.1)
    assert multistep_lr(0.1, [2, 4], 2) == pytest.approx(0.01)
    assert multistep_lr(0.1, [2, 4], 5) == pytest.approx(0.001)
