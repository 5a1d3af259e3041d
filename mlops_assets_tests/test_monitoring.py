"""The monitoring core: feature drift, prediction drift and performance verdicts on small frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_assets.core import monitoring
from mlops_assets.core.drift import ColumnDrift


@pytest.fixture(scope="module")
def spec():
    from mlops_assets.specs import find_spec

    return find_spec("flight_delays")


def frame(spec, n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for f in spec.feature_names:
        if f in spec.categorical_features:
            data[f] = rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1] if shift else [0.2, 0.3, 0.5])
        else:
            data[f] = rng.normal(shift * 3, 1, n)
    return pd.DataFrame(data)


def test_feature_drift_passes_on_the_same_distribution_and_fails_on_a_shift(spec):
    reference = frame(spec, 5000, 1)
    same, table = monitoring.feature_drift(reference, frame(spec, 800, 2), spec)
    assert same.passed and same.metadata["drifted_share"] < 0.2 and len(table) == len(spec.feature_names)
    moved, table = monitoring.feature_drift(reference, frame(spec, 800, 3, shift=1.0), spec)
    assert not moved.passed and moved.metadata["drifted_share"] == 1.0
    assert (table["strength"] > 1).all() == table["drifted"].all()


def test_days_below_the_minimum_are_not_judged(spec):
    outcome, table = monitoring.feature_drift(frame(spec, 5000, 1), frame(spec, 10, 2, shift=1.0), spec)
    assert outcome.passed and outcome.metadata["evaluated"] is False and table.empty
    assert monitoring.performance(None, 0, 0.7, spec).metadata["evaluated"] is False


def test_prediction_drift(spec):
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 8, 3000)
    assert monitoring.prediction_drift(ref, rng.beta(2, 8, 900), spec).passed
    shifted = monitoring.prediction_drift(ref, rng.beta(5, 5, 900), spec)
    assert not shifted.passed and shifted.metadata["method"] == "wasserstein"


def test_performance_tolerates_the_policy_drop_in_the_metrics_direction(spec):
    assert monitoring.performance(0.66, 500, 0.70, spec).passed  # roc_auc drop 0.04 <= 0.05
    failing = monitoring.performance(0.64, 500, 0.70, spec)
    assert not failing.passed and failing.metadata["drop"] == pytest.approx(0.06)
    regression = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"metric": "rmse"})})
    assert monitoring.performance(10.04, 500, 10.0, regression).passed  # error up by 0.04
    assert not monitoring.performance(10.2, 500, 10.0, regression).passed


def test_a_relative_tolerance_is_a_share_of_the_holdout_metric(spec):
    p = spec.policies
    relative = p.performance.model_copy(update={"tolerated_drop": 0.2, "relative": True})
    bike = spec.model_copy(
        update={
            "promotion": spec.promotion.model_copy(update={"metric": "rmse"}),
            "policies": p.model_copy(update={"performance": relative}),
        }
    )
    assert monitoring.performance(95.0, 500, 80.0, bike).passed  # up 15 <= 20 % of 80
    failing = monitoring.performance(97.0, 500, 80.0, bike)
    assert not failing.passed and failing.metadata["tolerated_drop"] == pytest.approx(16.0)
    assert "20% of it (16)" in failing.description


def test_drift_strength_puts_every_test_on_one_scale():
    distance = ColumnDrift("x", "numeric", "wasserstein", 0.25, 0.1, True, 10, 10, 0, 0)
    pvalue = ColumnDrift("y", "numeric", "ks", 0.01, 0.05, True, 10, 10, 0, 0)
    stable = ColumnDrift("z", "categorical", "chisquare", 0.5, 0.05, False, 10, 10, 0, 0)
    assert monitoring.drift_strength(distance) == pytest.approx(2.5)
    assert monitoring.drift_strength(pvalue) == pytest.approx(5.0)
    assert monitoring.drift_strength(stable) < 1


def test_feature_drift_reports_untested_features_instead_of_failing(spec):
    reference = frame(spec, 5000, 1)
    reference["carrier_delay_rate"] = np.nan  # no history yet when the champion was trained
    outcome, table = monitoring.feature_drift(reference, frame(spec, 800, 2), spec)
    assert outcome.passed and outcome.metadata["untested_features"] == "carrier_delay_rate"
    assert table.set_index("column").loc["carrier_delay_rate", "strength"] == 0.0


def test_an_undefined_realised_metric_is_not_judged(spec):
    outcome = monitoring.performance(float("nan"), 500, 0.70, spec)  # ROC AUC of a one-class day
    assert outcome.passed and outcome.metadata["evaluated"] is False and "undefined" in outcome.description
