"""Drift statistics: is a column (or a dataset) of ``current`` distributed like ``reference``?

The choice of test per column follows the convention that Evidently's ``DataDriftPreset`` uses,
so the decisions match what data scientists already read in its reports:

============================  ====================================  ===========================
column                        reference <= 1000 rows                reference > 1000 rows
============================  ====================================  ===========================
numeric, > 5 distinct values  Kolmogorov-Smirnov, drift if p <= .05  normalised Wasserstein >= .1
categorical or <= 5 distinct  chi-square p < .05 (Z-test, 2 values)  Jensen-Shannon distance >= .1
============================  ====================================  ===========================

Distinct values are counted over reference and current together, after dropping missing values
(NaN, None). Missing values are reported separately, never tested. PSI is available on request.

**Hostile values.** What a server was sent is not what training saw: a numeric column may hold
+-inf, 1e308, text, or values outside the spec's ``checks.ranges``. Those are left out of the
statistics and counted per column and side (``*_non_finite``, ``*_out_of_range``, ``*_not_numeric``),
so a day with a few absurd rows is judged on its sound ones and says how many it left out, instead
of failing (1e308 turns every variance into inf) or hiding them. A value is out of range beyond the
spec's range for the column, or beyond ``MAX_MAGNITUDE`` (1e100), where squares and differences of
float64 would overflow.

**Speed.** For large samples the Wasserstein distance comes from a fine common histogram (O(n)
instead of sorting). Its error is bounded (two bin widths); when that bound could flip the
decision, the exact distance is computed instead, so decisions never differ from the exact test.

**Constant references.** The distance is divided by ``max(std(reference), 0.001)``, as Evidently
does: a constant reference (Elec2's imputed ``vicprice`` before May 1997, whose float std is ~1e-18
rather than 0) neither divides by zero nor explodes to 1e15, and decisions stay identical. Such a
score is large for any change (Elec2: 77-283), so results carry ``constant_reference`` and the UI
says why. A scale-free alternative (the spread of both samples) was tried and rejected: it calls
rounding noise of 1e-5 on a constant column drift, where the floor correctly does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

Method = Literal["auto", "wasserstein", "ks", "jensenshannon", "chisquare", "z", "psi"]
THRESHOLDS = {"wasserstein": 0.1, "ks": 0.05, "jensenshannon": 0.1, "chisquare": 0.05, "z": 0.05, "psi": 0.1}
P_VALUE_TESTS = {"ks", "chisquare", "z"}
NOT_TESTED = "not_tested"  # a column with no value on one side: reported, left out of the drifted share
LARGE_REFERENCE = 1000
INTEGER_CATEGORY_LIMIT = 10
FEW_VALUES = 5
HIST_BINS = 4096
STD_FLOOR = 0.001
MAX_MAGNITUDE = 1e100  # beyond it, sums of squares overflow float64: such a value is out of range


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: Literal["numeric", "categorical"]
    method: str
    score: float
    threshold: float
    drifted: bool
    reference_rows: int
    current_rows: int
    reference_missing_share: float
    current_missing_share: float
    constant_reference: bool = False
    reference_non_finite: int = 0  # +-inf: left out of the statistics
    current_non_finite: int = 0
    reference_out_of_range: int = 0  # beyond the spec's range or MAX_MAGNITUDE: left out
    current_out_of_range: int = 0
    reference_not_numeric: int = 0  # text in a numeric column: left out
    current_not_numeric: int = 0

    @property
    def excluded(self) -> int:
        """Values of the current data left out of the statistics (non-finite, out of range, text)."""
        return self.current_non_finite + self.current_out_of_range + self.current_not_numeric

    def as_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DatasetDrift:
    columns: list[ColumnDrift]
    drift_share: float
    drifted_share: float = field(init=False)
    drifted: bool = field(init=False)

    def __post_init__(self):
        tested = [c.drifted for c in self.columns if c.method != NOT_TESTED]
        share = float(np.mean(tested)) if tested else 0.0
        object.__setattr__(self, "drifted_share", share)
        object.__setattr__(self, "drifted", bool(tested) and share >= self.drift_share)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([c.as_row() for c in self.columns])


def infer_kind(values: pd.Series) -> Literal["numeric", "categorical"]:
    """Floats are numeric; integers with at most 10 distinct values are codes (categorical), as are
    strings, booleans and categories. The same rule Evidently applies when nothing is declared."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "categorical"
    if pd.api.types.is_integer_dtype(values) and values.nunique() <= INTEGER_CATEGORY_LIMIT:
        return "categorical"
    return "numeric"


