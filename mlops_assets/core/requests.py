"""Prediction requests, without a web framework: which fields a request must carry and how a decoded
JSON body becomes typed columns, or a ``RequestError`` naming every offending field.

A request carries the spec's *request-time* fields: the entity keys, the plain columns of the event
(``distance``, ``nswprice``...) and optionally ``event_timestamp`` (default: now) and ``event_id``
(the caller's id of the event, logged so that its label can be joined to the prediction later).
Everything else the model needs is computed from those or looked up online (``core.serving``).

Parsing is strict because every answered row is filed by its event time and judged by monitoring:
a value the platform cannot file or compute statistics on is refused here (422, naming the field),
never answered and never a server error. What is accepted:

* ``event_timestamp``: ISO 8601 text only (``2013-01-14T09:00``, ``2013-01-14 09:00:00``,
  ``2013-01-14T09:00:00+01:00``, ``...Z``, a date alone), naive meaning the spec's timezone, within
  the spec's horizon (``partitions.start`` .. ``partitions.end`` or now, widened by
  ``deployment.event_time_margin_days``). ``null`` or absent means now, which must be in it too.
  Epoch numbers are refused: ``1357552800`` is seconds or milliseconds only by guesswork.
* numbers: JSON numbers, finite, at most ``MAX_MAGNITUDE`` in size and inside the spec's
  ``checks.ranges`` for their source column; ``null`` is a missing value (the model imputes it, as in
  training). Booleans, text, NaN and infinities are refused.
* text (entities, categoricals, ``event_id``): strings up to ``MAX_TEXT`` characters, or integers
  (their decimal text); ``null`` is the missing value training uses (``core.features.MISSING_CATEGORY``):
  a missing entity key is an entity like any other, the one the training data's missing keys had.
  Arrays and objects are refused without being walked, however deep they are nested.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from mlops_assets.core.features import MISSING_CATEGORY
from mlops_assets.core.sources import day_start_utc, localize
from mlops_assets.specs import ColumnFeature, ModelSpec, TimePartFeature

EVENT_ID_FIELD = "event_id"
EVENT_TS_FIELD = "event_timestamp"

NUMBER, TEXT = "number", "string"

MAX_MAGNITUDE = 1e15
"""Largest absolute number a request may carry. Beyond it float64 no longer holds every integer, and
a day of such values overflows the sums of squares drift statistics take (1e308 did); no feature
of a real event comes near it. The spec's ``checks.ranges`` narrow it per column."""

MAX_TEXT = 1024
"""Longest text value: entity keys and categories are short; a megabyte "carrier" is an attack on
the online store's key space and the prediction log, not an event."""

MAX_ERRORS = 50

_ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?(?:Z|[+-]\d{2}:?\d{2})?")


class RequestError(ValueError):
    """A request the server refuses, with one message per offending field (``loc`` as in JSON
    Schema / FastAPI: ``["instances", 3, "distance"]``)."""

    def __init__(self, errors: list[dict[str, Any]], status: int = 422):
        self.errors = errors
        self.status = status
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5]))


