"""Prediction requests, without a web framework: which fields a request must carry and how a decoded
JSON body becomes typed columns, or a ``RequestError`` naming every offending field.

A request carries the spec's *request-time* fields: the entity keys, the plain columns of the event
(``distance``, ``nswprice``...) and optionally ``event_timestamp`` (default: now) and ``event_id``
(the caller's id of the event, logged so that its label can be joined to the prediction later).
Everything else the model needs is computed from those or looked up online (``core.serving``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.specs import ColumnFeature, ModelSpec, TimePartFeature

EVENT_ID_FIELD = "event_id"
EVENT_TS_FIELD = "event_timestamp"

NUMBER, TEXT = "number", "string"


class RequestError(ValueError):
    """A request the server refuses, with one message per offending field (``loc`` as in JSON
    Schema / FastAPI: ``["instances", 3, "distance"]``)."""

    def __init__(self, errors: list[dict[str, Any]], status: int = 422):
        self.errors = errors
        self.status = status
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5]))


@dataclass(frozen=True)
class RequestSchema:
    """The fields of one prediction request, derived from the spec."""

    required: dict[str, str]  # field -> NUMBER | TEXT
    optional: dict[str, str]
    online_features: tuple[str, ...]  # looked up by entity key, never sent
    max_rows: int

    @property
    def fields(self) -> dict[str, str]:
        return {**self.required, **self.optional}

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models/<name>`` shows a caller."""
        return {
            "required": self.required,
            "optional": self.optional,
            "looked_up_online": list(self.online_features),
            "max_rows": self.max_rows,
        }


def request_schema(spec: ModelSpec) -> RequestSchema:
    required: dict[str, str] = {e: TEXT for e in spec.entities}
    for f in spec.row_features:
        if isinstance(f, ColumnFeature) and f.name not in spec.entities:
            required[f.name] = TEXT if f.type == "categorical" else NUMBER
    online = tuple(f.name for f in spec.past_rate_features) + tuple(f.name for f in spec.lookup_features)
    max_rows = spec.deployment.max_batch_rows if spec.deployment else 10_000
    return RequestSchema(required, {EVENT_ID_FIELD: TEXT, EVENT_TS_FIELD: TEXT}, online, max_rows)


# --- parsing ----------------------------------------------------------------------------------------


MISSING = object()  # a field a row does not carry (already reported)


