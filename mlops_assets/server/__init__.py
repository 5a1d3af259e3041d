"""The model server (``mlops serve``): the local endpoint and the container image run this same app.

``build_server`` wires a spec to the platform it runs on: versions from the MLflow registry, online
features from the Feast online store, the prediction log in the profile's storage, and the
deployment the endpoint asset last decided (else the ``champion`` alias). Where each of those lives
comes from the environment profile (``environments.runtime``), so a container is configured by its
environment alone and reads and writes the same stores as the platform.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops_assets.specs import ModelSpec

ADMIN_TOKEN_ENV = "MLOPS_ADMIN_TOKEN"
DEPLOYMENT_ENV = "MLOPS_DEPLOYMENT"  # JSON; the Kubernetes and SageMaker targets set it on the container
SPEC_ENV = "MLOPS_SPEC"  # the spec a container serves when `mlops serve` gets no --spec
MODEL_DIR_ENV = "MLOPS_MODEL_DIR"  # an MLflow model folder to serve instead of the registry's version
SAGEMAKER_MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks a variant's ModelDataUrl


@dataclass(frozen=True)
class ServerStores:
    """Where one model's server reads and writes, as plain values: the server never imports the
    platform's Dagster resources (``environments.server_stores`` derives these from a profile)."""

    predictions_root: str  # URI of the prediction store (``prediction_store``)
    endpoint_dir: str  # URI of the endpoint's deployment and audit history (``endpoint_state``)
    tracking_uri: str  # MLflow tracking server
    registry_uri: str | None = None  # MLflow model registry (default: the tracking server)
    feature_store: Callable[[], Any] | None = None  # the spec's Feast store, built on first use
    online_store_type: str = "sqlite"  # Feast online store kind (Redis marks unknown keys differently)


def build_server(spec: ModelSpec, stores: ServerStores, *, log_predictions: bool = True):
    import json

    from mlops_assets.core.names import CHAMPION
    from mlops_assets.endpoint_state import Deployment, EndpointState
    from mlops_assets.prediction_store import PredictionLog
    from mlops_assets.server.app import ModelServer
    from mlops_assets.server.runtime import MlflowVersions, feast_online_lookup, warm_up

    versions = MlflowVersions(stores.tracking_uri, stores.registry_uri)
    state = EndpointState(stores.endpoint_dir)

    def initial() -> Deployment | None:
        if os.environ.get(DEPLOYMENT_ENV):
            return Deployment.from_json(json.loads(os.environ[DEPLOYMENT_ENV]))
        saved = state.load()
        if saved is not None:
            return saved
        champion = versions.alias(spec.name, CHAMPION)
        return Deployment(stable=champion) if champion else None

    def load(version: str):
        return versions.load(spec.name, version)

    if os.environ.get(MODEL_DIR_ENV):  # a SageMaker variant: its one version, unpacked beside the server
        model_dir = os.environ[MODEL_DIR_ENV]

        def load(version: str):  # replaces the registry loader
            import mlflow.sklearn

            pinned = initial()
            if pinned is None or version != pinned.stable:
                raise ValueError(f"{MODEL_DIR_ENV}={model_dir} holds version {pinned and pinned.stable}, not {version}")
            return mlflow.sklearn.load_model(model_dir)

    warm_up()
    lookup = feast_online_lookup(spec, stores.feature_store, stores.online_store_type)
    log = PredictionLog(stores.predictions_root, spec.name, spec.source.timestamp.timezone) if log_predictions else None
    return ModelServer(spec, load, online_lookup=lookup, prediction_log=log, initial=initial)


def serve(spec: ModelSpec, host: str, port: int, stores: ServerStores) -> None:
    """Run the server in the foreground (uvicorn, one process; uvloop and httptools when present)
    on ``stores`` (the profile's, read from the environment)."""
    import uvicorn

    from mlops_assets.server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = build_server(spec, stores)
    app = create_app(server, admin_token=os.environ.get(ADMIN_TOKEN_ENV))
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on")
