"""The server's connections to the outside: the MLflow registry it loads versions from and the Feast
online store it looks entities up in. Kept apart from the app so tests and the benchmark can hand
the app other loaders, and so the app module itself imports neither MLflow nor Feast."""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from mlops_assets.core.names import lookup_view_name
from mlops_assets.core.serving import OnlineLookup, feast_unknown_mask
from mlops_assets.specs import ModelSpec


class MlflowVersions:
    """Loads registered versions of one model from an MLflow registry (``models:/<name>/<version>``)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri

    def _mlflow(self):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        return mlflow

    def load(self, name: str, version: str) -> Any:
        import mlflow.sklearn

        self._mlflow()
        return mlflow.sklearn.load_model(f"models:/{name}/{version}")

    def alias(self, name: str, alias: str) -> str | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._mlflow()
        try:
            return str(MlflowClient(self.tracking_uri, self.registry_uri).get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None


def feast_online_lookup(spec: ModelSpec, feature_store, online_store_type: str = "sqlite") -> OnlineLookup | None:
    """A function from entity columns to the spec's online features (past rates and lookup columns),
    read from the Feast online store with ``get_online_features``; None when the spec has none.

    The response says which entity was unknown: a key the store has no row for comes back ``None``
    for every feature of its view. Such a key gets, for a past rate, the prior its table carries
    under ``core.features.PRIOR_KEY`` (looked up in the same call, one more entity row): the value
    training gives a group without history. A lookup table has no prior: its values stay missing,
    as they are in training for an unknown key.

    A timestamped lookup's value older than its table's ``ttl_hours`` at the request's event time is
    missing, as the point-in-time join leaves it in training (the row online is the newest as of the
    last hourly ``online_lookups`` run, which may be older than that by the time the request comes)."""
    import pandas as pd

    from mlops_assets.core.features import PRIOR_KEY

    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    # (name, feast ref, returned column, flag, has prior, ttl in seconds of a timestamped lookup)
    refs: list[tuple[str, str, str, tuple[str, ...], bool, float | None]] = []
    for f in spec.past_rate_features:
        refs.append((f.name, f"{f.name}:{f.name}", f.name, tuple(f.by), True, None))
    for f in spec.lookup_features:
        table = spec.lookups[f.table]
        ttl = table.ttl_hours * 3600 if table.timestamp else None
        refs.append((f.name, f"{lookup_view_name(f.table)}:{f.source}", f.source, (table.join_entity,), False, ttl))
    if not refs:
        return None
    if feature_store is None:
        raise ValueError(f"spec {spec.name!r} needs online features but the server has no feature store")
    store = feature_store()  # Feast itself is imported on first use
    by_time = online_store_type == "redis"  # Redis marks an unknown key by event time 0 only
    features = [r[1] for r in refs]
    entity_names = list(spec.entities)
    prior_row = dict.fromkeys(entity_names, PRIOR_KEY)

    def lookup(entities: dict[str, list], times=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        n = len(next(iter(entities.values())))
        event_s = None if times is None else np.asarray((times - epoch).total_seconds(), dtype="float64")
        rows = [{e: entities[e][i] for e in entity_names} for i in range(n)]
        rows.append(prior_row)
        response = store.get_online_features(features=features, entity_rows=rows)
        got = response.to_dict()
        # per feature, Feast's field status: NOT_FOUND is a key the store has no row for; a row
        # whose value is null (NULL_VALUE, e.g. a missing wind gust) is a known entity
        names = list(response.proto.metadata.feature_names.val)
        statuses = {n: response.proto.results[i].statuses for i, n in enumerate(names)}
        stamped = {r[2] for r in refs if by_time or (r[5] is not None and event_s is not None)}
        stamps = {n: [t.seconds for t in response.proto.results[i].event_timestamps] for i, n in enumerate(names) if n in stamped}
        values: dict[str, np.ndarray] = {}
        unknown: dict[str, np.ndarray] = {}
        for name, _, column, flag, has_prior, ttl in refs:
            all_values = np.array([np.nan if v is None else v for v in got[column]], dtype="float64")
            all_missing = feast_unknown_mask(statuses[column], stamps[column] if by_time else None)
            arr, missing = all_values[:n], all_missing[:n]
            if has_prior and not all_missing[n] and missing.any():
                arr = np.where(missing, all_values[n], arr)
            if ttl is not None and event_s is not None:
                observed = np.asarray(stamps[column][:n], dtype="float64")
                arr = np.where(observed < event_s - ttl, np.nan, arr)  # too old for the event: missing, as in training
            values[name] = arr
            key = "+".join(flag)
            unknown[key] = unknown[key] | missing if key in unknown else missing
        return values, unknown

    return lookup


PREDICT_THREADS_ENV = "MLOPS_PREDICT_THREADS"


@functools.lru_cache(maxsize=1)
def warm_up() -> float:
    """Import the model libraries before the first request, so it is not the slow one, and limit
    their OpenMP threads (``MLOPS_PREDICT_THREADS``, default 1).

    A server answers many small requests at once: a gradient-boosting model opens one OpenMP parallel
    region per tree, which cost ~60 µs each under concurrent load against ~7 µs on a quiet machine, so
    a 100-tree model spent most of a single-row request starting threads (bench/serving.py). Requests
    are the unit of parallelism here; scale with server processes, not model threads."""
    import os

    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    import sklearn.ensemble
    import sklearn.pipeline  # noqa: F401

    threadpool_limits(limits=int(os.environ.get(PREDICT_THREADS_ENV, "1")), user_api="openmp")
    return time.perf_counter() - t0
