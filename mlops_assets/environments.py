"""The one place that knows where the platform runs. ``MLOPS_ENV`` picks a profile; nothing else branches.

A profile names every store by URI and says what runs the steps (see ``PROFILES``):

``local`` (the default) needs no server: everything lives under one home folder (``MLOPS_HOME``,
default ``.mlops_home`` in the working directory)::

    <home>/dagster/               DAGSTER_HOME: run, event and schedule storage (SQLite)
    <home>/mlflow/mlflow.db       MLflow tracking store and model registry (SQLite)
    <home>/mlflow/artifacts/      MLflow artifacts (models, datasets, plots)
    <home>/feast/registry.db      Feast registry
    <home>/feast/online.db        Feast online store (SQLite)
    <home>/landing/ …/lake/ …     landing zone, quarantine, lake, prediction store (LakeStorage)
    <home>/endpoints/<spec>/      desired deployment and audit history; the local server's log and pid
    <home>/io/                    Dagster IO-manager output

``aws`` and ``gcp`` keep the same layout on S3 or GCS, the Dagster instance, MLflow's backend store
and (optionally) the Feast registry on PostgreSQL, and Feast's online store on Redis. ``k8s`` runs
every run and step as a Kubernetes Job (dagster-k8s) on the stores of ``MLOPS_K8S_CLOUD`` (aws or
gcp). Cloud values are read from the environment through ``dg.EnvVar`` when a run starts, never at
load time: a code server starts before its backends answer, and no secret is in the definitions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from mlops_assets.compat import QUEUED_RUN_COORDINATOR
from mlops_assets.resources import EndpointDeployer, FeastFeatureStore, LakeStorage, MlflowTracking
from mlops_assets.server import ADMIN_TOKEN_ENV

if TYPE_CHECKING:
    from mlops_assets.server import ServerStores

ENV_VAR = "MLOPS_ENV"
HOME_VAR = "MLOPS_HOME"
K8S_CLOUD_VAR = "MLOPS_K8S_CLOUD"
ENVIRONMENTS = ("local", "aws", "gcp", "k8s")
CLOUDS = ("aws", "gcp")


@dataclass(frozen=True)
class CloudVars:
    """The environment variables a cloud profile reads (names only; a deployment sets the values,
    Terraform outputs carry the same names). Secrets sit inside the URLs and connection strings."""

    storage: str = "MLOPS_STORAGE_URI"  # s3://bucket/prefix | gs://bucket/prefix: lake, quarantine, state, alerts
    landing: str = "MLOPS_LANDING_URI"  # the landing zone the landing sensor watches
    io_bucket: str = "MLOPS_IO_BUCKET"  # bucket of the Dagster IO manager
    mlflow_tracking: str = "MLFLOW_TRACKING_URI"  # postgresql://… (backend store) or http(s)://tracking-server
    mlflow_artifacts: str = "MLFLOW_ARTIFACT_URI"  # s3://… | gs://… artifact root of new experiments
    feast_registry: str = "FEAST_REGISTRY_URI"  # postgresql+psycopg://… (SQL registry) or s3://…/registry.pb
    redis: str = "MLOPS_REDIS"  # Feast's Redis online store: host:port[,password=…][,ssl=true]
    gcp_project: str = "GOOGLE_CLOUD_PROJECT"  # gcp only: the project of the GCS IO manager
    admin_token: str = ADMIN_TOKEN_ENV  # bearer token of the model servers' admin routes (a secret)


CLOUD_VARS = CloudVars()

# Where people open the MLflow UI, for the links in the Dagster UI (any profile; not a secret). Unset:
# the tracking server when it is http(s), else `mlops ui`'s MLflow UI on http://127.0.0.1:5000.
MLFLOW_UI_VAR = "MLOPS_MLFLOW_UI_URL"

# Variables of the PostgreSQL Dagster instance (dagster.yaml written by ``instance_yaml``).
DAGSTER_PG_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")


class ProfileError(RuntimeError):
    """The current profile cannot be used here: a variable it reads is not set."""


def current_env() -> str:
    env = os.environ.get(ENV_VAR, "local").strip().lower()
    if env not in ENVIRONMENTS:
        raise dg.DagsterInvalidDefinitionError(f"{ENV_VAR}={env!r} is unknown; available: {', '.join(ENVIRONMENTS)}")
    return env


def cloud(env: str | None = None) -> str | None:
    """The cloud whose stores a profile uses (None for ``local``)."""
    env = env or current_env()
    if env in CLOUDS:
        return env
    if env == "k8s":
        chosen = os.environ.get(K8S_CLOUD_VAR, "aws").strip().lower()
        if chosen not in CLOUDS:
            raise dg.DagsterInvalidDefinitionError(f"{K8S_CLOUD_VAR}={chosen!r}: the k8s profile runs on aws or gcp stores")
        return chosen
    return None


# --- local --------------------------------------------------------------------------------------


def mlops_home() -> Path:
    return Path(os.environ.get(HOME_VAR, ".mlops_home")).expanduser().resolve()


def dagster_home(home: Path | None = None) -> Path:
    return (home or mlops_home()) / "dagster"


DAGSTER_YAML = """\
# Dagster instance of the embedded mlops_assets home: SQLite run, event and schedule storage here.
storage:
  sqlite:
    base_dir:
      env: DAGSTER_HOME
