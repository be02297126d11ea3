"""Evaluation metrics as pure functions, plus an accumulator for (distributed) evaluation.

Layouts (see ``adamml.layouts``): video scores ``(N, C)``, labels ``(N,)`` int, multi-hot
targets ``(N, C)`` in {0, 1}, policy decisions ``(N, K, M)`` in {0, 1} (N videos, K segments,
M modalities). Every function accepts torch tensors or numpy arrays and returns Python floats
(or lists of them), so results go straight into JSON and tables.

Definitions (exact, so that they can be checked against scikit-learn):

* **top-k accuracy**: a video is a hit when fewer than k *other* classes score at least as
  high as its label (ties count against the model: a constant output never earns credit,
  whatever order a sort would have put the tied classes in). Without ties this is
  ``sklearn.metrics.top_k_accuracy_score``.
* **mean class accuracy**: mean, over the classes that occur in ``labels``, of the top-1
  recall of that class (the same hit rule). Without ties it is
  ``sklearn.metrics.balanced_accuracy_score`` of the argmax predictions.
* **video mAP**: mean, over classes with at least one positive video, of the
  non-interpolated average precision of that class: videos ranked by that class's score,
  ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (tied scores form one
  threshold), i.e. ``sklearn.metrics.average_precision_score``. The ActivityNet/FCVID
  convention. We do not call torchmetrics here because it maps scores outside [0, 1]
  through a float32 sigmoid, which saturates for logits above ~17 and invents ties, and it
  counts classes without positives as AP 0. The reference AdaMML code (torchnet's mAPMeter)
  also counts them as 0 and breaks ties by sort order; it ranks softmax probabilities, which
  is what ``MetricAccumulator`` does by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


def _to_numpy(x: ArrayLike, name: str, dtype: Any = np.float64) -> np.ndarray:
    """One conversion point so that every metric accepts tensors, arrays and lists alike."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        x = x.numpy()
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a tensor or array of numbers, got {type(x)!r}") from exc
    return arr


def _check_scores_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores: expected shape (N, C), got {s.shape}")
    raw = _to_numpy(labels, "labels", dtype=np.float64)
    if raw.ndim != 1 or raw.shape[0] != s.shape[0]:
        raise ValueError(f"labels: expected shape ({s.shape[0]},) to match scores, got {raw.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores: contains NaN or infinite values")
    if raw.size and (np.any(raw != np.round(raw)) or raw.min() < 0 or raw.max() >= s.shape[1]):
        raise ValueError(
            f"labels: expected integer class indices in [0, {s.shape[1]}), "
            f"got values in [{raw.min()}, {raw.max()}]"
        )
    return s, raw.astype(np.int64)