@dataclass(frozen=True)
class Cleaned:
    """One side's values fit for the statistics, and what was left out of them."""

    values: pd.Series
    missing_share: float  # NaN / None: reported, never tested
    non_finite: int = 0
    out_of_range: int = 0
    not_numeric: int = 0


def _clean(values: pd.Series, kind: str | None = None, value_range: tuple[float | None, float | None] | None = None) -> Cleaned:
    """Drop missing values, and for a numeric column every value the statistics cannot take (text,
    +-inf, beyond ``value_range`` or ``MAX_MAGNITUDE``), counting each kind. ``kind`` defaults to
    the dtype's (numeric dtypes are numeric)."""
    n = len(values)
    numeric_dtype = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if kind == "categorical" or (kind is None and not numeric_dtype):
        ok = values.notna().to_numpy()
        return Cleaned(values[ok].reset_index(drop=True), float(1 - ok.mean()) if n else 0.0)
    not_numeric = 0
    if numeric_dtype:
        arr = values.to_numpy(dtype="float64", na_value=np.nan)
    else:  # text among the numbers (an object column read from the served log): left out, counted
        missing = values.isna().to_numpy()
        arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        not_numeric = int((np.isnan(arr) & ~missing).sum())
    nan = np.isnan(arr)
    infinite = np.isinf(arr)
    with np.errstate(invalid="ignore"):
        outside = ~nan & ~infinite & (np.abs(arr) > MAX_MAGNITUDE)
        lo, hi = value_range or (None, None)
        if lo is not None:
            outside |= ~nan & ~infinite & (arr < lo)
        if hi is not None:
            outside |= ~nan & ~infinite & (arr > hi)
    ok = ~nan & ~infinite & ~outside
    missing_share = float((nan.sum() - not_numeric) / n) if n else 0.0
    return Cleaned(pd.Series(arr[ok]), missing_share, int(infinite.sum()), int(outside.sum()), not_numeric)


def choose_method(reference: pd.Series, current: pd.Series, kind: str) -> str:
    """The default test for a column, from its kind, reference size and distinct values."""
    few = kind == "categorical" or _n_distinct(reference, current) <= FEW_VALUES
    if len(reference) <= LARGE_REFERENCE:
        if few:
            return "chisquare" if _n_distinct(reference, current, cap=2) > 2 else "z"
        return "ks"
    return "jensenshannon" if few else "wasserstein"


def _n_distinct(reference: pd.Series, current: pd.Series, cap: int = FEW_VALUES) -> int:
    """Distinct values over both samples, exact up to ``cap``; ``cap + 1`` means "more than cap".

    Only "at most 5?" (and then "at most 2?") matters, so a continuous column is settled from the
    first rows (a hash of a few thousand values) instead of hashing or sorting millions.
    """
    head = pd.unique(np.concatenate([reference.to_numpy()[:2048], current.to_numpy()[:2048]]))
    if len(head) > cap:
        return cap + 1
    both = pd.unique(np.concatenate([reference.to_numpy(), current.to_numpy()]))
    return min(len(both), cap + 1)


# --- numeric distances ---------------------------------------------------------------------------


def _scale(ref: np.ndarray) -> float:
    return max(float(np.std(ref)), STD_FLOOR)


def wasserstein_exact(ref: np.ndarray, cur: np.ndarray) -> float:
    """First Wasserstein distance of two samples: integral of |F_ref - F_cur|."""
    a, b = np.sort(ref), np.sort(cur)
    grid = np.sort(np.concatenate([a, b]))
    deltas = np.diff(grid)
    fa = np.searchsorted(a, grid[:-1], side="right") / len(a)
    fb = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * deltas))