@dataclass(frozen=True)
class RequestSchema:
    """The fields of one prediction request, derived from the spec, and the bounds on their values."""

    required: dict[str, str]  # field -> NUMBER | TEXT
    optional: dict[str, str]
    online_features: tuple[str, ...]  # looked up by entity key, never sent
    max_rows: int
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # number field -> [lo, hi]
    horizon_start: datetime | None = None  # UTC; event times before it are refused
    horizon_end: datetime | None = None  # UTC; None: now + margin
    margin: timedelta = timedelta(days=30)
    timezone: str = "UTC"  # of naive event times
    needs_time: bool = False  # the model uses the event time (calendar parts, years since)

    @property
    def fields(self) -> dict[str, str]:
        return {**self.required, **self.optional}

    def horizon(self, now: datetime) -> tuple[datetime, datetime]:
        """The event times this spec can file and score (UTC): its partitions widened by the margin."""
        start = self.horizon_start or datetime(1900, 1, 1, tzinfo=UTC)
        return start.astimezone(UTC), (self.horizon_end or now + self.margin).astimezone(UTC)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models/<name>`` shows a caller."""
        return {
            "required": self.required,
            "optional": self.optional,
            "looked_up_online": list(self.online_features),
            "max_rows": self.max_rows,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "event_timestamp": f"ISO 8601, naive meaning {self.timezone}, within the spec's partitions "
            f"widened by {self.margin.days} days",
            "missing_values": "null: a missing number is imputed; missing text is the empty category, as in training",
        }

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema (2020-12) of a request body, both shapes: what a client generator or a
        property test (Hypothesis, schemathesis) needs. The parser stays the authority (the
        horizon moves with the clock when the spec's partitions are open-ended)."""

        def value(name: str, kind: str) -> dict[str, Any]:
            if name == EVENT_TS_FIELD:
                return {"type": ["string", "null"], "format": "date-time"}
            if kind == TEXT:
                return {"type": ["string", "integer", "null"], "maxLength": MAX_TEXT}
            lo, hi = self.ranges.get(name, (None, None))
            return {
                "type": ["number", "null"],
                "minimum": -MAX_MAGNITUDE if lo is None else lo,
                "maximum": MAX_MAGNITUDE if hi is None else hi,
            }

        props = {n: value(n, k) for n, k in self.fields.items()}
        row = {"type": "object", "properties": props, "required": sorted(self.required), "additionalProperties": False}
        columns = {
            "type": "object",
            "properties": {n: {"type": "array", "items": p, "minItems": 1, "maxItems": self.max_rows} for n, p in props.items()},
            "required": sorted(self.required),
            "additionalProperties": False,
        }
        rows = {"type": "array", "items": row, "minItems": 1, "maxItems": self.max_rows}
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "oneOf": [
                {"type": "object", "properties": {"instances": rows}, "required": ["instances"], "additionalProperties": False},
                {"type": "object", "properties": {"inputs": columns}, "required": ["inputs"], "additionalProperties": False},
            ],
        }


def request_schema(spec: ModelSpec) -> RequestSchema:
    required: dict[str, str] = {e: TEXT for e in spec.entities}
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for f in spec.row_features:
        if isinstance(f, ColumnFeature) and f.name not in spec.entities:
            required[f.name] = TEXT if f.type == "categorical" else NUMBER
            if f.type == "numeric" and f.source in spec.checks.ranges:
                ranges[f.name] = spec.checks.ranges[f.source]
    online = tuple(f.name for f in spec.past_rate_features) + tuple(f.name for f in spec.lookup_features)
    deployment = spec.deployment
    max_rows = deployment.max_batch_rows if deployment else 10_000
    margin = timedelta(days=deployment.event_time_margin_days if deployment else 30)
    tz = spec.source.timestamp.timezone
    start = day_start_utc(spec.partitions.start, tz).to_pydatetime() - margin
    end = day_start_utc(spec.partitions.end, tz).to_pydatetime() + margin if spec.partitions.end else None
    # a timestamped lookup needs the event's time too: a value older than its TTL then is missing
    needs_time = (
        any(isinstance(f, TimePartFeature) for f in spec.features) or bool(spec.derived_features) or bool(spec.timed_lookups)
    )
    return RequestSchema(
        required, {EVENT_ID_FIELD: TEXT, EVENT_TS_FIELD: TEXT}, online, max_rows, ranges, start, end, margin, tz, needs_time
    )


# --- parsing ----------------------------------------------------------------------------------------


MISSING = object()  # a field a row does not carry (already reported)


def _describe(v: Any) -> str:
    """A value for an error message, bounded and never recursive (a value nested 100,000 deep has
    no ``repr`` that a message should carry, nor one Python can compute)."""
    if isinstance(v, dict):
        return f"an object with {len(v)} keys"
    if isinstance(v, list):
        return f"an array of {len(v)} items"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v[:60]) + ("… (truncated)" if len(v) > 60 else "")
    if isinstance(v, int) and abs(v) >= 10**18:
        return f"an integer of about {int(v.bit_length() * 0.30103) + 1} digits"
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return repr(v)[:60]


