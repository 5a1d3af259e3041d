"""Elec2 runs through the same factory as flights, from its spec alone (no Elec2-specific code)."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest

from mlops_assets_tests.conftest import DATA_DIR, platform

START, DAYS = date(1996, 7, 1), 8
KEYS = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]


@pytest.fixture(scope="module")
def elec2(tmp_path_factory, elec2_spec):
    home = tmp_path_factory.mktemp("elec2_home")
    with platform(home, [elec2_spec]) as p:
        p.landed = p.land("elec2", START, DAYS)
        p.register = p.run("register", "elec2")
        p.ingests = [p.run("ingest", "elec2", k) for k in KEYS]
        p.train = p.run("train", "elec2")
        p.score = p.run("score", "elec2", KEYS[-1])
        yield p


def test_landing_splits_the_real_file_into_days(elec2):
    source = pd.read_csv(DATA_DIR / "elec2" / "elec2_with_timestamp.csv")
    source = source[source["timestamp"].between(f"{START}", f"{KEYS[-1]} 23:59")].reset_index(drop=True)
    landed = pd.concat(pd.read_csv(f) for f in elec2.landed)
    assert len(elec2.landed) == DAYS and len(landed) == DAYS * 48
    pd.testing.assert_frame_equal(landed.reset_index(drop=True), source, check_dtype=False)


def test_same_asset_graph_as_flights(elec2, flight_spec):
    from mlops_assets.factory import build_definitions

    elec2_keys = {k.to_user_string().replace("elec2", "<spec>") for k in elec2.defs.resolve_all_asset_keys()}
    flight_keys = {
        k.to_user_string().replace("flight_delays", "<spec>") for k in build_definitions([flight_spec]).resolve_all_asset_keys()
    }
    # the one difference: flight_delays has a deployment section, so it also gets an endpoint, and
    # the hourly weather that endpoint serves is kept online by online_lookups
    assert elec2_keys == flight_keys - {"<spec>/endpoint", "<spec>/online_lookups"}


def test_pipeline_trains_gates_and_scores(elec2, elec2_spec):
    assert elec2.register.success and all(r.success for r in elec2.ingests)
    assert elec2.train.success and elec2.score.success
    training = elec2.latest("elec2/training_set")
    assert training["rows_train"] == 5 * 48 and training["rows_holdout"] == 3 * 48
    model = elec2.latest("elec2/model")
    assert model["holdout_accuracy"] > 0.6
    gate = elec2.latest("elec2/champion")
    assert gate["decision"] == "promoted"
    assert elec2.check_results("elec2/champion") == {"promotion_gate": gate["challenger_accuracy"] > gate["baseline_accuracy"]}
    preds = pd.read_parquet(elec2.home / "lake" / "predictions" / "elec2" / f"{KEYS[-1]}.parquet")
    assert len(preds) == 48 and preds["score"].between(0, 1).all()


def test_the_model_sees_exactly_the_specs_seven_features(elec2, elec2_spec):
    import mlflow
    from mlflow import MlflowClient

    from mlops_assets.environments import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri(elec2.home))
    mlflow.set_registry_uri(mlflow_tracking_uri(elec2.home))
    version = MlflowClient().get_model_version_by_alias("elec2", "champion")
    info = mlflow.models.get_model_info(f"models:/elec2/{version.version}")
    assert info.signature.inputs.input_names() == ["day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]
