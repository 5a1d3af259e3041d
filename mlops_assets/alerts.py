"""Run-status sensors: what happens when a Dagster run of the platform fails.

Every failed run is recorded as an alert (one JSON file per alert in ``alerts/`` of the profile's
storage: time, run, job, partition, the error) for whoever watches the platform. And a run whose process died (killed,
out of memory, node lost) never reaches the code that ends its MLflow run, which would stay RUNNING
in the tracking UI forever: this sensor closes such runs as FAILED once Dagster marks the run failed.
It finds them by the ``dagster_run_id`` tag every MLflow run of the platform carries from the moment
it is created (``MlflowTracking.run``), whatever moment the run failed at. The alert is written
even when MLflow cannot be reached: then it says so instead of listing the runs it closed.
"""

import json
from datetime import UTC, datetime

import dagster as dg

from mlops_assets import files
from mlops_assets.resources import LakeStorage, MlflowTracking


def read_alerts(lake: LakeStorage) -> list[dict]:
    """Every recorded alert, oldest first."""
    return [json.loads(files.read_text(e.uri)) for e in files.listing(lake.alerts_dir(), ".json")]


@dg.run_failure_sensor(
    name="close_mlflow_runs_and_record_alerts",
    description="When a Dagster run fails: record an alert, and mark MLflow runs it left RUNNING as FAILED.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def close_mlflow_runs_and_record_alerts(context: dg.RunFailureSensorContext, mlflow: MlflowTracking, lake: LakeStorage) -> None:
    run = context.dagster_run
    closed: list[str] = []
    mlflow_error = None
    try:
        closed = mlflow.close_orphaned_runs(run.run_id)
    except Exception as exc:  # noqa: BLE001 - whatever MLflow raised, the alert must still be written
        from mlops_assets.endpoint_state import redact_uri

        # the exception's type and where MLflow is, never its message: it may carry the store's password
        mlflow_error = f"{type(exc).__name__} from {redact_uri(mlflow.tracking_uri)}"
        context.log.error(f"could not close the MLflow runs of run {run.run_id}: {mlflow_error}")
    alert = {
        "time": datetime.now(UTC).isoformat(),
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "landed_file": run.tags.get("mlops/landed_file"),
        "error": context.failure_event.message,
        "mlflow_runs_closed": closed,
        **({"mlflow_error": mlflow_error} if mlflow_error else {}),
    }
    now = datetime.now(UTC)
    files.write_text(files.join(lake.alerts_dir(), f"{now:%Y%m%dT%H%M%S%f}-{run.run_id}.json"), json.dumps(alert))
    context.log.warning(f"alert: run {run.run_id} of {run.job_name} failed; {len(closed)} MLflow run(s) closed")
