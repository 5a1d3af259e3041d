"""MLflow runs are closed whatever moment their Dagster run failed at: a failure right after the
run opened ends it FAILED and tagged; a process killed with the run open leaves it RUNNING, and the
run-failure sensor finds it by its tag and closes it."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import dagster as dg
import pytest

from mlops_assets.resources import MlflowTracking
from mlops_assets_tests.conftest import QUIET, REPO

PARTITIONS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-10")


def tracked_asset(after_open):
    """A partitioned asset that opens an MLflow run through the platform's resource and then calls
    ``after_open`` (which raises, or kills the process)."""

    @dg.asset(name="model_orphans", partitions_def=PARTITIONS)
    def model_orphans(context: dg.AssetExecutionContext, mlflow: MlflowTracking) -> None:
        with mlflow.run(context, experiment="orphans", run_name="train-orphans", tags={"mlops.spec": "orphans"}):
            after_open()

    return model_orphans


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One MLflow SQLite store for the module (creating one costs seconds); tests tell their runs
    apart by Dagster run id."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking(tmp_path, monkeypatch, tracking_uri):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    from mlflow import MlflowClient

    return MlflowTracking(tracking_uri=tracking_uri), MlflowClient(tracking_uri=tracking_uri)


def runs_of(client, dagster_run_id: str):
    exp = client.get_experiment_by_name("orphans")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.dagster_run_id = '{dagster_run_id}'")


def test_a_failure_right_after_the_run_opened_ends_it_failed_and_tagged(tracking):
    mlflow, client = tracking

    def fail():
        raise RuntimeError("the disk filled up")

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [tracked_asset(fail)],
            partition_key="2024-01-03",
            instance=instance,
            resources={"mlflow": mlflow},
            raise_on_error=False,
            run_config=QUIET,
        )
    assert not result.success
    (run,) = runs_of(client, result.run_id)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.info.run_name == "train-orphans"
    tags = run.data.tags
    assert tags["dagster_asset"] == "model_orphans" and tags["dagster_partition"] == "2024-01-03"
    assert tags["dagster_job"] == result.job_def.name and tags["mlops.spec"] == "orphans"
    assert mlflow.close_orphaned_runs(result.run_id) == []  # nothing was left for the sensor


def test_a_run_that_succeeds_ends_finished(tracking):
    mlflow, client = tracking
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [tracked_asset(lambda: None)], partition_key="2024-01-04", instance=instance, resources={"mlflow": mlflow}
        )
    (run,) = runs_of(client, result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dagster_partition"] == "2024-01-04"
    import mlflow as mlflow_lib

    assert mlflow_lib.active_run() is None  # nothing left active in the process for the next step


KILLED_STEP = textwrap.dedent(
    """
    import os, signal, sys
    import dagster as dg
    sys.path.insert(0, {tests!r})
    from mlops_assets.resources import MlflowTracking
    from mlops_assets_tests.test_orphaned_runs import QUIET, tracked_asset

    def die():
        os.kill(os.getpid(), signal.SIGKILL)  # out of memory, node lost: no finally runs

    dg.materialize(
        [tracked_asset(die)],
        partition_key="2024-01-05",
        instance=dg.DagsterInstance.get(),
        resources={{"mlflow": MlflowTracking(tracking_uri={uri!r})}},
        run_config=QUIET,
    )
    """
)


def test_the_failure_sensor_closes_the_run_a_killed_process_left_running(tracking, tmp_path):
    from mlops_assets.alerts import close_mlflow_runs_and_record_alerts, read_alerts
    from mlops_assets.environments import resources

    mlflow, client = tracking
    script = KILLED_STEP.format(tests=str(REPO), uri=mlflow.tracking_uri)
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=REPO, env=os.environ, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    instance = dg.DagsterInstance.get()
    try:
        (dagster_run,) = instance.get_runs()
        assert dagster_run.status == dg.DagsterRunStatus.STARTED  # the process died without a word
        (orphan,) = runs_of(client, dagster_run.run_id)
        assert orphan.info.status == "RUNNING"
        assert orphan.data.tags["dagster_partition"] == "2024-01-05"  # tagged from its first moment

        # What Dagster's run monitoring does once it sees the run's process is gone.
        instance.report_run_failed(dagster_run, message="run worker exited unexpectedly")
        failure = instance.all_logs(dagster_run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].dagster_event
        context = dg.build_run_status_sensor_context(
            sensor_name="close_mlflow_runs_and_record_alerts",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(dagster_run.run_id),
        ).for_run_failure()
        lake = resources()["lake"]
        close_mlflow_runs_and_record_alerts(context, mlflow=mlflow, lake=lake)
    finally:
        instance.dispose()

    closed = client.get_run(orphan.info.run_id)
    assert closed.info.status == "FAILED" and closed.info.end_time is not None
    (alert,) = read_alerts(lake)
    assert alert["run_id"] == dagster_run.run_id and alert["partition"] == "2024-01-05"
    assert alert["mlflow_runs_closed"] == [orphan.info.run_id]
    assert "run worker exited unexpectedly" in alert["error"]
    assert "mlflow_error" not in alert


def test_the_alert_is_written_when_mlflow_cannot_be_reached(tracking, tmp_path):
    from mlops_assets.alerts import close_mlflow_runs_and_record_alerts, read_alerts
    from mlops_assets.environments import resources

    def fail():
        raise RuntimeError("boom")

    mlflow, _ = tracking
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [tracked_asset(fail)],
            partition_key="2024-01-06",
            instance=instance,
            resources={"mlflow": mlflow},
            raise_on_error=False,
            run_config=QUIET,
        )
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="close_mlflow_runs_and_record_alerts",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id),
        ).for_run_failure()
        # a tracking server that refuses connections, with a password in its URI
        unreachable = MlflowTracking(tracking_uri="http://ml:s3cret@127.0.0.1:9/")
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        try:
            close_mlflow_runs_and_record_alerts(context, mlflow=unreachable, lake=resources()["lake"])
        finally:
            del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    (alert,) = read_alerts(resources()["lake"])
    assert alert["run_id"] == result.run_id and alert["mlflow_runs_closed"] == []
    assert alert["mlflow_error"].endswith("from http://ml:***@127.0.0.1:9/")
    assert "s3cret" not in json.dumps(alert)
