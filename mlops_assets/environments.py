"""The one place that knows where the platform runs. ``MLOPS_ENV`` picks it; nothing else branches.

``local`` (the default) needs no server: everything lives under one home folder (``MLOPS_HOME``,
default ``.mlops_home`` in the working directory)::

    <home>/dagster/               DAGSTER_HOME: run, event and schedule storage (SQLite)
    <home>/mlflow/mlflow.db       MLflow tracking store and model registry (SQLite)
    <home>/mlflow/artifacts/      MLflow artifacts (models, datasets, plots)
    <home>/feast/registry.db      Feast registry
    <home>/feast/online.db        Feast online store (SQLite)
    <home>/landing/ …/lake/ …     landing zone, quarantine, per-partition parquet (LakeStorage)
    <home>/io/                    Dagster IO-manager output
    <home>/endpoints/<spec>/      desired deployment, audit history, local server log and pid

``aws``, ``gcp`` and ``k8s`` plug in here (S3/GCS storage, managed MLflow, Redis online store,
k8s executor); until they exist, choosing them fails at load time with a message saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from mlops_assets.resources import EndpointDeployer, FeastFeatureStore, LakeStorage, MlflowTracking

ENV_VAR = "MLOPS_ENV"
HOME_VAR = "MLOPS_HOME"
ENVIRONMENTS = ("local",)
PLANNED = ("aws", "gcp", "k8s")


def current_env() -> str:
    env = os.environ.get(ENV_VAR, "local").strip().lower()
    if env in ENVIRONMENTS:
        return env
    if env in PLANNED:
        raise dg.DagsterInvalidDefinitionError(
            f"{ENV_VAR}={env}: this environment is planned but not implemented yet; available: {', '.join(ENVIRONMENTS)}"
        )
    raise dg.DagsterInvalidDefinitionError(f"{ENV_VAR}={env!r} is unknown; available: {', '.join(ENVIRONMENTS)}")


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
"""


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create ``<home>/dagster`` with an explicit dagster.yaml (Dagster warns when there is none)."""
    path = dagster_home(home)
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return path


def mlflow_tracking_uri(home: Path | None = None) -> str:
    return f"sqlite:///{(home or mlops_home()) / 'mlflow' / 'mlflow.db'}"


def _local_resources(home: Path) -> dict:
    for sub in ("dagster", "mlflow/artifacts", "feast", "io"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {
        "lake": LakeStorage(root=str(home)),
        "feast": FeastFeatureStore(
            registry_path=str(home / "feast" / "registry.db"),
            online_store_path=str(home / "feast" / "online.db"),
        ),
        "mlflow": MlflowTracking(
            tracking_uri=mlflow_tracking_uri(home),
            artifact_location=(home / "mlflow" / "artifacts").as_uri(),
            env_to_tag=["MLOPS_ENV"],
        ),
        "deployer": EndpointDeployer(home=str(home)),
        "io_manager": dg.FilesystemIOManager(base_dir=str(home / "io")),
    }


def resources() -> dict:
    env = current_env()
    if env == "local":
        return _local_resources(mlops_home())
    raise AssertionError(env)  # current_env() only returns implemented environments


def executor() -> dg.ExecutorDefinition:
    """In-process locally: steps are small, and each extra process would pay the imports again."""
    current_env()
    return dg.in_process_executor