# Usage statistics off, as on the cloud profiles (and no telemetry banner in every command's output).
telemetry:
  enabled: false
"""


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create ``<home>/dagster`` with an explicit dagster.yaml (Dagster warns when there is none)."""
    path = dagster_home(home)
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return path


ADMIN_TOKEN_VAR = CLOUD_VARS.admin_token


def admin_token(home: Path | None = None) -> str:
    """The bearer token of the model servers' admin routes (changing what is served).

    ``MLOPS_ADMIN_TOKEN`` when set (the cloud profiles: a secret in the environment). Otherwise the
    home's own token, generated once into ``<home>/secrets/admin_token`` (mode 0600): a laptop needs
    no configuration, and only processes that can read the home (its servers, its Dagster runs, the
    user) can change what is served. Never logged nor put in metadata."""
    if os.environ.get(ADMIN_TOKEN_VAR):
        return os.environ[ADMIN_TOKEN_VAR]
    import secrets

    path = (home or mlops_home()) / "secrets" / "admin_token"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".admin_token.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    try:
        os.link(tmp, path)  # first writer wins when two processes generate at once
    except FileExistsError:
        token = path.read_text().strip()
    finally:
        tmp.unlink()
    return token


def replay_home(spec: str, policy: str) -> Path:
    """Where ``mlops replay`` builds the fresh home of a spec and policy (wiped at the start)."""
    return mlops_home() / "replays" / f"{spec}-{policy.replace(':', '')}"


def backtest_dir(spec: str) -> Path:
    """Where ``mlops backtest`` keeps a spec's fitted-model scores between runs, and its charts."""
    return mlops_home() / "backtests" / spec


def mlflow_tracking_uri(home: Path | None = None) -> str:
    return f"sqlite:///{(home or mlops_home()) / 'mlflow' / 'mlflow.db'}"


