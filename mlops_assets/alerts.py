"""Run-status sensors: what happens when a Dagster run of the platform fails.

A run whose process died (killed, out of memory, node lost) never reaches the code that ends its
MLflow run, which would stay RUNNING in the tracking UI forever. This sensor closes those runs as
FAILED once Dagster marks the run failed, so MLflow never shows a training as still in progress.
"""

import dagster as dg

from mlops_assets.resources import MlflowTracking


@dg.run_failure_sensor(
    name="close_mlflow_runs_of_failed_runs",
    description="When a Dagster run fails, mark any MLflow run it left RUNNING as FAILED.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def close_mlflow_runs_of_failed_runs(context: dg.RunFailureSensorContext, mlflow: MlflowTracking) -> None:
    closed = mlflow.close_orphaned_runs(context.dagster_run.run_id)
    if closed:
        context.log.warning(
            f"Dagster run {context.dagster_run.run_id} failed leaving MLflow runs RUNNING; marked FAILED: {', '.join(closed)}"
        )
