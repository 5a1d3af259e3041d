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
from mlops_assets.core.sources import DataError, local_dates, require_columns, separators_hint, spec_timestamps
from mlops_assets.specs import ColumnFeature, ModelSpec

MAX_ROWS_NAMED = 10  # rows listed by number in a refusal or a check (the count says how many in all)


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
    label = positive.astype("float64").to_numpy(dtype="float64", copy=True)
    label[target.isna().to_numpy()] = {"positive": 1.0, "negative": 0.0, "drop": np.nan}[t.missing]
    return pd.Series(label, index=target.index, name=target.name)


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
    ts = spec_timestamps(raw, ts_spec, where)
    local = local_dates(ts, ts_spec.timezone)
    wrong_day = (local != day).to_numpy()
    if wrong_day.any():
        rows = wrong_day.nonzero()[0]
        i = int(rows[0])
        listed = ", ".join(f"{int(r) + 1} ({local.iloc[r]})" for r in rows[:MAX_ROWS_NAMED])
        more = f", … {len(rows) - MAX_ROWS_NAMED} more" if len(rows) > MAX_ROWS_NAMED else ""
        raise DataError(
            f"{where}: row {i + 1}: event at {ts.iloc[i]} is not on {day} ({len(rows)} such rows); rows of other days "
            f"(local day in {ts_spec.timezone}): {listed}{more}. A file holds the events of the one day its name says."
        )

    # Built as one frame from its columns, sorted and filtered once: column by column it took twice
    # as long, and it runs for every landed day (raw, dataset, a replay's truth).
    columns: dict[str, Any] = {}
    for col in numeric_columns(spec):
        if col not in raw.columns:
            continue
        values = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        bad = np.isnan(values)
        if bad.any() and (bad := bad & raw[col].notna().to_numpy()).any():
            i = int(bad.nonzero()[0][0])
            written = separators_hint(raw[col])
            hint = f"; numbers written with {written[0]}: {written[1]}" if written else ""
            raise DataError(
                f"{where}: column '{col}' row {i + 1}: {raw[col].iloc[i]!r} is not a number ({int(bad.sum())} such rows){hint}"
            )
        columns[col] = values
    for col in categorical_columns(spec):
        columns[col] = raw[col].astype("string").fillna("").to_numpy(dtype=object)
    if spec.target.column not in columns:
        columns[spec.target.column] = raw[spec.target.column].array
    columns[EVENT_TS] = ts.array
    pending = labels_pending(raw, spec)
    out = pd.DataFrame(columns)
    # the day's labels come later (target.label_delay_days): keep the events, unlabelled
    out[LABEL] = np.nan if pending else derive_label(out[spec.target.column], spec)
    order = np.argsort(ts.array.asi8, kind="stable")
    out = out.take(order).reset_index(drop=True)
    # Ids before any row is dropped: the same event keeps its id when its day lands again with labels.
    out.insert(0, EVENT_ID, [f"{day.isoformat()}-{i:06d}" for i in range(len(out))])
    return out if pending else out[out[LABEL].notna().to_numpy()].reset_index(drop=True)


@dataclass(frozen=True)
class CheckOutcome:
    """One rule's verdict on one partition, with what a person needs to see why.

    ``passed`` is None when the rule could not be judged (too few rows, an undefined metric): that
    is neither a pass nor a failure, and the glue must not report it as either."""

    name: str
    passed: bool | None
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.passed is not None


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
        {"violations": "; ".join(range_rows) or "none", "policy": f"ranges of {len(c.ranges)} columns (checks.ranges)"},
    )

    rows = CheckOutcome(
        "row_count",
        len(df) >= c.min_rows,
        f"At least {c.min_rows} rows in the partition.",
        {"rows": len(df), "policy": f"at least {c.min_rows} rows (checks.min_rows)"},
    )
    return [schema, nulls, ranges, rows]


@dataclass(frozen=True)
class Duplicates:
    """Rows of a landed day that repeat an earlier row of the same file: the same event id, when
    the file carries an ``event_id`` column, else the same values in every column. A file exported
    twice into one (or a retried upload appended) would otherwise count every event twice, and
    pass every other check."""

    repeated: np.ndarray  # one bool per row: True for a row repeating an earlier one
    rule: str

    @property
    def count(self) -> int:
        return int(self.repeated.sum())

    def rows(self) -> list[int]:
        """The 1-based row numbers (after the header) of the first repeated rows."""
        return [int(i) + 1 for i in self.repeated.nonzero()[0][:MAX_ROWS_NAMED]]


def find_duplicates(raw: pd.DataFrame) -> Duplicates:
    """Which rows of one landed day repeat an earlier one (the first occurrence is not counted)."""
    if EVENT_ID in raw.columns:
        ids = raw[EVENT_ID]
        return Duplicates((ids.duplicated(keep="first") & ids.notna()).to_numpy(), f"the same '{EVENT_ID}'")
    return Duplicates(raw.duplicated(keep="first").to_numpy(), "identical in every column")


def without_duplicates(raw: pd.DataFrame, found: Duplicates) -> pd.DataFrame:
    """The rows of ``raw`` that repeat no earlier row, renumbered: ``clean_events`` then gives them the
    event ids a file without the repeats would get."""
    return raw[~found.repeated].reset_index(drop=True)


def duplicates_check(found: Duplicates, spec: ModelSpec, where: str) -> CheckOutcome:
    """The ``duplicates`` rule under the spec's policy (``checks.duplicates``): ``drop`` passes and
    reports what was dropped (the dataset keeps each event once); ``block`` fails the partition."""
    policy = spec.checks.duplicates
    n, rows = found.count, found.rows()
    metadata = {
        "duplicate_rows": n,
        "policy": policy,
        "rule": found.rule,
        "rows": ", ".join(map(str, rows)) + (" …" if n > len(rows) else "") if n else "none",
        "dropped": n if policy == "drop" else 0,
    }
    if not n:
        return CheckOutcome("duplicates", True, f"No event appears twice in {where} ({found.rule}).", metadata)
    listed = ", ".join(map(str, rows)) + (f" and {n - len(rows)} more" if n > len(rows) else "")
    if policy == "drop":
        text = (
            f"Warning: {n} rows of {where} repeat an earlier row ({found.rule}), rows {listed}: dropped, "
            "the first occurrence kept (spec checks.duplicates: drop)."
        )
        return CheckOutcome("duplicates", True, text, metadata)
    text = f"{n} rows of {where} repeat an earlier row ({found.rule}), rows {listed} (spec checks.duplicates: block)."
    return CheckOutcome("duplicates", False, text, metadata)
