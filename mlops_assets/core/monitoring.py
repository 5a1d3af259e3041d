"""Monitoring a scored day against the champion's training reference: feature drift, prediction
drift and (once labels are known) performance. Each verdict is a ``CheckOutcome``; one that could
not be judged (too few rows, an undefined metric) has ``passed`` None and says why in its description.

Served rows are whatever callers sent: values no statistic can take (+-inf, 1e308, text in a
numeric column, values outside the spec's ``checks.ranges``) are left out of the statistics and
counted per column in the verdict's metadata and table (``core.drift``), never a reason for a scoring
run to fail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops_assets.core.drift import MAX_MAGNITUDE, NOT_TESTED, P_VALUE_TESTS, ColumnDrift, column_drift, dataset_drift
from mlops_assets.core.validation import CheckOutcome
from mlops_assets.specs import ModelSpec

LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}
TABLE_COLUMNS = ["column", "method", "score", "threshold", "drifted", "current_missing_share", "constant_reference"]
# the current window's values left out of the statistics, per kind (``core.drift``)
EXCLUDED_COLUMNS = ["current_non_finite", "current_out_of_range", "current_not_numeric"]

# Numeric metadata is what Dagster charts over partitions: only figures measured on the window. The
# policy a verdict applied (limits, thresholds, minimums: constant settings) is one text entry.


def drift_strength(col: ColumnDrift) -> float:
    """How far past its threshold a column is, on one scale for every test: > 1 means drifted.
    Distances are divided by their threshold; p-values give threshold / p (capped at 100)."""
    if col.method == NOT_TESTED:
        return 0.0
    if col.method in P_VALUE_TESTS:
        return min(col.threshold / max(col.score, 1e-300), 100.0)
    return col.score / col.threshold


def feature_drift(reference: pd.DataFrame, today: pd.DataFrame, spec: ModelSpec) -> tuple[CheckOutcome, pd.DataFrame]:
    """Per-feature drift of the day against the reference, and whether the drifted share reaches the
    policy's ``drift_share``. Returns the outcome and the per-feature table (for metadata and plots)."""
    policy = spec.policies.drift
    if len(today) < policy.min_rows:
        return _not_judged("feature_drift", len(today), policy.min_rows), pd.DataFrame()
    result = dataset_drift(
        reference,
        today,
        spec.feature_names,
        categorical=spec.categorical_features,
        method=policy.method,
        drift_share=policy.drift_share,
        ranges={c: r for c, r in spec.checks.ranges.items() if c in spec.feature_names},
    )
    table = result.table()[[*TABLE_COLUMNS, *EXCLUDED_COLUMNS]]
    table.insert(4, "strength", [drift_strength(c) for c in result.columns])
    drifted = table.loc[table["drifted"], "column"].tolist()
    untested = table.loc[table["method"] == NOT_TESTED, "column"].tolist()
    excluded = {c.column: c.excluded for c in result.columns if c.excluded}
    outcome = CheckOutcome(
        "feature_drift",
        not result.drifted,
        f"{len(drifted)} of {len(table) - len(untested)} tested features drifted (share {result.drifted_share:.2f}, "
        f"limit {policy.drift_share:.2f}){': ' + ', '.join(drifted) if drifted else ''}.",
        {
            "drifted_share": result.drifted_share,
            "drifted_features": ", ".join(drifted) or "none",
            "untested_features": ", ".join(untested) or "none",
            "rows": len(today),
            "reference_rows": len(reference),
            "excluded_values": sum(excluded.values()),
            "excluded_by_feature": ", ".join(f"{c}: {n}" for c, n in excluded.items()) or "none",
            "policy": f"{policy.method} per feature; drifted when a share >= {policy.drift_share:g} of the tested "
            f"features drift; judged on >= {policy.min_rows} rows",
        },
    )
    return outcome, table


def prediction_drift(reference_scores: np.ndarray, today_scores: np.ndarray, spec: ModelSpec) -> CheckOutcome:
    """Drift of the model's output distribution: the earliest sign that inputs moved in a way that
    matters to this model, available before any label arrives."""
    policy = spec.policies.drift
    today_scores = np.asarray(pd.to_numeric(pd.Series(today_scores), errors="coerce"), dtype="float64")
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(today_scores) & (np.abs(today_scores) <= MAX_MAGNITUDE)
    if finite.sum() < policy.min_rows:
        outcome = _not_judged("prediction_drift", int(finite.sum()), policy.min_rows, what="finite scores")
        outcome.metadata["excluded_scores"] = int((~finite).sum())
        return outcome
    col = column_drift(pd.Series(reference_scores, name="score"), pd.Series(today_scores, name="score"), kind="numeric")
    today_scores = today_scores[finite]
    return CheckOutcome(
        "prediction_drift",
        not col.drifted,
        f"score distribution {'drifted' if col.drifted else 'stable'}: {col.method} {col.score:.4g} (threshold {col.threshold}).",
        {
            "method": col.method,
            "score": col.score,
            "policy": f"{col.method} on the scores, drifted beyond {col.threshold:g}; judged on >= {policy.min_rows} finite scores",
            "mean_score": float(np.mean(today_scores)),
            "reference_mean_score": float(np.mean(reference_scores)),
            "excluded_scores": int((~finite).sum()),  # non-finite or not numbers: left out
        },
    )


def performance(realised: float | None, labelled_rows: int, reference: float, spec: ModelSpec) -> CheckOutcome:
    """Concept drift: the realised metric against the champion's holdout metric and the tolerated drop."""
    policy, metric = spec.policies.performance, spec.promotion.metric
    if realised is None or labelled_rows < policy.min_rows:
        return _not_judged("performance", labelled_rows, policy.min_rows, what="labelled rows")
    if np.isnan(realised):  # e.g. ROC AUC on a day whose labels are all one class
        return CheckOutcome(
            "performance", None, f"not judged: {metric} is undefined on this day's labels.", {"labelled_rows": labelled_rows}
        )
    drop = (realised - reference) if metric in LOWER_IS_BETTER else (reference - realised)
    tolerated = policy.tolerated_drop * abs(reference) if policy.relative else policy.tolerated_drop
    ok = bool(drop <= tolerated)
    tolerance = f"{policy.tolerated_drop:.0%} of it ({tolerated:.4g})" if policy.relative else f"{tolerated}"
    return CheckOutcome(
        "performance",
        ok,
        f"realised {metric} {realised:.4f} vs champion holdout {reference:.4f}: "
        f"{'within' if ok else 'beyond'} the tolerated drop of {tolerance}.",
        {
            f"realised_{metric}": realised,
            f"reference_{metric}": reference,
            "drop": drop,
            "labelled_rows": labelled_rows,
            "policy": (
                f"tolerated drop {policy.tolerated_drop:.0%} of the champion's holdout {metric} ({tolerated:.4g})"
                if policy.relative
                else f"tolerated drop {tolerated:g} of {metric}"
            )
            + f"; judged on >= {policy.min_rows} labelled rows",
        },
    )


def _not_judged(name: str, rows: int, minimum: int, what: str = "rows") -> CheckOutcome:
    return CheckOutcome(name, None, f"not judged: {rows} {what} (policy minimum {minimum}).", {"rows": rows})
