"""The budget knob: thresholds on the policy's probabilities moved so the mean cost meets a
budget; the sweep over budgets is monotone and its accuracies are those of real skipping."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_adamml import CLIP, calibrate_batch_norm, tiny_batch, tiny_cfg

from adamml.models.adamml import build_adamml
from adamml.models.thresholds import Budget, BudgetError, Thresholds, fit_thresholds, parse_budget

pytestmark = pytest.mark.usefixtures("one_thread")

COSTS = [1.0, 0.05]  # GFLOPs per segment: a costly RGB network, a cheap audio one
POLICY = 0.02
MODALITIES = ["rgb", "audio"]


def random_margins(n: int = 60, k: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, 2, generator=torch.Generator().manual_seed(seed)).double() * 3


def labelled_batches(count: int, step: int) -> list[dict[str, torch.Tensor]]:
    """``count`` tiny batches of two videos, labelled ``seed % 5`` and ``(seed + step) % 5``."""
    batches = []
    for seed in range(count):
        b = tiny_batch(seed=seed)
        b["label"] = torch.tensor([seed % 5, (seed + step) % 5])
        b["multi_hot"] = torch.nn.functional.one_hot(b["label"], 5).float()
        batches.append(b)
    return batches


def mean_cost(decisions: torch.Tensor, k: int) -> float:
    return float((decisions.double() * torch.tensor(COSTS, dtype=torch.float64)).sum(dim=(1, 2)).mean()) + POLICY * k


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.5", Budget(0.5, "fraction")), ("50%", Budget(0.5, "fraction")), ("12.3G", Budget(12.3, "gflops")),
     ("1", Budget(1.0, "fraction")), (" 7g ", Budget(7.0, "gflops"))],
)
def test_parse_budget(text: str, expected: Budget) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize(("text", "match"), [("abc", "fraction of fusion"), ("-1", "positive"), ("3", "3G"), ("0", "positive")])
def test_parse_budget_rejects_bad_input_with_a_hint(text: str, match: str) -> None:
    with pytest.raises(BudgetError, match=match):
        parse_budget(text)


def test_fitted_cost_meets_the_budget_within_5_percent_and_never_exceeds_it() -> None:
    margins = random_margins()
    k = margins.shape[1]
    fusion = sum(COSTS) * k
    for fraction in (0.1, 0.25, 0.5, 0.75, 0.95):
        target = fraction * fusion
        t = fit_thresholds(margins, COSTS, POLICY, target, MODALITIES)
        cost = mean_cost(t.decide(margins), k)
        assert cost <= target + 1e-9
        assert cost >= 0.95 * target, (fraction, cost, target)


def test_sweep_is_monotone_in_gflops_and_decisions_nest() -> None:
    margins = random_margins(seed=1)
    k = margins.shape[1]
    previous_cost, previous = -1.0, torch.zeros_like(margins)
    for fraction in torch.linspace(0.05, 1.0, 20).tolist():
        d = fit_thresholds(margins, COSTS, POLICY, fraction * sum(COSTS) * k, MODALITIES).decide(margins)
        cost = mean_cost(d, k)
        assert cost >= previous_cost
        assert bool((d >= previous).all())  # a larger budget only adds units
        previous_cost, previous = cost, d


def test_costly_modality_is_skipped_first() -> None:
    # Equal confidence everywhere: at a tight budget the cheap modality stays, the costly goes.
    margins = torch.full((10, 4, 2), 2.0, dtype=torch.float64)
    d = fit_thresholds(margins, COSTS, POLICY, 0.5, MODALITIES).decide(margins)
    assert d[..., 1].all() and not d[..., 0].any()


def test_zero_lambda_is_the_trained_policys_argmax() -> None:
    margins = random_margins(seed=2)
    t = Thresholds.from_lambda(0.0, MODALITIES, COSTS)
    assert torch.equal(t.decide(margins), (margins > 0).float())
    assert t.probabilities() == {"rgb": 0.5, "audio": 0.5}


def test_budget_below_the_policys_cost_is_an_error() -> None:
    with pytest.raises(BudgetError, match="policy's own cost"):
        fit_thresholds(random_margins(), COSTS, POLICY, 0.01, MODALITIES)


def test_sweep_on_a_model_matches_conditional_execution_and_meets_budgets() -> None:
    from adamml.evaluation.sweep import budget_point, collect, random_point
    from adamml.models.execution import ExecutionPlan

    torch.manual_seed(0)
    model = build_adamml(tiny_cfg(), CLIP)
    calibrate_batch_norm(model, tiny_batch(seed=99))
    batches = labelled_batches(3, step=1)
    plan = ExecutionPlan.for_device("cpu")
    data = collect(model, batches, plan)
    costs = {"rgb": 1.0, "audio": 0.05, "policy": 0.02}
    k = data.margins.shape[1]
    gflops = []
    for fraction in (0.2, 0.5, 0.8):
        point, thresholds = budget_point(model, data, Budget(fraction, "fraction"), costs, multi_label=False)
        target = fraction * 1.05 * k
        # 6 videos: one RGB unit is 1/6 GFLOPs per video, so only "never above" is exact here.
        assert 0.7 * target <= point.gflops <= target + 1e-9
        gflops.append(point.gflops)
        # The same decisions through real conditional execution give the same predictions.
        fast = plan.prepare(model)
        with plan.context():
            preds = []
            for i, batch in enumerate(batches):
                d = thresholds.decide(data.margins[2 * i : 2 * i + 2])
                preds.append(fast(batch, mode="conditional", decisions=d).logits.argmax(-1))
        accuracy = 100 * float((torch.cat(preds) == data.labels).float().mean())
        assert point.accuracy == pytest.approx(accuracy)
        rnd = random_point(model, data, point.rates, costs, multi_label=False, draws=2)
        assert rnd.rates["audio"] == pytest.approx(point.rates["audio"], abs=35)
    assert gflops == sorted(gflops)


def test_sweep_writes_its_csv_and_plot(tmp_path) -> None:
    from adamml.evaluation.report import MethodResult
    from adamml.evaluation.sweep import SweepPoint, plot_sweep, write_sweep_csv

    points = [
        SweepPoint("AdaMML", "10%", 80.0, 0.1, {"rgb": 10.0, "audio": 90.0}, {"rgb": 0.7, "audio": 0.4}),
        SweepPoint("Random policy", "10%", 60.0, 0.09, {"rgb": 10.0, "audio": 90.0}),
        SweepPoint("AdaMML", "50%", 95.0, 0.5, {"rgb": 50.0, "audio": 95.0}, {"rgb": 0.5, "audio": 0.3}),
        SweepPoint("Random policy", "50%", 85.0, 0.5, {"rgb": 50.0, "audio": 95.0}),
    ]
    csv_path = write_sweep_csv(points, tmp_path / "budget_sweep.csv", ["rgb", "audio"])
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[:4] == ["method", "budget", "accuracy", "gflops"]
    assert len(lines) == 5 and lines[1].endswith("0.700000,0.400000")
    png = plot_sweep(points, [MethodResult(method="RGB", accuracy=70.0, gflops=1.0)], tmp_path / "budget_sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quota_decisions_take_each_videos_best_segments_per_modality() -> None:
    from adamml.models.thresholds import quota_decisions

    margins = torch.tensor([[[0.0, -5.0], [3.0, -1.0], [1.0, -9.0]],
                            [[-7.0, 2.0], [-8.0, 1.0], [-6.0, 0.5]]]).double()  # (2 videos, K=3, M=2)
    got = quota_decisions(margins, (1, 2))
    assert got[:, :, 0].tolist() == [[0, 1, 0], [0, 0, 1]]  # the best rgb segment, however low it scores
    assert got[:, :, 1].tolist() == [[1, 1, 0], [1, 1, 0]]
    assert quota_decisions(margins, (0, 0)).sum() == 0


@pytest.mark.parametrize("fraction", [0.25, 0.4, 0.5, 0.75])
def test_a_quota_fit_gives_every_video_its_share_and_stays_within_the_budget(fraction: float) -> None:
    margins = random_margins(n=80, k=4, seed=3)
    margins[:40, :, 0] -= 20.0  # half the videos: the policy is sure RGB is useless everywhere
    costs = [0.5, 0.4]
    k = margins.shape[1]
    target = fraction * sum(costs) * k
    plain = fit_thresholds(margins, costs, POLICY, target, MODALITIES)
    fitted = fit_thresholds(margins, costs, POLICY, target, MODALITIES, allocation="quota")
    decisions = fitted.decide(margins)
    cost = float((decisions.double() * torch.tensor(costs, dtype=torch.float64)).sum(dim=(1, 2)).mean()) + POLICY * k
    assert cost <= target + 1e-9 and cost >= 0.9 * target
    per_video = decisions.sum(dim=1)  # (N, M)
    for j, q in enumerate(fitted.quota):
        assert bool((per_video[:, j] >= q).all())
    assert any(fitted.quota)
    # The plain thresholds leave the first half without RGB; the quota gives each of them some.
    if fitted.quota[0]:
        assert int(plain.decide(margins)[:40, :, 0].sum(dim=1).eq(0).sum()) > 20
        assert bool((per_video[:40, 0] >= 1).all())
    assert "per video at least" in str(fitted)
    assert fit_thresholds(margins, costs, POLICY, target, MODALITIES, allocation="threshold") == plain
    with pytest.raises(ValueError, match="allocation"):
        fit_thresholds(margins, costs, POLICY, target, MODALITIES, allocation="greedy")


def test_the_policy_carries_its_quota_in_forward_decide_and_its_state_but_a_stream_decides_by_thresholds() -> None:
    from adamml.models.thresholds import use_margins

    torch.manual_seed(0)
    model = build_adamml(tiny_cfg(), CLIP)
    calibrate_batch_norm(model, tiny_batch(seed=99))
    policy = model.policy
    batch = tiny_batch(seed=1)
    with torch.no_grad():
        margins = use_margins(policy(policy.policy_inputs(batch), temperature=1.0, sample=False).logits.float())
    high = Thresholds(tuple(MODALITIES), (1e9, 1e9), 0.0, (1, 2))  # nothing passes a threshold
    policy.set_thresholds(high)
    assert policy.quota == (1, 2)
    decided = policy.decide(margins)
    assert decided.sum(dim=1).tolist() == [[1.0, 2.0]] * margins.shape[0]
    assert torch.equal(decided, high.decide(margins))
    with torch.no_grad():
        forward = policy(policy.policy_inputs(batch), temperature=1.0, sample=False).decisions
    assert torch.equal(forward, decided)
    assert policy.decide(margins, whole_videos=False).sum() == 0  # causal: thresholds only
    # The quota travels in the state dict, and a state without it (older checkpoints) loads as none.
    fresh = build_adamml(tiny_cfg(), CLIP).policy
    fresh.load_state_dict(policy.state_dict())
    assert fresh.quota == (1, 2)
    old = {k: v for k, v in policy.state_dict().items() if k != "use_quota"}
    fresh.load_state_dict(old)
    assert fresh.quota == (0, 0)


def test_the_sweep_fits_with_the_models_allocation() -> None:
    from adamml.evaluation.sweep import budget_point, collect
    from adamml.models.execution import ExecutionPlan

    torch.manual_seed(0)
    model = build_adamml(tiny_cfg(policy=dataclasses.replace(tiny_cfg().policy, allocation="quota")), CLIP)
    calibrate_batch_norm(model, tiny_batch(seed=99))
    assert model.policy.allocation == "quota"
    batches = labelled_batches(4, step=2)
    data = collect(model, batches, ExecutionPlan.for_device("cpu"))
    costs = {"rgb": 0.5, "audio": 0.4, "policy": 0.02}
    _, thresholds = budget_point(model, data, Budget(0.6, "fraction"), costs, multi_label=False)
    assert any(thresholds.quota)
    assert bool((thresholds.decide(data.margins).sum(dim=1) >= torch.tensor(thresholds.quota)).all())
