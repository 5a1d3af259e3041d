"""Data quality at ingest (issue 14, point 6, and the re-run of point 11), with real ingest runs.

* Duplicate events are a blocking check of the dataset with the spec's policy: ``drop`` keeps the
  first occurrence and says how many it dropped; ``block`` fails the partition.
* Every file the ingest refuses (truncated, rows of another day, text in a numeric column) is
  quarantined with a reason naming the file, row and column; nothing of it enters the lake, and a
  day ingested before keeps its partitions.
* A day ingested twice holds each event once downstream: dataset, feature month files, online store.
"""

from __future__ import annotations

import hashlib
from datetime import date

import dagster as dg
import pandas as pd
import pytest

from mlops_assets.resources import LakeStorage
from mlops_assets_tests.conftest import platform
from mlops_assets_tests.test_bad_input import failure_text

NAME = "flight_delays"
DAYS = ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-04"]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    events = [e for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    return {e.event_specific_data.check_name: e.event_specific_data for e in events}


@pytest.fixture(scope="module")
def home(tmp_path_factory, flight_spec):
    home = tmp_path_factory.mktemp("data_quality_home")
    with platform(home, [flight_spec]) as p:
        p.land(NAME, date(2013, 1, 1), len(DAYS))
        p.originals = {d: (home / "landing" / NAME / f"{d}.csv").read_text() for d in DAYS}
        assert p.run("register", NAME).success
        assert p.run("ingest", NAME, DAYS[0]).success
        yield p


def lake_file(p, stage: str, day: str):
    return p.home / "lake" / stage / NAME / f"{day}.parquet"


def reland(p, day: str, text: str) -> None:
    (p.home / "landing" / NAME / f"{day}.csv").write_text(text)


def quarantine_reason(p, day: str) -> str:
    folder = p.home / "quarantine" / NAME
    assert (folder / f"{day}.csv").exists(), f"{day}.csv was not quarantined"
    assert not (p.home / "landing" / NAME / f"{day}.csv").exists(), "a refused file stays in the landing zone"
    return (folder / f"{day}.csv.reason.txt").read_text()


# --- the core rules, on small frames (milliseconds) ---------------------------------------------


def test_find_duplicates_counts_repeats_after_the_first_and_names_their_rows(flight_spec):
    from mlops_assets.core.validation import duplicates_check, find_duplicates, without_duplicates

    raw = pd.DataFrame({"a": ["1", "2", "1", "3", "2", None, None], "b": ["x", "y", "x", "z", "q", None, None]})
    found = find_duplicates(raw)
    assert found.count == 2 and found.rows() == [3, 7] and found.rule == "identical in every column"
    assert without_duplicates(raw, found)["a"].tolist()[:4] == ["1", "2", "3", "2"]

    dropped = duplicates_check(found, flight_spec, "f.csv")
    assert dropped.passed and dropped.metadata["dropped"] == 2 and "rows 3, 7" in dropped.description
    block = flight_spec.model_copy(update={"checks": flight_spec.checks.model_copy(update={"duplicates": "block"})})
    blocked = duplicates_check(found, block, "f.csv")
    assert not blocked.passed and blocked.metadata["dropped"] == 0 and "checks.duplicates: block" in blocked.description

    by_id = find_duplicates(pd.DataFrame({"event_id": ["e1", "e2", "e1", None, None], "v": ["1", "2", "9", "3", "3"]}))
    assert by_id.count == 1 and by_id.rows() == [3] and "event_id" in by_id.rule  # same id, other values: a repeat
    assert duplicates_check(find_duplicates(raw.iloc[:2]), flight_spec, "f.csv").metadata["duplicate_rows"] == 0


def test_a_csv_cut_mid_row_is_refused_naming_the_line():
    from mlops_assets.core.sources import DataError, parse_file

    whole = b"a,b,c\n1,2,3\n4,5,6\n"
    assert len(parse_file(whole, "csv", "d.csv")) == 2
    assert len(parse_file(whole.rstrip(b"\n"), "csv", "d.csv")) == 2  # no final line end, but a whole row
    with pytest.raises(DataError, match=r"^landing/d.csv: line 3: truncated: 2 of 3 fields"):
        parse_file(whole[:-3], "csv", "landing/d.csv")


# --- duplicates ---------------------------------------------------------------------------------


def test_a_file_with_every_row_twice_is_ingested_once_and_the_check_says_so(home):
    day = DAYS[1]
    once = pd.read_csv(home.home / "landing" / NAME / f"{day}.csv", dtype=str)
    pd.concat([once, once], ignore_index=True).to_csv(home.home / "landing" / NAME / f"{day}.csv", index=False)
    result = home.run("ingest", NAME, day)
    assert result.success

    dataset = pd.read_parquet(lake_file(home, "dataset", day))
    assert len(dataset) == len(once) and dataset["event_id"].is_unique
    check = check_evaluations(result)["duplicates"]
    assert check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["duplicate_rows"].value == len(once) and check.metadata["dropped"].value == len(once)
    assert check.metadata["rows"].value.startswith(f"{len(once) + 1}, {len(once) + 2},")  # the second copy's rows
    assert "checks.duplicates: drop" in check.description and "dropped" in check.description
    events = LakeStorage(root=str(home.home)).read_feature_day(NAME, "events", day)
    assert len(events) == len(once)  # features see each flight once


