"""The real `dagster-daemon` against a temporary DAGSTER_HOME: the landing sensor launches the
ingest run for a newly landed day, then the automation sensor launches the champion's scoring of
that day. Bounded in time; the daemon is stopped by its process group.

Automation scores the latest partition only, so the data must be recent: real Elec2 rows are
re-dated to the last two weeks and served by a copy of the Elec2 spec pointed at them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import yaml

from mlops_assets_tests.conftest import DATA_DIR, ELEC2_SPEC, QUIET, REPO, stop_process_group

BIN = os.path.dirname(sys.executable)
DAYS = 12


def recent_elec2(tmp_path) -> tuple[str, date]:
    """Elec2 rows from July 1996, re-dated so their last day is yesterday (UTC). Returns spec path."""
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    first = yesterday - timedelta(days=DAYS - 1)
    rows = pd.read_csv(DATA_DIR / "elec2" / "elec2_with_timestamp.csv")
    rows = rows[rows["timestamp"] >= "1996-07-01"].head(DAYS * 48).reset_index(drop=True)
    rows["timestamp"] = [(pd.Timestamp(first) + pd.Timedelta(minutes=30 * i)).isoformat(sep=" ") for i in range(len(rows))]
    rows.to_csv(tmp_path / "elec2_recent.csv", index=False)
    spec = yaml.safe_load(ELEC2_SPEC.read_text())
    spec["name"] = "elec2_live"
    spec["source"]["path"] = str(tmp_path / "elec2_recent.csv")
    spec["partitions"] = {"start": first.isoformat()}
    spec["training"] = {"window_days": 9, "holdout_days": 3, "min_rows": 200}
    path = tmp_path / "elec2_live.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), yesterday


def test_daemon_runs_landing_sensor_and_automation(tmp_path, monkeypatch):
    spec_path, yesterday = recent_elec2(tmp_path)
    home = tmp_path / "home"
    env = {
        "MLOPS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "MLOPS_SPECS": spec_path,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from mlops_assets.cli import land
    from mlops_assets.environments import ensure_dagster_home
    from mlops_assets.factory import build_definitions
    from mlops_assets.specs import load_spec

    dagster_home = ensure_dagster_home(home)
    (dagster_home / "dagster.yaml").write_text((dagster_home / "dagster.yaml").read_text() + "telemetry:\n  enabled: false\n")
    spec = load_spec(spec_path)
    defs = build_definitions([spec])
    history = [(yesterday - timedelta(days=DAYS - 1) + timedelta(days=i)) for i in range(DAYS - 1)]
    with dg.DagsterInstance.get() as instance:
        # Bootstrap a champion by hand, as an operator would on day one.
        land(spec, history[0], len(history))
        assert defs.resolve_job_def("register_elec2_live").execute_in_process(instance=instance, run_config=QUIET).success
        for d in history:
            job = defs.resolve_job_def("ingest_elec2_live")
            assert job.execute_in_process(instance=instance, partition_key=d.isoformat(), run_config=QUIET).success
        assert defs.resolve_job_def("train_elec2_live").execute_in_process(instance=instance, run_config=QUIET).success
        before = {r.run_id for r in instance.get_runs()}

        land(spec, yesterday, 1)  # the new day arrives
        daemon = subprocess.Popen(
            [os.path.join(BIN, "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env={**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
            stdout=open(tmp_path / "daemon.log", "w"),  # noqa: SIM115 - the daemon's log, written by the child while the test runs
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        landed = scored = None
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (landed and scored):
                time.sleep(3)
                for run in instance.get_runs():
                    if run.run_id in before or run.status != dg.DagsterRunStatus.SUCCESS:
                        continue
                    if run.tags.get("mlops/landed_file") == f"{yesterday}.csv":
                        landed = run
                    if (
                        run.tags.get("dagster/sensor_name") == "mlops_automation"
                        and run.tags.get("dagster/partition") == yesterday.isoformat()
                    ):
                        scored = run
        finally:
            stop_process_group(daemon)
        log = (tmp_path / "daemon.log").read_text()[-3000:]
        assert landed is not None, f"landing sensor did not launch a successful ingest run\n{log}"
        assert landed.tags.get("dagster/sensor_name") == "landing_elec2_live"
        by_landing = [r for r in instance.get_runs() if r.tags.get("dagster/sensor_name") == "landing_elec2_live"]
        assert len(by_landing) == 1  # the 11 days already ingested (same bytes) are not ingested again
        assert scored is not None, f"automation did not score {yesterday}\n{log}"
        assert yesterday.isoformat() in instance.get_materialized_partitions(dg.AssetKey(["elec2_live", "predictions"]))
        # the monitoring checks ride along with the predictions the automation requested (they have no
        # automation condition of their own), although <spec>/predictions is subsettable
        planned = instance.all_logs(scored.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED)
        assert {"feature_drift", "prediction_drift", "performance"} <= {
            e.dagster_event.event_specific_data.check_name for e in planned
        }