def _local_resources(home: Path) -> dict:
    for sub in ("dagster", "mlflow/artifacts", "feast", "io"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {
        "lake": LakeStorage(root=str(home)),
        "feast": FeastFeatureStore(
            registry=str(home / "feast" / "registry.db"),
            online_store_path=str(home / "feast" / "online.db"),
        ),
        "mlflow": MlflowTracking(
            tracking_uri=mlflow_tracking_uri(home),
            artifact_location=(home / "mlflow" / "artifacts").as_uri(),
            ui_url=os.environ.get(MLFLOW_UI_VAR),
            env_to_tag=["MLOPS_ENV"],
        ),
        "deployer": EndpointDeployer(home=str(home)),
        "io_manager": dg.FilesystemIOManager(base_dir=str(home / "io")),
    }


# --- clouds -------------------------------------------------------------------------------------


def _cloud_resources(which: str, home: Path) -> dict:
    """Stores of the aws or gcp profile, every location and secret a ``dg.EnvVar`` (read when a run
    starts). ``home`` still holds what only this machine can use: a local server's pid and log."""
    from mlops_assets.resources.io import ObjectStoreIOManager

    v = CLOUD_VARS
    if which == "aws":
        io_manager = ObjectStoreIOManager(protocol="s3", bucket=dg.EnvVar(v.io_bucket))
    else:
        io_manager = ObjectStoreIOManager(protocol="gs", bucket=dg.EnvVar(v.io_bucket), project=dg.EnvVar(v.gcp_project))
    return {
        "lake": LakeStorage(root=dg.EnvVar(v.storage), landing_root=dg.EnvVar(v.landing)),
        "feast": FeastFeatureStore(
            registry=dg.EnvVar(v.feast_registry),
            online_store_type="redis",
            redis_connection=dg.EnvVar(v.redis),
            object_store="s3" if which == "aws" else "gs",
        ),
        "mlflow": MlflowTracking(
            tracking_uri=dg.EnvVar(v.mlflow_tracking),
            artifact_location=dg.EnvVar(v.mlflow_artifacts),
            ui_url=os.environ.get(MLFLOW_UI_VAR),
            env_to_tag=["MLOPS_ENV"],
        ),
        "deployer": EndpointDeployer(home=str(home), admin_token=dg.EnvVar(v.admin_token)),
        "io_manager": io_manager,
    }


def resources() -> dict:
    """The resources of the current profile, as the code location binds them."""
    env = current_env()
    which = cloud(env)
    if which is None:
        return _local_resources(mlops_home())
    return _cloud_resources(which, mlops_home())


def runtime() -> dict:
    """The current profile's resources with their environment variables read now: for processes
    outside Dagster (the model server, ``mlops land``), which are configured by environment only."""
    out = {}
    for name, resource in resources().items():
        if isinstance(resource, (LakeStorage, FeastFeatureStore, MlflowTracking, EndpointDeployer)):
            values = [getattr(resource, f) for f in type(resource).model_fields]
            missing = [v.env_var_name for v in values if isinstance(v, dg.EnvVar) and v.get_value() is None]
            if missing:
                raise ProfileError(f"{ENV_VAR}={current_env()}: {name} needs the environment variable(s) {', '.join(missing)}")
            out[name] = resource.process_config_and_initialize()
    return out


# --- what runs the steps ------------------------------------------------------------------------


def executor() -> dg.ExecutorDefinition:
    """In-process locally and on aws/gcp run workers: steps are small, and each extra process would
    pay the imports again. On ``k8s`` every step is its own Job, sized by the spec (``k8s.py``)."""
    env = current_env()
    cloud(env)  # an unknown MLOPS_K8S_CLOUD fails at load, naming the variable
    if env == "k8s":
        from mlops_assets.k8s import step_executor

        return step_executor()
    return dg.in_process_executor


def instance_yaml(env: str | None = None, max_concurrent_runs: int = 4) -> str:
    """The dagster.yaml of a profile's Dagster instance: SQLite locally; PostgreSQL (runs, events,
    schedules) with a queued run coordinator on the clouds; the K8sRunLauncher on ``k8s``."""
    env = env or current_env()
    if env == "local":
        return DAGSTER_YAML
    pg = "\n".join(
        f"      {key}:\n        env: {var}"
        for key, var in zip(("hostname", "port", "username", "password", "db_name"), DAGSTER_PG_VARS)
    )
    # dagster-postgres sends NOTIFY with a bound parameter, which psycopg 3 (SQLAlchemy 2.1's default
    # PostgreSQL driver) refuses: name psycopg2 explicitly
    pg += "\n      scheme: postgresql+psycopg2"
    text = f"""\
# Dagster instance of the mlops_assets '{env}' profile (written by `mlops instance --env {env}`).
storage:
  postgres:
    postgres_db:
{pg}
run_coordinator:
  module: {QUEUED_RUN_COORDINATOR[0]}
  class: {QUEUED_RUN_COORDINATOR[1]}
  config:
    max_concurrent_runs: {max_concurrent_runs}
telemetry:
  enabled: false
"""
    if env == "k8s":
        from mlops_assets.k8s import run_launcher_yaml

        text += run_launcher_yaml()
    return text


def server_stores(resources: dict, spec) -> ServerStores:
    """What a model server of ``spec`` reads and writes, from a profile's resources (``runtime()``)."""
    from mlops_assets.server import ServerStores

    lake, feast, mlflow, deployer = resources["lake"], resources["feast"], resources["mlflow"], resources.get("deployer")
    return ServerStores(
        predictions_root=lake.predictions_root(),
        endpoint_dir=lake.endpoint_dir(spec.name),
        tracking_uri=mlflow.tracking_uri,
        registry_uri=mlflow.registry_uri,
        feature_store=lambda: feast.store(spec),
        online_store_type=feast.online_store_type,
        # the prediction log's write-ahead files: a folder this machine finds again after a restart
        # (containers: MLOPS_WAL_DIR on a volume, read by the server itself)
        wal_dir=str(deployer.local_run_dir(spec.name) / "wal") if deployer is not None and not cloud() else None,
    )