def test_a_clean_day_passes_the_duplicates_check_with_nothing_dropped(home):
    checks = home.check_results(f"{NAME}/dataset")
    assert set(checks) == {"schema", "nulls", "ranges", "row_count", "duplicates"}
    evaluation = home.instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000, ascending=True
    )
    first_day = next(
        r.event_log_entry.dagster_event.event_specific_data
        for r in evaluation
        if r.event_log_entry.dagster_event.event_specific_data.check_name == "duplicates"
    )
    assert first_day.passed and first_day.metadata["duplicate_rows"].value == 0


def test_duplicates_block_the_partition_when_the_spec_says_block(tmp_path, home, flight_spec):
    spec = flight_spec.model_copy(update={"checks": flight_spec.checks.model_copy(update={"duplicates": "block"})})
    with platform(tmp_path, [spec]) as p:
        landing = tmp_path / "landing" / NAME
        landing.mkdir(parents=True)
        once = home.originals[DAYS[2]]
        body = once.splitlines()
        (landing / f"{DAYS[2]}.csv").write_text("\n".join([*body, body[1], body[2]]) + "\n")  # two rows again at the end
        result = p.run("ingest", NAME, DAYS[2])
        assert not result.success  # the blocking check stops the run
        check = check_evaluations(result)["duplicates"]
        n = len(body) - 1
        assert not check.passed and check.metadata["duplicate_rows"].value == 2 and check.metadata["dropped"].value == 0
        assert f"rows {n + 1}, {n + 2}" in check.description and "checks.duplicates: block" in check.description
        assert (tmp_path / "lake" / "dataset_rejected" / NAME / f"{DAYS[2]}.parquet").exists()
        assert not (tmp_path / "lake" / "dataset" / NAME / f"{DAYS[2]}.parquet").exists()
        assert "2013-01-03" not in p.instance.get_materialized_partitions(dg.AssetKey([NAME, "features"]))


# --- refused files are quarantined --------------------------------------------------------------


def test_a_truncated_relanded_file_is_quarantined_and_the_valid_day_is_kept(home):
    day = DAYS[0]
    before = {stage: digest(lake_file(home, stage, day)) for stage in ("raw", "dataset")}
    text = home.originals[day]
    cut = text[: len(text) // 2].rsplit(",", 3)[0]  # an interrupted copy: stops mid-row, no line end
    reland(home, day, cut)
    result = home.run("ingest", NAME, day)
    assert not result.success
    line = cut.count("\n") + 1
    message = failure_text(result)
    assert f"landing/{NAME}/{day}.csv: line {line}: truncated" in message and "quarantine" in message
    reason = quarantine_reason(home, day)
    assert f"line {line}: truncated" in reason
    assert {stage: digest(lake_file(home, stage, day)) for stage in ("raw", "dataset")} == before  # nothing ingested is lost
    reland(home, day, text)  # the good file again, for the tests that follow


def test_a_file_holding_another_days_rows_is_quarantined_naming_the_rows(home):
    day, other = DAYS[2], DAYS[3]
    rows = home.originals[day].splitlines()
    foreign = home.originals[other].splitlines()[1:4]
    reland(home, day, "\n".join([*rows[:6], *foreign, *rows[6:]]) + "\n")  # rows 6-8 are the next day's
    result = home.run("ingest", NAME, day)
    assert not result.success
    reason = quarantine_reason(home, day)
    assert f"landing/{NAME}/{day}.csv: row 6:" in reason and "(3 such rows)" in reason
    assert "6 (2013-01-04), 7 (2013-01-04), 8 (2013-01-04)" in reason
    assert reason.strip() in failure_text(result)
    assert not lake_file(home, "raw", day).exists() and not lake_file(home, "dataset", day).exists()


def test_text_in_a_numeric_column_is_quarantined_naming_column_and_row(home):
    day = DAYS[3]
    df = pd.read_csv(pd.io.common.StringIO(home.originals[day]), dtype=str)
    df.loc[4, "distance"] = "far"
    df.to_csv(home.home / "landing" / NAME / f"{day}.csv", index=False)
    result = home.run("ingest", NAME, day)
    assert not result.success
    reason = quarantine_reason(home, day)
    assert f"landing/{NAME}/{day}.csv: column 'distance' row 5: 'far' is not a number" in reason
    assert not lake_file(home, "raw", day).exists() and not lake_file(home, "dataset", day).exists()
    assert day not in home.instance.get_materialized_partitions(dg.AssetKey([NAME, "raw"]))


# --- a day re-run end to end --------------------------------------------------------------------


def test_a_day_run_twice_holds_each_event_once_downstream(home):
    day = DAYS[0]
    lake, feast = home.resources()["lake"], home.resources()["feast"]
    spec = home.specs[NAME]
    first = {
        "dataset": pd.read_parquet(lake_file(home, "dataset", day)),
        "events": lake.read_feature_day(NAME, "events", day),
        "rates": lake.read_feature_day(NAME, "carrier_delay_rate", day),
        "online": feast.online_row_count(spec),
    }
    assert home.run("ingest", NAME, day).success
    dataset = pd.read_parquet(lake_file(home, "dataset", day))
    pd.testing.assert_frame_equal(dataset, first["dataset"])
    month = pd.read_parquet(lake.feature_table_dir(NAME, "events") + f"/{day[:7]}.parquet")
    assert month["event_id"].is_unique  # the month file holds every day's events once
    assert (month["_partition"] == day).sum() == len(dataset)
    pd.testing.assert_frame_equal(lake.read_feature_day(NAME, "events", day), first["events"])
    rates = lake.read_feature_day(NAME, "carrier_delay_rate", day)
    assert rates["carrier"].is_unique and len(rates) == len(first["rates"])
    assert feast.online_row_count(spec) == first["online"]
