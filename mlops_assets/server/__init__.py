"""The model server (``mlops serve``): the local endpoint and the container image run this same app.

``build_server`` wires a spec to the platform it runs on: versions from the MLflow registry, online
features from the Feast online store, the prediction log in the profile's storage, and the
deployment the endpoint asset last decided (else the ``champion`` alias). Where each of those lives
comes from the environment profile (``environments.runtime``), so a container is configured by its
environment alone and reads and writes the same stores as the platform.

A server started by a replay (``MLOPS_REPLAY_CLOCK`` set, loopback only) lives on the replay's
simulated clock and answers one more admin route, ``POST /v1/models/<name>/flush``; production
servers have neither (``server.clock`` says why).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops_assets.specs import ModelSpec

ADMIN_TOKEN_ENV = "MLOPS_ADMIN_TOKEN"  # read by ``environments.admin_token`` (else the home's generated token)
API_KEYS_ENV = "MLOPS_API_KEYS"  # comma-separated keys of the predict routes, when the spec sets deployment.api_keys
DEPLOYMENT_ENV = "MLOPS_DEPLOYMENT"  # JSON; the Kubernetes and SageMaker targets set it on the container
SPEC_ENV = "MLOPS_SPEC"  # the spec a container serves when `mlops serve` gets no --spec
MODEL_DIR_ENV = "MLOPS_MODEL_DIR"  # an MLflow model folder to serve instead of the registry's version
SAGEMAKER_MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks a variant's ModelDataUrl
PROMETHEUS_DIR_ENV = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")  # Feast reads the first
WAL_DIR_ENV = "MLOPS_WAL_DIR"  # local folder of the prediction log's write-ahead file (a volume in a container)


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
    wal_dir: str | None = None  # local folder of the prediction log's write-ahead file (else MLOPS_WAL_DIR)


def build_server(spec: ModelSpec, stores: ServerStores, *, log_predictions: bool = True, clock=None):
    """The ``ModelServer`` of ``spec`` on ``stores``. It starts with, in this order: the deployment
    its container is pinned to (``MLOPS_DEPLOYMENT``), the endpoint's saved deployment (what was
    last recorded, also by a swap on the admin route), else the registry's ``champion``. Every
    change it serves goes to the endpoint's audit history; ``/healthz`` reports its identity.
    ``clock``: a replay's clock (``server.clock.FileClock``) for the server and its prediction log;
    None is the wall clock."""
    import json

    from mlops_assets.core.names import CHAMPION
    from mlops_assets.endpoint_state import Deployment, EndpointState, server_identity
    from mlops_assets.prediction_store import PredictionLog
    from mlops_assets.server.app import CHAMPION_SOURCE, ModelServer
    from mlops_assets.server.runtime import MlflowVersions, feast_online_lookup, warm_up

    versions = MlflowVersions(stores.tracking_uri, stores.registry_uri)
    state = EndpointState(stores.endpoint_dir)

    def initial() -> tuple[Deployment, str] | None:
        if os.environ.get(DEPLOYMENT_ENV):
            return Deployment.from_json(json.loads(os.environ[DEPLOYMENT_ENV])), DEPLOYMENT_ENV
        saved = state.load()
        if saved is not None:
            return saved, "deployment.json"
        champion = versions.alias(spec.name, CHAMPION)
        return (Deployment(stable=champion), CHAMPION_SOURCE) if champion else None

    def load(version: str):
        return versions.load(spec.name, version)

    if os.environ.get(MODEL_DIR_ENV):  # a SageMaker variant: its one version, unpacked beside the server
        model_dir = os.environ[MODEL_DIR_ENV]

        def load(version: str):  # replaces the registry loader
            import mlflow.sklearn

            pinned = (initial() or (None, None))[0]
            if pinned is None or version != pinned.stable:
                raise ValueError(f"{MODEL_DIR_ENV}={model_dir} holds version {pinned and pinned.stable}, not {version}")
            return mlflow.sklearn.load_model(model_dir)

    warm_up()
    lookup = feast_online_lookup(spec, stores.feature_store, stores.online_store_type)
    wal_dir = stores.wal_dir or os.environ.get(WAL_DIR_ENV) or None  # none: a SIGKILL loses up to a flush interval
    log = (
        PredictionLog(
            stores.predictions_root,
            spec.name,
            spec.source.timestamp.timezone,
            wal_dir=wal_dir,
            **({"clock_ns": clock.ns} if clock is not None else {}),
        )
        if log_predictions
        else None
    )
    return ModelServer(
        spec,
        load,
        online_lookup=lookup,
        prediction_log=log,
        initial=initial,
        state=state,
        identity=server_identity(stores.endpoint_dir, stores.registry_uri or stores.tracking_uri),
        clock=clock,
    )


def api_keys(spec: ModelSpec) -> list[str] | None:
    """The keys the predict routes accept (``MLOPS_API_KEYS``), or None when the spec does not ask
    for keys. A spec that asks for keys with none configured is refused (``ValueError`` naming the
    variable), so a server never silently runs open."""
    if spec.deployment is None or not spec.deployment.api_keys:
        return None
    keys = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    if not keys:
        raise ValueError(f"spec {spec.name!r} sets deployment.api_keys but {API_KEYS_ENV} holds no key (comma-separated)")
    return keys


def serve(spec: ModelSpec, host: str, port: int, stores: ServerStores, *, admin_token: str | None = None) -> None:
    """Run the server in the foreground (uvicorn, one process; uvloop and httptools when present)
    on ``stores`` (the profile's, read from the environment). The admin token is
    ``environments.admin_token()`` unless given: ``MLOPS_ADMIN_TOKEN``, else the home's own. With
    ``MLOPS_REPLAY_CLOCK`` set the server lives on that replay's clock, and refuses to start unless
    ``host`` is loopback (``server.clock.server_clock``)."""
    import uvicorn

    from mlops_assets.server.clock import server_clock
    from mlops_assets.server.http import create_app

    clock = server_clock(host)  # before anything loads: a misplaced replay clock fails at once

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if admin_token is None:
        from mlops_assets.environments import admin_token as home_admin_token

        admin_token = home_admin_token()
    keys = api_keys(spec)
    metrics_dir = _own_metrics_dir(spec)
    server = build_server(spec, stores, clock=clock)
    cleanup = [functools.partial(shutil.rmtree, metrics_dir, ignore_errors=True)] if metrics_dir else []
    app = create_app(server, admin_token=admin_token, api_keys=keys, on_shutdown=cleanup)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", lifespan="on")


def _own_metrics_dir(spec: ModelSpec) -> str | None:
    """A folder for prometheus_client's multiprocess files that this server removes when it shuts
    down, for a server that reads online features (so imports Feast) and was given none.

    ``import feast`` otherwise makes a ``feast_metrics_*`` folder in the temp directory that only an
    ``atexit`` hook removes, and a server stopped by SIGTERM never runs it: uvicorn re-raises the
    signal after its graceful shutdown. That shutdown does run the app's lifespan, which removes
    this folder. The local target gives its servers one in their run folder instead."""
    if not (spec.past_rate_features or spec.lookup_features) or os.environ.get(PROMETHEUS_DIR_ENV[0]):
        return None
    folder = tempfile.mkdtemp(prefix=f"mlops_serve_{spec.name}_metrics_")
    for var in PROMETHEUS_DIR_ENV:
        os.environ.setdefault(var, folder)
    return folder
