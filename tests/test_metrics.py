"""Metrics checked against scikit-learn and against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    top_k_accuracy_score,
)

from adamml.evaluation.metrics import (
    MetricAccumulator,
    average_precision_per_class,
    mean_class_accuracy,
    mean_gflops,
    selection_rates,
    topk_accuracy,
    video_map,
)
from adamml.models.flops import gflops_per_video


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_case(rng: np.random.Generator, n: int = 60, c: int = 7) -> tuple[np.ndarray, np.ndarray]:
    scores = rng.normal(size=(n, c))  # continuous: no ties
    labels = rng.integers(0, c, size=n)
    labels[:c] = np.arange(c)  # every class present
    return scores, labels


# --- top-k -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_matches_sklearn_without_ties(rng: np.random.Generator, k: int) -> None:
    scores, labels = random_case(rng)
    ours = topk_accuracy(scores, labels, k=(k,))[f"top{k}"]
    ref = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(scores.shape[1]))
    assert ours == pytest.approx(ref, abs=1e-12)


def test_topk_hand_computed() -> None:
    scores = [[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]]
    labels = [2, 0, 0, 0]
    # Other classes scoring >= the label: 1 (0.5), 0, 2 (the tied 0.3 and 0.4), 2.
    res = topk_accuracy(scores, labels, k=(1, 2, 3))
    assert res == {"top1": 0.25, "top2": 0.5, "top3": 1.0}


def test_topk_ties_count_against_the_model() -> None:
    # A constant output ties every class: no sort order may give it credit.
    scores = np.zeros((4, 5))
    labels = np.array([0, 1, 2, 3])
    res = topk_accuracy(scores, labels, k=(1, 4, 5))
    assert res["top1"] == 0.0
    assert res["top4"] == 0.0
    assert res["top5"] == 1.0  # all five classes are inside the top 5


def test_topk_accepts_torch_and_returns_python_floats() -> None:
    scores = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0])
    res = topk_accuracy(scores, labels, k=1)
    assert res == {"top1": 0.5}
    assert type(res["top1"]) is float


def test_topk_k_above_num_classes_is_one() -> None:
    assert topk_accuracy([[0.0, 1.0]], [0], k=5)["top5"] == 1.0


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        (np.zeros((3,)), [0, 0, 0], r"scores: expected shape \(N, C\)"),
        (np.zeros((3, 2)), [0, 1], r"labels: expected shape \(3,\)"),
        (np.zeros((2, 2)), [0, 2], r"labels: expected integer class indices in \[0, 2\)"),
        (np.zeros((2, 2)), [0.5, 1], "integer class indices"),
        (np.array([[np.nan, 0.0]]), [0], "NaN"),
    ],
)
def test_topk_rejects_bad_input(scores: np.ndarray, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        topk_accuracy(scores, labels)


# --- mean class accuracy -------------------------------------------------------------------


def test_mean_class_accuracy_matches_balanced_accuracy(rng: np.random.Generator) -> None:
    scores, labels = random_case(rng, n=80, c=6)
    ref = balanced_accuracy_score(labels, scores.argmax(axis=1))
    assert mean_class_accuracy(scores, labels) == pytest.approx(ref, abs=1e-12)


def test_mean_class_accuracy_averages_only_present_classes() -> None:
    # Class 0: 2 videos, 1 right; class 2: 1 video, right; class 1 absent (not averaged in).
    scores = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    labels = [0, 0, 2]
    assert mean_class_accuracy(scores, labels) == pytest.approx((0.5 + 1.0) / 2)
    # Plain accuracy differs: the unbalanced class hides the miss.
    assert topk_accuracy(scores, labels, k=1)["top1"] == pytest.approx(2 / 3)


# --- mAP --------------------------------------------------------------------------------------


def test_map_matches_sklearn_multilabel(rng: np.random.Generator) -> None:
    n, c = 50, 6
    scores = rng.normal(size=(n, c))
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[0] = 1  # every class has a positive
    ref = [average_precision_score(targets[:, j], scores[:, j]) for j in range(c)]
    assert average_precision_per_class(scores, targets) == pytest.approx(ref, abs=1e-12)
    assert video_map(scores, targets) == pytest.approx(np.mean(ref), abs=1e-12)


def test_map_groups_tied_scores_like_sklearn() -> None:
    # Quantised scores create many ties; tied videos form one threshold.
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((40, 3)) * 4) / 4
    targets = (rng.random((40, 3)) < 0.4).astype(int)
    targets[0] = 1
    ref = [average_precision_score(targets[:, j], scores[:, j]) for j in range(3)]
    assert average_precision_per_class(scores, targets) == pytest.approx(ref, abs=1e-12)


def test_map_hand_computed_with_a_tie() -> None:
    # One class, scores 0.9 (pos), 0.5 (pos), 0.5 (neg), 0.1 (neg).
    # Thresholds: 0.9 -> P=1, R=1/2; 0.5 -> P=2/3, R=1. AP = 1/2*1 + 1/2*2/3 = 5/6.
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    targets = np.array([[1], [1], [0], [0]])
    assert video_map(scores, targets) == pytest.approx(5 / 6)


def test_map_skips_classes_without_positives() -> None:
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.6], [0.4, 0.7, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # class 2 never positive
    ap = average_precision_per_class(scores, targets)
    assert np.isnan(ap[2])
    # class 0: ranks 0.9(+), 0.4(+) -> AP 1; class 1: 0.8(+) first -> AP 1.
    assert video_map(scores, targets) == pytest.approx(1.0)


def test_map_from_labels_equals_map_from_one_hot(rng: np.random.Generator) -> None:
    scores, labels = random_case(rng, n=30, c=5)
    one_hot = np.eye(5)[labels]
    assert video_map(scores, labels) == pytest.approx(video_map(scores, one_hot), abs=1e-15)


def test_map_is_exact_for_large_logits() -> None:
    # torchmetrics would pass these through a float32 sigmoid and tie them at 1.0.
    scores = np.array([[20.0], [25.0], [30.0]])
    targets = np.array([[0], [1], [0]])
    ref = average_precision_score(targets[:, 0], scores[:, 0])
    assert video_map(scores, targets) == pytest.approx(ref)
    assert ref == pytest.approx(0.5)


def test_map_rejects_non_binary_targets_and_empty_positives() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        video_map(np.zeros((2, 2)), np.array([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="no class has a positive"):
        video_map(np.zeros((2, 2)), np.zeros((2, 2)))


# --- selection rates and GFLOPs --------------------------------------------------------------


def test_selection_rates_over_videos_and_segments() -> None:
    d = np.zeros((2, 4, 2))
    d[0, :, 0] = 1  # rgb on all 4 segments of video 0
    d[1, :1, 0] = 1  # and on 1 of video 1 -> 5/8
    d[:, :, 1] = 1  # audio always
    assert selection_rates(torch.from_numpy(d)) == [pytest.approx(5 / 8), pytest.approx(1.0)]


def test_selection_rates_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(N, K, M\)"):
        selection_rates(np.zeros((3, 2)))


def test_gflops_per_video_reproduces_the_papers_fusion_cost() -> None:
    # 10 segments, RGB 14.136 + audio 0.3817 GFLOPs per segment, both always on: 145.17.
    d = np.ones((1, 10, 2))
    g = gflops_per_video(d, [14.136, 0.3817])
    assert g[0] == pytest.approx(145.177)
    half = d.copy()
    half[0, ::2, 0] = 0
    assert gflops_per_video(half, [14.136, 0.3817], policy_gflops=0.5)[0] == pytest.approx(
        5 * 14.136 + 10 * 0.3817 + 10 * 0.5
    )
    assert mean_gflops([1.0, 2.0, 6.0]) == pytest.approx(3.0)


# --- accumulator -----------------------------------------------------------------------------


def _batches(rng: np.random.Generator, n: int, c: int, k: int, m: int):
    scores = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    decisions = (rng.random((n, k, m)) < 0.5).astype(np.float32)
    gflops = rng.random(n) * 100
    return scores, labels, decisions, gflops


def test_accumulator_equals_the_pure_functions(rng: np.random.Generator) -> None:
    scores, labels, decisions, gflops = _batches(rng, 23, 6, 3, 2)
    acc = MetricAccumulator(modalities=["rgb", "audio"], scores_are="probs")
    for start in range(0, 23, 5):
        sl = slice(start, start + 5)
        acc.update(
            np.arange(23)[sl],
            torch.from_numpy(scores[sl]),
            labels=labels[sl],
            decisions=decisions[sl],
            gflops=gflops[sl],
        )
    res = acc.compute()
    assert res["num_videos"] == 23
    assert res["top1"] == pytest.approx(topk_accuracy(scores, labels)["top1"])
    assert res["top5"] == pytest.approx(topk_accuracy(scores, labels)["top5"])
    assert res["mean_class_acc"] == pytest.approx(mean_class_accuracy(scores, labels))
    assert res["mAP"] == pytest.approx(video_map(scores, labels))
    rates = selection_rates(decisions)
    assert res["selection_rgb"] == pytest.approx(rates[0])
    assert res["selection_audio"] == pytest.approx(rates[1])
    assert res["gflops"] == pytest.approx(gflops.mean())


def test_accumulator_drops_padded_duplicates(rng: np.random.Generator) -> None:
    # Two "ranks" of a DistributedSampler over 5 videos: rank 1 repeats video 0 as padding.
    # The padded copy is a wrong, expensive prediction; it must not move any metric.
    c = 3
    scores = np.eye(c)[[0, 1, 2, 0, 1]].astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1])
    acc = MetricAccumulator(modalities=["rgb"], scores_are="probs")
    acc.update(
        [0, 2, 4],
        scores[[0, 2, 4]],
        labels=labels[[0, 2, 4]],
        decisions=np.zeros((3, 2, 1)),
        gflops=[1.0, 1.0, 1.0],
    )
    acc.update(
        [1, 3],
        scores[[1, 3]],
        labels=labels[[1, 3]],
        decisions=np.zeros((2, 2, 1)),
        gflops=[1.0, 1.0],
    )
    acc.update([0], [[0.0, 0.0, 1.0]], labels=[0], decisions=np.ones((1, 2, 1)), gflops=[99.0])
    res = acc.compute()
    assert res["num_videos"] == 5
    assert res["top1"] == 1.0
    assert res["selection_rgb"] == 0.0
    assert res["gflops"] == 1.0


def test_accumulator_multi_label_map_uses_softmax_of_logits_by_default() -> None:
    # Row-wise softmax changes the ranking within a column; the reference ranks probabilities.
    logits = np.array([[5.0, 4.0], [0.0, -3.0], [1.0, 0.9]])
    multi_hot = np.array([[1, 1], [0, 0], [1, 0]])
    acc = MetricAccumulator()
    acc.update([0, 1, 2], logits, multi_hot=multi_hot)
    res = acc.compute()
    probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    assert res["mAP"] == pytest.approx(video_map(probs, multi_hot))
    assert "top1" not in res  # no single labels were given


def test_accumulator_rejects_inconsistent_batches() -> None:
    acc = MetricAccumulator()
    acc.update([0], [[1.0, 0.0]], labels=[0])
    with pytest.raises(ValueError, match="labels: given for earlier batches"):
        acc.update([1], [[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"scores: expected shape \(2, C\)"):
        acc.update([1, 2], [[1.0, 0.0]], labels=[0, 0])
    assert acc.compute()["num_videos"] == 1  # failed updates stored nothing
    with pytest.raises(ValueError, match="no batches"):
        MetricAccumulator().compute()


def test_accumulator_modality_count_must_match_decisions() -> None:
    acc = MetricAccumulator(modalities=["rgb", "audio", "flow"])
    acc.update([0], [[1.0, 0.0]], labels=[0], decisions=np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="2 modalities but the accumulator was told 3"):
        acc.compute()


def test_accumulator_gathers_across_ranks(tmp_path) -> None:
    # A real one-process gloo group: the all_gather_object path runs and keeps results equal.
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        acc = MetricAccumulator(scores_are="probs")
        acc.update([1, 0, 1], [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], labels=[1, 0, 1])
        res = acc.compute()
    finally:
        dist.destroy_process_group()
    assert res["num_videos"] == 2
    assert res["top1"] == 1.0  # the later duplicate of video 1 (wrong) was dropped
