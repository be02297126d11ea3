"""Figures of an evaluation: accuracy vs. GFLOPs, what the policy chose per video and per class.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
state, no display needed), rendered to PNG bytes and written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from adamml.evaluation.metrics import per_class_selection_rates
from adamml.evaluation.report import (
    METRIC_TITLES,
    MethodResult,
)
from adamml.modalities.table import MODALITIES, title
from adamml.runtime.files import atomic_write_bytes

SKIPPED_COLOUR = "#e6e6e6"


def _colour(modality: str, i: int) -> str:
    """The modality's colour from the modality table, the same in every figure."""
    fallback = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
    return MODALITIES[modality].colour if modality in MODALITIES else fallback[i % len(fallback)]


def _save(fig: Figure, path: str | os.PathLike[str], dpi: float) -> Path:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def plot_accuracy_vs_gflops(
    results: Sequence[MethodResult],
    path: str | os.PathLike[str],
    metric: str | None = None,
    title: str | None = None,
    dpi: float = 120,
) -> Path:
    """One labelled point per method: the trade-off the paper argues about at a glance.

    metric: which figure goes on the y axis (default: the first row's metric).
    """
    if not results:
        raise ValueError(f"{path}: no results to plot")
    metric = metric or results[0].metric
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    xs = [r.gflops for r in results]
    ys = [r.score_for(metric) for r in results]
    for r, x, y in zip(results, xs, ys, strict=True):
        adaptive = bool(r.adaptive)
        ax.scatter(
            [x],
            [y],
            s=70 if adaptive else 45,
            marker="*" if adaptive else "o",
            color="#d62728" if adaptive else "#1f77b4",
            zorder=3,
        )
        ax.annotate(
            r.method,
            (x, y),
            xytext=(6, 4),
            textcoords="offset points",
            fontsize=8,
            fontweight="bold" if adaptive else "normal",
        )
    span_x = max(xs) - min(xs) or max(abs(max(xs)), 1.0)
    span_y = max(ys) - min(ys) or 1.0
    ax.set_xlim(min(xs) - 0.05 * span_x, max(xs) + 0.3 * span_x)
    ax.set_ylim(min(ys) - 0.1 * span_y, max(ys) + 0.15 * span_y)
    ax.set_xlabel("GFLOPs per video (multiply-adds)")
    ax.set_ylabel(METRIC_TITLES.get(metric, metric))
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_video(v: Mapping[str, Any], i: int) -> tuple[np.ndarray, list[str]]:
    """Validate one policy-strip entry early, naming the entry, so a bad one is easy to find."""
    where = f"videos[{i}] ({v.get('title', 'untitled')!r})"
    if "decisions" not in v or "modalities" not in v:
        raise ValueError(f"{where}: needs 'decisions' (K, M) and 'modalities'")
    d = _as_array(v["decisions"]).astype(np.float64)
    mods = list(v["modalities"])
    if d.ndim != 2 or d.shape[1] != len(mods):
        raise ValueError(
            f"{where}: decisions must be (K, M) with M = {len(mods)} modalities, got {d.shape}"
        )
    if "thumbnails" in v and v["thumbnails"] is not None:
        t = _as_array(v["thumbnails"])
        if t.ndim != 4 or t.shape[0] != d.shape[0] or t.shape[3] != 3 or t.dtype != np.uint8:
            raise ValueError(
                f"{where}: thumbnails must be uint8 (K={d.shape[0]}, H, W, 3), "
                f"got {t.dtype} {t.shape}"
            )
    return d, mods


def _spectrogram_image(spec: Any, k: int, where: str) -> np.ndarray:
    """(F, S_total), (K, F, S) or (K, 1, F, S) -> one (F, S_total) image spanning the video."""
    s = _as_array(spec).astype(np.float64)
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim == 3:
        if s.shape[0] != k:
            raise ValueError(f"{where}: spectrogram has {s.shape[0]} segments, decisions {k}")
        s = np.concatenate(list(s), axis=1)
    if s.ndim != 2:
        raise ValueError(f"{where}: spectrogram must be (F, S) or (K, F, S), got {s.shape}")
    return s


