"""``mlops replay`` on a short Elec2 window: the real landing sensor, the real automation, a real
instance at simulated times, labels released a day late, prequential scoring, retrain causes."""

from __future__ import annotations

import itertools
import json
import os
from datetime import date

import dagster as dg
import pandas as pd
import pytest

START = date(1996, 5, 17)  # after a 10-day warm-up from the first partition (1996-05-07)
DAYS = 7


@pytest.fixture
def short_elec2(elec2_spec):
    """Elec2 with an 8-day training window (2 holdout days), labels known one day late, drift
    judged over 3-day windows and performance day by day."""
    training = elec2_spec.training.model_copy(update={"window_days": 8, "holdout_days": 2})
    target = elec2_spec.target.model_copy(update={"label_delay_days": 1})
    drift = elec2_spec.policies.drift.model_copy(update={"window_days": 3})
    performance = elec2_spec.policies.performance.model_copy(update={"window_days": 1})
    policies = elec2_spec.policies.model_copy(update={"drift": drift, "performance": performance})
    return elec2_spec.model_copy(update={"training": training, "target": target, "policies": policies})


@pytest.fixture
def replay_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))  # replay points both at its own home;
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))  # restored after the test
    return tmp_path


def served_by(mlflow_db, version: int) -> str:
    """The last training day of a registered version, from its lineage tags in MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}", registry_uri=f"sqlite:///{mlflow_db}")
    return client.get_model_version("elec2", str(version)).tags["mlops.training_as_of"]


def test_cron_replay_through_sensor_and_automation(short_elec2, replay_env):
    from mlops_assets.replay import replay

    home = replay_env / "cron"
    report = replay(short_elec2, "cron:3", start=START, days=DAYS, home=home, progress=False, keep_instance=True)

    assert report["metric_name"] == "accuracy" and report["days"] == DAYS and report["label_delay_days"] == 1
    rows = report["rows"]
    assert [r["day"] for r in rows] == [f"1996-05-{d}" for d in range(17, 24)]
    assert all(r["rows"] == 48 and r["metric"] is not None for r in rows)
    # the bootstrap model was trained on the warm-up (as of 05-16); cron:3 retrains every 3rd day
    assert [r["day"] for r in rows if r["retrained"]] == ["1996-05-19", "1996-05-22"]
    assert report["retrains"] == 2 and report["retrain_causes"] == {"cron": 2}
    # prequential: every day was scored by a model whose training ended before that day
    mlflow_db = home / "mlflow" / "mlflow.db"
    for r in rows:
        assert served_by(mlflow_db, r["model_version"]) < r["day"]
    # with labels a day late, a model trained on day D's arrival has not seen D's labels
    from mlops_assets.core.names import EVENT_TS

    holdout = pd.read_parquet(home / "lake" / "training_set" / "elec2" / "holdout.parquet")
    assert holdout[EVENT_TS].max() < pd.Timestamp("1996-05-22", tz="UTC")
    # the pooled metric is the accuracy over every scored event
    total = sum(r["rows"] for r in rows)
    pooled = sum(r["metric"] * r["rows"] for r in rows) / total
    assert report["metric"] == pytest.approx(pooled) and report["scored_rows"] == total

    # the runs are on the home's Dagster instance: ingests from the landing sensor, the rest from automation
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    runs = instance.get_runs()
    landed = [r for r in runs if r.tags.get("dagster/sensor_name") == "landing_elec2"]
    automated = [r for r in runs if r.tags.get("dagster/from_automation_condition") == "true"]
    # a run per new day, and a second one per day when its labels land a day later
    assert len(landed) == 10 + DAYS + (10 + DAYS - 1)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert len(automated) >= DAYS + 2
    scored = instance.get_materialized_partitions(dg.AssetKey.from_user_string("elec2/predictions"))
    assert {r["day"] for r in rows} <= scored
    # performance is judged on the day whose labels just arrived, on what that same champion served
    for before, after in itertools.pairwise(rows):
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string("elec2/predictions"), asset_partitions=[after["day"]]),
            limit=1,
        ).records[0]
        meta = record.asset_materialization.metadata
        if before["model_version"] == after["model_version"]:
            assert meta["realised_on"].value == before["day"]
            assert meta["realised_accuracy"].value == pytest.approx(before["metric"])
        else:  # a new champion: its predecessor's day is not held against it
            assert "realised_accuracy" not in meta
    # drift is judged on the newest three scored days together, as the policy's window says
    assert meta["drift_window"].value == "1996-05-21..1996-05-23 (3 days)"
    assert meta["dagster/row_count"].value == 48


def test_a_failing_performance_check_retrains_the_same_day(short_elec2, replay_env):
    """The default policy with Elec2's level trigger (``retrain_when: failing``), a one-day cooldown
    and no tolerance: the daemon ticks again right after a scoring run whose check failed, so the
    model retrains on the day the failure is seen, and the report names performance as the cause."""
    from mlops_assets.replay import replay

    p = short_elec2.policies
    policies = p.model_copy(
        update={
            "performance": p.performance.model_copy(update={"tolerated_drop": 0.0, "retrain_when": "failing"}),
            "drift": p.drift.model_copy(update={"retrain_when": "never"}),
            "freshness": p.freshness.model_copy(update={"model_days": None}),
            "cooldown_days": 1.0,
        }
    )
    spec = short_elec2.model_copy(update={"policies": policies})
    # mid-June 1996 the price regime turns: the bootstrap model's accuracy falls from 0.98 to 0.3
    report = replay(spec, "default", start=date(1996, 6, 10), days=5, home=replay_env / "level", progress=False)

    rows = report["rows"]
    assert any(r["retrained"] for r in rows) and not all(r["retrained"] for r in rows)
    for r in rows:
        assert r["retrained"] == ("performance" in r["failed_checks"]), r
        assert r["causes"] == (["performance"] if r["retrained"] else [])
    assert report["retrain_causes"] == {"performance": report["retrains"]}


def test_a_failing_drift_check_retrains_and_is_named_the_cause(short_elec2, replay_env):
    """The drift policy alone (performance and freshness never retrain): over the mid-June 1996
    regime turn, drift fails (a drift share of one column in ten is enough here), the model retrains
    on a day drift failed, and the report names drift, and only drift, as each retrain's cause."""
    from mlops_assets.replay import replay

    p = short_elec2.policies
    policies = p.model_copy(
        update={
            "drift": p.drift.model_copy(update={"drift_share": 0.1, "retrain_when": "failing"}),
            "performance": p.performance.model_copy(update={"retrain_when": "never"}),
            "freshness": p.freshness.model_copy(update={"model_days": None}),
            "cooldown_days": 1.0,
        }
    )
    spec = short_elec2.model_copy(update={"policies": policies})
    report = replay(spec, "default", start=date(1996, 6, 10), days=5, home=replay_env / "drift", progress=False)

    rows = report["rows"]
    assert report["retrains"] >= 1, rows
    drift_checks = {"feature_drift", "prediction_drift"}
    for r in rows:
        if r["retrained"]:
            assert r["causes"] == ["drift"], r
            assert drift_checks & set(r["failed_checks"]), r
        else:
            assert r["causes"] == [], r
    assert report["retrain_causes"] == {"drift": report["retrains"]}


