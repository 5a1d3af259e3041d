"""The real pipeline end to end on six days of 2013 flights, in a temporary home.

Real Dagster instance (SQLite run/event storage), real MLflow (SQLite tracking store and registry),
real Feast (registry file, DuckDB offline store over parquet, SQLite online store).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mlops_assets_tests.conftest import platform

START, DAYS = date(2013, 1, 1), 6
KEYS = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]


@pytest.fixture(scope="module")
def flights(tmp_path_factory, flight_spec):
    home = tmp_path_factory.mktemp("flights_home")
    with platform(home, [flight_spec]) as p:
        p.land("flight_delays", START, DAYS)
        assert p.run("register", "flight_delays").success
        p.ingest_results = {k: p.run("ingest", "flight_delays", k) for k in KEYS}
        p.train_result = p.run("train", "flight_delays")
        p.score_result = p.run("score", "flight_delays", KEYS[-1])
        yield p


def test_every_run_succeeds(flights):
    assert all(r.success for r in flights.ingest_results.values())
    assert flights.train_result.success, flights.train_result.all_events
    assert flights.score_result.success


def test_dataset_partitions_pass_blocking_checks_and_count_cancellations(flights):
    checks = flights.check_results("flight_delays/dataset")
    assert checks == {"schema": True, "nulls": True, "ranges": True, "row_count": True, "duplicates": True}
    day = pd.read_parquet(flights.home / "lake" / "dataset" / "flight_delays" / f"{KEYS[0]}.parquet")
    raw = pd.read_csv(flights.home / "landing" / "flight_delays" / f"{KEYS[0]}.csv")
    assert len(day) == len(raw)  # cancelled flights are kept (as positives), nothing silently dropped
    cancelled = raw["dep_delay"].isna().sum()
    assert cancelled > 0
    assert day["label"].sum() == (raw["dep_delay"] > 15).sum() + cancelled


def test_point_in_time_features_use_only_the_past(flights, flight_spec):
    """The past rate an event trains with equals the rate computed from earlier days only."""
    from mlops_assets.core.features import past_rate

    train = pd.read_parquet(flights.home / "lake" / "training_set" / "flight_delays" / "train.parquet")
    lake = flights.home / "lake" / "dataset" / "flight_delays"
    day = date(2013, 1, 3)
    history = pd.concat([pd.read_parquet(lake / f"{d}.parquet") for d in KEYS[:2]])
    today = pd.read_parquet(lake / f"{day}.parquet")
    feature = next(f for f in flight_spec.past_rate_features if f.name == "carrier_delay_rate")
    expected = past_rate(history, today, feature, day, "America/New_York").set_index("carrier")[feature.name]
    rows = train[train["event_id"].str.startswith(day.isoformat())]
    got = rows.groupby("carrier")["carrier_delay_rate"].first()
    pd.testing.assert_series_equal(got.sort_index(), expected.loc[got.index].sort_index(), check_names=False)
    # and today's own labels did not leak: recomputing with today's rows in history changes the value
    leaky = past_rate(pd.concat([history, today]), today, feature, day + timedelta(days=1), "America/New_York")
    assert not leaky.set_index("carrier")[feature.name].loc[got.index].equals(expected.loc[got.index])


def test_weather_is_joined_point_in_time(flights):
    """Each flight gets the latest hourly observation at its origin at or before scheduled departure."""
    from mlops_assets.core.features import lookup_frame

    train = pd.read_parquet(flights.home / "lake" / "training_set" / "flight_delays" / "train.parquet")
    spec = flights.specs["flight_delays"]
    weather = lookup_frame("weather", spec.lookups["weather"], spec)
    row = train.dropna(subset=["temp"]).iloc[123]
    obs = weather[(weather["origin"] == row["origin"]) & (weather["event_timestamp"] <= row["event_timestamp"])]
    assert row["temp"] == obs.sort_values("event_timestamp").iloc[-1]["temp"]
    assert train["temp"].notna().mean() > 0.95


def test_online_store_serves_the_materialized_features(flights):
    from mlops_assets.environments import resources

    feast = resources()["feast"]
    spec = flights.specs["flight_delays"]
    store = feast.store(spec)
    online = store.get_online_features(
        features=["carrier_delay_rate:carrier_delay_rate", "lookup_weather:temp"],
        entity_rows=[{"carrier": "UA", "origin": "EWR"}],
    ).to_dict()
    assert online["carrier_delay_rate"][0] is not None and 0 < online["carrier_delay_rate"][0] < 1
    assert online["temp"][0] is not None
    assert flights.latest("flight_delays/online_features")["online_rows_total"] > 0
    # per-event rows stay offline: no request looks a flight up by its event id
    import sqlite3

    with sqlite3.connect(feast.online_store_path) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        assert (
            "flight_delays_events" not in tables or not conn.execute('select count(*) from "flight_delays_events"').fetchone()[0]
        )
        assert conn.execute('select count(*) from "flight_delays_carrier_delay_rate"').fetchone()[0] > 0


def test_model_is_logged_registered_and_linked_both_ways(flights):
    from mlflow import MlflowClient

    from mlops_assets.environments import mlflow_tracking_uri

    client = MlflowClient(tracking_uri=mlflow_tracking_uri(flights.home))
    meta = flights.latest("flight_delays/model")
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster_run_id"] == flights.train_result.run_id
    assert run.data.tags["mlops.spec_hash"] == flights.specs["flight_delays"].spec_hash
    assert run.data.tags["mlops.training_partitions"].startswith("2013-01-01..2013-01-06")
    assert run.data.params["estimator"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert 0.5 < run.data.metrics["holdout_roc_auc"] <= 1.0
    assert meta["holdout_roc_auc"] == pytest.approx(run.data.metrics["holdout_roc_auc"])
    assert meta["mlflow_run"].endswith(run.info.run_id)

    version = client.get_model_version("flight_delays", str(meta["model_version"]))
    assert version.run_id == run.info.run_id
    assert version.tags["dagster_run_id"] == flights.train_result.run_id
    assert set(client.get_registered_model("flight_delays").aliases) == {"challenger", "champion"}

    import mlflow

    mlflow.set_tracking_uri(mlflow_tracking_uri(flights.home))
    mlflow.set_registry_uri(mlflow_tracking_uri(flights.home))
    uri = f"models:/flight_delays/{version.version}"
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and "carrier_delay_rate" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None
    with open(mlflow.pyfunc.get_model_dependencies(uri)) as f:
        reqs = f.read()
    assert "scikit-learn==" in reqs and "skops==" in reqs


def test_a_trained_model_carries_its_card_on_the_asset_and_in_mlflow(flights):
    from mlflow import MlflowClient

    from mlops_assets.environments import mlflow_tracking_uri

    spec = flights.specs["flight_delays"]
    meta = flights.latest("flight_delays/model")
    assert meta["holdout_roc_auc_low"] <= meta["holdout_roc_auc"] <= meta["holdout_roc_auc_high"]
    assert meta["rows_holdout"] > 0 and meta["holdout_days"].endswith("(3 days)")
    importance = [r.data for r in meta["feature_importance"].records]
    assert {r["feature"] for r in importance} == set(spec.feature_names)
    assert [r["importance"] for r in importance] == sorted((r["importance"] for r in importance), reverse=True)
    slices = [r.data for r in meta["worst_slices"].records]
    assert slices and {r["entity"] for r in slices} <= set(spec.entities)
    assert [r["gap"] for r in slices] == sorted(r["gap"] for r in slices)  # worst first
    assert "Permutation importance on the holdout" in meta["model_card"]

    client = MlflowClient(tracking_uri=mlflow_tracking_uri(flights.home))
    artifacts = {a.path for a in client.list_artifacts(meta["mlflow_run_id"], "model_card")}
    assert artifacts == {
        f"model_card/{f}" for f in ("model_card.md", "feature_importance.svg", "feature_importance.csv", "slices.csv")
    }
    run = client.get_run(meta["mlflow_run_id"])
    assert run.data.metrics["holdout_roc_auc_low"] == pytest.approx(meta["holdout_roc_auc_low"])
    version = client.get_model_version("flight_delays", str(meta["model_version"]))
    assert version.description.startswith(f"# flight_delays version {meta['model_version']}")


def test_first_model_is_promoted_and_gate_is_recorded(flights):
    gate = flights.latest("flight_delays/champion")
    assert gate["decision"] == "promoted" and gate["reason"] == "no champion yet"
    assert gate["champion_version"] == flights.latest("flight_delays/model")["model_version"]
    assert gate["challenger_roc_auc"] > gate["baseline_roc_auc"]
    assert flights.check_results("flight_delays/champion") == {"promotion_gate": True}


def test_predictions_cover_the_day_with_the_champion_version(flights):
    preds = pd.read_parquet(flights.home / "lake" / "predictions" / "flight_delays" / f"{KEYS[-1]}.parquet")
    day = pd.read_parquet(flights.home / "lake" / "dataset" / "flight_delays" / f"{KEYS[-1]}.parquet")
    assert len(preds) == len(day) and set(preds["event_id"]) == set(day["event_id"])
    assert preds["score"].between(0, 1).all()
    meta = flights.latest("flight_delays/predictions")
    assert meta["model_version"] == flights.latest("flight_delays/champion")["champion_version"]
    assert (preds["model_version"] == meta["model_version"]).all()
    assert 0.5 < meta["realised_roc_auc"] <= 1


def test_gate_keeps_the_champion_when_challenger_is_not_better_by_the_margin(flights, tmp_path):
    """A second training with an impossible margin registers a challenger but does not promote it."""
    strict = flights.specs["flight_delays"].model_copy(
        update={"promotion": flights.specs["flight_delays"].promotion.model_copy(update={"margin": 0.9})}
    )
    from mlops_assets.core.names import job_name
    from mlops_assets.factory import build_definitions
    from mlops_assets_tests.conftest import QUIET

    defs = build_definitions([strict])
    before = flights.latest("flight_delays/champion")["champion_version"]
    result = defs.resolve_job_def(job_name("train", strict)).execute_in_process(instance=flights.instance, run_config=QUIET)
    assert result.success
    gate = flights.latest("flight_delays/champion")
    assert gate["decision"] == "kept champion"
    assert gate["challenger_version"] == before + 1
    assert gate["champion_version"] == before
    from mlflow import MlflowClient

    from mlops_assets.environments import mlflow_tracking_uri

    client = MlflowClient(tracking_uri=mlflow_tracking_uri(flights.home))
    assert int(client.get_model_version_by_alias("flight_delays", "champion").version) == before
    assert int(client.get_model_version_by_alias("flight_delays", "challenger").version) == before + 1
    challenger_run = client.get_run(client.get_model_version_by_alias("flight_delays", "challenger").run_id)
    assert challenger_run.data.tags["mlops.promotion"] == "rejected"
    assert "gate_champion_roc_auc" in challenger_run.data.metrics


def test_gate_with_a_confidence_decides_on_a_paired_test_and_records_it(flights):
    """promotion.confidence: a retraining on the same window is compared with the champion by
    DeLong's paired test (the spec's roc_auc); the decision follows the p-value, and the test, the
    interval and the p-value are in the gate's metadata and its check."""
    spec = flights.specs["flight_delays"]
    careful = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"confidence": 0.9})})
    from mlops_assets.core.names import job_name
    from mlops_assets.factory import build_definitions
    from mlops_assets_tests.conftest import QUIET

    before = flights.latest("flight_delays/champion")["champion_version"]
    defs = build_definitions([careful])
    assert (
        defs.resolve_job_def(job_name("train", careful)).execute_in_process(instance=flights.instance, run_config=QUIET).success
    )
    gate = flights.latest("flight_delays/champion")
    assert gate["test"] == "delong" and "with 90% confidence (delong)" in gate["policy"] and "confidence" not in gate
    assert gate["improvement_low"] <= gate["improvement_roc_auc"] <= gate["improvement_high"]
    assert gate["improvement_roc_auc"] == pytest.approx(gate["challenger_roc_auc"] - gate["champion_roc_auc"], abs=1e-9)
    promoted = gate["p_value"] <= 0.1
    assert gate["decision"] == ("promoted" if promoted else "kept champion")
    assert gate["champion_version"] == (gate["challenger_version"] if promoted else before)
    assert "p = " in gate["reason"] and ("convincing" in gate["reason"])
    check = flights.instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1, ascending=False
    )[0].event_log_entry.dagster_event.event_specific_data
    assert check.check_name == "promotion_gate" and check.metadata["p_value"].value == gate["p_value"]


