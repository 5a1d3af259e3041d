"""The pipeline driven the way CI drives it: `mlops land`, `dagster job execute` and `dg launch`
as subprocesses against a temporary home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets_tests.conftest import REPO

BIN = Path(sys.executable).parent
KEYS = [(date(2013, 2, 1) + timedelta(days=i)).isoformat() for i in range(4)]


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli_home")
    env = {
        **os.environ,
        "MLOPS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "VIRTUAL_ENV": str(BIN.parent),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home, env


def sh(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def execute(job: str, env: dict, partition: str | None = None) -> subprocess.CompletedProcess:
    args = [str(BIN / "dagster"), "job", "execute", "-m", "mlops_assets.definitions", "-j", job]
    if partition:
        args += ["--tags", json.dumps({"dagster/partition": partition})]
    return sh(args, env)


def test_land_then_jobs_end_to_end_through_subprocesses(cli_home):
    home, env = cli_home
    out = sh([str(BIN / "mlops"), "land", "--spec", "flight_delays", "--date", KEYS[0], "--days", str(len(KEYS))], env)
    assert [Path(line).name for line in out.stdout.split()] == [f"{k}.csv" for k in KEYS]

    execute("register_flight_delays", env)
    for k in KEYS:
        execute("ingest_flight_delays", env, k)
    execute("train_flight_delays", env)
    execute("score_flight_delays", env, KEYS[-1])

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey.from_user_string("flight_delays/online_features")) == set(KEYS)
        assert instance.get_materialized_partitions(dg.AssetKey.from_user_string("flight_delays/predictions")) == {KEYS[-1]}
        gate = instance.get_latest_materialization_event(dg.AssetKey.from_user_string("flight_delays/champion"))
        assert gate.asset_materialization.metadata["decision"].value == "promoted"
        runs = instance.get_runs()
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs) and len(runs) == len(KEYS) + 3


def test_the_workflows_read_the_gate_decision_of_the_last_train_run(cli_home, tmp_path):
    """.github/scripts/gate_result.py, as the CI and train-and-promote workflows run it after `train_<spec>`."""
    _home, env = cli_home
    summary = tmp_path / "summary.md"
    out = sh(
        [sys.executable, str(REPO / ".github" / "scripts" / "gate_result.py"), "flight_delays"],
        {**env, "GITHUB_STEP_SUMMARY": str(summary)},
    )
    outputs = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert outputs["decision"] == "promoted" and outputs["challenger_version"] == outputs["champion_version"] == "1"
    assert "| decision | promoted |" in summary.read_text()
    missing = subprocess.run(
        [sys.executable, str(REPO / ".github" / "scripts" / "gate_result.py"), "elec2"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and "elec2: the promotion gate has not run" in missing.stderr


def test_dg_launch_runs_a_partition_of_a_named_job(cli_home):
    home, env = cli_home
    day = (date.fromisoformat(KEYS[-1]) + timedelta(days=1)).isoformat()
    sh([str(BIN / "mlops"), "land", "--spec", "flight_delays", "--date", day], env)
    sh([str(BIN / "dg"), "launch", "--job", "ingest_flight_delays", "--partition", day], env)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert day in instance.get_materialized_partitions(dg.AssetKey.from_user_string("flight_delays/online_features"))


def test_mlops_check_and_demo_refuse_a_spec_that_does_not_fit_its_data(tmp_path):
    """`mlops check` as a person runs it (a subprocess), and `mlops demo` stopping before it lands
    anything: both name the spec file and the field."""
    import yaml

    from mlops_assets_tests.conftest import ELEC2_SPEC

    raw = yaml.safe_load(ELEC2_SPEC.read_text())
    raw["features"][3] = {"kind": "column", "name": "nswdemand", "column": "nswdemmand"}
    spec = tmp_path / "elec2.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "MLOPS_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "home" / "dagster")}
    problem = f"{spec}: features[3].column: 'nswdemmand' is not a column of the source"

    check = subprocess.run(
        [str(BIN / "mlops"), "check", "--spec", str(spec)], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert check.returncode == 1 and check.stderr.startswith(problem), check.stderr
    good = subprocess.run(
        [str(BIN / "mlops"), "check", "--spec", str(ELEC2_SPEC)], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert good.returncode == 0 and good.stdout.startswith(f"{ELEC2_SPEC}: ok: elec2"), good.stderr

    demo = subprocess.run(
        [str(BIN / "mlops"), "demo", "--spec", str(spec), "--start", "1996-06-01", "--days", "3"],
        check=False,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 1 and problem in demo.stderr
    assert "nothing was landed" in demo.stderr
    assert not (tmp_path / "home" / "landing").exists()
