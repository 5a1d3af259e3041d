"""The landing sensor: good files become ingest runs for their day; bad files go to quarantine with
the reason, and the sensor keeps going."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pandas as pd


def test_landing_sensor_requests_good_days_and_quarantines_bad_files(tmp_path, monkeypatch, flight_spec):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    from mlops_assets.cli import land
    from mlops_assets.environments import resources
    from mlops_assets.factory import build_definitions

    defs = build_definitions([flight_spec])
    landing = tmp_path / "landing" / "flight_delays"
    land(flight_spec, date(2013, 1, 1), 4)
    (landing / "notes.csv").write_text("hello\n")
    lines = (landing / "2013-01-03.csv").read_text().splitlines()
    lines.insert(3, lines[3] + ",1,2,3")
    (landing / "2013-01-03.csv").write_text("\n".join(lines) + "\n")
    pd.read_csv(landing / "2013-01-04.csv", dtype=str).drop(columns=["carrier"]).to_csv(landing / "2013-01-04.csv", index=False)
    pd.read_csv(landing / "2013-01-01.csv", dtype=str).to_csv(landing / "2012-12-31.csv", index=False)

    sensor = defs.resolve_sensor_def("landing_flight_delays")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"lake": resources()["lake"]}, definitions=defs)
        result = sensor.evaluate_tick(ctx)
        assert sorted(r.partition_key for r in result.run_requests) == ["2013-01-01", "2013-01-02"]
        assert all(r.tags["mlops/landed_file"].startswith(r.partition_key) for r in result.run_requests)

        quarantine = tmp_path / "quarantine" / "flight_delays"
        reasons = {p.name.removesuffix(".reason.txt"): p.read_text() for p in quarantine.glob("*.reason.txt")}
        assert set(reasons) == {"notes.csv", "2013-01-03.csv", "2013-01-04.csv", "2012-12-31.csv"}
        assert "file name must start with the day" in reasons["notes.csv"]
        assert "malformed CSV" in reasons["2013-01-03.csv"] and "line 4" in reasons["2013-01-03.csv"]
        assert "missing column 'carrier'" in reasons["2013-01-04.csv"]
        assert "outside the partitions" in reasons["2012-12-31.csv"]
        assert sorted(p.name for p in landing.iterdir()) == ["2013-01-01.csv", "2013-01-02.csv"]

        again = sensor.evaluate_tick(
            dg.build_sensor_context(
                instance=instance, cursor=result.cursor, resources={"lake": resources()["lake"]}, definitions=defs
            )
        )
        assert again.run_requests == []  # nothing new

        land(flight_spec, date(2013, 1, 2), 1)  # the day is landed again (corrected upstream)
        third = sensor.evaluate_tick(
            dg.build_sensor_context(
                instance=instance, cursor=again.cursor, resources={"lake": resources()["lake"]}, definitions=defs
            )
        )
        assert [r.partition_key for r in third.run_requests] == ["2013-01-02"]
        assert third.run_requests[0].run_key != result.run_requests[1].run_key


def test_landing_sensor_skips_a_file_relanded_with_bytes_already_ingested(tmp_path, flight_spec):
    """A file landed again with the same bytes (a retried upload) gets a new stamp, so only the
    content check (the day's latest raw materialization has the same SHA-256) keeps the sensor from
    ingesting it twice; different bytes for the day are ingested again."""
    import json
    import os

    from mlops_assets_tests.conftest import QUIET, platform

    with platform(tmp_path, [flight_spec]) as p:
        p.land("flight_delays", date(2013, 1, 1), 1)
        sensor = p.defs.resolve_sensor_def("landing_flight_delays")
        lake = p.resources()["lake"]

        def tick(cursor):
            context = dg.build_sensor_context(instance=p.instance, cursor=cursor, resources={"lake": lake}, definitions=p.defs)
            return sensor.evaluate_tick(context)

        first = tick(None)
        assert [r.partition_key for r in first.run_requests] == ["2013-01-01"]
        # the run the sensor asked for, for real: its raw step records the file's SHA-256
        job = p.defs.resolve_job_def("ingest_flight_delays")
        ran = job.execute_in_process(
            instance=p.instance,
            partition_key="2013-01-01",
            asset_selection=[dg.AssetKey.from_user_string("flight_delays/raw")],
            tags=first.run_requests[0].tags,
            run_config=QUIET,
        )
        assert ran.success

        file = tmp_path / "landing" / "flight_delays" / "2013-01-01.csv"
        content = file.read_bytes()
        file.write_bytes(content)  # the same bytes landed again, later
        later = os.stat(file).st_mtime + 120
        os.utime(file, (later, later))
        second = tick(first.cursor)
        assert json.loads(second.cursor)["2013-01-01.csv"] != json.loads(first.cursor)["2013-01-01.csv"]  # a new stamp...
        assert second.run_requests == []  # ...but bytes already ingested: no second run

        df = pd.read_csv(file, dtype=str)
        df.loc[0, "dep_delay"] = "999"  # a corrected file for the day
        df.to_csv(file, index=False)
        third = tick(second.cursor)
        assert [r.partition_key for r in third.run_requests] == ["2013-01-01"]


def test_the_first_day_a_fresh_platform_ingests_needs_no_feature_registry(tmp_path, flight_spec):
    """The first run the sensor asks for on a fresh platform, and every day a replay's warm-up ingests,
    come before ``feature_registry`` has run (the first training registers it): with no view
    registered there is nothing to write online, neither the day nor the next day's rates, and the
    ingest succeeds (writing the next day's rates failed every such day once)."""
    from mlops_assets_tests.conftest import platform

    with platform(tmp_path, [flight_spec]) as p:
        p.land("flight_delays", date(2013, 1, 1), 1)
        assert p.run("ingest", "flight_delays", "2013-01-01").success
        online_step = p.latest("flight_delays/online_features")
        assert online_step["next_day_rates"] == "none" and online_step["feature_views"] == []