def test_failed_training_ends_its_mlflow_run_failed(flights):
    """An estimator that cannot fit leaves a FAILED MLflow run (with its params), never RUNNING."""
    spec = flights.specs["flight_delays"]
    broken = spec.model_copy(update={"estimator": spec.estimator.model_copy(update={"params": {"max_iter": -5}})})
    from mlflow import MlflowClient

    from mlops_assets.core.names import job_name
    from mlops_assets.environments import mlflow_tracking_uri
    from mlops_assets.factory import build_definitions
    from mlops_assets_tests.conftest import QUIET

    defs = build_definitions([broken])
    result = defs.resolve_job_def(job_name("train", broken)).execute_in_process(
        instance=flights.instance, run_config=QUIET, raise_on_error=False
    )
    assert not result.success
    client = MlflowClient(tracking_uri=mlflow_tracking_uri(flights.home))
    exp = client.get_experiment_by_name("flight_delays")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{result.run_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.params["estimator.max_iter"] == "-5"
    assert not client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")


def test_run_failure_sensor_closes_mlflow_runs_a_dead_process_left_running(flights):
    """Simulate a training process killed mid-run: its MLflow run is still RUNNING when Dagster
    marks the run failed. The run-failure sensor must close it as FAILED."""
    import dagster as dg
    from mlflow import MlflowClient

    from mlops_assets.alerts import close_mlflow_runs_and_record_alerts
    from mlops_assets.environments import mlflow_tracking_uri, resources

    spec = flights.specs["flight_delays"]
    broken = spec.model_copy(update={"estimator": spec.estimator.model_copy(update={"params": {"max_iter": -1}})})
    from mlops_assets.factory import build_definitions
    from mlops_assets_tests.conftest import QUIET

    failed = (
        build_definitions([broken])
        .resolve_job_def("train_flight_delays")
        .execute_in_process(instance=flights.instance, run_config=QUIET, raise_on_error=False)
    )
    assert not failed.success
    client = MlflowClient(tracking_uri=mlflow_tracking_uri(flights.home))
    exp = client.get_experiment_by_name("flight_delays")
    orphan = client.create_run(exp.experiment_id, tags={"dagster_run_id": failed.run_id})  # left RUNNING
    assert client.get_run(orphan.info.run_id).info.status == "RUNNING"

    failure_event = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="close_mlflow_runs_and_record_alerts",
        dagster_event=failure_event,
        dagster_instance=flights.instance,
        dagster_run=flights.instance.get_run_by_id(failed.run_id),
    ).for_run_failure()
    close_mlflow_runs_and_record_alerts(context, mlflow=resources()["mlflow"], lake=resources()["lake"])
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    from mlops_assets.alerts import read_alerts

    alerts = read_alerts(resources()["lake"])
    assert alerts[-1]["run_id"] == failed.run_id and alerts[-1]["job"] == "train_flight_delays"
    assert orphan.info.run_id in alerts[-1]["mlflow_runs_closed"] and alerts[-1]["error"]
    assert not client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert flights.defs.resolve_sensor_def("close_mlflow_runs_and_record_alerts").default_status == dg.DefaultSensorStatus.RUNNING