def test_static_replay_from_the_cli(short_elec2, replay_env, tmp_path, monkeypatch):
    import yaml

    from mlops_assets.cli import main

    spec_file = tmp_path / "elec2_short.yaml"
    spec_file.write_text(yaml.safe_dump(short_elec2.model_dump(mode="json", by_alias=True, exclude_none=True)))
    out = tmp_path / "report.json"
    home = tmp_path / "static"
    args = ["replay", "--spec", str(spec_file), "--policy", "static", "--start", START.isoformat(), "--days", "4"]
    assert main([*args, "--out", str(out), "--home", str(home)]) == 0

    report = json.loads(out.read_text())
    assert {"metric", "metric_name", "retrains", "days", "rows"} <= report.keys()
    assert report["policy"] == "static" and report["retrains"] == 0 and report["days"] == 4
    assert {r["model_version"] for r in report["rows"]} == {1}  # the bootstrap model served every day
    assert 0.5 < report["metric"] <= 1.0


def test_policy_names_are_validated(elec2_spec):
    from pydantic import ValidationError

    from mlops_assets.replay import apply_policy

    assert apply_policy(elec2_spec, "cron:7").policies.cron_days == 7
    assert apply_policy(elec2_spec, "static").policies.cron_days is None
    for bad in ("cron:0", "weekly", "cron:x"):
        with pytest.raises(ValidationError, match="retrain"):
            apply_policy(elec2_spec, bad)


