"""Run-status sensors: what happens when a Dagster run of the platform fails.

Every failed run is recorded as an alert (``alerts/alerts.jsonl`` under the storage root: time, run,
job, partition, the error) for whoever watches the platform. And a run whose process died (killed,
out of memory, node lost) never reaches the code that ends its MLflow run, which would stay RUNNING
in the tracking UI forever: this sensor closes such runs as FAILED once Dagster marks the run failed.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from mlops_assets.resources import LakeStorage, MlflowTracking


def alerts_file(lake: LakeStorage) -> Path:
    return Path(lake.root) / "alerts" / "alerts.jsonl"


@dg.run_failure_sensor(
    name="close_mlflow_runs_and_record_alerts",
    description="When a Dagster run fails: record an alert, and mark MLflow runs it left RUNNING as FAILED.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def close_mlflow_runs_and_record_alerts(context: dg.RunFailureSensorContext, mlflow: MlflowTracking, lake: LakeStorage) -> None:
    run = context.dagster_run
    closed = mlflow.close_orphaned_runs(run.run_id)
    alert = {
        "time": datetime.now(timezone.utc).isoformat(),
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "landed_file": run.tags.get("mlops/landed_file"),
        "error": context.failure_event.message,
        "mlflow_runs_closed": closed,
    }
    path = alerts_file(lake)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(alert) + "\n")
    context.log.warning(f"alert: run {run.run_id} of {run.job_name} failed; {len(closed)} MLflow run(s) closed")