def svg_tree(markdown: str):
    import base64
    import xml.etree.ElementTree as ET

    return ET.fromstring(base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")")))


def test_model_shows_its_holdout_scores_as_a_chart(flights):
    meta = flights.latest("flight_delays/model")
    assert meta["holdout_scores"].startswith("![plot](data:image/svg+xml;base64,")
    svg, ns = svg_tree(meta["holdout_scores"]), "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in svg.iter(f"{ns}text")]
    assert f"holdout roc_auc = {meta['holdout_roc_auc']:.3f}" in texts
    assert {"negative", "positive", "predicted probability", "density"} <= set(texts)
    bars = [r for r in svg.iter(f"{ns}rect") if r.get("fill-opacity")]
    assert len(bars) == 60  # 30 bins per class
    assert max(float(r.get("height")) for r in bars) == pytest.approx(170.0)  # the tallest bin fills the frame


def test_regression_holdout_chart_plots_at_most_400_points():
    from pathlib import Path

    import numpy as np

    from mlops_assets.specs import load_spec
    from mlops_assets.training import _score_plot

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "specs" / "bike_sharing.yaml")
    y = np.arange(1000, dtype=float)
    plot = _score_plot(spec, y, y + 5, {"rmse": 5.0})
    svg, ns = svg_tree(plot.value), "{http://www.w3.org/2000/svg}"
    points = list(svg.iter(f"{ns}circle"))
    assert len(points) == 400
    assert next(t.text for t in svg.iter(f"{ns}text")) == "holdout rmse = 5.000"


