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
    assert outcome.passed is None and not outcome.judged and outcome.metadata["rows"] == 10 and table.empty
    assert "not judged: 10 rows" in outcome.description
    assert monitoring.performance(None, 0, 0.7, spec).passed is None


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
    assert not failing.passed and "tolerated_drop" not in failing.metadata  # a setting: text, not a charted number
    assert failing.metadata["policy"].startswith("tolerated drop 20% of the champion's holdout rmse (16)")
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
    assert outcome.passed is None and not outcome.judged and "undefined" in outcome.description


HOSTILE = [np.inf, -np.inf, 1e308, -1e308, np.nan]  # what a careless client or a broken feed sends


@pytest.fixture(scope="module")
def unranged(spec):
    """The spec without its ``checks.ranges`` (the synthetic frames are standard normal)."""
    return spec.model_copy(update={"checks": spec.checks.model_copy(update={"ranges": {}})})


def test_hostile_values_are_left_out_and_counted_never_a_crash(unranged):
    """A served window holding inf, +-1e308, NaN and text in numeric features: the verdict is
    computed on the sound rows (the same verdict as without the hostile ones) and the metadata and
    table say how many values of each kind were left out, per feature."""
    reference, today = frame(unranged, 5000, 1), frame(unranged, 800, 2)
    numeric = [f for f in unranged.feature_names if f not in unranged.categorical_features]
    hostile = today.copy().astype({numeric[0]: object})
    hostile.loc[: len(HOSTILE) - 1, numeric[0]] = HOSTILE
    hostile.loc[len(HOSTILE), numeric[0]] = "abc"
    hostile.loc[0:2, numeric[1]] = [np.inf, 1e308, -1e200]
    clean, _ = monitoring.feature_drift(reference, today, unranged)
    outcome, table = monitoring.feature_drift(reference, hostile, unranged)
    assert outcome.passed == clean.passed and outcome.metadata["drifted_share"] == clean.metadata["drifted_share"]
    rows = table.set_index("column")
    assert rows.loc[numeric[0], ["current_non_finite", "current_out_of_range", "current_not_numeric"]].tolist() == [2, 2, 1]
    assert rows.loc[numeric[1], ["current_non_finite", "current_out_of_range", "current_not_numeric"]].tolist() == [1, 2, 0]
    assert outcome.metadata["excluded_values"] == 8
    assert f"{numeric[0]}: 5" in outcome.metadata["excluded_by_feature"]
    assert np.isfinite(rows["score"]).all()

    scores = np.random.default_rng(3).random(800)
    scores[:4] = [np.inf, np.nan, 1e308, -np.inf]
    verdict = monitoring.prediction_drift(np.random.default_rng(4).random(5000), scores, unranged)
    assert verdict.metadata["excluded_scores"] == 4 and np.isfinite(verdict.metadata["mean_score"])
    assert verdict.metadata["method"] == "wasserstein" and verdict.passed
    all_bad = monitoring.prediction_drift(np.random.default_rng(4).random(5000), np.full(800, np.inf), unranged)
    assert all_bad.passed is None and all_bad.metadata["excluded_scores"] == 800


def test_values_outside_the_specs_ranges_are_out_of_range(spec):
    """``checks.ranges`` says what a valid value is: served values beyond it are left out of drift."""
    numeric = next(f for f in spec.feature_names if f not in spec.categorical_features)
    ranged = spec.model_copy(update={"checks": spec.checks.model_copy(update={"ranges": {numeric: (-5.0, 5.0)}})})
    today = frame(spec, 800, 2)
    today.loc[:9, numeric] = 1e6
    _, table = monitoring.feature_drift(frame(spec, 5000, 1), today, ranged)
    assert table.set_index("column").loc[numeric, "current_out_of_range"] == 10


def test_the_served_log_with_hostile_rows_feeds_the_served_checks(unranged, tmp_path):
    """Rows logged by a real PredictionLog (inf, 1e308 and NaN features and scores) are read back by
    ``scoring.served_windows`` and judged by the same checks as a scoring run, without failing."""
    from mlops_assets.prediction_store import SERVED, PredictionLog
    from mlops_assets.resources import LakeStorage
    from mlops_assets.scoring import served_windows

    lake = LakeStorage(root=str(tmp_path))
    log = PredictionLog(lake.predictions_root(), unranged.name, unranged.source.timestamp.timezone, flush_seconds=3600)
    day, n = "2013-01-10", 600
    at = pd.Timestamp(f"{day}T12:00", tz=unranged.source.timestamp.timezone).tz_convert("UTC").value
    rows = frame(unranged, n, 5)
    numeric = [f for f in unranged.feature_names if f not in unranged.categorical_features]
    rows.loc[:4, numeric[0]] = HOSTILE
    scores = np.random.default_rng(6).random(n)
    scores[:3] = [np.inf, 1e308, np.nan]
    log.append(
        SERVED,
        {
            "request_id": [f"r{i}" for i in range(n)],
            "received_at_ns": np.full(n, at),
            "event_id": [None] * n,
            "event_timestamp_ns": np.full(n, at),
            "model_version": np.full(n, 1),
            "score": scores,
            **{
                f"feature.{c}": rows[c].to_numpy() if c in numeric else rows[c].astype(object).tolist()
                for c in unranged.feature_names
            },
        },
    )
    log.close()
    features, served_scores, days, labelled, _ = served_windows(unranged, day, lake, 1)
    assert days == [day] and len(features) == n and len(labelled) == 0
    drift, table = monitoring.feature_drift(frame(unranged, 5000, 1), features, unranged)
    assert drift.metadata["excluded_values"] == 4  # inf, -inf, 1e308, -1e308; NaN is missing
    assert table.set_index("column").loc[numeric[0], "current_missing_share"] == pytest.approx(1 / n)
    verdict = monitoring.prediction_drift(np.random.default_rng(7).random(5000), served_scores, unranged)
    assert verdict.metadata["excluded_scores"] == 3 and verdict.passed
