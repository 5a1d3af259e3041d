"""A regression spec (UCI Bike Sharing) through the same factory: RMSE, lower is better at the gate."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from mlops_assets_tests.conftest import REPO, platform

START, DAYS = date(2011, 6, 1), 10
KEYS = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]


@pytest.fixture(scope="module")
def bikes(tmp_path_factory):
    from mlops_assets.specs import load_spec

    spec = load_spec(REPO / "examples" / "specs" / "bike_sharing.yaml")
    with platform(tmp_path_factory.mktemp("bikes_home"), [spec]) as p:
        p.land("bike_sharing", START, DAYS)
        p.results = [p.run("register", "bike_sharing")] + [p.run("ingest", "bike_sharing", k) for k in KEYS]
        p.results += [p.run("train", "bike_sharing"), p.run("score", "bike_sharing", KEYS[-1])]
        yield p


def test_regression_pipeline_trains_gates_and_scores(bikes):
    assert all(r.success for r in bikes.results)
    model = bikes.latest("bike_sharing/model")
    assert model["holdout_rmse"] < model["baseline_rmse"]  # beats predicting the training mean
    assert {"holdout_rmse", "holdout_mae", "holdout_r2"} <= set(model)
    gate = bikes.latest("bike_sharing/champion")
    assert gate["decision"] == "promoted" and gate["challenger_rmse"] < gate["baseline_rmse"]
    assert bikes.check_results("bike_sharing/champion") == {"promotion_gate": True}
    preds = pd.read_parquet(bikes.home / "lake" / "predictions" / "bike_sharing" / f"{KEYS[-1]}.parquet")
    day = pd.read_parquet(bikes.home / "lake" / "dataset" / "bike_sharing" / f"{KEYS[-1]}.parquet")
    assert len(preds) == len(day) and "prediction" not in preds  # regression: a value, no class
    # a day is 24 hourly rows, below the drift policy's minimum: the drift checks are not judged, so they
    # have no result (Dagster shows them skipped) and the reason is on the materialization
    assert set(bikes.check_results("bike_sharing/predictions")) == {"performance"}
    scored = bikes.latest("bike_sharing/predictions")
    minimum = bikes.specs["bike_sharing"].policies.drift.min_rows
    assert scored["not_judged_feature_drift"] == f"not judged: {len(day)} rows (policy minimum {minimum})."
    assert scored["not_judged_prediction_drift"].startswith(f"not judged: {len(day)} finite scores")


def test_leaking_columns_are_not_features(bikes):
    spec = bikes.specs["bike_sharing"]
    assert not {"casual", "registered", "cnt"} & set(spec.feature_names)
