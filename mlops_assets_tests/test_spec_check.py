"""Specs fail early: a spec that names a column its data lacks, an estimator that cannot be imported,
or a timestamp that leaves out the hour its data has fails before any data is ingested, at
``mlops check``, at the landing sensor's first tick and at the code location's load, and every
message names the spec file and the field to edit."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from mlops_assets_tests.conftest import ELEC2_SPEC, REPO


def write_spec(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def elec2_raw() -> dict:
    return yaml.safe_load(ELEC2_SPEC.read_text())


def flights_raw() -> dict:
    from mlops_assets.specs import BUNDLED_SPEC_DIR

    return yaml.safe_load((BUNDLED_SPEC_DIR / "flight_delays.yaml").read_text())


def hourly_source(folder: Path, days: int = 3) -> Path:
    """Hourly events whose date and hour are separate columns (as UCI Bike Sharing ships them)."""
    rows = [
        {"dteday": f"2020-01-{d:02d}", "hr": h, "temp": round(0.3 + 0.01 * h, 2), "cnt": 10 * h + d}
        for d in range(1, days + 1)
        for h in range(24)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "hourly.csv", index=False)
    return folder / "hourly.csv"


def regression_raw(name: str, source: Path, timestamp: dict, target: str, features: list[dict], csv: dict | None = None) -> dict:
    """A regression spec of a constructed CSV (Ridge, rmse, partitions of January 2020)."""
    return {
        "name": name,
        "description": f"hourly {target}",
        "source": {"path": str(source), "format": "csv", "timestamp": timestamp, **({"csv": csv} if csv is not None else {})},
        "target": {"column": target, "task": "regression"},
        "features": features,
        "estimator": {"class": "sklearn.linear_model.Ridge"},
        "promotion": {"metric": "rmse"},
        "partitions": {"start": "2020-01-01", "end": "2020-02-01"},
    }


def hourly_raw(source: Path, with_hour: bool) -> dict:
    timestamp = {"column": "dteday", "timezone": "UTC", **({"parts": {"hour": "hr"}} if with_hour else {})}
    features = [{"kind": "column", "name": "hr"}, {"kind": "column", "name": "temp"}]
    return regression_raw("hourly_rentals", source, timestamp, "cnt", features)


def typed_day(spec, day: date) -> pd.DataFrame:
    """One day of a spec's source as the landing command extracts it and the dataset stage types it."""
    from mlops_assets.core.sources import extract_day, read_table
    from mlops_assets.core.validation import clean_events

    table = read_table(spec.source.path, spec.source.format, spec.source.csv.options())
    landed = extract_day(table, spec.source.timestamp, day, spec.source.path)
    return clean_events(landed.reset_index(drop=True), spec, day, f"landing/{day}")


def run_check(capsys, *specs: Path) -> tuple[int, str, str]:
    from mlops_assets.cli import main

    rc = main(["check", *[a for s in specs for a in ("--spec", str(s))]])
    out = capsys.readouterr()
    return rc, out.out, out.err


# --- mlops check ---------------------------------------------------------------------------------


def test_check_passes_the_bundled_and_example_specs(capsys):
    from mlops_assets.specs import BUNDLED_SPEC_DIR

    rc, out, err = run_check(capsys, ELEC2_SPEC, BUNDLED_SPEC_DIR / "flight_delays.yaml")
    assert rc == 0, err
    assert err == ""
    assert f"{ELEC2_SPEC}: ok: elec2: 9 source columns, 7 features" in out
    assert "flight_delays.yaml: ok: flight_delays: 11 source columns, 2 lookup table(s), 19 features" in out


def test_check_names_file_and_field_of_a_misspelled_feature_column(tmp_path, capsys):
    raw = elec2_raw()
    raw["features"][2] = {"kind": "column", "name": "nswprise"}  # nswprice
    raw["features"][4] = {"kind": "column", "name": "vic_price", "column": "vicprise"}  # vicprice
    path = write_spec(tmp_path / "elec2_typo.yaml", raw)
    rc, out, err = run_check(capsys, path)
    assert rc == 1 and "ok:" not in out
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"{path}: features[2].name: 'nswprise' is not a column of the source (columns: date, day,")
    assert lines[1].startswith(f"{path}: features[4].column: 'vicprise' is not a column of the source")