def svg_bars(markdown: str) -> dict[str, str]:
    """Feature -> bar colour of the drift chart (inline SVG markdown), parsed as XML."""
    import base64
    import xml.etree.ElementTree as ET

    svg = ET.fromstring(base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")")))
    ns = "{http://www.w3.org/2000/svg}"
    labels = [t.text for t in svg.iter(f"{ns}text") if t.get("text-anchor") == "end"]
    colours = [r.get("fill") for r in svg.iter(f"{ns}rect")]
    return dict(zip(labels, colours, strict=True))


def test_scored_day_is_monitored_against_the_champions_reference(flights):
    import dagster as dg

    results = flights.check_results("flight_delays/predictions")
    assert {"feature_drift", "prediction_drift", "performance"} <= set(results)
    # it has a deployment: the served checks are judged once the endpoint served the window's events;
    # before that they yield no result (skipped) and the materialization says why
    scored = flights.latest("flight_delays/predictions")
    for check in ("served_feature_drift", "served_prediction_drift", "served_performance"):
        assert check in results or scored[f"not_judged_{check}"].startswith("not judged: 0 "), check
    records = flights.instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000
    )
    drift = next(
        r.event_log_entry.dagster_event.event_specific_data
        for r in records
        if r.event_log_entry.dagster_event.event_specific_data.check_name == "feature_drift"
    )
    assert drift.metadata["rows"].value > 500 and drift.metadata["reference_rows"].value > 1000
    table = drift.metadata["per_feature"]
    assert isinstance(table, dg.TableMetadataValue)  # a native table, rendered in place
    assert sorted(r.data["column"] for r in table.records) == sorted(flights.specs["flight_delays"].feature_names)
    assert drift.metadata["plot"].value.startswith("![plot](data:image/svg+xml;base64,")
    bars = svg_bars(drift.metadata["plot"].value)
    assert sorted(bars) == sorted(flights.specs["flight_delays"].feature_names)
    champion_run = flights.latest("flight_delays/model")["mlflow_run_id"]
    assert (flights.home / "lake" / "reference" / "flight_delays" / champion_run / "features.parquet").exists()


