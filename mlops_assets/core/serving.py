"""What the model server decides, without a web framework: which fields a request must carry, how a
request becomes the model's feature frame, and how the canary is judged.

A request carries the spec's *request-time* fields: the entity keys, the plain columns of the event
(``distance``, ``nswprice``...) and optionally ``event_timestamp`` (default: now) and ``event_id``
(the caller's id of the event, logged so that its label can be joined to the prediction later).
Everything else the model needs is either computed from those (calendar parts, years since) or
looked up in the online store by entity key (past rates, lookup tables). The same functions build
the training frame's twin at serving time, so a model never sees a column built differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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


# --- features ---------------------------------------------------------------------------------------

OnlineLookup = Callable[[dict[str, list]], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
"""entity columns -> (online feature name -> float values, entity name -> bool mask of unknown keys)"""


@dataclass
class Features:
    columns: dict[str, np.ndarray]  # spec order, training dtypes (object text, float64 numbers)
    unknown: dict[str, np.ndarray] = field(default_factory=dict)  # entity -> rows whose key is unknown

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)

    def unknown_per_row(self) -> list[list[str]] | None:
        """Per row, the entities the online store did not know; None when every key was known."""
        if not self.unknown or not any(m.any() for m in self.unknown.values()):
            return None
        names = list(self.unknown)
        masks = np.column_stack([self.unknown[e] for e in names])
        return [[names[j] for j in np.flatnonzero(row)] for row in masks]


def build_features(parsed: ParsedRequest, spec: ModelSpec, lookup: OnlineLookup | None) -> Features:
    """The model's input frame (spec order, training dtypes) for a parsed request."""
    from mlops_assets.core.features import _time_part

    n = parsed.rows
    cols: dict[str, Any] = {}
    local = parsed.timestamps.tz_convert(spec.source.timestamp.timezone) if parsed.timestamps is not None else None
    for f in spec.row_features:
        if isinstance(f, TimePartFeature):
            values = _time_part(pd.Series(local), f.part).to_numpy()
            cols[f.name] = values.astype(str).astype(object) if f.type == "categorical" else values
        else:
            cols[f.name] = parsed.columns[f.name if f.name in parsed.columns else f.source]
    unknown: dict[str, np.ndarray] = {}
    schema_online = [f.name for f in spec.past_rate_features] + [f.name for f in spec.lookup_features]
    if schema_online:
        if lookup is None:
            raise RuntimeError(f"spec {spec.name!r} needs online features {schema_online} but the server has no online store")
        values, unknown = lookup({e: parsed.columns[e] for e in spec.entities})
        defaults = spec.deployment.unknown_entity.defaults if spec.deployment else {}
        for name in schema_online:
            arr = np.asarray(values.get(name, np.full(n, np.nan)), dtype="float64")
            if name in defaults:
                arr = np.where(np.isnan(arr), float(defaults[name]), arr)
            cols[name] = arr
    for f in spec.derived_features:
        cols[f.name] = local.year.to_numpy(dtype="float64") - np.asarray(cols[f.of], dtype="float64")
    cats = set(spec.categorical_features)
    return Features({name: _as_model_dtype(cols[name], name in cats) for name in spec.feature_names}, unknown)


def _as_model_dtype(values: Any, categorical: bool):
    """The dtypes ``core.training.feature_frame`` gives the model: text as object, numbers as float64."""
    if categorical:
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    return np.asarray(values, dtype="float64")


FEAST_NOT_FOUND = 3  # feast.protos FieldStatus.NOT_FOUND: the online store has no row for the key


def feast_unknown_mask(statuses: Sequence[int], timestamps: Sequence[int] | None = None) -> np.ndarray:
    """Rows whose entity key the online store has never seen, from Feast's per-value field statuses.

    Feast's Redis store answers a key it has no row for as present, with empty values and event
    time 0 (its SQLite store says NOT_FOUND); every row it does hold has a later time (static
    lookup rows are stamped one second after the epoch for this reason). So with ``timestamps``
    (epoch seconds of each value's event time) time 0 also means unknown."""
    unknown = np.fromiter((s == FEAST_NOT_FOUND for s in statuses), dtype=bool, count=len(statuses))
    if timestamps is not None:
        unknown |= np.fromiter((t == 0 for t in timestamps), dtype=bool, count=len(statuses))
    return unknown


@dataclass(frozen=True)
class Deployment:
    """What an endpoint serves: ``stable`` takes ``100 - canary_percent`` % of the requests."""

    stable: str | None = None
    canary: str | None = None
    canary_percent: float = 0.0
    canary_started: str | None = None  # ISO 8601, UTC

    def __post_init__(self) -> None:
        if self.canary is None and self.canary_percent:
            raise ValueError("a canary share needs a canary version")
        if not 0 <= self.canary_percent < 100:
            raise ValueError(f"canary_percent must be in [0, 100), got {self.canary_percent}")

    @property
    def versions(self) -> list[str]:
        return [v for v in (self.stable, self.canary) if v is not None]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown deployment fields {sorted(unknown)}")
        return cls(
            stable=None if data.get("stable") is None else str(data["stable"]),
            canary=None if data.get("canary") is None else str(data["canary"]),
            canary_percent=float(data.get("canary_percent") or 0.0),
            canary_started=data.get("canary_started"),
        )


