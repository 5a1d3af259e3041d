"""Property tests of request parsing: whatever a client sends, the parser either returns rows the
platform can file and score (event times inside the spec's horizon, finite bounded numbers inside
the spec's ranges, short scalar text) or refuses with a 4xx whose every error names a place of the
request; and the real ASGI app never answers 5xx for a body's content.

Requests are generated from the request schema the parser publishes (``RequestSchema``: fields,
kinds, ranges, horizon), mixing valid values with every kind of malformed one: wrong types, nested
structures (also far deeper than Python's recursion limit), huge and tiny numbers, NaN and
infinities (JSON extensions Python's json module reads), random text as timestamps, missing and
unknown fields, both the ``instances`` and the ``inputs`` shapes, and bodies that are not objects."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_assets.core.requests import (
    EVENT_TS_FIELD,
    MAX_MAGNITUDE,
    MAX_TEXT,
    NUMBER,
    RequestError,
    RequestSchema,
    parse_request,
    request_schema,
)

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def nest(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([10**400, -(10**400), 2**63, 1e308, -1e308, 5e-324, 1e15, 1e16])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "now", "14/01/2013", "NaN", "2013-01-14T09:00", "1e308", "0001-01-01", "9999-12-31T23:59"])
)
MALFORMED = (
    st.recursive(
        SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8
    )
    | st.integers(min_value=50, max_value=5000).map(nest)
    | st.integers(min_value=MAX_TEXT + 1, max_value=MAX_TEXT + 50).map(lambda n: "x" * n)
)


def timestamps(schema: RequestSchema) -> st.SearchStrategy:
    """ISO 8601 text in its accepted forms, around the horizon (some inside, some just outside)."""
    lo, hi = schema.horizon(NOW)
    around = st.datetimes(
        min_value=(lo - timedelta(days=60)).replace(tzinfo=None), max_value=(hi + timedelta(days=60)).replace(tzinfo=None)
    )
    anywhere = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))
    forms = st.sampled_from(["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S+02:00", "%Y-%m-%d"])
    return st.builds(lambda d, f: f"{d.year:04d}" + d.strftime(f)[len(str(d.year)) :], around | anywhere, forms)


def value_for(schema: RequestSchema, name: str, kind: str) -> st.SearchStrategy:
    if name == EVENT_TS_FIELD:
        valid = timestamps(schema) | st.none()
    elif kind == NUMBER:
        lo, hi = schema.ranges.get(name, (None, None))
        lo = -1e6 if lo is None else lo
        hi = 1e6 if hi is None else hi
        valid = st.floats(min_value=lo, max_value=hi) | st.integers(min_value=math.ceil(lo), max_value=math.floor(hi)) | st.none()
    else:
        valid = st.text(max_size=12) | st.integers(min_value=-1000, max_value=1000) | st.none()
    return st.one_of(valid, valid, valid, MALFORMED)


@st.composite
def payloads(draw, schema: RequestSchema):
    fields = schema.fields
    n = draw(st.integers(min_value=1, max_value=4))
    rows = []
    for _ in range(n):
        row = {name: draw(value_for(schema, name, kind)) for name, kind in fields.items()}
        if draw(st.integers(0, 4)) == 0:  # a field missing
            row.pop(draw(st.sampled_from(sorted(row))), None)
        if draw(st.integers(0, 6)) == 0:  # a field the schema does not know
            row[draw(st.text(min_size=1, max_size=8))] = draw(SCALARS)
        rows.append(row)
    shape = draw(st.sampled_from(["instances", "instances", "inputs", "junk"]))
    if shape == "instances":
        if draw(st.integers(0, 9)) == 0:
            rows[draw(st.integers(0, n - 1))] = draw(MALFORMED)  # a row that is not an object
        return {"instances": rows}
    if shape == "inputs":
        names = set().union(*rows)
        columns = {name: [r.get(name) for r in rows] for name in names}
        if draw(st.integers(0, 9)) == 0 and columns:  # columns of different lengths
            columns[draw(st.sampled_from(sorted(columns)))].append(None)
        return {"inputs": columns}
    return draw(
        MALFORMED
        | st.just({})
        | st.just({"instances": []})
        | st.just({"instances": rows, "inputs": {}})
        | st.builds(lambda v: {"instances": v}, MALFORMED)
        | st.builds(lambda v: {"inputs": v}, MALFORMED)
    )


def loc_exists(payload, loc: list, msg: str) -> bool:
    """The place an error names is in the request: every step but the last exists, and so does the
    last, except for a field reported missing (absent, or null where its default cannot apply)."""
    if loc == ["body"]:
        return True
    node = payload
    for step in loc[:-1]:
        if (isinstance(node, dict) and step in node) or (
            isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        ):
            node = node[step]
        else:
            return False
    last = loc[-1]
    present = (isinstance(node, dict) and last in node) or (isinstance(node, list) and isinstance(last, int) and last < len(node))
    if msg.startswith("field required"):  # absent, or (event_timestamp) null where now is not allowed
        return not present or node[last] is None
    return present


def assert_fileable_or_refused(payload, schema: RequestSchema, spec) -> None:
    try:
        parsed = parse_request(payload, schema, spec, now=NOW)
    except RequestError as exc:
        assert 400 <= exc.status < 500
        assert exc.errors and all(loc_exists(payload, e["loc"], e["msg"]) for e in exc.errors), exc.errors
        return
    n = parsed.rows
    for name, kind in schema.required.items():
        column = parsed.columns[name]
        assert len(column) == n
        if kind == NUMBER:
            values = np.asarray(column)
            assert values.dtype == np.float64
            present = values[~np.isnan(values)]
            lo, hi = schema.ranges.get(name, (None, None))
            assert (np.abs(present) <= MAX_MAGNITUDE).all()
            assert lo is None or (present >= lo).all()
            assert hi is None or (present <= hi).all()
        else:
            assert all(isinstance(v, str) and len(v) <= MAX_TEXT for v in column)
    if schema.needs_time:
        assert parsed.timestamps is not None
    if parsed.timestamps is not None:
        lo, hi = schema.horizon(NOW)
        assert len(parsed.timestamps) == n and str(parsed.timestamps.tz) == "UTC"
        assert ((parsed.timestamps >= lo) & (parsed.timestamps <= hi)).all()
    if parsed.event_ids is not None:
        assert all(v is None or (isinstance(v, str) and len(v) <= MAX_TEXT) for v in parsed.event_ids)


@pytest.mark.parametrize("spec_name", ["flight_spec", "elec2_spec"])
def test_any_request_is_fileable_or_refused_with_a_4xx_naming_its_place(spec_name, request):
    spec = request.getfixturevalue(spec_name)
    schema = request_schema(spec)

    @settings(PROPERTY, max_examples=300 if spec_name == "flight_spec" else 150)
    @given(payloads(schema))
    def check(payload):
        assert_fileable_or_refused(payload, schema, spec)

    check()


@pytest.fixture(scope="module")
def elec2_app(elec2_spec):
    """The real ASGI app around a ModelServer serving a fitted Elec2 pipeline (no online store)."""
    import pandas as pd

    from mlops_assets.core.rollout import Deployment
    from mlops_assets.core.training import fit
    from mlops_assets.server.app import ModelServer
    from mlops_assets.server.http import create_app
    from mlops_assets_tests.conftest import DATA_DIR

    frame = pd.read_csv(DATA_DIR / "elec2" / "elec2_with_timestamp.csv").iloc[:1500]
    frame["day"] = frame["day"].astype(str)
    frame["label"] = (frame["class"] == "UP").astype(int)
    model = fit(elec2_spec, frame)
    server = ModelServer(elec2_spec, lambda version: model, initial=Deployment(stable="1"))
    server.load_initial()
    assert server.serving is not None, server.load_error
    return create_app(server, admin_token="property-test-token")


def test_the_app_never_answers_5xx_for_a_body(elec2_spec, elec2_app):
    """Every generated body, sent as JSON with Python's NaN/Infinity extensions, through the real
    app (body limit, parsing, batching, scoring): 200 with one score per row, or a 4xx."""
    from starlette.testclient import TestClient

    schema = request_schema(elec2_spec)
    path = f"/v1/models/{elec2_spec.name}:predict"
    with TestClient(elec2_app) as client:

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(payloads(schema))
        def check(payload):
            try:
                body = json.dumps(payload)
            except (RecursionError, ValueError):  # deeper than json can write: send what a client would
                body = "[" * 100_000 + "]" * 100_000
            response = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code < 500, response.text
            if response.status_code == 200:
                rows = len(payload["instances"]) if "instances" in payload else len(next(iter(payload["inputs"].values())))
                assert len(response.json()["scores"]) == rows

        check()


def test_an_absent_event_time_column_is_named_once_as_a_column(flight_spec):
    """Found by the property test: a columnar request without the event_timestamp column, when now
    is outside the spec's horizon, names the column (not row 0 of a column that is not there)."""
    schema = request_schema(flight_spec)
    payload = {"inputs": {"distance": [1.0, 2.0], "dest": ["", ""], "carrier": ["", ""], "event_id": ["", ""],
                          "tailnum": [None, None], "origin": ["", ""]}}  # fmt: skip
    with pytest.raises(RequestError) as refused:
        parse_request(payload, schema, flight_spec, now=NOW)
    timestamp_errors = [e for e in refused.value.errors if "event_timestamp" in e["loc"]]
    assert [e["loc"] for e in timestamp_errors] == [["inputs", "event_timestamp"]]
    assert timestamp_errors[0]["msg"].startswith("field required for this spec")
    assert_fileable_or_refused(payload, schema, flight_spec)
