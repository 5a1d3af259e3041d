"""Feature tables, computed one daily partition at a time and written as Feast offline sources.

Three kinds of table come out of a spec:

* **row features** (``<spec>_events``): one row per event, keyed by ``event_id``, stamped with the
  event time. Calendar parts and plain columns.
* **past rates** (one table per ``past_rate`` feature): one row per group per day, stamped with the
  day's start, computed from the previous days only. Feast's point-in-time join then hands every
  event the snapshot of its own day, so no event ever sees its own or a later label.
* **lookups**: side tables (weather, plane registry) keyed by an entity, joined point in time.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from mlops_assets.core.sources import DataError, day_start_utc, event_timestamps, read_table, require_columns
from mlops_assets.core.validation import EVENT_ID, EVENT_TS, LABEL
from mlops_assets.specs import ColumnFeature, LookupTableSpec, ModelSpec, PastRateFeature, TimePartFeature

# The event time of every row of a static lookup table (no timestamp column): valid from the start.
# One second after the epoch, not the epoch: Feast's Redis store answers an unknown key with event
# time 0, which must not look like a known plane (core.serving.feast_unknown_mask).
STATIC_TIMESTAMP = pd.Timestamp("1970-01-01 00:00:01", tz="UTC")


def _time_part(ts_local: pd.Series, part: str) -> pd.Series:
    if part == "minute_of_day":
        return (ts_local.dt.hour * 60 + ts_local.dt.minute).astype("float64")
    return getattr(ts_local.dt, part).astype("float64")


def row_feature_columns(spec: ModelSpec) -> list[str]:
    """Row features stored in the events table. Entity columns are not stored there: Feast passes
    them through from the entity frame, and a feature named like a join key would collide."""
    return [f.name for f in spec.row_features if f.name not in spec.entities]


def row_features(dataset: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    tz = spec.source.timestamp.timezone
    local = dataset[EVENT_TS].dt.tz_convert(tz)
    out = pd.DataFrame({EVENT_ID: dataset[EVENT_ID], EVENT_TS: dataset[EVENT_TS]})
    for f in spec.row_features:
        if f.name in spec.entities:
            continue
        if isinstance(f, TimePartFeature):
            values = _time_part(local, f.part)
            out[f.name] = values.astype(str) if f.type == "categorical" else values
        elif isinstance(f, ColumnFeature):
            out[f.name] = dataset[f.source]
    return out


def past_rate(history: pd.DataFrame, today: pd.DataFrame, feature: PastRateFeature, day: date, timezone: str) -> pd.DataFrame:
    """Smoothed mean label per group over the ``window_days`` before ``day``.

    ``history`` holds labelled events of earlier days (any span; it is cut to the window here);
    ``today`` contributes only its group keys, so groups first seen today still get the prior
    instead of a missing value. The snapshot is stamped with the start of ``day``.
    """
    start = day_start_utc(day, timezone)
    window_start = start - pd.Timedelta(days=feature.window_days)
    past = history[(history[EVENT_TS] >= window_start) & (history[EVENT_TS] < start)]
    prior = float(past[LABEL].mean()) if len(past) else np.nan
    stats = past.groupby(feature.by, dropna=False)[LABEL].agg(["sum", "count"]).reset_index()
    groups = pd.concat([stats[feature.by], today[feature.by]]).drop_duplicates()
    out = groups.merge(stats, on=feature.by, how="left").fillna({"sum": 0.0, "count": 0.0})
    k = feature.prior_weight
    if k > 0:
        out[feature.name] = (out["sum"] + k * prior) / (out["count"] + k)
    else:
        out[feature.name] = (out["sum"] / out["count"].where(out["count"] > 0)).fillna(prior)
    out[f"{feature.name}_count"] = out["count"].astype("float64")
    out[EVENT_TS] = start.as_unit("us")
    return out.drop(columns=["sum", "count"]).reset_index(drop=True)


def lookup_frame(name: str, table: LookupTableSpec, spec: ModelSpec) -> pd.DataFrame:
    """A lookup table ready for Feast: entity key as text, a UTC timestamp, renamed numeric columns."""
    where = f"lookups.{name} ({table.path})"
    raw = read_table(table.path, table.format)
    ts_cols = table.timestamp.source_columns if table.timestamp else []
    require_columns(raw, [table.key, *ts_cols, *table.columns], where, spec.name)
    out = pd.DataFrame({table.join_entity: raw[table.key].astype("string").fillna("").astype(object)})
    if table.timestamp:
        t = table.timestamp
        out[EVENT_TS] = event_timestamps(raw, t.column, t.parts, t.timezone, where)
    else:
        out[EVENT_TS] = STATIC_TIMESTAMP.as_unit("us")
    for col in table.columns:
        values = pd.to_numeric(raw[col], errors="coerce")
        if (values.isna() & raw[col].notna()).any():
            raise DataError(f"{where}: column '{col}' is not numeric; lookup features must be numbers")
        out[table.rename.get(col, col)] = values.astype("float64")
    out[EVENT_TS] = out[EVENT_TS].astype("datetime64[us, UTC]")
    return out.drop_duplicates([table.join_entity, EVENT_TS], keep="last").reset_index(drop=True)


def add_derived(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Features computed after the point-in-time join (e.g. plane age from the year it was built)."""
    tz = spec.source.timestamp.timezone
    for f in spec.derived_features:
        year = frame[EVENT_TS].dt.tz_convert(tz).dt.year.astype("float64")
        frame[f.name] = year - frame[f.of]
    return frame