def _columns_from_payload(payload: Any, schema: RequestSchema) -> tuple[dict[str, list], int, str, list[dict]]:
    """Columns of the request, whichever of the two accepted shapes it has:
    ``{"instances": [{field: value}, ...]}`` (rows, the KServe V1 protocol) or
    ``{"inputs": {field: [values]}}`` (columns, cheaper for big batches)."""
    if not isinstance(payload, dict):
        raise RequestError([{"loc": ["body"], "msg": "expected a JSON object with 'instances' (rows) or 'inputs' (columns)"}])
    unknown_keys = sorted(str(k)[:60] for k in payload.keys() - {"instances", "inputs"})
    if unknown_keys or ("instances" in payload) == ("inputs" in payload):
        raise RequestError(
            [
                {
                    "loc": ["body"],
                    "msg": "expected exactly one of 'instances' (list of rows) or 'inputs' (columns)"
                    + (f"; unknown keys {unknown_keys[:10]}" if unknown_keys else ""),
                }
            ]
        )
    known = schema.fields
    if "instances" in payload:
        rows = payload["instances"]
        if not isinstance(rows, list) or not rows:
            raise RequestError([{"loc": ["instances"], "msg": "expected a non-empty list of objects"}])
        if len(rows) > schema.max_rows:
            raise RequestError([{"loc": ["instances"], "msg": f"{len(rows)} rows exceed the limit of {schema.max_rows}"}], 413)
        errors = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                errors.append({"loc": ["instances", i], "msg": f"expected an object of field -> value, got {_describe(row)}"})
            else:
                for name in sorted(row.keys() - known.keys(), key=str):
                    errors.append({"loc": ["instances", i, name], "msg": f"unknown field; accepted: {sorted(known)}"})
                for name in sorted(schema.required.keys() - row.keys()):
                    errors.append({"loc": ["instances", i, name], "msg": "field required (null if its value is missing)"})
            if len(errors) >= MAX_ERRORS:
                raise RequestError(errors[:MAX_ERRORS])
        if any(not isinstance(row, dict) for row in rows):
            raise RequestError(errors)
        # missing fields were reported above; the values present are still type-checked below
        cols = {
            name: [row.get(name, MISSING) for row in rows]
            for name in known
            if name in schema.required or any(name in r for r in rows)
        }
        return cols, len(rows), "instances", errors
    cols = payload["inputs"]
    if not isinstance(cols, dict) or not cols:
        raise RequestError([{"loc": ["inputs"], "msg": "expected an object of field -> list of values"}])
    errors = [
        {"loc": ["inputs", n], "msg": f"unknown field; accepted: {sorted(known)}"}
        for n in sorted(cols.keys() - known.keys(), key=str)
    ]
    errors += [{"loc": ["inputs", n], "msg": "field required"} for n in sorted(schema.required.keys() - cols.keys())]
    errors += [
        {"loc": ["inputs", n], "msg": f"expected a list of values, got {_describe(v)}"}
        for n, v in cols.items()
        if n in known and not isinstance(v, list)
    ]
    if errors:
        raise RequestError(errors[:MAX_ERRORS])
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise RequestError([{"loc": ["inputs"], "msg": f"every column needs the same non-zero length; got {sorted(lengths)}"}])
    n = lengths.pop()
    if n > schema.max_rows:
        raise RequestError([{"loc": ["inputs"], "msg": f"{n} rows exceed the limit of {schema.max_rows}"}], 413)
    return cols, n, "inputs", []


def _loc(shape: str, row: int, name: str) -> list:
    return [shape, row, name] if shape == "instances" else [shape, name, row]


def _range_text(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _numbers(values: list, name: str, shape: str, errors: list, bounds: tuple[float | None, float | None] | None) -> np.ndarray:
    """Floats of a numeric field; ``null`` is a missing value (the model imputes it, as it does a
    missing number in training). Booleans and strings are refused: ``"12"`` is most likely a client
    bug, not a number to guess at; so are NaN, infinities, magnitudes above ``MAX_MAGNITUDE`` and
    values outside the spec's ``checks.ranges`` for the field's column (training never saw them:
    the dataset check blocks such days)."""
    lo, hi = bounds if bounds else (None, None)
    lo_ = -MAX_MAGNITUDE if lo is None else max(lo, -MAX_MAGNITUDE)
    hi_ = MAX_MAGNITUDE if hi is None else min(hi, MAX_MAGNITUDE)
    if len(values) == 1:  # a single row (most requests): plain comparisons, no array arithmetic
        v = values[0]
        if (type(v) is float or type(v) is int) and lo_ <= v <= hi_:  # NaN and infinities compare False
            return np.array([v], dtype="float64")
    elif all(type(v) is float or type(v) is int for v in values):  # the common case, vectorised
        try:
            arr = np.array(values, dtype="float64")
        except OverflowError:  # an integer beyond float64: reported below
            arr = None
        if arr is not None and bool(((arr >= lo_) & (arr <= hi_)).all()):  # NaN compares False
            return arr
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or v is MISSING:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errors.append({"loc": _loc(shape, i, name), "msg": f"expected a number or null, got {_describe(v)}"})
            continue
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x) or abs(x) > MAX_MAGNITUDE:
            msg = f"expected a finite number of magnitude at most {MAX_MAGNITUDE:g} (null if missing), got {_describe(v)}"
            errors.append({"loc": _loc(shape, i, name), "msg": msg})
        elif not lo_ <= x <= hi_:
            msg = f"{x:g} is outside the range {_range_text(lo, hi)} the spec's checks.ranges allow for this column"
            errors.append({"loc": _loc(shape, i, name), "msg": msg})
        else:
            out[i] = x
    return out