# --- prediction ----------------------------------------------------------------------------------


class Predictor:
    """Scores feature columns with a fitted pipeline of ``core.training.build_pipeline``.

    scikit-learn's ``ColumnTransformer`` costs 2-4 ms per call whatever the batch size (column
    selection, dtype checks, one pandas frame per transformer): more than the model itself on a few
    rows. When the pipeline is the usual median imputer + ordinal encoder, the same transform is done
    here in numpy (fill with the imputer's statistics, map each category to its code, -1 when unseen)
    and the estimator is called on the array it was fitted on. That path is used only after it has
    reproduced the pipeline's own scores on probe rows (every category, an unseen one, missing
    values); otherwise, and for any other pipeline, the pipeline itself scores."""

    def __init__(self, model: Any, spec: ModelSpec):
        self.model = model
        self.classification = spec.target.task == "classification"
        self.feature_names = list(spec.feature_names)
        self.fast = False
        try:
            self._compile(spec)
            probe = self._probe_rows(spec)
            self.fast = bool(np.allclose(self._fast_scores(probe), self._pipeline_scores(probe), rtol=0, atol=1e-12))
        except Exception:  # noqa: BLE001 - any unexpected pipeline shape means: the pipeline scores
            self.fast = False

    def _compile(self, spec: ModelSpec) -> None:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OrdinalEncoder

        pre, self.estimator = self.model[:-1][0], self.model[-1]
        self.numeric, self.codes = [], []
        self.fill = np.empty(0)
        for name, transformer, cols in pre.transformers_:
            if name == "remainder" and transformer == "drop":
                continue
            if isinstance(transformer, SimpleImputer) and transformer.strategy in ("median", "mean", "constant"):
                self.numeric, self.fill = list(cols), np.asarray(transformer.statistics_, dtype="float64")
            elif isinstance(transformer, OrdinalEncoder) and transformer.unknown_value == -1:
                self.codes = [(c, {v: float(i) for i, v in enumerate(cats)}) for c, cats in zip(cols, transformer.categories_)]
            else:
                raise TypeError(f"no fast path for {transformer!r}")
        if [n for n, *_ in pre.transformers_ if n != "remainder"] != ["numeric", "categorical"][: 1 + bool(self.codes)]:
            raise TypeError("unexpected transformer order")

    def _probe_rows(self, spec: ModelSpec) -> dict[str, np.ndarray]:
        n = max([len(m) for _, m in self.codes] + [8]) + 2
        rng = np.random.default_rng(0)
        cols: dict[str, np.ndarray] = {}
        for i, c in enumerate(self.numeric):
            x = self.fill[i] * rng.uniform(0.5, 1.5, n) + rng.normal(0, 1, n)
            x[::3] = np.nan
            cols[c] = x
        for c, mapping in self.codes:
            seen = list(mapping)
            cols[c] = np.array([seen[i % len(seen)] if seen and i < n - 1 else "\x00unseen" for i in range(n)], dtype=object)
        return {f: cols[f] for f in self.feature_names}

    def _fast_scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        if self.numeric:
            num = np.column_stack([columns[c] for c in self.numeric]).astype("float64", copy=False)
            parts.append(np.where(np.isnan(num), self.fill, num))
        for c, mapping in self.codes:
            get = mapping.get
            parts.append(np.fromiter((get(v, -1.0) for v in columns[c]), dtype="float64", count=len(columns[c]))[:, None])
        X = np.hstack(parts) if len(parts) > 1 else parts[0]
        return self.estimator.predict_proba(X)[:, 1] if self.classification else self.estimator.predict(X)

    def _pipeline_scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        frame = pd.DataFrame(columns)
        return self.model.predict_proba(frame)[:, 1] if self.classification else self.model.predict(frame)

    def scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return self._fast_scores(columns) if self.fast else self._pipeline_scores(columns)


# --- canary -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SideStats:
    """What one side of a canary served in the window."""

    version: str
    requests: int
    errors: int
    p99_ms: float
    metric: float | None = None
    labelled: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryVerdict:
    decision: str  # "promote" | "rollback" | "wait"
    reasons: list[str]
    table: list[dict[str, Any]]


