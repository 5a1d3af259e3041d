"""The model card: what a person needs to trust (or doubt) a trained model, from its own holdout.

* **Holdout metrics with confidence intervals.** A circular block bootstrap over the holdout's rows
  in time order (blocks of about n^(1/3) consecutive rows), as the gate's evidence does
  (``core.evidence``): rows of one day are not independent, so whole runs of them are resampled.
* **Permutation feature importance on the holdout.** How much the promotion metric worsens when one
  feature's column is shuffled (the same rows, the others untouched), averaged over a few shuffles.
  It is measured on rows the model never saw, so it says what the model relies on now, not what
  it memorised. Zero or negative: the model does not need that feature on this holdout. A holdout
  of more than 2,000 rows is sampled to 2,000 for it (every shuffled copy is predicted).
* **The metric per slice of each entity** (carrier, origin, station…): every entity value with
  enough holdout rows, worst first, with its gap to the whole holdout. A slice whose metric is
  undefined (one class only, for ROC AUC) is counted as not judged.
* **What it was trained on:** the days and rows of the training part and of the holdout.

Plain numpy and pandas: ``mlops_assets.training`` puts the card in the model asset's metadata, the
MLflow run's artifacts and the registered version's description.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RESAMPLES = 200
CONFIDENCE = 0.95
IMPORTANCE_REPEATS = 3
IMPORTANCE_MAX_ROWS = 2000  # a larger holdout is sampled: the importance predicts features x repeats copies of it
MIN_SLICE_ROWS = 30
CLASSIFICATION_METRICS = ("roc_auc", "accuracy", "f1", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")


@dataclass
class ModelCard:
    metric: str
    higher_is_better: bool
    intervals: list[dict] = field(default_factory=list)  # metric, value, low, high
    importance: list[dict] = field(default_factory=list)  # feature, importance, std (largest first)
    slices: list[dict] = field(default_factory=list)  # entity, value, rows, <metric>, gap (worst first)
    slices_not_judged: int = 0
    training: dict = field(default_factory=dict)  # train_days, holdout_days, rows_train, rows_holdout

    def interval(self, name: str) -> dict | None:
        return next((i for i in self.intervals if i["metric"] == name), None)

    def markdown(self, title: str) -> str:
        """The card as markdown (the registered version's description, ``model_card.md``)."""
        t = self.training
        lines = [
            f"# {title}",
            "",
            f"Trained on {t['train_days']} ({t['rows_train']} rows); holdout {t['holdout_days']} ({t['rows_holdout']} rows).",
            "",
            f"## Holdout metrics ({CONFIDENCE:.0%} block-bootstrap intervals)",
            "",
            "| metric | value | low | high |",
            "|---|---|---|---|",
            *(f"| {i['metric']} | {i['value']:.4f} | {i['low']:.4f} | {i['high']:.4f} |" for i in self.intervals),
            "",
            f"## Permutation importance on the holdout (drop in {self.metric} when shuffled)",
            "",
            "| feature | importance | std |",
            "|---|---|---|",
            *(f"| {r['feature']} | {r['importance']:.4f} | {r['std']:.4f} |" for r in self.importance),
            "",
            f"## Worst slices by {self.metric} (entities with >= {MIN_SLICE_ROWS} holdout rows)",
            "",
        ]
        if self.slices:
            lines += ["| entity | value | rows | " + self.metric + " | gap |", "|---|---|---|---|---|"]
            lines += [
                f"| {s['entity']} | {s['value']} | {s['rows']} | {s[self.metric]:.4f} | {s['gap']:+.4f} |"
                for s in self.slices[:30]
            ]
        else:
            lines.append("No entity value has enough holdout rows to judge." if self.slices_not_judged else "No entities.")
        if self.slices_not_judged:
            lines += ["", f"{self.slices_not_judged} slice(s) with enough rows have an undefined {self.metric}."]
        return "\n".join(lines) + "\n"

    def importance_svg(self, top: int = 15) -> str:
        """Horizontal bars of the largest importances (negative ones drawn left of zero)."""
        rows = self.importance[:top]
        label_w, bar_w, row_h, top_pad = 150, 260, 18, 28
        height = top_pad + row_h * max(1, len(rows)) + 26
        values = [r["importance"] for r in rows] or [0.0]
        lo, hi = min(0.0, *values), max(0.0, *values)
        span = (hi - lo) or 1.0

        def x(v: float) -> float:
            return label_w + bar_w * (v - lo) / span

        width = label_w + bar_w + 70
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
            f'<text x="{label_w + bar_w / 2}" y="14" text-anchor="middle" font-weight="bold">'
            + f"permutation importance (drop in {self.metric})</text>",
        ]
        for i, r in enumerate(rows):
            y = top_pad + i * row_h
            left, right = sorted((x(0.0), x(r["importance"])))
            colour = "#1f77b4" if r["importance"] >= 0 else "#d62728"
            parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_xml(r["feature"])}</text>')
            parts.append(
                f'<rect x="{left:.1f}" y="{y + 2}" width="{max(right - left, 0.5):.1f}" height="{row_h - 6}" fill="{colour}"/>'
            )
            parts.append(f'<text x="{max(right, x(0.0)) + 4:.1f}" y="{y + 12}">{r["importance"]:.4f}</text>')
        axis_y = top_pad + row_h * max(1, len(rows))
        parts.append(f'<line x1="{x(0.0):.1f}" y1="{top_pad - 4}" x2="{x(0.0):.1f}" y2="{axis_y}" stroke="#333"/>')
        parts.append("</svg>")
        return "".join(parts)