def wasserstein_binned(ref: np.ndarray, cur: np.ndarray, bins: int = HIST_BINS) -> tuple[float, float]:
    """Wasserstein distance from a common histogram, and the largest error it can have.

    Moving every value to its bin's left edge changes each sample's distribution by at most one bin
    width in Wasserstein distance, so the estimate is within ``2 * width`` of the exact value.
    """
    lo = min(ref.min(), cur.min())
    hi = max(ref.max(), cur.max())
    if hi == lo:
        return 0.0, 0.0
    width = (hi - lo) / bins
    ha = np.bincount(np.minimum(((ref - lo) / width).astype(np.int64), bins - 1), minlength=bins)
    hb = np.bincount(np.minimum(((cur - lo) / width).astype(np.int64), bins - 1), minlength=bins)
    cdf_gap = np.abs(np.cumsum(ha) / len(ref) - np.cumsum(hb) / len(cur))
    return float(cdf_gap[:-1].sum() * width), 2 * width


def normed_wasserstein(ref: np.ndarray, cur: np.ndarray, threshold: float) -> float:
    scale = _scale(ref)
    if len(ref) + len(cur) < 20_000:
        return wasserstein_exact(ref, cur) / scale
    estimate, error = wasserstein_binned(ref, cur)
    if abs(estimate / scale - threshold) <= error / scale:  # the binning could decide: be exact
        return wasserstein_exact(ref, cur) / scale
    return estimate / scale


def ks_pvalue(ref: np.ndarray, cur: np.ndarray) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(ref, cur)[1])


# --- categorical distances ---------------------------------------------------------------------


def _counts(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray, list]:
    ref_counts = reference.value_counts()
    cur_counts = current.value_counts()
    keys = list(ref_counts.index.union(cur_counts.index))
    return (
        ref_counts.reindex(keys, fill_value=0).to_numpy(dtype="float64"),
        cur_counts.reindex(keys, fill_value=0).to_numpy(dtype="float64"),
        keys,
    )


def jensenshannon_distance(reference: pd.Series, current: pd.Series) -> float:
    from scipy.spatial.distance import jensenshannon

    ref, cur, _ = _counts(reference, current)
    return float(jensenshannon(ref / len(reference), cur / len(current)))


def chisquare_pvalue(reference: pd.Series, current: pd.Series) -> float:
    from scipy.stats import chisquare

    ref, cur, _ = _counts(reference, current)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(chisquare(cur, ref * (len(current) / len(reference)))[1])


def z_pvalue(reference: pd.Series, current: pd.Series) -> float:
    """Two-proportion Z-test on a column with two values."""
    from scipy.stats import norm

    keys = sorted(set(reference.unique()) | set(current.unique()))
    if len(keys) == 1:
        return 1.0
    p1 = float((reference != keys[0]).mean())
    p2 = float((current != keys[0]).mean())
    n1, n2 = len(reference), len(current)
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    denom = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if denom == 0:
        return 1.0
    return float(2 * (1 - norm.cdf(abs((p1 - p2) / denom))))