def test_check_names_a_misspelled_entity_and_lookup_column(tmp_path, capsys):
    raw = flights_raw()
    raw["entities"][3] = "tailnumb"  # tailnum: also the entity the planes table joins on
    raw["lookups"]["planes"]["entity"] = "tailnumb"
    raw["lookups"]["weather"]["columns"][0] = "tmp"  # temp
    raw["lookups"]["weather"]["rename"] = {"tmp": "temp"}
    path = write_spec(tmp_path / "flights_typo.yaml", raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1
    assert f"{path}: entities[3]: 'tailnumb' is not a column of the source" in err
    assert f"{path}: lookups.weather.columns[0]: 'tmp' is not a column of lookup table 'weather'" in err
    assert len(err.splitlines()) == 2, err


def test_check_names_a_misspelled_estimator_class_and_parameter(tmp_path, capsys):
    raw = elec2_raw()
    raw["estimator"]["class"] = "sklearn.ensemble.HistGradientBoostingClasifier"
    bad_class = write_spec(tmp_path / "class.yaml", raw)
    raw = elec2_raw()
    raw["estimator"]["class"] = "sklearn.ensembles.HistGradientBoostingClassifier"
    bad_module = write_spec(tmp_path / "module.yaml", raw)
    raw = elec2_raw()
    raw["estimator"]["params"]["max_iters"] = 10
    bad_param = write_spec(tmp_path / "param.yaml", raw)
    rc, _, err = run_check(capsys, bad_class, bad_module, bad_param)
    assert rc == 1
    assert err.splitlines() == [
        f"{bad_class}: estimator.class: module 'sklearn.ensemble' has no class 'HistGradientBoostingClasifier'",
        (
            f"{bad_module}: estimator.class: module 'sklearn.ensembles' of "
            "'sklearn.ensembles.HistGradientBoostingClassifier' cannot be found; is it installed?"
        ),
        err.splitlines()[2],
    ]
    assert err.splitlines()[2].startswith(
        f"{bad_param}: estimator.params.max_iters: HistGradientBoostingClassifier takes no parameter 'max_iters' "
        "(it takes: loss, learning_rate, max_iter,"
    )


def test_check_refuses_hourly_data_read_with_its_date_only(tmp_path, capsys):
    source = hourly_source(tmp_path / "data")
    date_only = write_spec(tmp_path / "date_only.yaml", hourly_raw(source, with_hour=False))
    with_hour = write_spec(tmp_path / "with_hour.yaml", hourly_raw(source, with_hour=True))
    rc, _, err = run_check(capsys, date_only)
    assert rc == 1
    assert err.strip() == (
        f"{date_only}: source.timestamp: the data is finer than a day (column 'hr' holds hours 0..23 within a day) "
        "but the timestamp reads dates only: every event of a day would be read as midnight; add parts: {hour: hr}"
    )
    rc, out, err = run_check(capsys, with_hour)
    assert (rc, err) == (0, ""), err
    assert f"{with_hour}: ok: hourly_rentals" in out


def test_check_refuses_flights_read_without_their_hour(tmp_path, capsys):
    raw = flights_raw()
    del raw["source"]["timestamp"]["parts"]["hour"], raw["source"]["timestamp"]["parts"]["minute"]
    path = write_spec(tmp_path / "flights_days.yaml", raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1
    assert err.startswith(
        f"{path}: source.timestamp: the data is finer than a day (column 'hour' holds hours 0..23 within a day) "
        "but the timestamp reads year, month and day only"
    )


def test_check_refuses_epoch_numbers_without_a_unit_and_ingestion_reads_them_with_one(tmp_path, capsys):
    """A parquet source stamped in epoch seconds: ``mlops check`` names the field and the settings
    that read it; with ``unit: s`` the check passes, and the day the landing command extracts and
    the dataset stage types (``clean_events``) holds each event at the instant its ISO time gives."""
    from mlops_assets.core.names import EVENT_TS
    from mlops_assets.specs import load_spec

    source = hourly_source(tmp_path / "data")
    frame = pd.read_csv(source)
    iso = pd.to_datetime(frame["dteday"]) + pd.to_timedelta(frame["hr"], unit="h")
    frame = frame.assign(ts=(iso - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)).drop(columns=["dteday"])
    frame.to_parquet(tmp_path / "data" / "epoch.parquet", index=False)
    raw = hourly_raw(source, with_hour=False)
    raw["source"] = {"path": str(tmp_path / "data" / "epoch.parquet"), "format": "parquet", "timestamp": {"column": "ts"}}
    path = write_spec(tmp_path / "specs" / "epoch.yaml", raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1
    assert err.startswith(f"{path}: source.timestamp.column: column 'ts' holds numbers, not timestamps: set timestamp.unit")
    raw["source"]["timestamp"]["unit"] = "s"
    write_spec(path, raw)
    rc, out, err = run_check(capsys, path)
    assert (rc, err) == (0, ""), err
    assert f"{path}: ok: hourly_rentals" in out
    day = date(2020, 1, 2)
    events = typed_day(load_spec(path), day)
    assert len(events) == 24
    assert list(events[EVENT_TS]) == list(iso[iso.dt.date == day].dt.tz_localize("UTC"))


def test_check_of_an_unreadable_source_names_the_field(tmp_path, capsys):
    raw = elec2_raw()
    raw["source"]["path"] = str(tmp_path / "nowhere.csv")
    path = write_spec(tmp_path / "nowhere.yaml", raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1
    assert err.strip() == f"{path}: source.path: {tmp_path / 'nowhere.csv'}: file not found"


# --- the landing sensor's first tick -------------------------------------------------------------


def tick(sensor, instance, defs, cursor=None):
    from mlops_assets.environments import resources

    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": resources()["lake"]}, definitions=defs)
    return sensor.evaluate_tick(ctx)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda raw: raw["features"].__setitem__(2, {"kind": "column", "name": "nswprise"}), "features[2].name: 'nswprise'"),
        (lambda raw: raw["estimator"]["params"].__setitem__("max_iters", 10), "estimator.params.max_iters"),
        (lambda raw: raw["target"].__setitem__("column", "klass"), "target.column: 'klass'"),
    ],
    ids=["feature", "estimator", "target"],
)
def test_landing_sensor_skips_a_spec_that_does_not_fit_its_first_files(tmp_path, monkeypatch, mutate, field):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    from mlops_assets.cli import land
    from mlops_assets.factory import build_definitions
    from mlops_assets.landing import SPEC_CHECKED
    from mlops_assets.specs import load_spec

    raw = elec2_raw()
    mutate(raw)
    path = write_spec(tmp_path / "specs" / "elec2.yaml", raw)
    spec = load_spec(path)
    land(spec, date(1996, 6, 1), 2)
    landing = tmp_path / "landing" / "elec2"
    before = sorted(p.name for p in landing.iterdir())
    defs = build_definitions([spec])
    sensor = defs.resolve_sensor_def("landing_elec2")
    with dg.instance_for_test() as instance:
        result = tick(sensor, instance, defs)
        assert result.run_requests == []
        assert f"{path}: {field}" in result.skip_message
        assert "nothing ingested or quarantined" in result.skip_message
        assert sorted(p.name for p in landing.iterdir()) == before  # nothing moved
        assert not (tmp_path / "quarantine").exists()
        assert SPEC_CHECKED not in (result.cursor or "")
        again = tick(sensor, instance, defs, result.cursor)  # still wrong: still nothing, still the reason
        assert again.run_requests == [] and f"{path}: {field}" in again.skip_message

        fixed = load_spec(write_spec(path, elec2_raw()))  # the spec is corrected: the same files go in
        fixed_defs = build_definitions([fixed])
        fixed_sensor = fixed_defs.resolve_sensor_def("landing_elec2")
        ok = tick(fixed_sensor, instance, fixed_defs, again.cursor)
        assert sorted(r.partition_key for r in ok.run_requests) == ["1996-06-01", "1996-06-02"]
        assert SPEC_CHECKED in ok.cursor


def test_landing_sensor_skips_hourly_files_read_by_date_then_blames_files_once_the_spec_fits(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    from mlops_assets.cli import land
    from mlops_assets.factory import build_definitions
    from mlops_assets.specs import load_spec

    source = hourly_source(tmp_path / "data", days=3)
    path = write_spec(tmp_path / "specs" / "hourly.yaml", hourly_raw(source, with_hour=False))
    spec = load_spec(path)
    land(spec, date(2020, 1, 1), 2)
    defs = build_definitions([spec])
    sensor = defs.resolve_sensor_def("landing_hourly_rentals")
    with dg.instance_for_test() as instance:
        first = tick(sensor, instance, defs)
        assert first.run_requests == []
        assert f"{path}: source.timestamp: the data is finer than a day (column 'hr'" in first.skip_message
        assert not (tmp_path / "quarantine").exists()

        good = load_spec(write_spec(path, hourly_raw(source, with_hour=True)))
        good_defs = build_definitions([good])
        good_sensor = good_defs.resolve_sensor_def("landing_hourly_rentals")
        second = tick(good_sensor, instance, good_defs, first.cursor)
        assert sorted(r.partition_key for r in second.run_requests) == ["2020-01-01", "2020-01-02"]

        # Once the spec fits, a later file without a column is that file's fault: quarantined.
        land(good, date(2020, 1, 3), 1)
        day3 = tmp_path / "landing" / "hourly_rentals" / "2020-01-03.csv"
        pd.read_csv(day3).drop(columns=["temp"]).to_csv(day3, index=False)
        third = tick(good_sensor, instance, good_defs, second.cursor)
        assert third.run_requests == []
        reason = (tmp_path / "quarantine" / "hourly_rentals" / "2020-01-03.csv.reason.txt").read_text()
        assert "missing column 'temp'" in reason


# --- the code location's load --------------------------------------------------------------------


def test_build_definitions_refuses_an_estimator_that_cannot_be_found(tmp_path):
    from mlops_assets.factory import build_definitions
    from mlops_assets.spec_check import SpecCheckError
    from mlops_assets.specs import load_spec

    raw = elec2_raw()
    raw["estimator"]["class"] = "sklearn.ensemble.HistGradientBoostingClasifier"
    path = write_spec(tmp_path / "elec2.yaml", raw)
    with pytest.raises(SpecCheckError, match=rf"^{path}: estimator\.class: module 'sklearn\.ensemble' has no class"):
        build_definitions([load_spec(path)])


def test_dagster_definitions_validate_names_the_spec_of_a_misspelled_estimator(tmp_path):
    raw = elec2_raw()
    raw["estimator"]["class"] = "sklearn.ensemble.HistGradientBoostingClasifier"
    path = write_spec(tmp_path / "specs" / "elec2.yaml", raw)
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    bin_dir = os.path.dirname(sys.executable)
    env = {
        **os.environ,
        "MLOPS_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "MLOPS_SPECS": str(path),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [os.path.join(bin_dir, "dagster"), "definitions", "validate", "-m", "mlops_assets.definitions"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    assert f"{path}: estimator.class: module 'sklearn.ensemble' has no class 'HistGradientBoostingClasifier'" in (
        proc.stdout + proc.stderr
    )


def test_static_check_imports_no_heavy_library():
    """The load-time check locates the estimator's module on disk: scikit-learn is not imported."""
    probe = (
        "import sys; from mlops_assets.specs import load_spec; from mlops_assets.spec_check import static_problems; "
        f"print(static_problems(load_spec({str(ELEC2_SPEC)!r})), 'sklearn' in sys.modules, 'pandas' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] False False"


def test_a_source_written_another_way_is_read_as_its_csv_block_says(tmp_path, capsys):
    """A semicolon-separated latin-1 export with '?' for a missing value and day-first times
    (as some public datasets ship): without ``source.csv`` the check says the file is not UTF-8 and
    which setting reads it, then that its columns are not the spec's (one column: the separator);
    with the whole block it passes, and the dataset stage types the day as written."""
    from mlops_assets.core.names import EVENT_TS
    from mlops_assets.specs import load_spec

    lines = ["horodatage;température;vent;ventes"]
    lines += [
        f"0{d}/01/2020 {h:02d}:00;{'?' if h == 3 else f'{0.2 + h / 100:.2f}'};{h % 5};{10 * h + d}"
        for d in (1, 2)
        for h in range(24)
    ]
    source = tmp_path / "data" / "ventes.csv"
    source.parent.mkdir(parents=True)
    source.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    timestamp = {"column": "horodatage", "format": "%d/%m/%Y %H:%M"}
    features = [{"kind": "column", "name": "température"}, {"kind": "column", "name": "vent"}]
    raw = regression_raw("ventes", source, timestamp, "ventes", features)
    path = write_spec(tmp_path / "specs" / "ventes.yaml", raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1 and "cannot read a sample: 'utf-8' codec can't decode" in err and "csv.encoding" in err, err
    raw["source"]["csv"] = {"encoding": "latin-1"}
    write_spec(path, raw)
    rc, _, err = run_check(capsys, path)  # read, but as one column: the separator is not a comma
    assert rc == 1 and "source.timestamp.column: 'horodatage' is not a column of the source" in err, err
    raw["source"]["csv"] = {"sep": ";", "na_values": ["?"], "encoding": "latin-1"}
    write_spec(path, raw)
    rc, out, err = run_check(capsys, path)
    assert (rc, err) == (0, ""), err
    assert f"{path}: ok: ventes" in out
    events = typed_day(load_spec(path), date(2020, 1, 2))
    assert len(events) == 24 and events["température"].isna().sum() == 1
    assert events["température"].iloc[4] == pytest.approx(0.24) and events["vent"].iloc[4] == 4.0
    assert events[EVENT_TS].iloc[4] == pd.Timestamp("2020-01-02 04:00", tz="UTC")
    raw["source"]["csv"]["encoding"] = "latin-2000"
    write_spec(path, raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1 and "unknown encoding 'latin-2000'" in err


def test_numbers_written_with_a_decimal_comma_are_read_as_csv_decimal_says(tmp_path, capsys):
    """A European export: ';' between fields, '0,24' for a number, and a text column with commas of
    its own. Without ``csv.decimal`` the check says the feature holds no numbers; with it the
    numbers read as numbers, the text stays as written, and ',' for both settings is refused."""
    from mlops_assets.core.names import EVENT_TS
    from mlops_assets.core.sources import DataError, read_table
    from mlops_assets.specs import load_spec

    lines = ["horodatage;température;ville;ventes"]
    lines += [
        f"2020-01-0{d} {h:02d}:00;{'' if h == 3 else f'{0.2 + h / 100:.2f}'.replace('.', ',')};Paris, {h % 3 + 1}e;{10 * h + d},5"
        for d in (1, 2)
        for h in range(24)
    ]
    source = tmp_path / "data" / "ventes.csv"
    source.parent.mkdir(parents=True)
    source.write_text("\n".join(lines) + "\n")
    features = [{"kind": "column", "name": "température"}, {"kind": "column", "name": "ville", "type": "categorical"}]
    raw = regression_raw("ventes", source, {"column": "horodatage"}, "ventes", features, csv={"sep": ";"})
    path = write_spec(tmp_path / "specs" / "ventes.yaml", raw)
    rc, _, err = run_check(capsys, path)
    assert (
        rc == 1
        and "features[0]: column 'température' is read as numbers, but 46 of 46 sampled values are not (first '0,20')" in err
    )
    assert "target.column: column 'ventes'" in err and err.count("set source.csv.decimal: ','") == 2, err
    with pytest.raises(DataError, match=r"column 'température' row 1: '0,20' is not a number .*csv.decimal: ','"):
        typed_day(load_spec(path), date(2020, 1, 2))  # the dataset stage says the same
    raw["source"]["csv"]["decimal"] = ","
    write_spec(path, raw)
    rc, _, err = run_check(capsys, path)
    assert (rc, err) == (0, ""), err
    events = typed_day(load_spec(path), date(2020, 1, 2))
    assert len(events) == 24 and events["température"].isna().sum() == 1
    assert events["température"].iloc[4] == pytest.approx(0.24) and events["label"].iloc[4] == pytest.approx(42.5)
    assert events["ville"].iloc[4] == "Paris, 2e" and events[EVENT_TS].iloc[4] == pd.Timestamp("2020-01-02 04:00", tz="UTC")
    frame = read_table(str(source), "csv", load_spec(path).source.csv.options())
    assert frame["horodatage"].iloc[0] == "2020-01-01 00:00"  # dates are not numbers: left as written
    raw["source"]["csv"]["sep"] = ","
    write_spec(path, raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1 and "decimal and sep are both ','" in err, err


def _grouped(x: float, thousands: str, decimal: str) -> str:
    return f"{x:,.1f}".replace(",", "\0").replace(".", decimal).replace("\0", thousands)


@pytest.mark.parametrize(
    ("csv", "written", "settings"),
    [
        ({}, lambda x: f'"{_grouped(x, ",", ".")}"', {"thousands": ","}),  # "1,234.5", quoted in a comma-separated file
        ({"sep": ";"}, lambda x: _grouped(x, ".", ","), {"decimal": ",", "thousands": "."}),  # 1.234,5
        ({"sep": ";"}, lambda x: _grouped(x, "\u202f", ","), {"decimal": ",", "thousands": " "}),  # 1 234,5 (no-break space)
    ],
    ids=["comma", "point", "no-break-space"],
)
def test_numbers_with_thousands_separators_are_read_as_csv_thousands_says(tmp_path, capsys, csv, written, settings):
    """Sales of a few thousand a day written as spreadsheets export them: 1,234.5, 1.234,5 or 1 234,5
    (a narrow no-break space). Without the settings ``mlops check`` and the dataset stage name the
    ones that read them; with them the values are the numbers (small ones, without a separator,
    too), and a ``thousands`` equal to ``decimal`` is refused."""
    from mlops_assets.core.sources import DataError
    from mlops_assets.specs import load_spec

    sep = csv.get("sep", ",")
    sales = [500.5 + 997.0 * h for h in range(24)]
    lines = [sep.join(["time", "temperature", "sales"])]
    lines += [sep.join([f"2020-01-0{d} {h:02d}:00", str(h), written(sales[h] + d)]) for d in (1, 2) for h in range(24)]
    source = tmp_path / "data" / "sales.csv"
    source.parent.mkdir(parents=True)
    source.write_text("\n".join(lines) + "\n")
    raw = regression_raw("sales", source, {"column": "time"}, "sales", [{"kind": "column", "name": "temperature"}], csv=csv)
    hint = " and ".join(f"source.csv.{k}: {v!r}" for k, v in settings.items())
    path = write_spec(tmp_path / "specs" / "sales.yaml", raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1 and "target.column: column 'sales' is read as numbers" in err and f"set {hint}" in err, err
    with pytest.raises(DataError, match=rf"column 'sales' row \d+: .* is not a number .*{hint}"):
        typed_day(load_spec(path), date(2020, 1, 2))  # the dataset stage says the same
    raw["source"]["csv"] = {**csv, **settings}
    write_spec(path, raw)
    rc, _, err = run_check(capsys, path)
    assert (rc, err) == (0, ""), err
    events = typed_day(load_spec(path), date(2020, 1, 2))
    assert events["label"].tolist() == pytest.approx([x + 2 for x in sales])
    assert events["temperature"].tolist() == list(range(24))
    raw["source"]["csv"] = {"sep": ";", "decimal": ",", "thousands": ","}
    write_spec(path, raw)
    rc, _, err = run_check(capsys, path)
    assert rc == 1 and "thousands and decimal are both ','" in err, err


def test_the_landing_sensors_first_look_blames_a_timestamp_setting_that_reads_none_of_the_files():
    """A ``timestamp.format`` (or ``unit``) that reads none of the landed files' times is the spec's
    fault, not the files': the landing sensor's check names the field, so it skips the spec instead
    of quarantining every file."""
    from mlops_assets.core.sources import read_table
    from mlops_assets.spec_check import landing_problems
    from mlops_assets.specs import ModelSpec

    raw = elec2_raw()
    frame = read_table(os.path.expandvars(raw["source"]["path"])).head(96)  # two days, as landed files hold them
    assert [p for p in landing_problems(ModelSpec.model_validate(raw), [frame]) if p.field.startswith("source.timestamp")] == []
    raw["source"]["timestamp"]["format"] = "%d/%m/%Y %H:%M"
    problems = landing_problems(ModelSpec.model_validate(raw), [frame])
    assert [p.field for p in problems] == ["source.timestamp.format"]
    assert "reads none of column 'timestamp' (first value '1996-05-07 00:00:00')" in problems[0].message
    del raw["source"]["timestamp"]["format"]
    raw["source"]["timestamp"]["unit"] = "s"
    problems = landing_problems(ModelSpec.model_validate(raw), [frame])
    assert [p.field for p in problems] == ["source.timestamp.unit"]