def _columns_from_payload(payload: Any, schema: RequestSchema) -> tuple[dict[str, list], int, str, list[dict]]:
    """Columns of the request, whichever of the two accepted shapes it has:
    ``{"instances": [{field: value}, ...]}`` (rows, the KServe V1 protocol) or
    ``{"inputs": {field: [values]}}`` (columns, cheaper for big batches)."""
    if not isinstance(payload, dict):
        raise RequestError([{"loc": ["body"], "msg": "expected a JSON object with 'instances' (rows) or 'inputs' (columns)"}])
    unknown_keys = sorted(set(payload) - {"instances", "inputs"})
    if unknown_keys or ("instances" in payload) == ("inputs" in payload):
        raise RequestError(
            [
                {
                    "loc": ["body"],
                    "msg": "expected exactly one of 'instances' (list of rows) or 'inputs' (columns)"
                    + (f"; unknown keys {unknown_keys}" if unknown_keys else ""),
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
                errors.append({"loc": ["instances", i], "msg": f"expected an object, got {type(row).__name__}"})
                continue
            for name in sorted(row.keys() - known.keys()):
                errors.append({"loc": ["instances", i, name], "msg": f"unknown field; accepted: {sorted(known)}"})
            for name in sorted(schema.required.keys() - row.keys()):
                errors.append({"loc": ["instances", i, name], "msg": "field required"})
            if len(errors) >= 50:
                raise RequestError(errors)
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
        {"loc": ["inputs", n], "msg": f"unknown field; accepted: {sorted(known)}"} for n in sorted(cols.keys() - known.keys())
    ]
    errors += [{"loc": ["inputs", n], "msg": "field required"} for n in sorted(schema.required.keys() - cols.keys())]
    errors += [{"loc": ["inputs", n], "msg": "expected a list of values"} for n, v in cols.items() if not isinstance(v, list)]
    if errors:
        raise RequestError(errors)
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise RequestError([{"loc": ["inputs"], "msg": f"every column needs the same non-zero length; got {sorted(lengths)}"}])
    n = lengths.pop()
    if n > schema.max_rows:
        raise RequestError([{"loc": ["inputs"], "msg": f"{n} rows exceed the limit of {schema.max_rows}"}], 413)
    return cols, n, "inputs", []


def _loc(shape: str, row: int, name: str) -> list:
    return [shape, row, name] if shape == "instances" else [shape, name, row]


def _numbers(values: list, name: str, shape: str, errors: list) -> np.ndarray:
    """Floats of a numeric field; ``null`` is a missing value (the model imputes it). Booleans and
    strings are refused: ``"12"`` is most likely a client bug, not a number to guess at."""
    try:
        arr = np.array(values, dtype="float64")
        if arr.ndim == 1 and not np.isinf(arr).any() and not any(isinstance(v, (bool, str)) for v in values):
            return arr
    except (TypeError, ValueError, OverflowError):
        pass
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None or v is MISSING:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errors.append({"loc": _loc(shape, i, name), "msg": f"expected a number or null, got {v!r}"[:200]})
            continue
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if math.isfinite(x):
            out[i] = x
        else:
            errors.append({"loc": _loc(shape, i, name), "msg": f"expected a finite number, got {v!r}"[:200]})
    return out


def _texts(values: list, name: str, shape: str, errors: list, required: bool) -> list:
    """Strings of a text field; integers are accepted as their decimal text (Elec2's ``day`` is
    1..7 in its CSV and ``"1"``..``"7"`` to the model)."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(str(v))
        elif v is MISSING or (v is None and not required):
            out.append(None)
        else:
            errors.append({"loc": _loc(shape, i, name), "msg": f"expected a string, got {v!r}"[:200]})
            out.append(None)
    return out


def _timestamps(values: list, shape: str, errors: list, tz: str, now: datetime) -> pd.DatetimeIndex:
    """Event times: ISO 8601 text (naive means the spec's timezone) or epoch seconds; missing is now."""
    out = []
    for i, v in enumerate(values):
        try:
            if v is None or v is MISSING:
                ts = pd.Timestamp(now)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                ts = pd.Timestamp(v, unit="s", tz="UTC")
            elif isinstance(v, str):
                ts = pd.Timestamp(v)
                ts = ts.tz_localize(tz) if ts.tzinfo is None else ts
            else:
                raise ValueError
            out.append(ts.tz_convert("UTC"))
        except (ValueError, TypeError, OverflowError):
            errors.append(
                {"loc": _loc(shape, i, EVENT_TS_FIELD), "msg": f"expected an ISO 8601 time or epoch seconds, got {v!r}"[:200]}
            )
            out.append(pd.Timestamp(now).tz_convert("UTC"))
    return pd.DatetimeIndex(out)


@dataclass
class ParsedRequest:
    """A validated request: its columns typed, how many rows, and when its events happen."""

    columns: dict[str, Any]
    rows: int
    timestamps: pd.DatetimeIndex | None
    event_ids: list | None


def parse_request(payload: Any, schema: RequestSchema, spec: ModelSpec, now: datetime | None = None) -> ParsedRequest:
    """Validate a decoded JSON body against the spec's request fields; raise ``RequestError`` with
    every offending field (up to 50) rather than the first only."""
    cols, n, shape, errors = _columns_from_payload(payload, schema)
    typed: dict[str, Any] = {}
    for name, kind in schema.required.items():
        typed[name] = (
            _numbers(cols[name], name, shape, errors) if kind == NUMBER else _texts(cols[name], name, shape, errors, True)
        )
    needs_time = any(isinstance(f, TimePartFeature) for f in spec.features) or bool(spec.derived_features)
    timestamps = None
    if needs_time or EVENT_TS_FIELD in cols:
        now = now or datetime.now(UTC)
        stamps = cols.get(EVENT_TS_FIELD, [None] * n)
        timestamps = _timestamps(stamps, shape, errors, spec.source.timestamp.timezone, now)
    event_ids = _texts(cols[EVENT_ID_FIELD], EVENT_ID_FIELD, shape, errors, False) if EVENT_ID_FIELD in cols else None
    if errors:
        errors.sort(key=lambda e: [str(x) if not isinstance(x, int) else f"{x:09d}" for x in e["loc"]])
        raise RequestError(errors[:50])
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
