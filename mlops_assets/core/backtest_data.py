"""A spec's whole history as model inputs, built the way the platform builds them, without the platform.

The backtest fits hundreds of models over years of days; going through Dagster, Feast and MLflow
for each would take hours. This module computes what the training set holds for every event, with
the same recipes the platform's assets call (``core.validation`` for typing and the blocking
checks, ``core.features`` for row features, past rates and lookups, ``core.training`` for the
model's columns), and joins them the way Feast's point-in-time join does:

* a past rate of day *d* is the snapshot computed from the ``window_days`` labelled days before *d*
  (the ``<spec>/features`` partition of *d*, reading as far back as ``lookback_days``); every event
  of *d* gets its own day's snapshot;
* a lookup with a timestamp gives each event the newest row at or before the event, no older than
  ``ttl_hours``; a static lookup joins on its key alone;
* derived features (``years_since``) are computed after the join, as ``<spec>/training_set`` does.

A day the dataset's blocking checks reject never reaches features, training or scoring in the
platform, so it is left out here too (and listed). ``mlops_assets_tests/test_backtest.py`` checks
that these inputs equal the training set Feast builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from mlops_assets.core.features import add_derived, lookup_frame, past_rate, row_features
from mlops_assets.core.names import EVENT_ID, EVENT_TS, LABEL
from mlops_assets.core.sources import DataError, read_table, split_days
from mlops_assets.core.training import feature_frame
from mlops_assets.core.validation import clean_events, dataset_checks, find_duplicates, without_duplicates
from mlops_assets.specs import ModelSpec


@dataclass
class Day:
    """One accepted day: the model's inputs, the labels, and the event times (rows in time order)."""

    X: pd.DataFrame
    y: np.ndarray


@dataclass
class History:
    """Every accepted day of a spec's source, in order, and the days the platform would reject."""

    days: dict[date, Day]
    rejected: dict[date, str] = field(default_factory=dict)

    @property
    def dates(self) -> list[date]:
        return list(self.days)


def _accepted(raw: pd.DataFrame, spec: ModelSpec, day: date) -> tuple[pd.DataFrame | None, str | None]:
    """The day's typed events as ``<spec>/dataset`` writes them, or why its blocking checks reject it."""
    found = find_duplicates(raw)
    if found.count:
        if spec.checks.duplicates != "drop":
            return None, f"{found.count} duplicate events (checks.duplicates: block)"
        raw = without_duplicates(raw, found)
    try:
        events = clean_events(raw.reset_index(drop=True), spec, day, f"{spec.source.path} {day}")
    except DataError as exc:
        return None, str(exc)
    failed = [o for o in dataset_checks(events, spec) if not o.passed]
    if failed:
        return None, "; ".join(_why(o) for o in failed)
    return events, None


def _why(outcome) -> str:
    """A failed check as the report names it: the rule, and what broke it (the check's metadata,
    e.g. ``nulls: pressure: 62.5% > 50.0%``), not only what the rule is."""
    found = [f"{k}: {v}" for k, v in outcome.metadata.items() if v not in (None, "none") and k != "policy"]
    return f"{outcome.name} ({outcome.description.rstrip('.')}): {'; '.join(found)}"


def _join_lookups(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    for name, table in spec.lookups.items():
        wanted = list(dict.fromkeys(f.source for f in spec.lookup_features if f.table == name))
        if not wanted:
            continue
        side = lookup_frame(name, table, spec)[[table.join_entity, EVENT_TS, *wanted]]
        entity = table.join_entity
        if table.timestamp is None:
            side = side.drop(columns=[EVENT_TS]).drop_duplicates(entity, keep="last")
            frame = frame.merge(side, on=entity, how="left")
            continue
        left = frame.assign(_order=np.arange(len(frame)), _ts=frame[EVENT_TS].astype("datetime64[us, UTC]"))
        right = side.rename(columns={EVENT_TS: "_ts"}).sort_values("_ts", kind="stable")
        joined = pd.merge_asof(
            left.sort_values("_ts", kind="stable"),
            right,
            on="_ts",
            by=entity,
            direction="backward",
            tolerance=pd.Timedelta(hours=table.ttl_hours),
        )
        frame = joined.sort_values("_order", kind="stable").drop(columns=["_order", "_ts"]).reset_index(drop=True)
    renames = {f.source: f.name for f in spec.lookup_features if f.source != f.name}
    return frame.rename(columns=renames)


def _with_past_rates(events: pd.DataFrame, history: pd.DataFrame, spec: ModelSpec, day: date) -> pd.DataFrame:
    tz = spec.source.timestamp.timezone
    for f in spec.past_rate_features:
        table = past_rate(history, events, f, day, tz)[[*f.by, f.name]]
        events = events.merge(table, on=f.by, how="left")
    return events


def load_history(spec: ModelSpec, start: date | None = None, end: date | None = None) -> History:
    """The spec's days from ``start`` (default: ``partitions.start``) to ``end`` (exclusive; default:
    ``partitions.end`` or the source's last day) as model inputs and labels."""
    ts = spec.source.timestamp
    source = read_table(spec.source.path, spec.source.format, spec.source.csv.options())
    by_day = split_days(source, ts, spec.source.path)
    lo = max(start or spec.partitions.start, spec.partitions.start)
    hi = min(d for d in (end, spec.partitions.end) if d is not None) if (end or spec.partitions.end) else None
    keep = [d for d in sorted(by_day) if d >= lo and (hi is None or d < hi)]
    history_days = spec.past_rate_lookback_days
    # past rates of the first kept day read the days before it, as the platform's would have been ingested
    first_needed = (keep[0] - timedelta(days=history_days)) if keep else None
    accepted: dict[date, pd.DataFrame] = {}
    rejected: dict[date, str] = {}
    for d in sorted(by_day):
        if first_needed is None or d < max(first_needed, spec.partitions.start) or (hi is not None and d >= hi):
            continue
        events, why = _accepted(by_day[d], spec, d)
        if events is None:
            rejected[d] = why
        else:
            accepted[d] = events
    out: dict[date, Day] = {}
    for d in keep:
        if d not in accepted:
            continue
        events = accepted[d]
        if spec.past_rate_features:
            before = [accepted[d - timedelta(days=k)] for k in range(history_days, 0, -1) if d - timedelta(days=k) in accepted]
            history = pd.concat(before, ignore_index=True) if before else events.iloc[0:0]
            events = _with_past_rates(events, history, spec, d)
        events = add_derived(_join_lookups(events, spec), spec)
        rows = row_features(events, spec)  # calendar parts and renamed columns, as the events view stores them
        for c in rows.columns.difference([EVENT_ID, EVENT_TS]):
            events[c] = rows[c].to_numpy()
        out[d] = Day(feature_frame(events, spec), events[LABEL].to_numpy(dtype="float64"))
    return History(out, {d: w for d, w in rejected.items() if d in set(keep)})
