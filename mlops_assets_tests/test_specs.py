"""Unit tests of the spec schema and loader: the bundled spec, the example spec, invalid specs, MLOPS_SPECS."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from mlops_assets.specs import (
    BUNDLED_SPEC_DIR,
    SPEC_PATHS_ENV,
    LookupFeature,
    ModelSpec,
    PastRateFeature,
    SpecError,
    YearsSinceFeature,
    find_spec,
    load_spec,
    load_specs,
)

REPO = Path(__file__).resolve().parents[1]
FLIGHTS_YAML = BUNDLED_SPEC_DIR / "flight_delays.yaml"
ELEC2_YAML = REPO / "examples" / "specs" / "elec2.yaml"


@pytest.fixture(autouse=True)
def _no_extra_specs(monkeypatch):
    """Only the bundled specs, whatever the caller's environment lists."""
    monkeypatch.delenv(SPEC_PATHS_ENV, raising=False)


@pytest.fixture
def flights_raw() -> dict:
    return yaml.safe_load(FLIGHTS_YAML.read_text())


def write_spec(folder: Path, raw: dict, filename: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --- the bundled flight_delays spec ------------------------------------------------------------


def test_bundled_flight_spec_loads_by_name():
    spec = find_spec("flight_delays")
    assert isinstance(spec, ModelSpec)
    assert spec.name == "flight_delays"
    assert spec.source.timestamp.timezone == "America/New_York"
    assert spec.target.task == "classification" and spec.target.positive == {"greater_than": 15}
    assert spec.target.missing == "positive"
    assert spec.promotion.metric == "roc_auc" and spec.higher_is_better


def test_flight_spec_required_source_columns():
    spec = find_spec("flight_delays")
    assert spec.required_source_columns == [
        "year",
        "month",
        "day",
        "hour",
        "minute",  # timestamp parts
        "carrier",
        "origin",
        "dest",
        "tailnum",  # entities
        "dep_delay",  # target
        "distance",  # the only column feature that is not an entity
    ]


def test_flight_spec_feature_groups():
    spec = find_spec("flight_delays")
    assert spec.categorical_features == ["carrier", "origin", "dest"]

    rates = spec.past_rate_features
    assert all(isinstance(f, PastRateFeature) for f in rates)
    assert [(f.name, f.by, f.window_days, f.prior_weight) for f in rates] == [
        ("carrier_delay_rate", ["carrier"], 14, 20.0),
        ("route_delay_rate", ["origin", "dest"], 28, 20.0),
        ("origin_delay_rate", ["origin"], 7, 20.0),
    ]

    lookups = spec.lookup_features
    assert all(isinstance(f, LookupFeature) for f in lookups)
    assert [(f.name, f.table) for f in lookups] == [
        ("temp", "weather"),
        ("humid", "weather"),
        ("wind_speed", "weather"),
        ("wind_gust", "weather"),
        ("precip", "weather"),
        ("pressure", "weather"),
        ("visib", "weather"),
        ("plane_year", "planes"),
        ("seats", "planes"),
    ]
    assert spec.lookups["planes"].output_columns == ["plane_year", "seats"]
    assert spec.lookups["weather"].ttl_hours == 2

    derived = spec.derived_features
    assert all(isinstance(f, YearsSinceFeature) for f in derived)
    assert [(f.name, f.of) for f in derived] == [("plane_age", "plane_year")]


def test_spec_hash_is_stable_and_tracks_changes():
    a, b = find_spec("flight_delays"), find_spec("flight_delays")
    assert a is not b
    assert a.spec_hash == b.spec_hash
    assert len(a.spec_hash) == 12 and all(c in "0123456789abcdef" for c in a.spec_hash)

    changed_top = a.model_copy(update={"description": a.description + " (edited)"})
    changed_nested = a.model_copy(update={"promotion": a.promotion.model_copy(update={"margin": 0.01})})
    assert changed_top.spec_hash != a.spec_hash
    assert changed_nested.spec_hash != a.spec_hash
    assert changed_top.spec_hash != changed_nested.spec_hash
    # the copy does not change the original
    assert a.spec_hash == b.spec_hash


# --- the example elec2 spec --------------------------------------------------------------------


def test_example_elec2_spec_loads():
    spec = load_spec(ELEC2_YAML)
    assert spec.name == "elec2"
    assert spec.source.timestamp.column == "timestamp"
    assert spec.target.positive == {"equals": "UP"}
    assert spec.feature_names == ["day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]
    assert spec.categorical_features == ["day"]
    assert spec.past_rate_features == [] and spec.lookup_features == [] and spec.derived_features == []
    assert spec.required_source_columns == ["timestamp", "class", *spec.feature_names]


# --- invalid specs: SpecError naming the file and the problem ----------------------------------


def _unknown_lookup(raw):
    raw["features"].append({"kind": "lookup", "name": "runway", "table": "airports"})


def _rate_by_non_entity(raw):
    rate = next(f for f in raw["features"] if f["name"] == "carrier_delay_rate")
    rate["by"] = ["flight"]


def _missing_reason_absent(raw):
    del raw["target"]["missing_reason"]


def _regression_metric_on_classification(raw):
    raw["promotion"]["metric"] = "rmse"


def _duplicate_feature(raw):
    raw["features"].append({"kind": "column", "name": "distance"})


def _camel_case_name(raw):
    raw["name"] = "FlightDelays"


def _holdout_equals_window(raw):
    raw["training"]["holdout_days"] = raw["training"]["window_days"]


def _holdout_exceeds_window(raw):
    raw["training"]["holdout_days"] = raw["training"]["window_days"] + 5


def _entity_as_numeric_feature(raw):
    raw["features"].append({"kind": "column", "name": "carrier_code", "column": "carrier"})  # an entity: keys, text


def _range_on_an_entity(raw):
    raw["checks"].setdefault("ranges", {})["origin"] = [0, 10]


INVALID = [
    (_unknown_lookup, "unknown lookup table 'airports'"),
    (_entity_as_numeric_feature, "column 'carrier' is an entity, read as text"),
    (_range_on_an_entity, "checks.ranges: ['origin'] are read as text"),
    (_rate_by_non_entity, "group columns ['flight'] are not declared entities"),
    (_missing_reason_absent, "missing_reason"),
    (_regression_metric_on_classification, "promotion.metric 'rmse' does not fit a classification target"),
    (_duplicate_feature, "feature names repeated: ['distance']"),
    (_camel_case_name, "'FlightDelays' must be lower_snake_case"),
    (_holdout_equals_window, "holdout_days must be smaller than training.window_days"),
    (_holdout_exceeds_window, "holdout_days must be smaller than training.window_days"),
]


@pytest.mark.parametrize("mutate, problem", [pytest.param(m, p, id=m.__name__.strip("_")) for m, p in INVALID])
def test_invalid_spec_names_file_and_problem(tmp_path, flights_raw, mutate, problem):
    # the unmodified text is valid: the failure below is due to the mutation alone
    load_spec(write_spec(tmp_path / "ok", copy.deepcopy(flights_raw)))

    mutate(flights_raw)
    path = write_spec(tmp_path / "bad", flights_raw)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message
    assert problem in message


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="cannot read spec") as err:
        load_spec(path)
    assert str(path) in str(err.value)


# --- MLOPS_SPECS -------------------------------------------------------------------------------


def test_mlops_specs_folder_adds_specs(tmp_path, flights_raw, monkeypatch):
    before = [s.name for s in load_specs()]
    assert "flight_delays" in before and "flights_copy" not in before

    flights_raw["name"] = "flights_copy"
    write_spec(tmp_path / "more", flights_raw, "flights_copy.yaml")
    monkeypatch.setenv(SPEC_PATHS_ENV, str(tmp_path / "more"))

    names = [s.name for s in load_specs()]
    assert names == [*before, "flights_copy"]
    assert find_spec("flights_copy").name == "flights_copy"


def test_mlops_specs_accepts_several_entries_files_and_folders(tmp_path, flights_raw, monkeypatch):
    flights_raw["name"] = "flights_a"
    folder = tmp_path / "folder"
    write_spec(folder, flights_raw, "a.yaml")
    monkeypatch.setenv(SPEC_PATHS_ENV, os.pathsep.join([str(folder), str(ELEC2_YAML)]))
    names = {s.name for s in load_specs()}
    assert {"flight_delays", "flights_a", "elec2"} <= names


def test_two_specs_with_the_same_name_raise(tmp_path, flights_raw, monkeypatch):
    flights_raw["description"] = "same name, different file"
    dup = write_spec(tmp_path / "dup", flights_raw, "other_flights.yaml")
    monkeypatch.setenv(SPEC_PATHS_ENV, str(tmp_path / "dup"))
    with pytest.raises(SpecError) as err:
        load_specs()
    assert str(dup) in str(err.value)
    assert "'flight_delays' is already loaded" in str(err.value)


def test_unknown_spec_name_lists_known_ones():
    with pytest.raises(SpecError, match="no spec named 'nope'") as err:
        find_spec("nope")
    assert "flight_delays" in str(err.value)


# --- the spec's file: named by every later problem, never part of its content -------------------


def test_a_loaded_spec_keeps_its_file_outside_its_content(tmp_path, flights_raw):
    path = write_spec(tmp_path / "a", copy.deepcopy(flights_raw))
    spec = load_spec(path)
    assert spec.file == str(path)
    assert spec.model_copy(update={"description": "x"}).file == str(path)  # copies keep it
    moved = load_spec(write_spec(tmp_path / "b", copy.deepcopy(flights_raw)))
    assert moved.spec_hash == spec.spec_hash  # where a spec lives changes no code version
    assert "_file" not in spec.model_dump() and str(path) not in spec.model_dump_json()
    assert ModelSpec.model_validate(flights_raw).file == "<spec flight_delays>"


def test_a_date_column_may_take_its_time_of_day_from_parts(tmp_path, flights_raw):
    from mlops_assets.specs import TimestampSpec

    ts = TimestampSpec(column="dteday", parts={"hour": "hr"})
    assert ts.source_columns == ["dteday", "hr"]
    with pytest.raises(ValueError, match="takes only the time of day from 'parts'"):
        TimestampSpec(column="dteday", parts={"year": "yr", "hour": "hr"})
    with pytest.raises(ValueError, match="takes only the time of day"):
        TimestampSpec(column="dteday", parts={"minute": "mi"})  # minutes without their hour
    with pytest.raises(ValueError, match="needs 'column' or 'parts'"):
        TimestampSpec()
    # how to read a column of numbers: an epoch unit, or a date format; never both, never for parts
    assert TimestampSpec(column="ts", unit="s").unit == "s" and TimestampSpec(column="d", format="%Y%m%d").format
    with pytest.raises(ValueError, match="'unit' \\(epoch numbers\\) or 'format'"):
        TimestampSpec(column="ts", unit="s", format="%Y")
    with pytest.raises(ValueError, match="say how to read 'column'"):
        TimestampSpec(parts={"year": "y", "month": "m", "day": "d"}, unit="s")
    with pytest.raises(ValueError, match="carries its time of day"):
        TimestampSpec(column="ts", parts={"hour": "hr"}, unit="s")
    with pytest.raises(ValueError):
        TimestampSpec(column="ts", unit="seconds")
    flights_raw["source"]["timestamp"] = {"column": "time_hour", "parts": {"hour": "hour"}}
    spec = load_spec(write_spec(tmp_path / "c", flights_raw))
    assert spec.required_source_columns[:2] == ["time_hour", "hour"]
