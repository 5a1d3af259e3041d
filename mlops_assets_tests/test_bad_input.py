"""Bad landed files fail clearly (file, column, row), lose nothing already ingested, stop nothing else."""

from __future__ import annotations

import hashlib
from datetime import date

import dagster as dg
import pandas as pd
import pytest

from mlops_assets.resources import LakeStorage
from mlops_assets_tests.conftest import platform


def failure_text(result) -> str:
    """Every failure message of a run, as a person reads it in the UI."""
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                texts.append(data.user_failure_data.description)
            texts.append(data.error.message if data.error else "")
    return "\n".join(texts)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bad(tmp_path_factory, flight_spec):
    home = tmp_path_factory.mktemp("bad_input_home")
    with platform(home, [flight_spec]) as p:
        p.land("flight_delays", date(2013, 1, 1), 6)
        assert p.run("register", "flight_delays").success
        for day in ("2013-01-01", "2013-01-02"):
            assert p.run("ingest", "flight_delays", day).success
        p.before = {
            stage: {d: digest(home / "lake" / stage / "flight_delays" / f"{d}.parquet") for d in ("2013-01-01", "2013-01-02")}
            for stage in ("raw", "dataset")
        }
        lake = LakeStorage(root=str(home))  # feature rows live in month files: compared as rows
        p.before_features = {d: lake.read_feature_day("flight_delays", "events", d) for d in ("2013-01-01", "2013-01-02")}
        landing = home / "landing" / "flight_delays"
        # 2013-01-03: a malformed CSV (a line with too many fields, as a truncated export would give)
        lines = (landing / "2013-01-03.csv").read_text().splitlines()
        lines.insert(7, lines[7] + ",extra,fields,that,do,not,belong")
        (landing / "2013-01-03.csv").write_text("\n".join(lines) + "\n")
        # 2013-01-04: a file missing the target column
        df = pd.read_csv(landing / "2013-01-04.csv", dtype=str)
        df.drop(columns=["dep_delay"]).to_csv(landing / "2013-01-04.csv", index=False)
        # 2013-01-05: parses, but breaks a range rule of the spec (negative distance)
        df = pd.read_csv(landing / "2013-01-05.csv", dtype=str)
        df.loc[:4, "distance"] = "-5"
        df.to_csv(landing / "2013-01-05.csv", index=False)
        p.results = {d: p.run("ingest", "flight_delays", d) for d in ("2013-01-03", "2013-01-04", "2013-01-05", "2013-01-06")}
        yield p


def test_malformed_file_fails_naming_the_file_and_line(bad):
    result = bad.results["2013-01-03"]
    assert not result.success
    text = failure_text(result)
    assert "landing/flight_delays/2013-01-03.csv" in text
    assert "malformed CSV" in text and "line 8" in text


def test_missing_column_fails_naming_the_file_and_column(bad):
    result = bad.results["2013-01-04"]
    assert not result.success
    text = failure_text(result)
    assert "landing/flight_delays/2013-01-04.csv" in text
    assert "missing column 'dep_delay'" in text and "flight_delays" in text


def test_failed_partitions_write_nothing_downstream(bad):
    lake = bad.home / "lake"
    for day in ("2013-01-03", "2013-01-04"):
        assert not (lake / "raw" / "flight_delays" / f"{day}.parquet").exists()
        assert LakeStorage(root=str(bad.home)).read_feature_day("flight_delays", "events", day) is None


def test_range_violation_blocks_downstream_through_the_blocking_check(bad):
    result = bad.results["2013-01-05"]
    assert not result.success  # the blocking check fails the run...
    evaluations = [e for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    by_name = {e.event_specific_data.check_name: e.event_specific_data for e in evaluations}
    assert by_name["ranges"].passed is False
    assert "distance: 5 values outside [1.0, 6000.0]" in by_name["ranges"].metadata["violations"].value
    assert by_name["schema"].passed and by_name["row_count"].passed
    # ...the partition is kept aside for triage, out of the lake that features and training read...
    assert (bad.home / "lake" / "dataset_rejected" / "flight_delays" / "2013-01-05.parquet").exists()
    assert not (bad.home / "lake" / "dataset" / "flight_delays" / "2013-01-05.parquet").exists()
    # ...and features/online store for that day were never computed
    assert LakeStorage(root=str(bad.home)).read_feature_day("flight_delays", "events", "2013-01-05") is None
    materialized = bad.instance.get_materialized_partitions(dg.AssetKey.from_user_string("flight_delays/features"))
    assert "2013-01-05" not in materialized


def test_earlier_partitions_stay_intact_and_the_pipeline_keeps_going(bad):
    for stage, digests in bad.before.items():
        for day, before in digests.items():
            assert digest(bad.home / "lake" / stage / "flight_delays" / f"{day}.parquet") == before
    assert bad.results["2013-01-06"].success
    lake = LakeStorage(root=str(bad.home))
    for day, rows in bad.before_features.items():  # 01-06 rewrote their month file: their rows are unchanged
        assert rows is not None and len(rows) > 500
        pd.testing.assert_frame_equal(lake.read_feature_day("flight_delays", "events", day), rows)
    assert len(lake.read_feature_day("flight_delays", "events", "2013-01-06")) > 500
    # the next day's past rates were computed from validated days only (01-01, 01-02), not the rejected 01-05
    assert bad.latest("flight_delays/features")["history_days_available"] == 2
    materialized = bad.instance.get_materialized_partitions(dg.AssetKey.from_user_string("flight_delays/online_features"))
    assert materialized == {"2013-01-01", "2013-01-02", "2013-01-06"}


def test_refused_files_are_quarantined_with_their_reason(bad):
    """A file the ingest run refuses leaves the landing zone for quarantine/, its reason beside it,
    as the landing sensor does with the files it refuses; a file rejected by a check of the spec stays
    (its partition is kept under dataset_rejected/ for triage)."""
    quarantine, landing = bad.home / "quarantine" / "flight_delays", bad.home / "landing" / "flight_delays"
    reasons = {p.name.removesuffix(".reason.txt"): p.read_text() for p in quarantine.glob("*.reason.txt")}
    assert set(reasons) == {"2013-01-03.csv", "2013-01-04.csv"}
    assert "malformed CSV" in reasons["2013-01-03.csv"] and "line 8" in reasons["2013-01-03.csv"]
    assert "missing column 'dep_delay'" in reasons["2013-01-04.csv"]
    assert (quarantine / "2013-01-03.csv").exists() and not (landing / "2013-01-03.csv").exists()
    assert "quarantine/flight_delays/2013-01-04.csv" in failure_text(bad.results["2013-01-04"])
    assert (landing / "2013-01-05.csv").exists()
