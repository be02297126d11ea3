"""Results tables shaped like the paper's, and their CSV/JSON files.

A ``MethodResult`` is one row: a method, its accuracy or mAP, how often it ran each modality
and its GFLOPs per video. All figures are in percent (the paper's unit) except GFLOPs, which
are multiply-adds in units of 1e9, as the field reports them. Rows built from
``MetricAccumulator.compute()`` (fractions) go through ``MethodResult.from_metrics``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adamml.modalities.table import title
from adamml.runtime.files import atomic_write_text

METRIC_TITLES: dict[str, str] = {
    "top1": "Acc. (%)",
    "top5": "Top-5 acc. (%)",
    "mean_class_acc": "Mean class acc. (%)",
    "mAP": "mAP (%)",
}

NOT_USED = "—"


@dataclass
class MethodResult:
    """One row of a results table (percent figures; GFLOPs = 1e9 multiply-adds per video).

    selection: per modality, the percent of segments on which it ran; ``None`` (or a missing
    key) means the method does not use that modality at all. ``accuracy`` is the row's
    figure for ``metric`` (top-1 accuracy or mAP). ``adaptive`` rows get their GFLOPs saving
    against the reference row printed beside them; left as None, a row is adaptive when its
    method name starts with "AdaMML" (AdaMML, AdaMML-Flow, AdaMML-RGBDiff...).
    """

    method: str
    accuracy: float
    metric: str = "top1"
    selection: dict[str, float | None] = field(default_factory=dict)
    gflops: float = 0.0
    adaptive: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.adaptive is None:
            self.adaptive = self.method.strip().lower().startswith("adamml")
        if self.metric not in METRIC_TITLES:
            raise ValueError(
                f"{self.method}: unknown metric {self.metric!r}; expected one of "
                + ", ".join(METRIC_TITLES)
            )
        if not math.isfinite(self.accuracy) or not math.isfinite(self.gflops):
            raise ValueError(f"{self.method}: accuracy and gflops must be finite numbers")

    @classmethod
    def from_metrics(
        cls,
        method: str,
        metrics: Mapping[str, float],
        metric: str = "top1",
        modalities: Sequence[str] = (),
        adaptive: bool | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> MethodResult:
        """Build a row from ``MetricAccumulator.compute()`` (fractions -> percent).

        modalities: those the method uses; one without ``selection_<m>`` in ``metrics`` ran
        on every segment (100 %).
        """
        if metric not in metrics:
            raise KeyError(
                f"{method}: metric {metric!r} not in the computed metrics {sorted(metrics)}"
            )
        selection = {m: 100.0 * float(metrics.get(f"selection_{m}", 1.0)) for m in modalities}
        others = {
            k: (100.0 * float(v) if k in METRIC_TITLES else float(v))
            for k, v in metrics.items()
            if k != metric and k != "gflops" and not k.startswith("selection_")
        }
        others.update(extra or {})
        return cls(
            method=method,
            accuracy=100.0 * float(metrics[metric]),
            metric=metric,
            selection=selection,
            gflops=float(metrics.get("gflops", 0.0)),
            adaptive=adaptive,
            extra=others,
        )

    def score_for(self, metric: str) -> float:
        """The row's figure for ``metric``: its main score, else a percent kept in ``extra``."""
        if metric == self.metric:
            return self.accuracy
        if metric in self.extra:
            return float(self.extra[metric])
        raise ValueError(
            f"{self.method}: has {self.metric!r}, not {metric!r} (extra holds {sorted(self.extra)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodResult:
        known = {"method", "accuracy", "metric", "selection", "gflops", "adaptive", "extra"}
        unknown = set(d) - known
        if unknown or "method" not in d or "accuracy" not in d:
            raise ValueError(
                f"not a MethodResult: needs 'method' and 'accuracy', unknown keys {sorted(unknown)}"
            )
        return cls(**dict(d))


FUSION_FROM_COSTS = "Weighted fusion (from the networks' costs)"


def _find_reference(
    results: Sequence[MethodResult], reference: str | None, fusion_gflops: float | None = None
) -> MethodResult | None:
    """The row the adaptive rows' GFLOPs are compared with: the named one, else a static row
    that runs every modality of the adaptive rows on every segment (weighted fusion first),
    else weighted fusion's cost ``fusion_gflops`` when given, else none. Never a single
    modality: against it an adaptive row's "saving" is a meaningless surcharge."""
    if reference is not None:
        for r in results:
            if r.method == reference:
                return r
        raise ValueError(
            f"reference row {reference!r} not among the methods: {[r.method for r in results]}"
        )
    needed = {m for r in results if r.adaptive for m, v in r.selection.items() if v is not None}
    every = [
        r for r in results
        if not r.adaptive and r.gflops > 0 and all((r.selection.get(m) or 0.0) >= 100.0 - 1e-6 for m in needed)
    ]
    if every:
        weighted = [r for r in every if r.method.strip().lower().startswith("weighted")]
        return max(weighted or every, key=lambda r: r.gflops)
    if fusion_gflops is not None and fusion_gflops > 0:
        return MethodResult(FUSION_FROM_COSTS, 0.0, selection=dict.fromkeys(needed, 100.0),
                            gflops=float(fusion_gflops), adaptive=False)
    return None


def reference_note(results: Sequence[MethodResult], fusion_gflops: float | None = None) -> str | None:
    """The line under a table whose adaptive rows are compared with weighted fusion's cost
    counted from the networks (no fusion row was measured), or that shows no comparison."""
    if not any(r.adaptive for r in results):
        return None
    ref = _find_reference(results, None, fusion_gflops)
    if ref is None:
        return "GFLOPs changes are not shown: no row runs every modality on every segment to compare with."
    if ref.method == FUSION_FROM_COSTS:
        return (f"GFLOPs changes are against weighted fusion's {ref.gflops:.4f} GFLOPs per video (every modality "
                "on every segment), counted from the networks' costs: no fusion checkpoint was evaluated.")
    return None


def gflops_saving(result: MethodResult, reference: MethodResult) -> float:
    """Relative GFLOPs change in percent: negative means cheaper (-47.3 = 47.3 % saved)."""
    if reference.gflops <= 0:
        raise ValueError(f"reference row {reference.method!r} has no GFLOPs to compare with")
    return 100.0 * (result.gflops / reference.gflops - 1.0)


def _rows(
    results: Sequence[MethodResult],
    modalities: Sequence[str],
    metric: str,
    reference: str | None,
    fusion_gflops: float | None = None,
) -> tuple[list[str], list[list[str]]]:
    if metric not in METRIC_TITLES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRIC_TITLES)}")
    ref = _find_reference(results, reference, fusion_gflops)
    header = (
        ["Method", METRIC_TITLES[metric]]
        + [f"{title(m)} (%)" for m in modalities]
        + ["GFLOPs"]
    )
    rows = []
    # The paper's models cost tens of GFLOPs (2 decimals); the CPU demo's cost hundredths.
    largest = max((r.gflops for r in results), default=0.0)
    digits = 2 if largest >= 10 else 3 if largest >= 1 else 4
    for r in results:
        cells = [r.method, f"{r.score_for(metric):.2f}"]
        for m in modalities:
            rate = r.selection.get(m)
            cells.append(NOT_USED if rate is None else f"{rate:.2f}")
        g = f"{r.gflops:.{digits}f}"
        if r.adaptive and ref is not None and ref is not r:
            g += f" ({gflops_saving(r, ref):+.1f}%)"
        cells.append(g)
        rows.append(cells)
    return header, rows