def test_freshness_retrains_promotions_and_the_endpoint_a_replay_started_is_stopped(short_elec2, replay_env):
    """A model older than ``freshness.model_days`` retrains (the only trigger left on), each retrain
    reports ``freshness`` as its cause, the report's ``promotions`` are the retrains whose challenger
    serves from the next day on, and the local endpoint the replay's automation deployed (a real
    server on its port) is stopped when the replay ends."""
    import urllib.error
    import urllib.request

    from mlflow import MlflowClient

    from mlops_assets.endpoint_state import EndpointState
    from mlops_assets.replay import replay
    from mlops_assets.resources import LakeStorage
    from mlops_assets.specs import DeploymentSpec
    from mlops_assets_tests.conftest import free_port

    p = short_elec2.policies
    policies = p.model_copy(
        update={
            "performance": p.performance.model_copy(update={"retrain_when": "never"}),
            "drift": p.drift.model_copy(update={"retrain_when": "never"}),
            "freshness": p.freshness.model_copy(update={"model_days": 2}),
            "cooldown_days": 1.0,
        }
    )
    port = free_port()
    spec = short_elec2.model_copy(update={"policies": policies, "deployment": DeploymentSpec(port=port)})
    home = replay_env / "fresh"
    report = replay(spec, "default", start=START, days=5, home=home, progress=False)

    rows = report["rows"]
    retrained = [r for r in rows if r["retrained"]]
    assert len(retrained) >= 2, rows  # a 2-day-old model on 5 days: retrained at least twice
    assert all(r["causes"] == ["freshness"] for r in retrained), retrained
    assert report["retrain_causes"] == {"freshness": len(retrained)} and report["retrains"] == len(retrained)
    # promotions: a promoted challenger serves the next day, a rejected one leaves the champion serving
    assert all(r["promoted"] is not None for r in retrained)
    for today, tomorrow in itertools.pairwise(rows):
        if today["retrained"]:
            assert (tomorrow["model_version"] > today["model_version"]) == today["promoted"], (today, tomorrow)
        else:
            assert tomorrow["model_version"] == today["model_version"]
    assert report["promotions"] == sum(r["promoted"] for r in retrained)
    tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    assert len(client.search_model_versions("name='elec2'")) == 1 + len(retrained)  # bootstrap + challengers
    champion = client.get_model_version_by_alias("elec2", "champion").version

    # the endpoint followed the gate: deployed at the start, redeployed at each promotion...
    state = EndpointState(LakeStorage(root=str(home)).endpoint_dir("elec2"))
    assert state.load().stable == str(champion)
    deploys = [e for e in state.history() if e.get("dagster_run_id")]  # the endpoint asset's entries
    assert [e["stable"] for e in deploys][-1] == str(champion) and len(deploys) == 1 + report["promotions"]
    assert (home / "endpoints" / "elec2" / "server.log").exists()  # ...by a server the replay started
    # ...which the replay stopped: nothing answers on the port, no pid file is left
    assert report["endpoints_stopped"] == ["elec2"]
    assert not (home / "endpoints" / "elec2" / "server.pid").exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_in_process_jobs_run_like_execute_in_process_and_keep_one_copy_per_selection():
    """``compat.InProcessJobs`` (the replay's runs): the same runs as ``execute_in_process`` (the
    selection, the partition and its tags, the caller's tags, failures reported), with the job's
    ephemeral copy built once per asset selection, and the run's job snapshot (with its lineage)
    recorded as ``execute_in_process`` records it, from one subset of that copy."""
    from mlops_assets.compat import InProcessJobs

    parts = dg.DailyPartitionsDefinition(start_date="2024-01-01")

    @dg.asset(partitions_def=parts)
    def a(context):
        return dg.MaterializeResult(metadata={"day": context.partition_key})

    @dg.asset(partitions_def=parts, deps=[a])
    def b(context):
        if context.partition_key == "2024-01-03":
            raise ValueError("bad day")

    job = dg.Definitions(assets=[a, b]).resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    jobs = InProcessJobs()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    for day in ("2024-01-01", "2024-01-02"):
        result = jobs.execute(
            job, instance=instance, run_config=quiet, partition_key=day, asset_selection=[a.key], tags={"x": "y"}
        )
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.tags["dagster/partition"] == day and run.tags["x"] == "y"
        assert run.asset_selection == {a.key}
        assert result.asset_materializations_for_node("a")[0].metadata["day"].value == day
    reference = job.execute_in_process(instance=instance, run_config=quiet, partition_key="2024-01-02", asset_selection=[a.key])
    dagsters = instance.get_run_by_id(reference.run_id)
    assert (run.job_snapshot_id, run.execution_plan_snapshot_id) == (
        dagsters.job_snapshot_id,
        dagsters.execution_plan_snapshot_id,
    )
    assert instance.get_job_snapshot(run.job_snapshot_id).lineage_snapshot is not None  # a subset, as Dagster's
    ephemeral = next(copy for (_, selection), (_, copy) in jobs._ephemeral.items() if selection == {a.key})
    assert ephemeral.get_subset(asset_selection=frozenset({a.key})) is ephemeral.get_subset(asset_selection=frozenset({a.key}))
    assert ephemeral.get_subset(asset_selection={b.key}).asset_layer.executable_asset_keys == {b.key}
    failed = jobs.execute(job, instance=instance, run_config=quiet, partition_key="2024-01-03", raise_on_error=False)
    assert not failed.success
    assert [e.step_key for e in failed.all_events if e.is_step_failure] == ["b"]
    assert len(jobs._ephemeral) == 2  # {a} and the whole job
    with pytest.raises(Exception, match="1999-01-01"):  # as execute_in_process: an unknown partition
        jobs.execute(job, instance=instance, run_config=quiet, partition_key="1999-01-01")


