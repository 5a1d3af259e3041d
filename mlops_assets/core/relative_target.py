"""A regression learned relative to a recent level of its own target (``target.relative_to``).

Some targets drift in level from one day to the next: a temperature, a demand, a price. A model
that predicts the value itself follows such a level only when it is retrained on the newest days, so
the retrain policy has to retrain nearly daily to keep up, and a tree ensemble cannot predict a
level it never saw in its training window at all. Predicting the *deviation* from a recent level
(a ``past_rate`` feature of the target: yesterday's mean by station, the last week's by store)
moves that level out of the model: the level is fed fresh every day through the features, and the
model only has to know how today differs from it, which changes far more slowly. It is the classic
persistence-plus-correction design of forecasting.

The wrapper is an ordinary scikit-learn regressor around the spec's pipeline, so training, batch
scoring, the gate, the model card and the model server all go through the same ``predict``, and
the model is saved and loaded by MLflow (skops) as one object: one recipe, no skew.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone


class RelativeTarget(RegressorMixin, BaseEstimator):
    """Fits ``pipeline`` on ``y - X[level]`` and predicts ``pipeline.predict(X) + X[level]``.

    A row whose level is missing (a group with no labelled history in the feature's window, a
    feature the online store could not serve) is read at the training rows' mean level, learned at
    fit time, so it gets the plain model's kind of answer instead of NaN. ``build_pipeline`` leaves
    the level out of the pipeline's inputs: the deviation is learned from everything else, so a
    level never seen in training cannot send a row to the wrong leaves of a tree.
    """

    def __init__(self, pipeline=None, level: str = ""):
        self.pipeline = pipeline
        self.level = level

    def levels(self, X) -> np.ndarray:
        """The level of each row: its ``level`` column, missing values read as the training mean."""
        x = np.asarray(X[self.level], dtype="float64")
        return np.where(np.isnan(x), self.fill_, x)

    def fit(self, X, y):
        x = np.asarray(X[self.level], dtype="float64")
        known = ~np.isnan(x)
        y = np.asarray(y, dtype="float64")
        # no known level at all: the mean of y itself, so the deviations are centred as they would be
        self.fill_ = float(x[known].mean()) if known.any() else float(y.mean()) if len(y) else 0.0
        self.pipeline_ = clone(self.pipeline).fit(X, y - self.levels(X))
        return self

    def predict(self, X) -> np.ndarray:
        return self.pipeline_.predict(X) + self.levels(X)