def _texts(values: list, name: str, shape: str, errors: list, missing: str | None) -> list:
    """Strings of a text field; integers are accepted as their decimal text (Elec2's ``day`` is
    1..7 in its CSV and ``"1"``..``"7"`` to the model); ``null`` (or an absent optional field) is
    ``missing``."""
    if all(type(v) is str for v in values) and all(len(v) <= MAX_TEXT for v in values):  # the common case
        return values
    out = []
    for i, v in enumerate(values):
        if isinstance(v, str) and len(v) <= MAX_TEXT:
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) < 10**18:
            out.append(str(v))
        elif v is None or v is MISSING:
            out.append(missing)
        else:
            what = f"a text of {len(v)} characters" if isinstance(v, str) else _describe(v)
            errors.append(
                {
                    "loc": _loc(shape, i, name),
                    "msg": f"expected a string of at most {MAX_TEXT} characters, an integer or null, got {what}",
                }
            )
            out.append(missing)
    return out


@functools.lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _timestamps(values: list, shape: str, errors: list, schema: RequestSchema, now: datetime) -> pd.DatetimeIndex:
    """Event times (UTC) from ISO 8601 text, naive meaning the spec's timezone (localized with the
    rule ingest uses, ``core.sources.localize``); missing is now. Every time must lie within the
    spec's horizon: a row outside it could be neither filed under a partition nor scored against
    one, and pandas cannot even represent years before 1677 or after 2262."""
    now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
    lo, hi = schema.horizon(now)
    slack = timedelta(days=1)  # naive times are checked again, exactly, once localized
    lo_naive, hi_naive = lo.replace(tzinfo=None) - slack, hi.replace(tzinfo=None) + slack
    horizon = (
        f"the spec's horizon {lo.isoformat()} .. {hi.isoformat()} (its partitions widened by deployment.event_time_margin_days)"
    )
    n = len(values)
    zone = _zone(schema.timezone)
    utc = np.empty(n, dtype="datetime64[us]")
    naive_rows: list[int] = []
    naive_values: list[datetime] = []
    failed: list[int] = []

    def refuse(i: int, msg: str) -> None:
        errors.append({"loc": _loc(shape, i, EVENT_TS_FIELD), "msg": msg})
        failed.append(i)

    required = f"field required for this spec: now ({now.isoformat()}), the default, is outside {horizon}"
    if shape == "inputs" and n and not lo <= now <= hi and all(v is MISSING for v in values):
        # the column itself is absent: name it once, not a row of a column that is not there
        errors.append({"loc": [shape, EVENT_TS_FIELD], "msg": required})
        return pd.DatetimeIndex(np.full(n, np.datetime64(now.astimezone(UTC).replace(tzinfo=None), "us"))).tz_localize("UTC")
    for i, v in enumerate(values):
        if v is None or v is MISSING:
            if not lo <= now <= hi:
                refuse(i, required)
            else:
                utc[i] = np.datetime64(now.astimezone(UTC).replace(tzinfo=None), "us")
            continue
        if not isinstance(v, str) or not _ISO_8601.fullmatch(v):
            refuse(
                i,
                "expected ISO 8601 text such as '2013-01-14T09:00', '2013-01-14 09:00:00' or "
                f"'2013-01-14T09:00:00+01:00' (naive means {schema.timezone}), got {_describe(v)}",
            )
            continue
        try:
            dt = datetime.fromisoformat(v)
        except ValueError as exc:
            refuse(i, f"not a valid ISO 8601 time ({exc}), got {_describe(v)}")
            continue
        try:
            inside = lo_naive <= dt <= hi_naive if dt.tzinfo is None else lo <= dt <= hi
        except OverflowError:  # an offset that pushes year 1 or 9999 out of the calendar
            inside = False
        if not inside:
            refuse(i, f"{_describe(v)} is outside {horizon}")
            continue
        if dt.tzinfo is None:
            # fold=0 is the first of a repeated hour, as ingest's ambiguous=True; a time in the
            # skipped hour does not come back the same and takes the pandas rule below
            u = dt.replace(tzinfo=zone).astimezone(UTC)
            if u.astimezone(zone).replace(tzinfo=None) != dt or not lo <= u <= hi:
                naive_rows.append(i)
                naive_values.append(dt)
                continue
        else:
            u = dt.astimezone(UTC)
        utc[i] = np.datetime64(u.replace(tzinfo=None), "us")
    if naive_rows:
        local = localize(pd.DatetimeIndex(naive_values), schema.timezone)
        lo64, hi64 = np.datetime64(lo.replace(tzinfo=None), "us"), np.datetime64(hi.replace(tzinfo=None), "us")
        for i, t in zip(naive_rows, local.tz_localize(None).to_numpy(dtype="datetime64[us]")):
            if lo64 <= t <= hi64:
                utc[i] = t
            else:
                refuse(i, f"{_describe(values[i])} is outside {horizon}")
    if failed:
        utc[failed] = np.datetime64(now.astimezone(UTC).replace(tzinfo=None), "us")  # never read: the request fails
    return pd.DatetimeIndex(utc).tz_localize("UTC")


