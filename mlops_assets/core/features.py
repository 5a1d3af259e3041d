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

from mlops_assets.core.sources import DataError, day_start_utc, read_table, require_columns, spec_timestamps
from mlops_assets.core.validation import EVENT_ID, EVENT_TS, LABEL
from mlops_assets.specs import ColumnFeature, LookupTableSpec, ModelSpec, PastRateFeature, TimePartFeature

# The event time of every row of a static lookup table (no timestamp column): valid from the start.
# One second after the epoch, not the epoch: Feast's Redis store answers an unknown key with event
# time 0, which must not look like a known plane (core.serving.feast_unknown_mask).
STATIC_TIMESTAMP = pd.Timestamp("1970-01-01 00:00:01", tz="UTC")


# --- one recipe per feature: training (row_features, add_derived, core.training.feature_frame) and
# serving (core.serving.build_features) call these same functions, so what the model sees for an
# event does not depend on the path it came by (mlops_assets_tests/test_feature_parity.py).

MISSING_CATEGORY = ""
"""A missing categorical value or entity key, on every path: ingest types text columns with
``fillna("")`` (core.validation.clean_events), so a request's ``null`` is this too; the model's
encoder sees it as one more category and the online store keys such rows under it."""

PRIOR_KEY = "<prior>"
"""The reserved entity key under which each past-rate table carries its prior (the label mean over
the window), for every column of its ``by``. Training gives a group with no history exactly this
prior (the shrinkage with count 0); the server looks it up for a key the online store has never
seen, so an unknown entity gets the value training would have given it. No real key looks like it."""


def _time_part(ts_local, part: str) -> np.ndarray:
    if isinstance(ts_local, pd.Series):
        ts_local = pd.DatetimeIndex(ts_local)
    if part == "minute_of_day":
        return (ts_local.hour * 60 + ts_local.minute).to_numpy(dtype="float64")
    return np.asarray(getattr(ts_local, part), dtype="float64")


def time_part(ts_utc, feature: TimePartFeature, timezone: str) -> np.ndarray:
    """A calendar part of each event time, in the spec's timezone, with the model's dtype: float64,
    or its text (``"9.0"``) when the spec declares the part categorical."""
    local = pd.DatetimeIndex(ts_utc).tz_convert(timezone)
    values = _time_part(local, feature.part)
    return values.astype(str).astype(object) if feature.type == "categorical" else values


def years_since(ts_utc, of_values, timezone: str) -> np.ndarray:
    """Years between the event's local calendar year and a looked-up year (plane age from the year
    it was built); missing when the year is."""
    year = pd.DatetimeIndex(ts_utc).tz_convert(timezone).year.to_numpy(dtype="float64")
    return year - np.asarray(of_values, dtype="float64")


def categorical_column(values) -> np.ndarray:
    """Text as the model gets it: object strings, a missing value as ``MISSING_CATEGORY`` (the
    pandas ``string`` conversion training applies, so numbers become their text the same way)."""
    if isinstance(values, list) and all(type(v) is str for v in values):  # the server's common case
        return np.array(values, dtype=object)
    if isinstance(values, np.ndarray) and values.dtype == object and all(type(v) is str for v in values):
        return values
    return pd.Series(values, dtype="object").astype("string").fillna(MISSING_CATEGORY).to_numpy(dtype=object)


def numeric_column(values) -> np.ndarray:
    """Numbers as the model gets them: float64, a missing value as NaN (the pipeline imputes it)."""
    return np.asarray(values, dtype="float64")


