"""The model server (``mlops serve``): the local endpoint and the container image run this same app.

``build_server`` wires a spec to the platform it runs on: versions from the MLflow registry, online
features from the Feast online store, the prediction log in the lake, and the deployment the
endpoint asset last decided (else the ``champion`` alias).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mlops_assets.specs import ModelSpec

ADMIN_TOKEN_ENV = "MLOPS_ADMIN_TOKEN"
DEPLOYMENT_ENV = "MLOPS_DEPLOYMENT"  # JSON; the Kubernetes and SageMaker targets set it on the container
SPEC_ENV = "MLOPS_SPEC"  # the spec a container serves when `mlops serve` gets no --spec
MODEL_DIR_ENV = "MLOPS_MODEL_DIR"  # an MLflow model folder to serve instead of the registry's version
SAGEMAKER_MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks a variant's ModelDataUrl


def build_server(spec: ModelSpec, home: Path, tracking_uri: str, *, log_predictions: bool = True):
    import json

    from mlops_assets.core.names import CHAMPION
    from mlops_assets.serving.app import ModelServer
    from mlops_assets.serving.log import PredictionLog
    from mlops_assets.serving.runtime import MlflowVersions, feast_online_lookup, warm_up
    from mlops_assets.serving.state import Deployment, EndpointState

    versions = MlflowVersions(tracking_uri)
    state = EndpointState(home, spec.name)

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
    lookup = feast_online_lookup(spec, str(home / "feast" / "registry.db"), str(home / "feast" / "online.db"))
    log = PredictionLog(home, spec.name, spec.source.timestamp.timezone) if log_predictions else None
    return ModelServer(spec, load, online_lookup=lookup, prediction_log=log, initial=initial)


def serve(spec: ModelSpec, host: str, port: int, home: Path, tracking_uri: str) -> None:
    """Run the server in the foreground (uvicorn, one process; uvloop and httptools when present)."""
    import uvicorn

    from mlops_assets.serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(build_server(spec, home, tracking_uri), admin_token=os.environ.get(ADMIN_TOKEN_ENV))
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on")
