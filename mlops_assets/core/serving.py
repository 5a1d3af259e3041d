"""What the model server computes for a parsed request, without a web framework: the model's feature
frame (the same recipes as training: calendar parts, years since, online lookups, missing values)
and the scores of a loaded pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets.core.requests import ParsedRequest
from mlops_assets.specs import ModelSpec, TimePartFeature

# --- features ---------------------------------------------------------------------------------------

OnlineLookup = Callable[..., tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
"""(entity columns, the events' times or None) -> (online feature name -> float values, entity name
-> bool mask of unknown keys); with times, a timestamped lookup's value older than its TTL at the
event is missing, as in training"""


@dataclass
class Features:
    columns: dict[str, np.ndarray]  # spec order, training dtypes (object text, float64 numbers)
    unknown: dict[str, np.ndarray] = field(default_factory=dict)  # entity -> rows whose key is unknown

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)

    def unknown_per_row(self) -> list[list[str]] | None:
        """Per row, the entities the online store did not know; None when every key was known."""
        if not self.unknown or not any(m.any() for m in self.unknown.values()):
            return None
        names = list(self.unknown)
        masks = np.column_stack([self.unknown[e] for e in names])
        return [[names[j] for j in np.flatnonzero(row)] for row in masks]


def build_features(parsed: ParsedRequest, spec: ModelSpec, lookup: OnlineLookup | None) -> Features:
    """The model's input frame (spec order, training dtypes) for a parsed request, each feature by
    the ``core.features`` recipe training uses: calendar parts and years since of the event time in
    the spec's timezone, missing text as ``MISSING_CATEGORY``, missing numbers as NaN.

    An entity the online store never saw gets what training gives a group without history: the
    past rate's prior (the lookup returns it, ``server.runtime.feast_online_lookup``), and a lookup
    table's values missing (imputed by the model). ``deployment.unknown_entity.defaults`` fill a
    value only where that still leaves it missing (a store without a prior yet): a fallback, since
    any value training never gave is skew."""
    from mlops_assets.core.features import model_columns, time_part, years_since

    n = parsed.rows
    tz = spec.source.timestamp.timezone
    cols: dict[str, Any] = {}
    for f in spec.row_features:
        if isinstance(f, TimePartFeature):
            cols[f.name] = time_part(parsed.timestamps, f, tz)
        else:
            cols[f.name] = parsed.columns[f.name if f.name in parsed.columns else f.source]
    unknown: dict[str, np.ndarray] = {}
    schema_online = spec.entity_keyed_features
    if schema_online:
        if lookup is None:
            raise RuntimeError(f"spec {spec.name!r} needs online features {schema_online} but the server has no online store")
        values, unknown = lookup({e: parsed.columns[e] for e in spec.entities}, parsed.timestamps)
        defaults = spec.deployment.unknown_entity.defaults if spec.deployment else {}
        for name in schema_online:
            arr = np.asarray(values.get(name, np.full(n, np.nan)), dtype="float64")
            if name in defaults:
                arr = np.where(np.isnan(arr), float(defaults[name]), arr)
            cols[name] = arr
    for f in spec.derived_features:
        cols[f.name] = years_since(parsed.timestamps, cols[f.of], tz)
    return Features(model_columns(cols, spec), unknown)


FEAST_NOT_FOUND = 3  # feast.protos FieldStatus.NOT_FOUND: the online store has no row for the key


def feast_unknown_mask(statuses: Sequence[int], timestamps: Sequence[int] | None = None) -> np.ndarray:
    """Rows whose entity key the online store has never seen, from Feast's per-value field statuses.

    Feast's Redis store answers a key it has no row for as present, with empty values and event
    time 0 (its SQLite store says NOT_FOUND); every row it does hold has a later time (static
    lookup rows are stamped one second after the epoch for this reason). So with ``timestamps``
    (epoch seconds of each value's event time) time 0 also means unknown."""
    unknown = np.fromiter((s == FEAST_NOT_FOUND for s in statuses), dtype=bool, count=len(statuses))
    if timestamps is not None:
        unknown |= np.fromiter((t == 0 for t in timestamps), dtype=bool, count=len(statuses))
    return unknown


# --- prediction ----------------------------------------------------------------------------------


class Predictor:
    """Scores feature columns with a fitted pipeline of ``core.training.build_pipeline``.

    scikit-learn's ``ColumnTransformer`` costs 2-4 ms per call whatever the batch size (column
    selection, dtype checks, one pandas frame per transformer): more than the model itself on a few
    rows. When the pipeline is the usual median imputer + ordinal encoder, the same transform is done
    here in numpy (fill with the imputer's statistics, map each category to its code, -1 when unseen)
    and the estimator is called on the array it was fitted on. That path is used only after it has
    reproduced the pipeline's own scores on probe rows (every category, an unseen one, missing
    values); otherwise, and for any other pipeline, the pipeline itself scores. A model learned
    relative to a level (``core.relative_target``) takes the same path for its inner pipeline and
    adds the level as its ``predict`` does."""

    def __init__(self, model: Any, spec: ModelSpec):
        self.model = model
        self.classification = spec.target.task == "classification"
        self.feature_names = list(spec.feature_names)
        self.fast = False
        try:
            self._compile(spec)
            probe = self._probe_rows(spec)
            self.fast = bool(np.allclose(self._fast_scores(probe), self._pipeline_scores(probe), rtol=0, atol=1e-12))
        except Exception:  # noqa: BLE001 - any unexpected pipeline shape means: the pipeline scores
            self.fast = False

    def _compile(self, spec: ModelSpec) -> None:
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import OrdinalEncoder

        from mlops_assets.core.relative_target import RelativeTarget

        pipeline, self.level = self.model, None
        if isinstance(pipeline, RelativeTarget):  # target.relative_to: the pipeline's deviation + the level
            pipeline, self.level, self.level_fill = pipeline.pipeline_, pipeline.level, pipeline.fill_
        pre, self.estimator = pipeline[:-1][0], pipeline[-1]
        self.numeric, self.codes = [], []
        self.fill = np.empty(0)
        for name, transformer, cols in pre.transformers_:
            if name == "remainder" and transformer == "drop":
                continue
            if isinstance(transformer, SimpleImputer) and transformer.strategy in ("median", "mean", "constant"):
                self.numeric, self.fill = list(cols), np.asarray(transformer.statistics_, dtype="float64")
            elif isinstance(transformer, OrdinalEncoder) and transformer.unknown_value == -1:
                self.codes = [(c, {v: float(i) for i, v in enumerate(cats)}) for c, cats in zip(cols, transformer.categories_)]
            else:
                raise TypeError(f"no fast path for {transformer!r}")
        if [n for n, *_ in pre.transformers_ if n != "remainder"] != ["numeric", "categorical"][: 1 + bool(self.codes)]:
            raise TypeError("unexpected transformer order")

    def _probe_rows(self, spec: ModelSpec) -> dict[str, np.ndarray]:
        n = max([len(m) for _, m in self.codes] + [8]) + 2
        rng = np.random.default_rng(0)
        cols: dict[str, np.ndarray] = {}
        for i, c in enumerate(self.numeric):
            x = self.fill[i] * rng.uniform(0.5, 1.5, n) + rng.normal(0, 1, n)
            x[::3] = np.nan
            cols[c] = x
        if self.level is not None:  # the level is no input of the pipeline, but its predict reads it
            level = self.level_fill + rng.normal(0, 1 + abs(self.level_fill), n)
            level[1::3] = np.nan
            cols[self.level] = level
        for c, mapping in self.codes:
            seen = list(mapping)
            cols[c] = np.array([seen[i % len(seen)] if seen and i < n - 1 else "\x00unseen" for i in range(n)], dtype=object)
        return {f: cols[f] for f in self.feature_names}

    def _fast_scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        if self.numeric:
            num = np.column_stack([columns[c] for c in self.numeric]).astype("float64", copy=False)
            parts.append(np.where(np.isnan(num), self.fill, num))
        for c, mapping in self.codes:
            get = mapping.get
            parts.append(np.fromiter((get(v, -1.0) for v in columns[c]), dtype="float64", count=len(columns[c]))[:, None])
        X = np.hstack(parts) if len(parts) > 1 else parts[0]
        if self.classification:
            return self.estimator.predict_proba(X)[:, 1]
        if self.level is None:
            return self.estimator.predict(X)
        level = np.asarray(columns[self.level], dtype="float64")
        return self.estimator.predict(X) + np.where(np.isnan(level), self.level_fill, level)

    def _pipeline_scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        frame = pd.DataFrame(columns)
        return self.model.predict_proba(frame)[:, 1] if self.classification else self.model.predict(frame)

    def scores(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return self._fast_scores(columns) if self.fast else self._pipeline_scores(columns)
