"""The oracle at a cost: exact over every mask, bought cheapest first."""

import torch

from adamml.evaluation import oracle
from adamml.evaluation.sweep import SweepData, score
from adamml.models.fusion import AverageFusion


class _Model(torch.nn.Module):
    def __init__(self, modalities):
        super().__init__()
        self.modalities = modalities
        self.fusion = AverageFusion(modalities, 5)


def _data(n=40, k=3, m=2, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, k, m, c, generator=g)
    logits[torch.arange(n), :, 0, labels] += 1.0  # modality 0 knows a little
    return SweepData(margins=torch.zeros(n, k, m), segment_logits=logits, features=[torch.zeros(n, k, 1)] * m,
                     labels=labels, multi_hot=torch.nn.functional.one_hot(labels, c))


def test_the_oracle_is_at_least_fusion_at_fusions_cost_and_nothing_at_no_cost():
    model, data = _Model(["rgb", "audio"]), _data()
    everything = torch.ones_like(data.margins)
    fusion = score(model, data, everything, multi_label=False)
    costs = [2.0, 1.0]
    full = oracle.oracle_point(model, data, costs, gflops_per_video=3 * 3.0)
    assert full.accuracy >= fusion
    assert full.gflops <= 9.0 + 1e-9
    assert oracle.oracle_point(model, data, costs, gflops_per_video=0.0).accuracy == 0.0


def test_more_budget_never_buys_fewer_videos_and_the_spend_stays_within_it():
    model, data = _Model(["rgb", "audio"]), _data(seed=1)
    costs = [2.0, 1.0]
    points = [oracle.oracle_point(model, data, costs, b) for b in (0.5, 1.0, 2.0, 4.0, 9.0)]
    accs = [p.accuracy for p in points]
    assert accs == sorted(accs)
    assert all(p.gflops <= b + 1e-9 for p, b in zip(points, (0.5, 1.0, 2.0, 4.0, 9.0), strict=True))


def test_the_price_is_the_cheapest_correct_mask_checked_by_brute_force():
    model, data = _Model(["rgb", "audio"]), _data(n=12, k=2, seed=2)
    costs = [2.0, 1.0]
    prices, masks = oracle.cheapest_correct(model, data, costs)
    for i in range(12):
        best = float("inf")
        for bits in range(1, 16):
            mask = torch.tensor([(bits >> j) & 1 for j in range(4)], dtype=torch.float32).view(1, 2, 2)
            logits = model.fusion(data.segment_logits[i : i + 1], None, mask)
            if int(logits.argmax()) == int(data.labels[i]):
                best = min(best, float((mask[0] * torch.tensor(costs)).sum()))
        assert float(prices[i]) == best
        if best < float("inf"):
            assert float((masks[i] * torch.tensor(costs)).sum()) == best


def test_the_greedy_oracle_never_claims_a_cheaper_price_than_the_exact_one(monkeypatch):
    model, data = _Model(["rgb", "audio"]), _data(n=20, k=3, seed=3)
    costs = [2.0, 1.0]
    exact, _ = oracle.cheapest_correct(model, data, costs)
    monkeypatch.setattr(oracle, "EXACT_BITS", 0)
    greedy, _ = oracle.cheapest_correct(model, data, costs)
    finite = exact < float("inf")
    assert (greedy[finite] >= exact[finite] - 1e-6).all()
    assert ((greedy < float("inf")) <= finite).all()  # greedy finds no video the exact search misses