def plot_policy_strips(
    videos: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    dpi: float = 100,
    thumb_inches: float = 1.1,
) -> Path:
    """The paper's qualitative figure: per video, its segments and what the policy ran.

    Each entry: "title", "thumbnails" uint8 (K, H, W, 3) (one frame per segment, optional),
    "spectrogram" (F, S_total) / (K, F, S) (optional), "decisions" (K, M) in {0, 1},
    "modalities" (M names), "label", "prediction". Segments whose visual modalities were
    all skipped are faded with a grey frame, used ones get a frame in the modality's colour;
    audio segments not listened to are faded on the spectrogram; beneath, one row per
    modality of check marks for the segments it ran on.
    """
    if not videos:
        raise ValueError(f"{path}: no videos to plot")
    checked = [_check_video(v, i) for i, v in enumerate(videos)]
    k_max = max(d.shape[0] for d, _ in checked)
    width = max(6.0, thumb_inches * k_max + 1.2)

    # Height ratios per video: title+thumbnails, spectrogram, decision grid, gap.
    ratios: list[float] = []
    kinds: list[tuple[int, str]] = []
    for i, (v, (_d, mods)) in enumerate(zip(videos, checked, strict=True)):
        if v.get("thumbnails") is not None:
            t = _as_array(v["thumbnails"])
            ratios.append(thumb_inches * t.shape[1] / t.shape[2])
            kinds.append((i, "thumbs"))
        if v.get("spectrogram") is not None:
            ratios.append(0.7)
            kinds.append((i, "spec"))
        ratios.append(0.2 * len(mods))
        kinds.append((i, "grid"))
        ratios.append(0.45)  # room for the next title
        kinds.append((i, "gap"))
    ratios.pop()  # no gap after the last video
    kinds.pop()
    height = sum(ratios) + 0.5
    fig = Figure(figsize=(width, height))
    gs = fig.add_gridspec(len(ratios), 1, height_ratios=ratios, hspace=0.08)
    fig.subplots_adjust(
        left=1.0 / width, right=1 - 0.2 / width, top=1 - 0.4 / height, bottom=0.1 / height
    )

    titled: set[int] = set()
    for row, (i, kind) in enumerate(kinds):
        if kind == "gap":
            continue
        v = videos[i]
        d, mods = checked[i]
        k = d.shape[0]
        ax = fig.add_subplot(gs[row])
        ax.set_xlim(0, k_max)
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
        if i not in titled:
            titled.add(i)
            label, pred = v.get("label"), v.get("prediction")
            ok = label is not None and label == pred
            text = str(v.get("title", f"video {i}"))
            if label is not None:
                text += f"   label: {label}"
            if pred is not None:
                text += f"   prediction: {pred}"
            ax.set_title(
                text,
                loc="left",
                fontsize=9,
                color="#2a7f2a" if ok else ("#b22222" if pred is not None else "black"),
            )
        visual = [j for j, m in enumerate(mods) if m in MODALITIES and MODALITIES[m].visual]
        if kind == "thumbs":
            thumbs = _as_array(v["thumbnails"])
            ax.set_ylim(0, 1)
            for t in range(k):
                used = bool(visual) and bool(d[t, visual].max() > 0.5)
                ax.imshow(
                    thumbs[t],
                    extent=(t + 0.04, t + 0.96, 0.04, 0.96),
                    alpha=1.0 if used else 0.3,
                    aspect="auto",
                    interpolation="bilinear",
                )
                colour = SKIPPED_COLOUR
                if used:
                    j = next(j for j in visual if d[t, j] > 0.5)
                    colour = _colour(mods[j], j)
                ax.add_patch(Rectangle((t + 0.03, 0.03), 0.94, 0.94, fill=False, lw=2.5, ec=colour))
            ax.set_ylabel("frames", fontsize=8, rotation=0, ha="right", va="center")
        elif kind == "spec":
            spec = _spectrogram_image(v["spectrogram"], k, f"videos[{i}]")
            n_freq = spec.shape[0]
            ax.imshow(
                spec,
                extent=(0, k, 0, n_freq),
                origin="lower",
                aspect="auto",
                cmap="magma",
                interpolation="nearest",
            )
            ax.set_ylim(0, n_freq)
            a = mods.index("audio") if "audio" in mods else None
            for t in range(k):
                if a is not None and d[t, a] > 0.5:
                    ax.add_patch(
                        Rectangle(
                            (t + 0.02, 0.5),
                            0.96,
                            n_freq - 1,
                            fill=False,
                            lw=2,
                            ec=_colour("audio", a),
                        )
                    )
                else:
                    ax.add_patch(Rectangle((t, 0), 1, n_freq, color="white", alpha=0.65, lw=0))
            ax.set_ylabel("audio", fontsize=8, rotation=0, ha="right", va="center")
        elif kind == "grid":
            m = len(mods)
            ax.set_ylim(0, m)
            for j, name in enumerate(mods):
                y = m - 1 - j
                for t in range(k):
                    used = d[t, j] > 0.5
                    ax.add_patch(
                        Rectangle(
                            (t + 0.04, y + 0.08),
                            0.92,
                            0.84,
                            color=_colour(name, j) if used else SKIPPED_COLOUR,
                            lw=0,
                        )
                    )
                    if used:
                        ax.text(
                            t + 0.5,
                            y + 0.5,
                            "✓",
                            ha="center",
                            va="center",
                            color="white",
                            fontsize=8,
                            fontweight="bold",
                        )
            ax.set_yticks([m - 0.5 - j for j in range(m)])
            ax.set_yticklabels([title(n) for n in mods], fontsize=7)
            ax.tick_params(axis="y", length=0)
    return _save(fig, path, dpi)


