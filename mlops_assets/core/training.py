"""Fitting and scoring: the estimator pipeline a spec describes, its metrics and the holdout split."""

from __future__ import annotations

import importlib
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.core.sources import local_dates
from mlops_assets.core.validation import EVENT_TS, LABEL
from mlops_assets.specs import ModelSpec


def build_pipeline(spec: ModelSpec):
    """A scikit-learn Pipeline: categorical encoding and numeric imputation, then the estimator;
    with ``target.relative_to``, wrapped to learn the target relative to that level
    (``core.relative_target``).

    Imputation keeps linear estimators usable on features Feast could not join (a flight whose
    weather observation is older than the TTL); tree models would cope without it.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    module, _, cls = spec.estimator.cls.rpartition(".")
    estimator = getattr(importlib.import_module(module), cls)(**spec.estimator.params)
    cats = spec.categorical_features
    # a level the target is learned relative to is not also an input: trees split on it, and a level
    # outside the training window's range (the reason for the design) would land in the wrong leaves
    nums = [f for f in spec.feature_names if f not in cats and f != spec.target.relative_to]
    if spec.estimator.categorical_encoding == "onehot":
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    else:
        encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
    transformers = [("numeric", SimpleImputer(strategy="median", keep_empty_features=True), nums)]
    if cats:
        transformers.append(("categorical", encoder, cats))
    pre = ColumnTransformer(transformers, verbose_feature_names_out=False)
    pipeline = Pipeline([("features", pre), ("estimator", estimator)])
    if spec.target.relative_to is None:
        return pipeline
    from mlops_assets.core.relative_target import RelativeTarget

    return RelativeTarget(pipeline, level=spec.target.relative_to)


def feature_frame(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The model's input columns in spec order, with the dtypes the signature records: the same
    ``core.features.model_columns`` the server builds its inputs with."""
    from mlops_assets.core.features import model_columns

    return pd.DataFrame(model_columns(frame, spec), index=frame.index)


def split_holdout(frame: pd.DataFrame, spec: ModelSpec, as_of: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the window's older days, hold out its newest ``holdout_days`` days."""
    days = local_dates(frame[EVENT_TS], spec.source.timestamp.timezone)
    cut = as_of - timedelta(days=spec.training.holdout_days - 1)
    is_holdout = (days >= cut).to_numpy()
    return frame.loc[~is_holdout].reset_index(drop=True), frame.loc[is_holdout].reset_index(drop=True)


def predict_scores(model, X: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """Probability of the positive class (classification) or the predicted value (regression)."""
    if spec.target.task == "classification":
        return model.predict_proba(X)[:, 1]
    return model.predict(X)


def _metrics(spec: ModelSpec) -> dict[str, Any]:
    """The metrics that fit the task: name -> function of (labels as float64, scores)."""
    from sklearn import metrics as m

    if spec.target.task == "classification":
        return {
            "accuracy": lambda y, s: m.accuracy_score(y, (s >= 0.5).astype(float)),
            "f1": lambda y, s: m.f1_score(y, (s >= 0.5).astype(float), zero_division=0),
            "log_loss": lambda y, s: m.log_loss(y, np.clip(s, 1e-7, 1 - 1e-7), labels=[0, 1]),
            "positive_rate": lambda y, s: float(y.mean()),
            "roc_auc": lambda y, s: m.roc_auc_score(y, s) if len(np.unique(y)) == 2 else float("nan"),
        }
    return {
        "rmse": lambda y, s: float(np.sqrt(m.mean_squared_error(y, s))),
        "mae": lambda y, s: m.mean_absolute_error(y, s),
        "r2": lambda y, s: m.r2_score(y, s),
    }


def evaluate(y: pd.Series | np.ndarray, scores: np.ndarray, spec: ModelSpec) -> dict[str, float]:
    """Every metric that fits the task, as plain floats (Dagster charts them, MLflow logs them)."""
    y = np.asarray(y, dtype="float64")
    return {name: float(f(y, scores)) for name, f in _metrics(spec).items()}


def metric(y: pd.Series | np.ndarray, scores: np.ndarray, spec: ModelSpec, name: str | None = None) -> float:
    """One metric of ``evaluate`` (default: the promotion metric), computed alone: a check or a
    replay that judges by one metric skips the others' scikit-learn calls (their input validation
    is most of their cost on a day's rows)."""
    return float(_metrics(spec)[name or spec.promotion.metric](np.asarray(y, dtype="float64"), scores))


def baseline_scores(y_train: pd.Series, X: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The no-skill model for the rows of ``X``: the training base rate (or mean) for every row; with
    ``target.relative_to``, the level itself (no deviation, persistence), which is what a model
    learned relative to it has to beat, a missing level read as the training mean."""
    mean = float(np.mean(y_train))
    if spec.target.relative_to is None:
        return np.full(len(X), mean)
    level = np.asarray(X[spec.target.relative_to], dtype="float64")
    return np.where(np.isnan(level), mean, level)


def fit(spec: ModelSpec, train: pd.DataFrame) -> Any:
    model = build_pipeline(spec)
    model.fit(feature_frame(train, spec), train[LABEL].to_numpy())
    return model