def test_the_replays_instance_and_automation_answer_as_dagsters_own():
    """``compat.held_connection_instance`` keeps what decisions read (materializations, planned
    events, check evaluations, run status) and leaves out step and engine events, while a run's
    result still holds them all; ``compat.evaluate_automation`` requests what
    ``dg.evaluate_automation_conditions`` requests, tick after tick, from cursors kept apart."""
    from dagster._core.events import DagsterEventType as T

    from mlops_assets.compat import InProcessJobs, evaluate_automation, frozen_dagster_clock, held_connection_instance

    parts = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-06")

    @dg.asset(partitions_def=parts)
    def up(context):
        context.log.info("a plain log line")

    @dg.asset(partitions_def=parts, deps=[up], automation_condition=dg.AutomationCondition.eager())
    def down():
        return None

    @dg.asset_check(asset=down, automation_condition=dg.AutomationCondition.eager())
    def down_ok():
        return dg.AssetCheckResult(passed=True)

    defs = dg.Definitions(assets=[up, down], asset_checks=[down_ok])
    job = defs.resolve_implicit_global_asset_job_def()
    instance, jobs = held_connection_instance(), InProcessJobs()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    ours = theirs = None
    requested = []
    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        at = pd.Timestamp(day, tz="UTC").to_pydatetime() + pd.Timedelta(days=1, hours=1)
        with frozen_dagster_clock(at):
            result = jobs.execute(job, instance=instance, run_config=quiet, partition_key=day, asset_selection=[up.key])
            assert result.success
            for _ in range(2):  # the second tick of a day finds nothing new
                mine = evaluate_automation(defs, instance, ours, at)
                dagsters = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=theirs, evaluation_time=at)
                ours, theirs = mine.cursor, dagsters.cursor
                assert mine.get_requested_partitions(down.key) == dagsters.get_requested_partitions(down.key)
                assert mine.total_requested == dagsters.total_requested
                assert ours.evaluation_id == theirs.evaluation_id
                requested.append(sorted(mine.get_requested_partitions(down.key)))
                for partition in mine.get_requested_partitions(down.key):
                    last = jobs.execute(
                        job, instance=instance, run_config=quiet, partition_key=partition, asset_selection=[down.key]
                    )
    assert requested == [[], [], ["2024-01-02"], [], ["2024-01-03"], []]  # the first tick starts the cursor

    stored = {e.dagster_event.event_type for e in instance.all_logs(result.run_id) if e.dagster_event}
    assert {T.ASSET_MATERIALIZATION, T.ASSET_MATERIALIZATION_PLANNED, T.RUN_START, T.RUN_SUCCESS} <= stored
    assert not stored & {T.STEP_START, T.STEP_OUTPUT, T.STEP_SUCCESS, T.ENGINE_EVENT, T.HANDLED_OUTPUT, T.LOGS_CAPTURED}
    assert all(e.dagster_event for e in instance.all_logs(result.run_id))  # no plain log lines
    assert {T.STEP_START, T.STEP_SUCCESS} <= {e.event_type for e in result.all_events}  # the result has them all
    assert instance.get_run_by_id(result.run_id).is_success
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key([down_ok.check_key])[down_ok.check_key]
    assert check.run_id == last.run_id and check.event.asset_check_evaluation.passed
    assert instance.get_latest_materialization_event(down.key).asset_materialization.partition == "2024-01-03"
    instance.dispose()


