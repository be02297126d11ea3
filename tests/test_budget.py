"""Training to a GFLOPs budget: dual ascent on the cost weights meets the budget; checkpoint
selection prefers any epoch within it."""

from __future__ import annotations

import math

import pytest
import torch

from adamml.training.budget import TOLERANCE, BudgetController

COSTS = [0.08, 0.003]  # rgb, audio GFLOPs per segment
POLICY = 0.004
K = 4


def use_probability(weights: torch.Tensor) -> torch.Tensor:
    """A stand-in policy: it runs a modality less the more its cost weight says it costs."""
    return torch.sigmoid(torch.tensor([3.0, 4.0]) - 4.0 * weights)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_dual_ascent_brings_validation_cost_within_ten_percent_of_the_budget(budget):
    gen = torch.Generator().manual_seed(0)
    ctrl = BudgetController(budget, COSTS, POLICY, mu=1.0)
    for _ in range(12):  # policy epochs
        for _ in range(20):  # steps
            p = use_probability(ctrl.weights)
            decisions = (torch.rand(16, K, 2, generator=gen) < p).float()
            ctrl.observe_step(decisions)
        # Validation takes the argmax, which runs more (p > 0.5) or less than the draws did.
        argmax = (use_probability(ctrl.weights) > 0.5).float()
        val = {"gflops": K * (POLICY + float((argmax * torch.tensor(COSTS)).sum())), "score": 0.5}
        soft = {"gflops": K * (POLICY + float((use_probability(ctrl.weights) * torch.tensor(COSTS)).sum()))}
        ctrl.observe_validation(soft, K)
    assert abs(ctrl.fraction(soft, K) - budget) <= TOLERANCE * budget
    assert val["gflops"] > 0


def test_cost_weights_follow_the_modalities_costs():
    ctrl = BudgetController(0.5, COSTS, POLICY, mu=2.0)
    rgb, audio = ctrl.weights.tolist()
    assert math.isclose(rgb / audio, COSTS[0] / COSTS[1], rel_tol=1e-5)
    assert math.isclose(rgb + audio, 2.0, rel_tol=1e-5)


def test_over_budget_steps_raise_the_weights_and_under_budget_steps_lower_them():
    ctrl = BudgetController(0.5, COSTS, POLICY)
    before = ctrl.mu
    ctrl.observe_step(torch.ones(8, K, 2))  # everything runs: over budget
    assert ctrl.mu > before
    ctrl.observe_step(torch.zeros(8, K, 2))
    ctrl.observe_step(torch.zeros(8, K, 2))
    assert ctrl.mu < before


def test_checkpoint_selection_prefers_any_epoch_within_the_budget():
    ctrl = BudgetController(0.5, COSTS, POLICY)
    fusion = K * sum(COSTS)
    within = {"score": 0.40, "gflops": 0.5 * fusion}
    over = {"score": 0.90, "gflops": 0.8 * fusion}
    further_over = {"score": 0.95, "gflops": 0.9 * fusion}
    scores = [ctrl.selection_score(m, K) for m in (within, over, further_over)]
    assert scores[0] == 0.40 and scores[0] > scores[1] > scores[2]


def test_among_epochs_equally_over_the_budget_the_more_accurate_is_kept():
    """A policy stuck on one selection (the same GFLOPs every epoch) must keep its best epoch,
    not its first; a smaller excess still wins over a higher score."""
    ctrl = BudgetController(0.5, COSTS, POLICY)
    fusion = K * sum(COSTS)
    first = {"score": 0.77, "gflops": 0.6 * fusion}
    later = {"score": 0.83, "gflops": 0.6 * fusion}
    less_over = {"score": 0.50, "gflops": 0.57 * fusion}
    within = {"score": 0.10, "gflops": 0.55 * fusion}
    scores = [ctrl.selection_score(m, K) for m in (within, less_over, later, first)]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4


def test_a_budget_below_the_policys_own_cost_is_an_error():
    with pytest.raises(ValueError, match="below the policy's own cost"):
        BudgetController(0.03, COSTS, POLICY)


def test_state_round_trips_for_resume():
    ctrl = BudgetController(0.5, COSTS, POLICY)
    ctrl.observe_step(torch.ones(8, K, 2))
    again = BudgetController(0.5, COSTS, POLICY)
    again.load_state_dict(ctrl.state_dict())
    assert torch.equal(again.weights, ctrl.weights) and again.correction == ctrl.correction


def test_plateau_waits_while_the_network_is_still_at_chance():
    from adamml.training.hooks import PlateauStop

    stop = PlateauStop(patience=2, floor=0.2)
    scores = [0.10, 0.11, 0.09, 0.10, 0.08, 0.30, 0.29, 0.28]  # chance for 5 epochs, then it learns
    decisions = [stop.after_epoch(None, {"score": s}, {}) for s in scores]
    assert decisions == [False] * 7 + [True]  # two epochs without improvement after 0.30


def test_a_plateau_before_the_last_lr_step_takes_it_early_and_the_next_one_stops():
    from adamml.training.hooks import PlateauStop
    from adamml.training.schedule import Phase

    stop = PlateauStop(patience=2, milestones=[6, 12])
    scores = [0.3, 0.5, 0.4, 0.45, 0.6, 0.55, 0.5, 0.58, 0.52]
    decisions, rows = [], []
    for epoch, score in enumerate(scores):
        rows.append({})
        decisions.append(stop.after_epoch(Phase("train", "all", epoch, 20), {"score": score}, rows[-1]))
    # epochs 2-3 (0-based) wait: the step planned for 6 moves to 4; 5-6 wait: 12 moves to 7;
    # 7-8 wait with no step left: stop.
    assert [r["lr_step_taken_early"] for r in rows] == [0, 0, 0, 1, 0, 0, 1, 0, 0]
    assert decisions == [False] * 8 + [True] and stop.milestones == [4, 7]
    again = PlateauStop(patience=2, milestones=[6, 12])
    kept = again.milestones
    again.load_state_dict(stop.state_dict())
    assert kept is again.milestones and kept == [4, 7]  # in place: the task reads this list


def test_validation_under_the_budget_stops_the_weights_rising_when_the_draws_spend_more():
    """The draws run more than the argmax: once validation shows the argmax (a little) under
    the budget, the same training spend must lower the weights, not raise them further."""
    ctrl = BudgetController(0.5, COSTS, POLICY, mu=1.0)
    draws = torch.zeros(16, K, 2)
    draws[..., 1] = 1.0
    draws[:, :2, 0] = 1.0  # RGB on half the segments: over the target
    for _ in range(10):
        ctrl.observe_step(draws)
    raised = ctrl.mu
    assert raised > 1.0
    # Validation (argmax) spends 0.8 of what the draws did: just under the budget.
    val_spend = 0.8 * ctrl.spent(draws)
    assert val_spend < ctrl.target
    ctrl.observe_validation({"gflops": K * (POLICY + val_spend), "score": 0.5}, K)
    ctrl.observe_step(draws)
    assert ctrl.mu < raised