def plot_selection_by_class(
    decisions: Any,
    labels: Any,
    class_names: Sequence[str],
    modalities: Sequence[str],
    path: str | os.PathLike[str],
    dpi: float = 100,
    max_classes: int | None = None,
) -> Path:
    """Horizontal grouped bars: per class, the percent of segments each modality ran on.

    decisions: (N, K, M); labels: (N,). Classes without test videos are left out; classes
    are sorted by the first modality's rate (the expensive one, usually RGB), so the classes
    the policy recognises from the cheap modality come first. max_classes keeps the first
    and last max_classes // 2 classes of that order (for 200-class sets).
    """
    mods = list(modalities)
    rates = per_class_selection_rates(decisions, labels, len(class_names))
    if rates.shape[1] != len(mods):
        raise ValueError(f"{path}: decisions have {rates.shape[1]} modalities, got names {mods}")
    present = np.nonzero(~np.isnan(rates[:, 0]))[0]
    order = present[np.argsort(rates[present, 0], kind="stable")]
    omitted = 0
    if max_classes is not None and len(order) > max_classes:
        half = max(1, max_classes // 2)
        omitted = len(order) - 2 * half
        order = np.r_[order[:half], order[-half:]]
    n = len(order)
    bar_h = 0.8 / len(mods)
    fig = Figure(figsize=(7.0, 1.0 + 0.22 * n * max(1, len(mods) * 0.6)))
    ax = fig.add_subplot()
    ys = np.arange(n)
    for j, name in enumerate(mods):
        ax.barh(
            ys + (j - (len(mods) - 1) / 2) * bar_h,
            100.0 * rates[order, j],
            height=bar_h,
            color=_colour(name, j),
            label=title(name),
        )
    ax.set_yticks(ys)
    ax.set_yticklabels([class_names[c] for c in order], fontsize=7)
    ax.invert_yaxis()
    if omitted:
        ax.axhline(half - 0.5, color="black", ls="--", lw=0.8)
        ax.text(99, half - 0.5, f"{omitted} classes omitted", ha="right", va="bottom", fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("segments on which the modality ran (%)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(
        loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(mods), fontsize=8, frameon=False
    )
    fig.tight_layout()
    return _save(fig, path, dpi)