def test_injected_drift_fails_the_feature_drift_check_and_names_the_features(flights):
    """A day where every flight is United to O'Hare: carrier and dest (and the rates keyed on them) drift."""
    import dagster as dg

    from mlops_assets.factory import build_definitions
    from mlops_assets_tests.conftest import QUIET

    day = date(2013, 1, 7)
    flights.land("flight_delays", day)
    path = flights.home / "landing" / "flight_delays" / f"{day}.csv"
    raw = pd.read_csv(path, dtype=str)
    raw["carrier"], raw["dest"] = "UA", "ORD"
    raw.to_csv(path, index=False)
    assert flights.run("ingest", "flight_delays", day.isoformat()).success

    spec = flights.specs["flight_delays"]
    strict = spec.model_copy(
        update={
            "policies": spec.policies.model_copy(update={"drift": spec.policies.drift.model_copy(update={"drift_share": 0.1})})
        }
    )
    result = (
        build_definitions([strict])
        .resolve_job_def("score_flight_delays")
        .execute_in_process(instance=flights.instance, partition_key=day.isoformat(), run_config=QUIET)
    )
    assert result.success  # monitoring checks warn; they never fail the scoring run
    checks = {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert checks["feature_drift"].passed is False
    assert checks["feature_drift"].severity == dg.AssetCheckSeverity.WARN
    drifted = checks["feature_drift"].metadata["drifted_features"].value.split(", ")
    assert {"carrier", "dest", "route_delay_rate"} <= set(drifted)
    bars = svg_bars(checks["feature_drift"].metadata["plot"].value)
    assert {name for name, colour in bars.items() if colour == "#d62728"} == set(drifted)  # drifted bars in red


def test_server_reads_online_features_and_defaults_unknown_entities(flights, flight_spec):
    """The model server of the pipeline's champion: past rates and the plane come from the Feast
    online store by entity key; a plane and a route the store never saw get what training gives
    them (the rate's prior, served from the online store; the plane left to the model's
    imputation) and are flagged. A request arrives on the day after the newest landed day, as a
    live one does: it gets that day's rates (from the days up to the newest), the snapshot the
    day's batch scoring and training will read, not the newest day's own."""
    from mlops_assets.core.features import past_rate, past_rate_table
    from mlops_assets.environments import server_stores
    from mlops_assets.server import build_server

    r = flights.resources()
    server = build_server(flight_spec, server_stores(r, flight_spec), log_predictions=False)
    server.load_initial()
    assert server.serving is not None, server.load_error
    lake = flights.home / "lake" / "dataset" / "flight_delays"
    days = sorted(f.stem for f in lake.glob("*.parquet"))  # other tests of this module may ingest more days
    newest = days[-1]
    day = pd.read_parquet(lake / f"{newest}.parquet")
    known = day.dropna(subset=["tailnum"]).iloc[0]
    row = {k: str(known[k]) for k in ("carrier", "origin", "dest", "tailnum")}
    following = date.fromisoformat(newest) + timedelta(days=1)
    row |= {"distance": float(known["distance"]), "event_timestamp": f"{following}T09:00"}
    unknown = {**row, "tailnum": "N0NE", "dest": "XXX"}
    status, out = server.predict({"instances": [row, unknown]})
    assert status == 200, out
    assert out["unknown_entities"] == [[], ["origin+dest", "tailnum"]]
    assert 0 < out["scores"][0] < 1 and 0 < out["scores"][1] < 1
    # the online carrier rate is the following day's point-in-time snapshot, from every landed day
    history = pd.concat([pd.read_parquet(lake / f"{d}.parquet") for d in days])
    feature = next(f for f in flight_spec.past_rate_features if f.name == "carrier_delay_rate")
    expected = past_rate(history, day.iloc[0:0], feature, following, "America/New_York").set_index("carrier")
    stale = past_rate(history, day, feature, date.fromisoformat(newest), "America/New_York").set_index("carrier")
    assert expected.loc[row["carrier"], feature.name] != stale.loc[row["carrier"], feature.name]  # the test can tell
    from mlops_assets.core.requests import parse_request
    from mlops_assets.core.serving import build_features

    parsed = parse_request({"instances": [row, unknown]}, server.schema, flight_spec)
    cols = build_features(parsed, flight_spec, server.lookup).columns
    assert cols["carrier_delay_rate"][0] == pytest.approx(expected.loc[row["carrier"], feature.name])
    # an unknown route gets the prior the offline rates shrink towards: the same value training gives it
    route = next(f for f in flight_spec.past_rate_features if f.name == "route_delay_rate")
    prior = past_rate_table(history, day.iloc[0:0], route, following, "America/New_York").iloc[-1]
    assert cols["route_delay_rate"][1] == pytest.approx(prior["route_delay_rate"])
    assert np.isnan(cols["plane_year"][1]) and not np.isnan(cols["plane_year"][0])


def test_endpoint_traffic_is_monitored_in_its_events_daily_partition(flights, flight_spec):
    """The endpoint serves a day's flights (with their event ids and times); its prediction log files
    them under that day, and scoring the day judges them: served feature and score drift on every
    served prediction, and the served metric on their labels, equal to the metric of the scores the
    server answered."""
    import dagster as dg

    from mlops_assets.core.training import evaluate
    from mlops_assets.environments import server_stores
    from mlops_assets.server import build_server

    day = KEYS[-2]
    events = pd.read_parquet(flights.home / "lake" / "dataset" / "flight_delays" / f"{day}.parquet")
    r = flights.resources()
    server = build_server(flight_spec, server_stores(r, flight_spec))
    server.load_initial()
    assert server.serving is not None, server.load_error
    fields = ["carrier", "origin", "dest", "tailnum", "distance"]
    sent, scores = events.iloc[:400], []
    for start in range(0, len(sent), 100):
        chunk = sent.iloc[start : start + 100]
        rows = [
            {
                **{f: (None if pd.isna(r[f]) else (float(r[f]) if f == "distance" else str(r[f]))) for f in fields},
                "event_id": str(r["event_id"]),
                "event_timestamp": r["event_timestamp"].isoformat(),
            }
            for _, r in chunk.iterrows()
        ]
        status, out = server.predict({"instances": rows})
        assert status == 200, out
        scores.extend(np.asarray(out["scores"]).tolist())
    server.log.close()  # writes what is buffered
    folder = flights.home / "lake" / "served" / "flight_delays" / day
    assert list(folder.glob("*.parquet")), "the predictions are filed under their events' day"

    result = flights.run("score", "flight_delays", day)
    assert result.success
    checks = {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    drift = checks["served_feature_drift"]
    assert drift.metadata["rows"].value == len(sent) and drift.metadata["source"].value == "endpoint prediction log"
    assert drift.metadata["window"].value == day and drift.metadata["plot"].value.startswith("![plot](")
    assert "served_prediction_drift" in checks  # judged: a check with too few rows yields no evaluation
    performance = checks["served_performance"]
    metric = flight_spec.promotion.metric
    expected = evaluate(sent["label"], np.asarray(scores), flight_spec)[metric]
    assert performance.metadata[f"realised_{metric}"].value == pytest.approx(expected, abs=1e-9)
    assert performance.metadata["labelled_rows"].value == len(sent)
    # the batch checks still judge every event of the day
    assert checks["feature_drift"].metadata["rows"].value == len(events)


def test_the_backtest_builds_the_training_set_feast_builds(flights, flight_spec):
    """``core.backtest_data`` computes every model input without Feast (past rates, the weather and
    plane lookups point in time, plane age): the same values as the training set's Feast join."""
    from mlops_assets.core.backtest_data import load_history
    from mlops_assets.core.training import feature_frame

    lake = flights.home / "lake" / "training_set" / "flight_delays"
    feast = pd.concat([pd.read_parquet(lake / "train.parquet"), pd.read_parquet(lake / "holdout.parquet")], ignore_index=True)
    history = load_history(flight_spec, START, START + timedelta(days=DAYS))
    assert [d.isoformat() for d in history.dates] == KEYS
    offline = pd.concat([history.days[d].X for d in history.dates], ignore_index=True)
    pd.testing.assert_frame_equal(offline, feature_frame(feast, flight_spec))
    np.testing.assert_array_equal(np.concatenate([history.days[d].y for d in history.dates]), feast["label"].to_numpy())


def test_scoring_gives_the_model_the_inputs_feasts_whole_join_gives(flights, flight_spec):
    """Batch scoring computes an event's own features from its row and asks Feast only for what is
    keyed by an entity (``scoring.scoring_frame``): on every ingested day the model's inputs, event
    ids and times equal those of Feast's point-in-time join of the whole feature service, which
    reads the same rows back from the per-event view; and the scored day stored those inputs."""
    from mlops_assets.core.features import add_derived
    from mlops_assets.core.names import EVENT_ID, EVENT_TS
    from mlops_assets.core.training import feature_frame
    from mlops_assets.scoring import FEATURE_PREFIX, scoring_frame
    from mlops_assets.training import entity_frame

    resources = flights.resources()
    feast, lake = resources["feast"], resources["lake"]
    assert flight_spec.row_features and flight_spec.past_rate_features and flight_spec.lookup_features
    ids = [EVENT_ID, EVENT_TS, *flight_spec.entities]
    for day in KEYS:
        events = lake.read(lake.partition_path("dataset", flight_spec.name, day))
        ours = add_derived(scoring_frame(events, flight_spec, feast), flight_spec)
        whole = add_derived(feast.historical_features(flight_spec, entity_frame(events, flight_spec)), flight_spec)
        pd.testing.assert_frame_equal(feature_frame(ours, flight_spec), feature_frame(whole, flight_spec))
        pd.testing.assert_frame_equal(ours[ids], whole[ids])
    preds = pd.read_parquet(flights.home / "lake" / "predictions" / "flight_delays" / f"{KEYS[-1]}.parquet")
    stored = preds[[c for c in preds.columns if c.startswith(FEATURE_PREFIX)]]
    stored.columns = [c[len(FEATURE_PREFIX) :] for c in stored.columns]
    pd.testing.assert_frame_equal(stored, feature_frame(whole, flight_spec))


def test_the_hourly_lookups_run_serves_the_weather_the_event_time_joins(flights, flight_spec):
    """Training and batch scoring join the weather of the event's hour; the endpoint reads the online
    store, which the day's ingest leaves at the day's last observation. The hourly schedule's run
    (``online_lookups``, as of its tick) writes each airport's observation of the hour, so a request
    during the next day is served what Feast's point-in-time join gives its event; the server leaves
    a value older than the table's TTL at the event missing; an older tick run again leaves the
    newer hour in place."""
    from zoneinfo import ZoneInfo

    import dagster as dg

    from mlops_assets.core.names import EVENT_ID, EVENT_TS, schedule_name
    from mlops_assets.core.requests import parse_request
    from mlops_assets.core.serving import build_features
    from mlops_assets.environments import server_stores
    from mlops_assets.server import build_server

    r = flights.resources()
    lake = flights.home / "lake" / "dataset" / "flight_delays"
    following = date.fromisoformat(max(f.stem for f in lake.glob("*.parquet"))) + timedelta(days=1)
    tz = ZoneInfo("America/New_York")
    origins = ["EWR", "JFK", "LGA"]
    server = build_server(flight_spec, server_stores(r, flight_spec), log_predictions=False)
    server.load_initial()
    assert server.serving is not None, server.load_error

    def served(at: str) -> list[float]:
        rows = [
            {"carrier": "UA", "origin": o, "dest": "ORD", "tailnum": "N14228", "distance": 719.0, "event_timestamp": at}
            for o in origins
        ]
        return list(
            build_features(parse_request({"instances": rows}, server.schema, flight_spec), flight_spec, server.lookup).columns[
                "temp"
            ]
        )

    def joined(at: datetime) -> list[float]:
        """Feast's point-in-time join of the weather for a departure from each origin at ``at``."""
        entity_df = pd.DataFrame({EVENT_ID: origins, "origin": origins, EVENT_TS: [pd.Timestamp(at).tz_convert("UTC")] * 3})
        got = r["feast"].store(flight_spec).get_historical_features(entity_df=entity_df, features=["lookup_weather:temp"]).to_df()
        return list(got.set_index(EVENT_ID).loc[origins, "temp"])

    def tick(hour: int) -> dg.ExecuteInProcessResult:
        schedule = flights.defs.get_schedule_def(schedule_name("lookups", flight_spec))
        at = datetime.combine(following, datetime.min.time(), tz).replace(hour=hour)
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=flights.instance, scheduled_execution_time=at))
        (request,) = data.run_requests
        return flights.run("lookups", "flight_delays", run_config=request.run_config)

    morning = datetime.combine(following, datetime.min.time(), tz).replace(hour=9, minute=40)
    expected = joined(morning)
    assert not any(np.isnan(expected))
    # after the ingest alone the store holds the last evening's observation, far older than the TTL
    # at 09:40: served missing (before the per-request TTL, served as it was: skew)
    assert np.isnan(served(morning.isoformat())).all()
    assert tick(9).success
    assert served(morning.isoformat()) == pytest.approx(expected)
    step = flights.latest("flight_delays/online_lookups")
    assert step["as_of"].startswith(f"{following}T09:00") and step["weather/rows_written"] == 3
    assert step["weather/keys_without_recent_observation"] == 0 and step["weather/snapshot_refreshed"] is False
    # with no later tick, the 09:00 observation serves while it is within the table's 2-hour TTL of
    # the event, and is missing after, as the join leaves a departure with no observation that recent
    nine = joined(morning.replace(minute=0))
    assert served(morning.replace(hour=10, minute=59).isoformat()) == pytest.approx(nine)
    assert np.isnan(served(morning.replace(hour=11, minute=30).isoformat())).all()

    afternoon = morning.replace(hour=15)
    assert tick(15).success and served(afternoon.isoformat()) == pytest.approx(joined(afternoon))
    assert tick(9).success  # an older tick run again (a backfill): the afternoon stays
    assert flights.latest("flight_delays/online_lookups")["weather/rows_kept_newer"] == 3
    assert served(afternoon.isoformat()) == pytest.approx(joined(afternoon))
    assert joined(afternoon) != pytest.approx(expected)  # the test can tell the hours apart