def test_the_warm_up_ingests_the_days_the_first_models_past_rates_read(flight_spec, replay_env):
    """Flights' first model trains on 28 + 3 days whose route delay rates read the 28 days before
    them, and up to 28 more over days without labels: the warm-up ingests those too, as a platform
    running since the first partition has them (a shorter warm-up trained the first model on rates
    of too little history, and a static replay of the last two thirds of 2013 scored 0.7153 against
    the backtest's 0.7102)."""
    from datetime import timedelta

    from mlops_assets.replay import Replay

    start = date(2013, 5, 3)
    lookback = flight_spec.past_rate_lookback_days
    replay = Replay(flight_spec, replay_env / "warm", start=start, days=1, progress=False)
    try:
        t = flight_spec.training
        assert lookback == 56  # the route window, 28 days, and as many again
        assert replay.warmup[0] == start - timedelta(days=t.window_days + t.holdout_days + lookback)
        assert replay.warmup[-1] == start - timedelta(days=1)
    finally:  # a replay that never runs still gives back the process's environment (the replay clock)
        replay.close()
    from mlops_assets.server.clock import REPLAY_CLOCK_ENV

    assert REPLAY_CLOCK_ENV not in os.environ


def test_a_day_refused_by_a_blocking_check_is_reported_in_one_line():
    """A replay goes on past a day of bad data, as the platform does; it says in one line which
    blocking check refused the day and why (the check's own metadata), not with the run's traceback.
    Any other failure still shows the run's first failure and what it printed."""
    import dagster as dg

    from mlops_assets.replay import _why_failed

    days = dg.DailyPartitionsDefinition(start_date="2024-01-01")

    @dg.asset(
        partitions_def=days,
        check_specs=[dg.AssetCheckSpec("nulls", asset="dataset", blocking=True)],
    )
    def dataset():
        yield dg.Output(1)
        yield dg.AssetCheckResult(
            check_name="nulls",
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"violations": "pressure: 52.8% > 50.0%", "policy": "checks.max_null_fraction"},
        )

    @dg.asset(partitions_def=days)
    def broken():
        raise ValueError("the disk is full")

    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    refused = dg.materialize([dataset], partition_key="2024-01-03", raise_on_error=False, run_config=quiet)
    assert not refused.success
    line = _why_failed(refused, "2024-01-03", "a long traceback")
    assert line == "2024-01-03 refused by blocking checks: nulls (violations: pressure: 52.8% > 50.0%)"
    other = dg.materialize([broken], partition_key="2024-01-03", raise_on_error=False, run_config=quiet)
    line = _why_failed(other, "2024-01-03", "what the run printed")
    assert line.startswith(f"run {other.run_id} failed: [") and line.endswith("what the run printed")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_replay_stops_on_sigterm_and_ctrl_c_also_during_a_run(tmp_path, signame):
    """Dagster holds SIGINT and SIGTERM while it executes a run and forgets them at its end, so a
    replay used to carry on to its last day under ``timeout``, a container's stop or Ctrl-C. Sent
    once the scored days are under way (a run is then executing most of the time), the signal
    stops ``mlops replay`` within seconds: exit status 130, the reason, and no report."""
    import signal
    import subprocess
    import sys
    import time

    from mlops_assets_tests.conftest import ELEC2_SPEC

    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "mlops_assets.cli", "replay", "--spec", str(ELEC2_SPEC), "--days", "300"]
    cmd += ["--home", str(tmp_path / "home"), "--out", str(out)]
    env = {**os.environ, "MLOPS_HOME": str(tmp_path)}
    log = tmp_path / "stderr.txt"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 180
            while b"days  accuracy" not in log.read_bytes():  # the progress line: scored days under way
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the replay never reached its scored days"
                time.sleep(0.5)
            time.sleep(2)
            sent = time.monotonic()
            proc.send_signal(getattr(signal, signame))
            rc = proc.wait(timeout=60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert rc == 130, text[-2000:]
    assert f"mlops replay: stopped by {signame}; no report written" in text
    assert took < 30 and not out.exists()
