"""MLflow tracking and registry, through dagster-mlflow's conventions, with runs that always end.

dagster-mlflow's ``mlflow_tracking`` is a legacy ``@resource`` whose MLflow run is ended by a hook
that only knows op jobs ("last op in topological order"). This typed resource keeps its conventions
(it builds dagster-mlflow's own ``MlFlow`` object: experiment set-up, the ``dagster_run_id`` tag, one
MLflow run per Dagster run that later steps of the same run resume) and adds what asset jobs need:
the run ends FINISHED when the block succeeds and FAILED (KILLED on interrupt) when it raises, and
``close_orphaned_runs`` lets the run-failure sensor end runs whose process died.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import dagster as dg
from pydantic import Field

DAGSTER_RUN_TAG = "dagster_run_id"  # dagster-mlflow's tag name; keep it so its tooling finds our runs


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking server (or local SQLite store) and model registry."""

    tracking_uri: str = Field(description="e.g. sqlite:///…/mlflow.db or http://mlflow:5000")
    registry_uri: str | None = Field(None, description="Defaults to the tracking URI.")
    artifact_location: str | None = Field(None, description="Artifact root for experiments this resource creates.")
    ui_url: str | None = Field(
        None,
        description="Where people open the MLflow UI, for links (default: the tracking server when the tracking URI "
        "is http(s), else `mlflow ui` on http://127.0.0.1:5000).",
    )
    env_to_tag: list[str] = Field(default_factory=list, description="Environment variables recorded as run tags.")
    extra_tags: dict[str, str] = Field(default_factory=dict)

    def _configure(self):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri or self.tracking_uri)
        return mlflow

    def client(self):
        from mlflow import MlflowClient

        self._configure()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri)

    def ensure_experiment(self, name: str) -> str:
        mlflow = self._configure()
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return mlflow.create_experiment(name, artifact_location=self.artifact_location)

    @contextmanager
    def run(self, context: dg.AssetExecutionContext, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
        """An active MLflow run for this Dagster run, ended FINISHED or FAILED whatever happens."""
        import warnings

        from mlflow.entities import RunStatus

        with warnings.catch_warnings():  # dagster-mlflow marks itself beta; we pin its version
            warnings.simplefilter("ignore", dg.BetaWarning)
            from dagster_mlflow.resources import MlFlow

        mlflow = self._configure()
        self.ensure_experiment(experiment)
        init_context = SimpleNamespace(
            log=context.log,
            dagster_run=SimpleNamespace(job_name=run_name),
            run_id=context.run.run_id,
            resource_config={
                "experiment_name": experiment,
                "mlflow_tracking_uri": self.tracking_uri,
                "parent_run_id": None,
                "mlflow_run_id": None,
                "env": {},
                "env_to_tag": self.env_to_tag,
                "extra_tags": {**self.extra_tags, **tags},
            },
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)
            MlFlow(init_context)  # starts (or resumes) the run tagged with this Dagster run id
        run = mlflow.active_run()
        try:
            yield run
        except KeyboardInterrupt:
            mlflow.end_run(status=RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException:
            mlflow.end_run(status=RunStatus.to_string(RunStatus.FAILED))
            raise
        mlflow.end_run(status=RunStatus.to_string(RunStatus.FINISHED))

    def close_orphaned_runs(self, dagster_run_id: str) -> list[str]:
        """Mark FAILED every MLflow run of a Dagster run that is still RUNNING (its process died)."""
        client = self.client()
        closed = []
        for exp in client.search_experiments():
            for r in client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}' and attributes.status = 'RUNNING'",
            ):
                client.set_terminated(r.info.run_id, status="FAILED")
                closed.append(r.info.run_id)
        return closed

    def version_by_alias(self, name: str, alias: str):
        """The registered version behind an alias, or None when the alias (or model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def load_version(self, name: str, version: str | int, run_id: str | None = None):
        """The scikit-learn pipeline of a registered version. Given the version's MLflow ``run_id``
        (which no other version shares), a process keeps the few it used last instead of
        downloading them again for every partition."""
        registry = self.registry_uri or self.tracking_uri
        if run_id is None:
            return _load_version.__wrapped__(self.tracking_uri, registry, name, str(version), None)
        return _load_version(self.tracking_uri, registry, name, str(version), run_id)

    # --- links -------------------------------------------------------------------------------

    def _ui(self) -> str:
        """The UI's address for links in metadata: never with the credentials a tracking URI may carry."""
        from urllib.parse import urlsplit, urlunsplit

        if self.ui_url:
            return self.ui_url.rstrip("/")
        if not self.tracking_uri.startswith(("http://", "https://")):
            return "http://127.0.0.1:5000"
        parts = urlsplit(self.tracking_uri)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self._ui()}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        return f"{self._ui()}/#/models/{name}/versions/{version}"


@functools.lru_cache(maxsize=4)
def _load_version(tracking_uri: str, registry_uri: str, name: str, version: str, run_id: str | None):
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def pip_requirements() -> list[str]:
    """Exact requirements of a logged model, given explicitly: inferring them costs ~8 s a model."""
    return [f"{d}=={importlib.metadata.version(d)}" for d in ("scikit-learn", "pandas", "numpy", "scipy", "skops", "cloudpickle")]


def log_pipeline(model, registered_name: str, input_example, signature=None):
    """Log a fitted scikit-learn pipeline to the active MLflow run and register it as a new version:
    skops serialisation (no pickle) with the types the pipeline needs trusted, explicit requirements."""
    import mlflow.sklearn
    import skops.io

    return mlflow.sklearn.log_model(
        model,
        name="model",
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_name,
        serialization_format="skops",
        skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
    )