def format_table(
    results: Sequence[MethodResult],
    modalities: Sequence[str],
    metric: str = "top1",
    reference: str | None = None,
    fusion_gflops: float | None = None,
) -> str:
    """A Markdown table like the paper's: ``Method | Acc. (%) | RGB (%) ... | GFLOPs``.

    reference: the method the adaptive rows' GFLOPs are compared with; by default weighted
    fusion's row (the paper's reference), or ``fusion_gflops`` (its cost counted from the
    networks) when no row runs every modality (see :func:`reference_note`).
    """
    header, rows = _rows(results, modalities, metric, reference, fusion_gflops)
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + "-" if i == 0 else "-" * (w + 1) + ":") for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def write_csv(
    results: Sequence[MethodResult],
    path: str | os.PathLike[str],
    modalities: Sequence[str] | None = None,
    reference: str | None = None,
    fusion_gflops: float | None = None,
) -> Path:
    """One row per method with plain numbers (empty cell = modality not used); the GFLOPs
    change is against the reference of :func:`format_table`."""
    if modalities is None:
        modalities = list(dict.fromkeys(m for r in results for m in r.selection))
    ref = _find_reference(results, reference, fusion_gflops)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["method", "metric", "accuracy"]
        + [f"selection_{m}" for m in modalities]
        + ["gflops", "gflops_change_pct", "adaptive", "extra"]
    )
    for r in results:
        change = "" if ref is None or ref.gflops <= 0 else f"{gflops_saving(r, ref):.4f}"
        writer.writerow(
            [r.method, r.metric, f"{r.accuracy:.4f}"]
            + ["" if r.selection.get(m) is None else f"{r.selection[m]:.4f}" for m in modalities]
            + [f"{r.gflops:.4f}", change, int(r.adaptive), json.dumps(r.extra, sort_keys=True)]
        )
    return atomic_write_text(path, buf.getvalue())


def write_json(
    results: Sequence[MethodResult],
    path: str | os.PathLike[str],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """``{"meta": {...}, "results": [MethodResult as dict, ...]}``; ``load_json`` reads it back."""
    doc = {"meta": dict(meta or {}), "results": [r.to_dict() for r in results]}
    return atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike[str]) -> list[MethodResult]:
    """Read results written by ``write_json`` (to merge runs into one table)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ValueError(f"{path}: expected an object with a 'results' list (from write_json)")
    out = []
    for i, d in enumerate(doc["results"]):
        try:
            out.append(MethodResult.from_dict(d))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: results[{i}]: {exc}") from exc
    return out