def _rank_of_label(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Number of other classes scoring at least as high as the label: 0 means a clear top-1."""
    true_score = s[np.arange(s.shape[0]), y][:, None]
    return (s >= true_score).sum(axis=1) - 1


def topk_accuracy(
    scores: ArrayLike, labels: ArrayLike, k: int | Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracies as fractions, keyed ``"top1"``, ``"top5"``...

    scores: (N, C); labels: (N,). k larger than C gives 1.0 (every class is in the top k).
    """
    s, y = _check_scores_labels(scores, labels)
    ks = (k,) if isinstance(k, int) else tuple(k)
    if any(int(kk) < 1 for kk in ks):
        raise ValueError(f"k: expected positive integers, got {ks}")
    if s.shape[0] == 0:
        raise ValueError("topk_accuracy: no videos (N = 0)")
    rank = _rank_of_label(s, y)
    return {f"top{int(kk)}": float(np.mean(rank < int(kk))) for kk in ks}


def mean_class_accuracy(scores: ArrayLike, labels: ArrayLike) -> float:
    """Mean over the classes present in ``labels`` of their top-1 recall (a fraction).

    Why: with unbalanced test sets plain accuracy hides classes the model never gets right.
    """
    s, y = _check_scores_labels(scores, labels)
    if s.shape[0] == 0:
        raise ValueError("mean_class_accuracy: no videos (N = 0)")
    hit = (_rank_of_label(s, y) < 1).astype(np.float64)
    present = np.unique(y)
    hits_per_class = np.bincount(y, weights=hit, minlength=s.shape[1])[present]
    count_per_class = np.bincount(y, minlength=s.shape[1])[present]
    return float(np.mean(hits_per_class / count_per_class))


def average_precision_per_class(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Non-interpolated AP of each class, float64 (C,); NaN for classes without positives.

    scores: (N, C); targets: multi-hot (N, C) or labels (N,).
    """
    s = _to_numpy(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores: expected shape (N, C), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores: contains NaN or infinite values")
    t = _to_numpy(targets, "targets")
    if t.ndim == 1:
        _, y = _check_scores_labels(s, t)
        t = np.zeros_like(s)
        t[np.arange(s.shape[0]), y] = 1.0
    elif t.shape != s.shape:
        raise ValueError(
            f"targets: expected shape {s.shape} (multi-hot) or ({s.shape[0]},), got {t.shape}"
        )
    elif not np.all((t == 0) | (t == 1)):
        raise ValueError("targets: a multi-hot matrix must hold only 0 and 1")

    n, c = s.shape
    ap = np.full(c, np.nan)
    for j in range(c):
        pos = t[:, j]
        n_pos = pos.sum()
        if n_pos == 0:
            continue
        order = np.argsort(-s[:, j], kind="stable")
        sj, pj = s[order, j], pos[order]
        tp = np.cumsum(pj)
        # One threshold per distinct score: the last index of each run of equal scores.
        last = np.r_[np.nonzero(np.diff(sj))[0], n - 1]
        tp_at = tp[last]
        precision = tp_at / (last + 1)
        recall = tp_at / n_pos
        ap[j] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return ap


def video_map(scores: ArrayLike, targets: ArrayLike) -> float:
    """Video-level mAP (a fraction): mean AP over classes with at least one positive video.

    scores: (N, C); targets: multi-hot (N, C) or labels (N,). See the module docstring.
    """
    ap = average_precision_per_class(scores, targets)
    if np.all(np.isnan(ap)):
        raise ValueError("video_map: no class has a positive video")
    return float(np.nanmean(ap))


def selection_rates(decisions: ArrayLike) -> list[float]:
    """Fraction of (video, segment) pairs on which each modality ran: (N, K, M) -> M floats."""
    d = _to_numpy(decisions, "decisions")
    if d.ndim != 3:
        raise ValueError(f"decisions: expected shape (N, K, M), got {d.shape}")
    if d.shape[0] * d.shape[1] == 0:
        raise ValueError(f"decisions: no (video, segment) pairs in shape {d.shape}")
    return [float(v) for v in d.mean(axis=(0, 1))]


def mean_gflops(per_video_gflops: ArrayLike) -> float:
    """Mean GFLOPs per video over the test set, the figure the paper's tables report."""
    g = _to_numpy(per_video_gflops, "per_video_gflops").reshape(-1)
    if g.size == 0:
        raise ValueError("mean_gflops: no videos")
    return float(g.mean())


def gather_by_index(local: dict[str, Any]) -> dict[str, Any] | None:
    """Every process's records of a pass over a dataset, merged: ``local`` maps names to one
    row per video (arrays; ``"videos"``: a list of names; None: not recorded), with the dataset
    positions under ``"indices"``. A ``DistributedSampler`` pads by repeating videos, so the
    first record of each index is kept; the result is sorted by index (None: no records)."""
    states = [local]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        states = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
        torch.distributed.all_gather_object(states, local)
    states = [st for st in states if st["indices"] is not None]
    if not states:
        return None
    merged: dict[str, Any] = {}
    for key in states[0]:
        vals = [st[key] for st in states]
        if any(v is None for v in vals):
            merged[key] = None
        elif key == "videos":
            merged[key] = np.asarray([v for vs in vals for v in vs], dtype=object)
        else:
            merged[key] = np.concatenate(vals, axis=0)
    _, first = np.unique(merged["indices"], return_index=True)  # sorted unique indices
    return {k: (None if v is None else v[first]) for k, v in merged.items()}


class MetricAccumulator:
    """Collects batch outputs and computes every paper metric once at the end.

    Why an accumulator: mAP and mean class accuracy are not averages of batch values, and a
    ``DistributedSampler`` pads the last batch by repeating videos. Each batch therefore
    carries the dataset ``indices`` of its videos; ``compute`` gathers all ranks and keeps the
    first record of each index, so padded duplicates never count twice.
    """

    def __init__(
        self,
        modalities: Sequence[str] = (),
        topk: Sequence[int] = (1, 5),
        scores_are: str = "logits",
    ) -> None:
        if scores_are not in ("logits", "probs"):
            raise ValueError(f"scores_are: expected 'logits' or 'probs', got {scores_are!r}")
        self.modalities = list(modalities)
        self.topk = tuple(int(k) for k in topk)
        self.scores_are = scores_are
        self.reset()

    def reset(self) -> None:
        self._indices: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._multi_hot: list[np.ndarray] = []
        self._decisions: list[np.ndarray] = []
        self._gflops: list[np.ndarray] = []
        self._videos: list[str] = []

    def update(
        self,
        indices: ArrayLike,
        scores: ArrayLike,
        labels: ArrayLike | None = None,
        multi_hot: ArrayLike | None = None,
        decisions: ArrayLike | None = None,
        gflops: ArrayLike | None = None,
        videos: Sequence[str] | None = None,
    ) -> None:
        """Add one batch: indices (B,), scores (B, C), labels (B,), multi_hot (B, C),
        decisions (B, K, M), gflops (B,), videos B paths. Optional parts must be given for
        every batch or for none."""
        idx = _to_numpy(indices, "indices", dtype=np.int64).reshape(-1)
        s = _to_numpy(scores, "scores", dtype=np.float32)
        b = idx.shape[0]
        if s.ndim != 2 or s.shape[0] != b:
            raise ValueError(f"scores: expected shape ({b}, C), got {s.shape}")
        parts = (
            (labels, self._labels, "labels", np.int64),
            (multi_hot, self._multi_hot, "multi_hot", np.float32),
            (decisions, self._decisions, "decisions", np.float32),
            (gflops, self._gflops, "gflops", np.float64),
        )
        n_before = len(self._indices)
        ready: list[tuple[list[np.ndarray], np.ndarray]] = []
        # Validate everything before storing anything, so a bad batch leaves no half record.
        for value, store, name, dtype in parts:
            if value is None:
                if store:
                    raise ValueError(f"{name}: given for earlier batches but not for this one")
                continue
            if len(store) != n_before:
                raise ValueError(f"{name}: not given for earlier batches but given for this one")
            arr = _to_numpy(value, name, dtype=dtype)
            if arr.ndim == 0 or arr.shape[0] != b:
                raise ValueError(f"{name}: expected {b} rows to match indices, got {arr.shape}")
            ready.append((store, arr))
        if videos is not None and len(videos) != b:
            raise ValueError(f"videos: expected {b} names, got {len(videos)}")
        if (videos is None) != (len(self._videos) == 0) and n_before > 0:
            raise ValueError("videos: must be given for every batch or for none")
        self._indices.append(idx)
        self._scores.append(s)
        for store, arr in ready:
            store.append(arr)
        if videos is not None:
            self._videos.extend(str(v) for v in videos)

    def _local_state(self) -> dict[str, Any]:
        def cat(xs: list[np.ndarray]) -> np.ndarray | None:
            return np.concatenate(xs, axis=0) if xs else None

        return {
            "indices": cat(self._indices),
            "scores": cat(self._scores),
            "labels": cat(self._labels),
            "multi_hot": cat(self._multi_hot),
            "decisions": cat(self._decisions),
            "gflops": cat(self._gflops),
            "videos": list(self._videos) or None,
        }

    def gathered(self) -> dict[str, Any]:
        """All ranks' records, deduplicated by video index and sorted by it."""
        merged = gather_by_index(self._local_state())
        if merged is None:
            raise ValueError("MetricAccumulator: no batches were added")
        return merged

    def compute(self) -> dict[str, float]:
        """Fractions (not percent): top-k, mean_class_acc, mAP, selection_<modality>, gflops,
        plus num_videos."""
        st = self.gathered()
        scores = st["scores"].astype(np.float64)
        out: dict[str, float] = {"num_videos": float(scores.shape[0])}
        if st["labels"] is not None:
            out.update(topk_accuracy(scores, st["labels"], self.topk))
            out["mean_class_acc"] = mean_class_accuracy(scores, st["labels"])
        targets = st["multi_hot"] if st["multi_hot"] is not None else st["labels"]
        if targets is not None:
            ranked = scores
            if self.scores_are == "logits":
                ranked = torch.softmax(torch.from_numpy(scores), dim=1).numpy()
            out["mAP"] = video_map(ranked, targets)
        if st["decisions"] is not None:
            rates = selection_rates(st["decisions"])
            names = self.modalities or [str(i) for i in range(len(rates))]
            if len(names) != len(rates):
                raise ValueError(
                    f"decisions have {len(rates)} modalities but the accumulator was told "
                    f"{len(names)}: {names}"
                )
            for name, rate in zip(names, rates, strict=True):
                out[f"selection_{name}"] = rate
        if st["gflops"] is not None:
            out["gflops"] = mean_gflops(st["gflops"])
        return out


def per_class_selection_rates(
    decisions: ArrayLike, labels: ArrayLike, num_classes: int
) -> np.ndarray:
    """What the policy chose per class: float64 (C, M), NaN rows for classes without videos.

    decisions: (N, K, M); labels: (N,). Row c = fraction of the segments of class-c videos
    on which each modality ran.
    """
    d = _to_numpy(decisions, "decisions")
    if d.ndim != 3:
        raise ValueError(f"decisions: expected shape (N, K, M), got {d.shape}")
    _, y = _check_scores_labels(np.zeros((d.shape[0], num_classes)), labels)
    per_video = d.mean(axis=1)  # (N, M)
    sums = np.zeros((num_classes, d.shape[2]))
    np.add.at(sums, y, per_video)
    counts = np.bincount(y, minlength=num_classes)[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts
