"""How sure is the gate that the challenger beats the champion? Paired tests on one holdout.

Both models score the same holdout rows, so the comparison is paired: what matters is how the two
differ row by row, not how each scatters on its own. Holdout rows are consecutive times of a
drifting series, so neighbouring rows are alike, and a test that treats them as independent is
sure of itself far too soon (a 3-day Elec2 holdout is 144 half-hours, worth much fewer independent
draws). Each metric gets the test that fits its shape:

- **a mean of per-row losses** (accuracy, log_loss, mae; rmse and r2 through the squared error):
  a Diebold-Mariano test on the loss differences, with a Newey-West (Bartlett) long-run variance so
  autocorrelated rows count for what they are worth, and Student's t with n - 1 degrees of freedom
  (the Harvey-Leybourne-Newbold small-sample reading);
- **roc_auc**: DeLong's paired test (the covariance of the two AUCs from their placement values);
  it treats rows as independent, so on autocorrelated holdouts ask for a higher confidence;
- **f1** (no per-row decomposition): a paired circular block bootstrap of the F1 difference,
  blocks of about n^(1/3) rows, seeded so a gate decides the same way twice.

A canary is the unpaired case (each version answers requests of its own): ``unpaired_bootstrap``
resamples each side on its own, for any metric.

The null hypothesis is "the challenger is at most ``margin`` better" (in the metric's own units,
better meaning higher, or lower for errors); ``p_value`` is the one-sided evidence against it, and
the gate promotes when it is at most ``1 - confidence``. ``low``/``high`` is the two-sided interval
of the improvement at ``confidence``. A tie is not evidence: with identical predictions nothing
moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LOSS_METRICS = ("accuracy", "log_loss", "mae", "rmse", "r2")
EPS = 1e-7
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Evidence:
    """The paired comparison of challenger and champion on one holdout."""

    test: str  # "diebold_mariano" | "delong" | "block_bootstrap"
    improvement: float  # challenger minus champion, in the better direction, metric units
    low: float  # two-sided interval of the improvement at `confidence`
    high: float
    p_value: float  # one-sided, H0: improvement <= margin
    confidence: float
    margin: float
    rows: int

    @property
    def convincing(self) -> bool:
        return self.p_value <= 1 - self.confidence + 1e-12

    def text(self, metric: str) -> str:
        return (
            f"{metric} better by {self.improvement:+.4f} ({self.confidence:.0%} interval {self.low:+.4f} .. {self.high:+.4f}), "
            f"p = {self.p_value:.3g} against 'at most {self.margin} better' ({self.test}, {self.rows} rows)"
        )


def _t_sf(t: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.sf(t, df))


def _t_ppf(q: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def long_run_variance(d: np.ndarray) -> float:
    """Newey-West estimate of the variance of sqrt(n) * mean(d) for autocorrelated ``d``: the
    Bartlett-weighted autocovariances up to lag floor(4 (n/100)^(2/9))."""
    n = len(d)
    x = d - d.mean()
    lags = min(n - 1, math.floor(4 * (n / 100) ** (2 / 9)))
    variance = float(x @ x) / n
    for k in range(1, lags + 1):
        variance += 2 * (1 - k / (lags + 1)) * float(x[k:] @ x[:-k]) / n
    return max(variance, 0.0)


def _losses(metric: str, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    if metric == "accuracy":
        return ((scores >= 0.5).astype(float) != y).astype(float)
    if metric == "log_loss":
        p = np.clip(scores, EPS, 1 - EPS)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if metric == "mae":
        return np.abs(y - scores)
    return (y - scores) ** 2  # rmse, r2: the squared error


def diebold_mariano(
    metric: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, margin: float, confidence: float
) -> Evidence:
    """Paired test on per-row loss differences (champion's loss minus challenger's: positive when
    the challenger is better), the margin mapped into the loss's units for rmse and r2."""
    n = len(y)
    champion_losses = _losses(metric, y, champion)
    d = champion_losses - _losses(metric, y, challenger)
    mean = float(d.mean())
    se = math.sqrt(long_run_variance(d) / n) if n > 1 else 0.0
    # improvement in the metric's units as a function of the mean loss difference
    if metric == "rmse":
        mse_champion = float(champion_losses.mean())
        r_champion = math.sqrt(mse_champion)

        def to_metric(x: float) -> float:
            return r_champion - math.sqrt(max(mse_champion - x, 0.0))

        # RMSE at most r - margin  <=>  MSE down by at least r^2 - (r - margin)^2 (all of it past r)
        loss_margin = margin * (2 * r_champion - margin) if margin < r_champion else mse_champion
    else:
        # r2 moves by the MSE difference over the label's variance; the other losses are the metric
        spread = (float(np.var(y)) or 1.0) if metric == "r2" else 1.0

        def to_metric(x: float) -> float:
            return x / spread

        loss_margin = margin * spread
    if se == 0.0:
        p = 0.0 if mean > loss_margin else 1.0
        return Evidence("diebold_mariano", to_metric(mean), to_metric(mean), to_metric(mean), p, confidence, margin, n)
    df = n - 1
    p = _t_sf((mean - loss_margin) / se, df)
    half = _t_ppf(0.5 + confidence / 2, df) * se
    return Evidence("diebold_mariano", to_metric(mean), to_metric(mean - half), to_metric(mean + half), p, confidence, margin, n)


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's placement values: for each positive the share of negatives it outranks
    (ties count half), and for each negative the share of positives that outrank it."""
    from scipy.stats import rankdata

    m, k = len(pos), len(neg)
    both = np.concatenate([pos, neg])
    ranks = rankdata(both)
    ranks_pos, ranks_neg = rankdata(pos), rankdata(neg)
    v10 = (ranks[:m] - ranks_pos) / k
    v01 = 1 - (ranks[m:] - ranks_neg) / m
    return float(v10.mean()), v10, v01


def delong(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, margin: float, confidence: float) -> Evidence:
    """DeLong, DeLong and Clarke-Pearson (1988): the paired difference of two AUCs on the same rows."""
    from scipy.stats import norm

    pos, neg = y == 1, y == 0
    m, k = int(pos.sum()), int(neg.sum())
    n = len(y)
    if m < 2 or k < 2:
        return Evidence("delong", float("nan"), float("nan"), float("nan"), 1.0, confidence, margin, n)
    a_ch, v10_ch, v01_ch = _placements(challenger[pos], challenger[neg])
    a_c, v10_c, v01_c = _placements(champion[pos], champion[neg])
    s10 = np.cov(np.vstack([v10_ch, v10_c]))
    s01 = np.cov(np.vstack([v01_ch, v01_c]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / k
    diff = a_ch - a_c
    if var <= 0:
        p = 0.0 if diff > margin else 1.0
        return Evidence("delong", diff, diff, diff, p, confidence, margin, n)
    se = math.sqrt(var)
    half = float(norm.ppf(0.5 + confidence / 2)) * se
    return Evidence("delong", diff, diff - half, diff + half, float(norm.sf((diff - margin) / se)), confidence, margin, n)


def _f1(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of each resample (rows of ``y`` and ``pred``), 0 where it is undefined (as sklearn's
    zero_division=0)."""
    tp = (pred * y).sum(axis=-1)
    fp = (pred * (1 - y)).sum(axis=-1)
    fn = ((1 - pred) * y).sum(axis=-1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)


def block_bootstrap(
    y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, margin: float, confidence: float, seed: int = 0
) -> Evidence:
    """Paired circular block bootstrap of the F1 difference: whole runs of consecutive rows are
    resampled, the same rows for both models."""
    n = len(y)
    block = max(1, round(n ** (1 / 3)))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, math.ceil(n / block)))
    idx = ((starts[:, :, None] + np.arange(block)) % n).reshape(BOOTSTRAP_SAMPLES, -1)[:, :n]
    yy = y[idx]
    pred_ch, pred_c = (challenger >= 0.5).astype(float), (champion >= 0.5).astype(float)
    observed = float(_f1(y, pred_ch) - _f1(y, pred_c))
    diffs = _f1(yy, pred_ch[idx]) - _f1(yy, pred_c[idx])
    p = (int((diffs <= margin).sum()) + 1) / (BOOTSTRAP_SAMPLES + 1)
    if np.all(pred_ch == pred_c):
        p = 1.0
    low, high = np.quantile(diffs, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Evidence("block_bootstrap", observed, float(low), float(high), float(p), confidence, margin, n)


def unpaired_bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    higher_is_better: bool,
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    *,
    margin: float,
    confidence: float,
    seed: int = 0,
    samples: int = 1000,
) -> Evidence:
    """The evidence that side ``a`` is more than ``margin`` better than side ``b`` when each was
    scored on rows of its own (labels, scores), as the two versions of a canary answer different
    requests: nothing pairs them, so each side's rows are resampled on their own and the metric
    recomputed (any metric, ``metric(y, scores)``). Rows of one side are taken as independent: a
    canary's requests are spread over its window, not consecutive rows of one series."""
    rng = np.random.default_rng(seed)
    sign = 1.0 if higher_is_better else -1.0
    (ya, sa), (yb, sb) = (np.asarray(v, dtype="float64") for v in a), (np.asarray(v, dtype="float64") for v in b)
    observed = sign * (metric(ya, sa) - metric(yb, sb))
    diffs = np.empty(samples)
    for i in range(samples):
        ia, ib = rng.integers(0, len(ya), len(ya)), rng.integers(0, len(yb), len(yb))
        diffs[i] = sign * (metric(ya[ia], sa[ia]) - metric(yb[ib], sb[ib]))
    diffs = diffs[np.isfinite(diffs)]  # a resample with one class has no AUC
    if not len(diffs):
        return Evidence("unpaired_bootstrap", observed, float("nan"), float("nan"), 1.0, confidence, margin, len(ya) + len(yb))
    p = (int((diffs <= margin).sum()) + 1) / (len(diffs) + 1)
    low, high = np.quantile(diffs, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Evidence(
        "unpaired_bootstrap", float(observed), float(low), float(high), float(p), confidence, margin, len(ya) + len(yb)
    )


def compare(
    metric: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    *,
    margin: float,
    confidence: float,
    seed: int = 0,
) -> Evidence:
    """The paired evidence that the challenger is more than ``margin`` better on ``metric``. Rows
    must be in time order (the long-run variance and the blocks follow it); scores are the
    positive-class probability (classification) or the predicted value (regression)."""
    y = np.asarray(y, dtype="float64")
    challenger, champion = np.asarray(challenger, dtype="float64"), np.asarray(champion, dtype="float64")
    if metric in LOSS_METRICS:
        return diebold_mariano(metric, y, challenger, champion, margin, confidence)
    if metric == "roc_auc":
        return delong(y, challenger, champion, margin, confidence)
    if metric == "f1":
        return block_bootstrap(y, challenger, champion, margin, confidence, seed)
    raise ValueError(f"no paired test for metric {metric!r}")
