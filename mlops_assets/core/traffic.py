"""A replay's endpoint traffic, without HTTP or Dagster: the requests a client of a spec sends for a
day's events, when, and whether a canary could be due for judgement yet.

**One request per event, at the event's own time.** The client of a deployed spec asks about one
event when it happens: a traveller's app or a gate agent asks about one flight (its carrier, route,
plane and scheduled departure), a trading desk about one half-hour. So each event becomes one
single-row request carrying exactly the fields the server documents (``core.requests``: the entity
keys, the event's own columns, ``event_timestamp`` with its offset, ``event_id`` so its label can be
joined later), sent at its ``event_timestamp``. Batching a departure board's flights into one request
per scheduled minute would be cheaper, but the canary is judged on requests per side
(``min_requests``), and a spec's author counts requests the way its clients send them.

**When a tick can matter.** The daemon ticks the ``canary_<spec>`` sensor every minute; a tick only
requests a run once the canary's window is over and each side served ``min_requests``
(``core.rollout.judge_canary``). ``could_be_due`` says whether that can be true yet from what the
replay's client itself saw: the answers it got per model version, plus the requests whose answer
named no version (refused, failed, lost), which might count for either side. It never says no when
the store could say yes (the client is the endpoint's only caller in a replay), so ticking only when
it says yes requests exactly the runs the daemon's minute ticks would, at the first hour the judgement
is possible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.core.names import EVENT_ID, EVENT_TS
from mlops_assets.core.requests import EVENT_ID_FIELD, EVENT_TS_FIELD, NUMBER
from mlops_assets.specs import ColumnFeature, ModelSpec


def event_requests(events: pd.DataFrame, spec: ModelSpec) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The single-row request bodies' rows for typed events (``core.validation.clean_events``), in
    event order, and each one's event time (epoch ns, UTC). A missing value is sent as ``null``,
    which the server reads exactly as training read it; the event time is local with its offset."""
    from mlops_assets.core.requests import request_schema

    schema = request_schema(spec)
    sources = {f.name: f.source for f in spec.row_features if isinstance(f, ColumnFeature)}
    columns = {name: events[sources.get(name, name)] for name in schema.required}
    times = pd.DatetimeIndex(events[EVENT_TS])
    local = times.tz_convert(spec.source.timestamp.timezone)
    stamps = [t.isoformat() for t in local]
    out: list[dict[str, Any]] = []
    values = {name: col.tolist() for name, col in columns.items()}
    for i in range(len(events)):
        row: dict[str, Any] = {}
        for name, kind in schema.required.items():
            v = values[name][i]
            if kind == NUMBER:
                row[name] = None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
            else:
                row[name] = None if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else str(v)
        row[EVENT_TS_FIELD] = stamps[i]
        row[EVENT_ID_FIELD] = str(events[EVENT_ID].iloc[i])
        out.append(row)
    return times.as_unit("ns").asi8.copy(), out


class SideCounts:
    """What the replay's client saw of one canary: answers per model version since it started, and
    requests whose answer named no version."""

    def __init__(self, canary: str, started: str):
        self.canary, self.started = canary, started
        self.by_version: Counter[str] = Counter()
        self.unknown = 0

    def answered(self, version: str | None) -> None:
        if version is None:
            self.unknown += 1
        else:
            self.by_version[str(version)] += 1


def could_be_due(counts: SideCounts, stable: str, *, started: datetime, now: datetime, policy: Mapping[str, Any]) -> bool:
    """Whether the canary check could decide at ``now``: the window is over and each side may have
    ``min_requests`` (its own answers plus every answer of unknown side). Conservative: False only
    when ``judge_canary`` would certainly wait."""
    if (now - started).total_seconds() / 60 < float(policy["window_minutes"]):
        return False
    need = int(policy["min_requests"])
    return all(counts.by_version[v] + counts.unknown >= need for v in (str(stable), str(counts.canary)))