def _xml(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def metric_intervals(
    y: np.ndarray, scores: np.ndarray, names: tuple[str, ...], confidence: float = CONFIDENCE, seed: int = 0
) -> list[dict]:
    """Each metric on the rows in time order, with a circular block-bootstrap interval."""
    from mlops_assets.core.backtest import metric_value

    n = len(y)
    if n == 0:
        return []
    block = max(1, round(n ** (1 / 3)))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=(RESAMPLES, math.ceil(n / block)))
    idx = ((starts[:, :, None] + np.arange(block)) % n).reshape(RESAMPLES, -1)[:, :n]
    out = []
    for name in names:
        value = metric_value(name, y, scores)
        draws = np.array([metric_value(name, y[i], scores[i]) for i in idx])
        draws = draws[np.isfinite(draws)]
        low, high = np.quantile(draws, [0.5 - confidence / 2, 0.5 + confidence / 2]) if len(draws) else (np.nan, np.nan)
        out.append({"metric": name, "value": float(value), "low": float(low), "high": float(high)})
    return out


def permutation_importance(
    predict: Callable[[pd.DataFrame], np.ndarray],
    X: pd.DataFrame,
    y: np.ndarray,
    metric: str,
    higher_is_better: bool,
    repeats: int = IMPORTANCE_REPEATS,
    seed: int = 0,
) -> list[dict]:
    """Worsening of ``metric`` when each column of ``X`` is shuffled, largest first."""
    from mlops_assets.core.backtest import metric_value

    rng = np.random.default_rng(seed)
    if len(X) > IMPORTANCE_MAX_ROWS:
        keep = np.sort(rng.choice(len(X), IMPORTANCE_MAX_ROWS, replace=False))
        X, y = X.iloc[keep].reset_index(drop=True), y[keep]
    sign = 1.0 if higher_is_better else -1.0
    base = metric_value(metric, y, predict(X))
    # every shuffled copy in one frame and one predict call: the model's per-call overhead (its
    # column transformer on a DataFrame) costs as much as the rows on a holdout of a few thousand
    copies = []
    for column in X.columns:
        for _ in range(repeats):
            shuffled = X.copy()
            shuffled[column] = X[column].to_numpy()[rng.permutation(len(X))]
            copies.append(shuffled)
    scores = predict(pd.concat(copies, ignore_index=True)).reshape(len(X.columns), repeats, len(X))
    rows = []
    for c, column in enumerate(X.columns):
        drops = [sign * (base - metric_value(metric, y, scores[c, r])) for r in range(repeats)]
        rows.append({"feature": column, "importance": float(np.nanmean(drops)), "std": float(np.nanstd(drops))})
    return sorted(rows, key=lambda r: -r["importance"])


def slice_metrics(
    frame: pd.DataFrame, y: np.ndarray, scores: np.ndarray, entities: list[str], metric: str, higher_is_better: bool
) -> tuple[list[dict], int]:
    """The metric per value of each entity with at least ``MIN_SLICE_ROWS`` rows, worst first; and
    how many such slices have no defined metric."""
    from mlops_assets.core.backtest import metric_value

    overall = metric_value(metric, y, scores)
    rows, not_judged = [], 0
    for entity in entities:
        if entity not in frame.columns:
            continue
        values = frame[entity].astype("string").fillna("(missing)").to_numpy()
        for value in pd.unique(values):
            mask = values == value
            if mask.sum() < MIN_SLICE_ROWS:
                continue
            m = metric_value(metric, y[mask], scores[mask])
            if not np.isfinite(m):
                not_judged += 1
                continue
            gap = (m - overall) if higher_is_better else (overall - m)  # negative: worse than the whole holdout
            rows.append({"entity": entity, "value": str(value), "rows": int(mask.sum()), metric: float(m), "gap": float(gap)})
    rows.sort(key=lambda r: r["gap"])
    return rows, not_judged


def build_card(
    *,
    metric: str,
    higher_is_better: bool,
    task: str,
    predict: Callable[[pd.DataFrame], np.ndarray],
    X_holdout: pd.DataFrame,
    holdout: pd.DataFrame,
    y: np.ndarray,
    scores: np.ndarray,
    entities: list[str],
    training: dict,
    order: np.ndarray | None = None,
) -> ModelCard:
    """The whole card. ``order`` sorts the holdout rows in time for the bootstrap (default: as given)."""
    y = np.asarray(y, dtype="float64")
    scores = np.asarray(scores, dtype="float64")
    names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    names = (metric, *(n for n in names if n != metric))
    o = np.arange(len(y)) if order is None else order
    slices, not_judged = slice_metrics(holdout, y, scores, entities, metric, higher_is_better)
    return ModelCard(
        metric=metric,
        higher_is_better=higher_is_better,
        intervals=metric_intervals(y[o], scores[o], names),
        importance=permutation_importance(predict, X_holdout, y, metric, higher_is_better),
        slices=slices,
        slices_not_judged=not_judged,
        training=training,
    )
