"""From a landed file to a typed dataset, and the rules that dataset must meet.

``clean_events`` types a raw frame and derives the label; ``dataset_checks`` evaluates the spec's
blocking rules. Both work on one daily partition at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.core.names import EVENT_ID, EVENT_TS, LABEL
from mlops_assets.core.sources import DataError, event_timestamps, local_dates, require_columns
from mlops_assets.specs import ColumnFeature, ModelSpec


def numeric_columns(spec: ModelSpec) -> list[str]:
    cols = [f.source for f in spec.row_features if isinstance(f, ColumnFeature) and f.type == "numeric"]
    cols += [c for c in spec.checks.ranges if c not in cols]
    if spec.target.task == "regression" or "greater_than" in (spec.target.positive or {}):
        cols.append(spec.target.column)
    return list(dict.fromkeys(cols))


def categorical_columns(spec: ModelSpec) -> list[str]:
    cols = [f.source for f in spec.row_features if isinstance(f, ColumnFeature) and f.type == "categorical"]
    return list(dict.fromkeys([*spec.entities, *cols]))


def derive_label(target: pd.Series, spec: ModelSpec) -> pd.Series:
    """The model's label from the raw target column, applying the spec's missing-target rule."""
    t = spec.target
    if t.task == "regression":
        return target.astype("float64")
    ((op, value),) = t.positive.items()  # type: ignore[union-attr]
    positive = target > float(value) if op == "greater_than" else target.astype("string") == str(value)
    label = positive.astype("float64")
    label[target.isna()] = {"positive": 1.0, "negative": 0.0, "drop": np.nan}[t.missing]
    return label


def labels_pending(raw: pd.DataFrame, spec: ModelSpec) -> bool:
    """A file whose target column is entirely empty, for a spec whose labels arrive late, holds
    events whose labels are still to come (not events with a missing target)."""
    return spec.target.label_delay_days > 0 and len(raw) > 0 and bool(raw[spec.target.column].isna().all())


def clean_events(raw: pd.DataFrame, spec: ModelSpec, day: date, where: str) -> pd.DataFrame:
    """Type one day of landed events.

    Raises ``DataError`` (naming ``where``, the column and the first bad row) for missing columns,
    unreadable numbers or timestamps, and rows that do not belong to ``day``. Rows whose target is
    missing are kept or dropped as the spec says.
    """
    require_columns(raw, spec.required_source_columns, where, spec.name)
    ts_spec = spec.source.timestamp
    ts = event_timestamps(raw, ts_spec.column, ts_spec.parts, ts_spec.timezone, where)
    wrong_day = (local_dates(ts, ts_spec.timezone) != day).to_numpy()
    if wrong_day.any():
        i = int(wrong_day.nonzero()[0][0])
        raise DataError(f"{where}: row {i + 1}: event at {ts.iloc[i]} is not on {day} ({wrong_day.sum()} such rows)")

    out = pd.DataFrame(index=raw.index)
    for col in numeric_columns(spec):
        if col not in raw.columns:
            continue
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = values.isna() & raw[col].notna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{where}: column '{col}' row {i + 1}: {raw[col].iloc[i]!r} is not a number ({int(bad.sum())} such rows)"
            )
        out[col] = values.astype("float64")
    for col in categorical_columns(spec):
        out[col] = raw[col].astype("string").fillna("").astype(object)
    if spec.target.column not in out.columns:
        out[spec.target.column] = raw[spec.target.column]
    out[EVENT_TS] = ts
    pending = labels_pending(raw, spec)
    # the day's labels come later (target.label_delay_days): keep the events, unlabelled
    out[LABEL] = np.nan if pending else derive_label(out[spec.target.column], spec)
    out = out.sort_values(EVENT_TS, kind="stable").reset_index(drop=True)
    # Ids before any row is dropped: the same event keeps its id when its day lands again with labels.
    out.insert(0, EVENT_ID, [f"{day.isoformat()}-{i:06d}" for i in range(len(out))])
    return out if pending else out[out[LABEL].notna()].reset_index(drop=True)


@dataclass(frozen=True)
class CheckOutcome:
    """One rule's verdict on one partition, with what a person needs to see why."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def dataset_checks(df: pd.DataFrame, spec: ModelSpec) -> list[CheckOutcome]:
    """Schema, null, range and row-count rules of the spec, evaluated on a typed partition."""
    c = spec.checks
    expected = [EVENT_ID, EVENT_TS, LABEL, *numeric_columns(spec), *categorical_columns(spec)]
    missing = [col for col in expected if col not in df.columns]
    wrong = [col for col in numeric_columns(spec) if col in df.columns and not pd.api.types.is_float_dtype(df[col])]
    schema = CheckOutcome(
        "schema",
        not missing and not wrong,
        "Typed columns the spec expects are present with numeric dtypes where declared numeric.",
        {"missing_columns": ", ".join(missing) or "none", "non_numeric_columns": ", ".join(wrong) or "none"},
    )

    null_rows, worst = [], 0.0
    for col in [*numeric_columns(spec), *categorical_columns(spec)]:
        if col not in df.columns:
            continue
        values = df[col]
        share = float((values.isna() | (values.astype(str) == "")).mean()) if len(df) else 0.0
        limit = c.null_fraction.get(col, c.max_null_fraction)
        if share > limit:
            null_rows.append(f"{col}: {share:.1%} > {limit:.1%}")
        worst = max(worst, share)
    nulls = CheckOutcome(
        "nulls",
        not null_rows,
        "Share of missing values per column within the spec's limits.",
        {"violations": "; ".join(null_rows) or "none", "max_null_fraction_seen": round(worst, 4)},
    )

    range_rows = []
    for col, (lo, hi) in c.ranges.items():
        if col not in df.columns:
            continue
        v = df[col].dropna()
        below = (v < lo) if lo is not None else pd.Series(False, index=v.index)
        above = (v > hi) if hi is not None else pd.Series(False, index=v.index)
        n_bad = int((below | above).sum())
        if n_bad:
            range_rows.append(f"{col}: {n_bad} values outside [{lo}, {hi}] (min {v.min():g}, max {v.max():g})")
    ranges = CheckOutcome(
        "ranges",
        not range_rows,
        "Numeric columns stay within the spec's declared ranges.",
        {"violations": "; ".join(range_rows) or "none", "columns_checked": len(c.ranges)},
    )

    rows = CheckOutcome(
        "row_count",
        len(df) >= c.min_rows,
        f"At least {c.min_rows} rows in the partition.",
        {"rows": len(df), "min_rows": c.min_rows},
    )
    return [schema, nulls, ranges, rows]