def psi(reference: pd.Series, current: pd.Series, kind: str, bins: int = 10) -> float:
    """Population stability index (reference-quantile-free: Sturges bins on the combined sample for
    numeric columns with many values, value counts otherwise; empty cells get a small floor)."""
    if kind == "numeric" and reference.nunique() > 20:
        edges = np.histogram_bin_edges(np.concatenate([reference.to_numpy(), current.to_numpy()]), bins="sturges")
        ref = np.histogram(reference, edges)[0] / len(reference)
        cur = np.histogram(current, edges)[0] / len(current)
    else:
        r, c, _ = _counts(reference, current)
        ref, cur = r / len(reference), c / len(current)
    for p in (ref, cur):
        smallest = p[p > 0].min()
        p[p == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return float(np.sum((ref - cur) * np.log(ref / cur)))


# --- entry points --------------------------------------------------------------------------------


def column_drift(
    reference: pd.Series,
    current: pd.Series,
    *,
    column: str | None = None,
    kind: Literal["numeric", "categorical"] | None = None,
    method: Method = "auto",
    threshold: float | None = None,
    value_range: tuple[float | None, float | None] | None = None,
) -> ColumnDrift:
    """Drift of one column. ``kind`` defaults to ``infer_kind(reference)``; numeric values outside
    ``value_range`` (the spec's checks) are left out and counted, like non-finite ones."""
    name = column or str(reference.name)
    kind = kind or infer_kind(reference)
    ref_side, cur_side = _clean(reference, kind, value_range), _clean(current, kind, value_range)
    ref, cur = ref_side.values, cur_side.values
    if ref.empty or cur.empty:
        raise ValueError(f"column '{name}': no non-missing values in the {'reference' if ref.empty else 'current'} data")
    chosen = choose_method(ref, cur, kind) if method == "auto" else method
    limit = THRESHOLDS[chosen] if threshold is None else threshold
    if chosen == "wasserstein":
        score = normed_wasserstein(ref.to_numpy(dtype="float64"), cur.to_numpy(dtype="float64"), limit)
    elif chosen == "ks":
        score = ks_pvalue(ref.to_numpy(dtype="float64"), cur.to_numpy(dtype="float64"))
    elif chosen == "jensenshannon":
        score = jensenshannon_distance(ref, cur)
    elif chosen == "chisquare":
        score = chisquare_pvalue(ref, cur)
    elif chosen == "z":
        score = z_pvalue(ref, cur)
    elif chosen == "psi":
        score = psi(ref, cur, kind)
    else:
        raise ValueError(f"unknown drift method {chosen!r}")
    if chosen == "ks":
        drifted = score <= limit
    elif chosen in P_VALUE_TESTS:
        drifted = score < limit
    else:
        drifted = score >= limit
    return ColumnDrift(
        column=name,
        kind=kind,
        method=chosen,
        score=score,
        threshold=limit,
        drifted=bool(drifted),
        reference_rows=len(ref),
        current_rows=len(cur),
        reference_missing_share=ref_side.missing_share,
        current_missing_share=cur_side.missing_share,
        constant_reference=bool(kind == "numeric" and np.ptp(ref.to_numpy(dtype="float64")) == 0),
        **_excluded(ref_side, cur_side),
    )


def _excluded(ref: Cleaned, cur: Cleaned) -> dict[str, int]:
    return {
        "reference_non_finite": ref.non_finite,
        "current_non_finite": cur.non_finite,
        "reference_out_of_range": ref.out_of_range,
        "current_out_of_range": cur.out_of_range,
        "reference_not_numeric": ref.not_numeric,
        "current_not_numeric": cur.not_numeric,
    }


def dataset_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str] | None = None,
    *,
    categorical: list[str] | None = None,
    method: Method = "auto",
    drift_share: float = 0.5,
    ranges: dict[str, tuple[float | None, float | None]] | None = None,
) -> DatasetDrift:
    """Drift of every column, and whether the share of drifted columns reaches ``drift_share``.
    ``ranges``: the valid range of some numeric columns (the spec's ``checks.ranges``)."""
    columns = list(reference.columns) if columns is None else columns
    categorical = set(categorical or [])
    ranges = ranges or {}
    results = []
    for c in columns:
        kind = "categorical" if c in categorical else infer_kind(reference[c])
        ref, cur = _clean(reference[c], kind, ranges.get(c)), _clean(current[c], kind, ranges.get(c))
        if ref.values.empty or cur.values.empty:  # e.g. a history-based feature on the very first days
            results.append(
                ColumnDrift(
                    c,
                    kind,
                    NOT_TESTED,
                    float("nan"),
                    float("nan"),
                    False,
                    len(ref.values),
                    len(cur.values),
                    ref.missing_share,
                    cur.missing_share,
                    **_excluded(ref, cur),
                )
            )
            continue
        results.append(column_drift(reference[c], current[c], column=c, kind=kind, method=method, value_range=ranges.get(c)))
    return DatasetDrift(columns=results, drift_share=drift_share)