@dataclass
class ParsedRequest:
    """A validated request: its columns typed, how many rows, and when its events happen."""

    columns: dict[str, Any]
    rows: int
    timestamps: pd.DatetimeIndex | None
    event_ids: list | None


def parse_request(payload: Any, schema: RequestSchema, spec: ModelSpec, now: datetime | None = None) -> ParsedRequest:
    """Validate a decoded JSON body against the spec's request fields; raise ``RequestError`` with
    every offending field (up to 50) rather than the first only. Nothing else is raised, whatever
    the body holds: a request never gets a server error for its content."""
    cols, n, shape, errors = _columns_from_payload(payload, schema)
    typed: dict[str, Any] = {}
    for name, kind in schema.required.items():
        typed[name] = (
            _numbers(cols[name], name, shape, errors, schema.ranges.get(name))
            if kind == NUMBER
            else _texts(cols[name], name, shape, errors, MISSING_CATEGORY)
        )
    timestamps = None
    if schema.needs_time or EVENT_TS_FIELD in cols:
        now = now or datetime.now(UTC)
        stamps = cols.get(EVENT_TS_FIELD, [MISSING] * n)  # absent: the default applies to every row
        timestamps = _timestamps(stamps, shape, errors, schema, now)
    event_ids = _texts(cols[EVENT_ID_FIELD], EVENT_ID_FIELD, shape, errors, None) if EVENT_ID_FIELD in cols else None
    if errors:
        errors.sort(key=lambda e: [str(x) if not isinstance(x, int) else f"{x:09d}" for x in e["loc"]])
        raise RequestError(errors[:MAX_ERRORS])
    return ParsedRequest(typed, n, timestamps, event_ids)


def merge_requests(parsed: Sequence[ParsedRequest]) -> ParsedRequest:
    """Several validated requests as one, rows in order: the server answers requests that arrive
    together with one feature lookup and one ``predict`` call (a tree ensemble costs about the same
    for 1 row as for 50), then splits the answer by each request's rows."""
    if len(parsed) == 1:
        return parsed[0]
    columns = {
        name: np.concatenate([p.columns[name] for p in parsed])
        if isinstance(parsed[0].columns[name], np.ndarray)
        else [v for p in parsed for v in p.columns[name]]
        for name in parsed[0].columns
    }
    timestamps = None
    if any(p.timestamps is not None for p in parsed):
        if any(p.timestamps is None for p in parsed):  # requests of one schema agree; never mix silently
            raise ValueError("cannot merge requests with and without event times")
        timestamps = parsed[0].timestamps.append([p.timestamps for p in parsed[1:]])
    event_ids = None
    if any(p.event_ids is not None for p in parsed):
        event_ids = [v for p in parsed for v in (p.event_ids if p.event_ids is not None else [None] * p.rows)]
    return ParsedRequest(columns, sum(p.rows for p in parsed), timestamps, event_ids)