def judge_canary(
    stable: SideStats,
    canary: SideStats,
    *,
    started: datetime,
    now: datetime,
    policy: Mapping[str, Any],
    metric: str,
    higher_is_better: bool,
) -> CanaryVerdict:
    """Promote, roll back, or wait for more evidence.

    Waits until the window is over and both sides served ``min_requests``. A regression of the error
    rate or the p99 latency rolls back as soon as the window is over; the metric is compared only
    when both sides have ``min_labelled`` labelled predictions (labels may come days later, and a
    rollout is not held hostage by them: without labels it is judged on errors and latency)."""
    window = float(policy["window_minutes"])
    elapsed = (now - started).total_seconds() / 60
    rows = []

    def row(criterion: str, s: Any, c: Any, limit: str, ok: bool | None) -> None:
        rows.append({"criterion": criterion, "stable": s, "canary": c, "limit": limit, "passed": ok})

    row("requests", stable.requests, canary.requests, f">= {policy['min_requests']} each", None)
    if elapsed < window or min(stable.requests, canary.requests) < int(policy["min_requests"]):
        why = (
            f"window {elapsed:.0f}/{window:g} min"
            if elapsed < window
            else (f"{min(stable.requests, canary.requests)} of {policy['min_requests']} requests on the smaller side")
        )
        return CanaryVerdict("wait", [f"not yet judged: {why}"], rows)
    reasons = []
    err_limit = stable.error_rate + float(policy["max_error_rate_increase"])
    err_ok = canary.error_rate <= err_limit + 1e-12
    row("error_rate", round(stable.error_rate, 5), round(canary.error_rate, 5), f"<= {err_limit:.4f}", err_ok)
    if not err_ok:
        reasons.append(f"error rate {canary.error_rate:.2%} > {err_limit:.2%} (stable {stable.error_rate:.2%})")
    lat_limit = stable.p99_ms * float(policy["max_latency_ratio"]) + float(policy["latency_slack_ms"])
    lat_ok = canary.p99_ms <= lat_limit
    row("p99_latency_ms", round(stable.p99_ms, 3), round(canary.p99_ms, 3), f"<= {lat_limit:.2f}", lat_ok)
    if not lat_ok:
        reasons.append(f"p99 latency {canary.p99_ms:.1f} ms > {lat_limit:.1f} ms (stable {stable.p99_ms:.1f} ms)")
    labelled = min(stable.labelled, canary.labelled)
    if labelled >= int(policy["min_labelled"]) and stable.metric is not None and canary.metric is not None:
        drop = stable.metric - canary.metric if higher_is_better else canary.metric - stable.metric
        met_ok = drop <= float(policy["max_metric_drop"]) + 1e-12
        row(metric, round(stable.metric, 5), round(canary.metric, 5), f"drop <= {policy['max_metric_drop']}", met_ok)
        if not met_ok:
            reasons.append(f"{metric} {canary.metric:.4f} vs stable {stable.metric:.4f}: worse by {drop:.4f}")
    else:
        row(metric, stable.metric, canary.metric, f"needs {policy['min_labelled']} labelled each (has {labelled})", None)
    if reasons:
        return CanaryVerdict("rollback", reasons, rows)
    return CanaryVerdict("promote", [f"canary v{canary.version} held up against v{stable.version} over {elapsed:.0f} min"], rows)


def p99(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype="float64")
    return float(np.percentile(arr, 99)) if arr.size else 0.0


@dataclass(frozen=True)
class Plan:
    """What the endpoint asset does this time, and why."""

    deployment: Deployment
    action: str  # deploy | unchanged | canary_started | canary_restarted | canary_waiting | promoted | rolled_back
    reason: str


def plan_deployment(
    current: Deployment | None,
    champion: str | None,
    *,
    canary_percent: float,
    now: datetime,
    verdict: CanaryVerdict | None = None,
) -> Plan:
    """The next deployment from what serves now, the registry's champion and, during a canary, the
    canary check's verdict. The first model is deployed outright (there is nothing to compare it
    with); a later champion goes through a canary when the spec asks for one."""
    if champion is None:
        raise ValueError("the model has no champion version to serve")
    if current is None or current.stable is None:
        return Plan(Deployment(stable=champion), "deploy", f"first deployment: v{champion}")
    if current.canary is not None:
        if champion not in (current.canary, current.stable):
            started = Deployment(current.stable, champion, canary_percent, now.isoformat())
            return Plan(started, "canary_restarted", f"champion moved to v{champion} during the canary of v{current.canary}")
        if verdict is None or verdict.decision == "wait":
            reason = "; ".join(verdict.reasons) if verdict else "no canary verdict yet"
            return Plan(current, "canary_waiting", reason)
        if verdict.decision == "promote":
            return Plan(Deployment(stable=current.canary), "promoted", "; ".join(verdict.reasons))
        return Plan(Deployment(stable=current.stable), "rolled_back", "; ".join(verdict.reasons))
    if champion == current.stable:
        return Plan(current, "unchanged", f"v{champion} already serves")
    if canary_percent > 0:
        started = Deployment(current.stable, champion, canary_percent, now.isoformat())
        return Plan(started, "canary_started", f"v{champion} takes {canary_percent:g} % beside v{current.stable}")
    return Plan(Deployment(stable=champion), "deploy", f"v{champion} replaces v{current.stable} (no canary configured)")
