"""MLflow tracking and registry, with runs that always end and can always be found.

An MLflow run of the platform is created with its identifying tags in the same call (the Dagster
run id under dagster-mlflow's tag name ``dagster_run_id``, the asset, the partition, the lineage the
caller passes): a run opened and then interrupted before anything else happened is still tagged, so
the run-failure sensor finds it. Everything after the creation runs inside one ``try``: the run ends
FINISHED when the block succeeds, FAILED when anything raises (KILLED on interrupt), also when making
it the active run fails. A process that dies outright (SIGKILL, out of memory) ends nothing; the
run-failure sensor then closes what it left RUNNING with ``close_orphaned_runs``.

dagster-mlflow's resource is not used: it starts the run and only then sets its tags (a failure in
between left an untagged RUNNING run no sensor could find), and its import costs ~2.6 s a process.
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field

DAGSTER_RUN_TAG = "dagster_run_id"  # dagster-mlflow's tag name, kept so its tooling finds our runs


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

    def run_tags(self, context: dg.AssetExecutionContext, tags: dict[str, str]) -> dict[str, str]:
        """What identifies an MLflow run of this platform: the Dagster run (the tag the failure sensor
        searches), job, asset and partition, the environment variables asked for, and the caller's tags."""
        import os

        ids = {DAGSTER_RUN_TAG: context.run.run_id, "dagster_job": context.run.job_name}
        if context.has_assets_def:
            ids["dagster_asset"] = context.asset_key.to_user_string()
        if context.has_partition_key:
            ids["dagster_partition"] = context.partition_key
        env = {k: os.environ[k] for k in self.env_to_tag if k in os.environ}
        return {**env, **self.extra_tags, **tags, **ids}

    @contextmanager
    def run(self, context: dg.AssetExecutionContext, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[Any]:
        """A new active MLflow run for this step, tagged as it is created, ended FINISHED or FAILED
        whatever happens after that."""
        from mlflow.entities import RunStatus

        mlflow = self._configure()
        experiment_id = self.ensure_experiment(experiment)
        client = self.client()
        created = client.create_run(experiment_id, tags=self.run_tags(context, tags), run_name=run_name)
        run_id = created.info.run_id
        status = RunStatus.FAILED
        try:
            if mlflow.active_run() is not None:  # left over in this process by code that did not end it
                mlflow.end_run(status=RunStatus.to_string(RunStatus.FAILED))
            # the process-wide active experiment (set by earlier code of this process) must be this run's
            mlflow.set_experiment(experiment_id=experiment_id)
            run = mlflow.start_run(run_id=run_id)
            context.log.info(f"MLflow run {run_id} in experiment {experiment!r}")
            yield run
            status = RunStatus.FINISHED
        except KeyboardInterrupt:
            status = RunStatus.KILLED
            raise
        finally:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(status=RunStatus.to_string(status))
            else:
                client.set_terminated(run_id, status=RunStatus.to_string(status))

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
        key = (self.tracking_uri, registry, name, str(version), run_id)
        with _LOCK:
            if run_id is not None and key in _LOADED:
                _LOADED.move_to_end(key)
                return _LOADED[key]
        model = _load_version(self.tracking_uri, registry, name, str(version))
        if run_id is not None:
            _keep(key, model)
        return model

    def remember(self, name: str, version: str | int, run_id: str, model) -> None:
        """Keep the pipeline a process has just logged as ``version`` (``log_pipeline``) as if it had
        loaded it: the gate, in the same process when steps run in one, scores it next. Loading it
        back would deserialise the same bytes a fourth time (MLflow's save loads them to check the
        trusted types, its input-example check loads them again), ~50 ms a retrain."""
        _keep((self.tracking_uri, self.registry_uri or self.tracking_uri, name, str(version), run_id), model)

    # --- links -------------------------------------------------------------------------------

    def ui_base_url(self) -> str:
        """The UI's address for links in metadata: never with the credentials a tracking URI may carry."""
        from urllib.parse import urlsplit, urlunsplit

        if self.ui_url:
            return self.ui_url.rstrip("/")
        if not self.tracking_uri.startswith(("http://", "https://")):
            return "http://127.0.0.1:5000"
        parts = urlsplit(self.tracking_uri)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_base_url()}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        return f"{self.ui_base_url()}/#/models/{name}/versions/{version}"


_LOADED: OrderedDict[tuple, Any] = OrderedDict()  # (tracking, registry, name, version, run_id) -> pipeline
_KEEP = 4
_LOCK = threading.Lock()  # the model server loads from request threads


def _keep(key: tuple, model) -> None:
    with _LOCK:
        _LOADED[key] = model
        _LOADED.move_to_end(key)
        while len(_LOADED) > _KEEP:
            _LOADED.popitem(last=False)


def _load_version(tracking_uri: str, registry_uri: str, name: str, version: str):
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def pip_requirements() -> list[str]:
    """Exact requirements of a logged model, given explicitly: inferring them costs ~8 s a model."""
    return list(_installed_requirements())


@functools.cache
def _installed_requirements() -> tuple[str, ...]:
    """Read once a process: the installed versions are those the process imported."""
    return tuple(
        f"{d}=={importlib.metadata.version(d)}" for d in ("scikit-learn", "pandas", "numpy", "scipy", "skops", "cloudpickle")
    )


def log_pipeline(model, registered_name: str, input_example, signature=None, tags: dict[str, str] | None = None):
    """Log a fitted scikit-learn pipeline to the active MLflow run and register it as a new version:
    skops serialisation (no pickle) with the types the pipeline needs trusted, explicit requirements.
    ``tags`` go on the logged model and on the new version, created with them in one call (set one by
    one afterwards, each was a write to the registry)."""
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
        tags=tags,
    )