def model_columns(columns, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's input columns, spec order and dtypes, from any mapping of feature -> values
    (a joined training frame or the server's computed columns)."""
    cats = set(spec.categorical_features)
    return {
        name: categorical_column(columns[name]) if name in cats else numeric_column(columns[name]) for name in spec.feature_names
    }


def row_feature_columns(spec: ModelSpec) -> list[str]:
    """Row features stored in the events table. Entity columns are not stored there: Feast passes
    them through from the entity frame, and a feature named like a join key would collide."""
    return [f.name for f in spec.row_features if f.name not in spec.entities]


def row_features(dataset: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    tz = spec.source.timestamp.timezone
    out = pd.DataFrame({EVENT_ID: dataset[EVENT_ID], EVENT_TS: dataset[EVENT_TS]})
    for f in spec.row_features:
        if f.name in spec.entities:
            continue
        if isinstance(f, TimePartFeature):
            out[f.name] = time_part(dataset[EVENT_TS], f, tz)
        elif isinstance(f, ColumnFeature):
            out[f.name] = dataset[f.source]
    return out


def past_rate(history: pd.DataFrame, today: pd.DataFrame, feature: PastRateFeature, day: date, timezone: str) -> pd.DataFrame:
    """Smoothed mean label per group over the ``window_days`` before ``day``.

    Days without a labelled event do not count: the window is the newest ``window_days`` days
    before ``day`` that have labels, within ``feature.lookback_days`` (``window_start``). ``history``
    holds events of earlier days (any span; it is cut to the window here);
    ``today`` contributes only its group keys, so groups first seen today still get the prior
    instead of a missing value. The snapshot is stamped with the start of ``day``; the prior (the
    window's label mean, what a group without history gets) is stored as a row by ``past_rate_table``.
    """
    return _past_rate(history, today, feature, day, timezone)[0]


def _past_rate(
    history: pd.DataFrame, today: pd.DataFrame, feature: PastRateFeature, day: date, timezone: str
) -> tuple[pd.DataFrame, float]:
    start = day_start_utc(day, timezone)
    past = history[(history[EVENT_TS] >= window_start(history, feature, start)) & (history[EVENT_TS] < start)]
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
    return out.drop(columns=["sum", "count"]).reset_index(drop=True), prior


def window_start(history: pd.DataFrame, feature: PastRateFeature, start: pd.Timestamp) -> pd.Timestamp:
    """Where a past rate's window begins for the day that begins at ``start``: ``window_days`` days
    of 24 hours before it, pushed back one day for each of those days without a labelled event in
    ``history``, at most ``lookback_days`` before ``start``. With a label every day it is
    ``start - window_days``: a day missing or refused by the checks no longer leaves the next days'
    rates (a level read from yesterday) missing, while a longer outage still does."""
    days = feature.lookback_days
    earliest = start - pd.Timedelta(days=days)
    labelled = history[EVENT_TS][history[LABEL].notna() & (history[EVENT_TS] >= earliest) & (history[EVENT_TS] < start)]
    # the day (1 = the day before ``start``, up to ``days``) each labelled event falls in
    ago = np.ceil((start - labelled).to_numpy() / np.timedelta64(1, "D")).astype(int)
    present = np.unique(ago)  # ascending: the newest days first
    if len(present) < feature.window_days:
        return earliest  # fewer labelled days than the window holds: all of them (none: the prior)
    return start - pd.Timedelta(days=int(present[feature.window_days - 1]))


def past_rate_table(
    history: pd.DataFrame, today: pd.DataFrame, feature: PastRateFeature, day: date, timezone: str
) -> pd.DataFrame:
    """A day's past-rate feature table as the offline and online stores hold it: ``past_rate``'s
    rows, then the prior itself under ``PRIOR_KEY`` (count 0, the same day stamp). Training never
    joins that row (no event has the key); the server reads it for a group it never saw
    (``server.runtime.feast_online_lookup``), and so gives it what training gives a group without
    history."""
    out, prior = _past_rate(history, today, feature, day, timezone)
    row = {**dict.fromkeys(feature.by, PRIOR_KEY), feature.name: prior, f"{feature.name}_count": 0.0}
    row[EVENT_TS] = day_start_utc(day, timezone).as_unit("us")
    prior_frame = pd.DataFrame({c: [row[c]] for c in out.columns}).astype(out.dtypes.to_dict())
    return pd.concat([out, prior_frame], ignore_index=True)


def lookup_frame(name: str, table: LookupTableSpec, spec: ModelSpec) -> pd.DataFrame:
    """A lookup table ready for Feast: entity key as text, a UTC timestamp, renamed numeric columns."""
    where = f"lookups.{name} ({table.path})"
    raw = read_table(table.path, table.format, table.csv.options())
    ts_cols = table.timestamp.source_columns if table.timestamp else []
    require_columns(raw, [table.key, *ts_cols, *table.columns], where, spec.name)
    out = pd.DataFrame({table.join_entity: raw[table.key].astype("string").fillna("").astype(object)})
    if table.timestamp:
        t = table.timestamp
        out[EVENT_TS] = spec_timestamps(raw, t, where)
    else:
        out[EVENT_TS] = STATIC_TIMESTAMP.as_unit("us")
    for col in table.columns:
        values = pd.to_numeric(raw[col], errors="coerce")
        if (values.isna() & raw[col].notna()).any():
            raise DataError(f"{where}: column '{col}' is not numeric; lookup features must be numbers")
        out[table.rename.get(col, col)] = values.astype("float64")
    out[EVENT_TS] = out[EVENT_TS].astype("datetime64[us, UTC]")
    return out.drop_duplicates([table.join_entity, EVENT_TS], keep="last").reset_index(drop=True)


def lookup_rows_as_of(snapshot: pd.DataFrame, table: LookupTableSpec, as_of: pd.Timestamp) -> pd.DataFrame:
    """Per key of a timestamped lookup (a ``lookup_frame``), the row Feast's point-in-time join gives
    an event at ``as_of``: the newest observation at or before it, no older than ``ttl_hours``. A key
    seen before but with no observation that recent gets its values missing, stamped ``as_of``, as
    the join leaves them missing: the online store must not keep serving a value training would not
    have had. What ``online_lookups`` writes online, so a request is served the lookup its event
    time joins offline."""
    key = table.join_entity
    as_of = pd.Timestamp(as_of).tz_convert("UTC")
    ts = snapshot[EVENT_TS]
    seen = snapshot[ts <= as_of]
    fresh = seen[seen[EVENT_TS] >= as_of - pd.Timedelta(hours=table.ttl_hours)]
    latest = fresh.sort_values(EVENT_TS, kind="stable").groupby(key, sort=False).tail(1)
    stale = pd.Index(seen[key].unique()).difference(pd.Index(latest[key]))
    filler = pd.DataFrame({key: list(stale)}, dtype=object)
    filler[EVENT_TS] = pd.Series([as_of] * len(stale), dtype=snapshot[EVENT_TS].dtype)
    for col in snapshot.columns.difference([key, EVENT_TS]):
        filler[col] = pd.Series([float("nan")] * len(stale), dtype="float64")
    out = pd.concat([latest, filler[snapshot.columns]], ignore_index=True) if len(stale) else latest
    return out.sort_values(key, kind="stable").reset_index(drop=True)


def add_derived(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Features computed after the point-in-time join (e.g. plane age from the year it was built)."""
    tz = spec.source.timestamp.timezone
    for f in spec.derived_features:
        frame[f.name] = years_since(frame[EVENT_TS], frame[f.of], tz)
    return frame
