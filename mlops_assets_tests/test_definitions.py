"""The code location loads cheaply, validates, and explains itself in the UI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets_tests.conftest import ELEC2_SPEC, REPO

HEAVY = ("pandas", "feast", "mlflow", "sklearn", "dagster_mlflow", "boto3", "kubernetes", "google.cloud", "duckdb")


def _env(tmp_path, **extra) -> dict:
    return {
        **os.environ,
        "MLOPS_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "MLOPS_SPECS": str(ELEC2_SPEC),
        **extra,
    }


@pytest.mark.parametrize(
    "command", [["dagster", "definitions", "validate", "-m", "mlops_assets.definitions"], ["dg", "check", "defs"]]
)
def test_definitions_validate_without_warnings_from_our_code(tmp_path, command):
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    bin_dir = os.path.dirname(sys.executable)
    env = _env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=os.path.dirname(bin_dir))
    proc = subprocess.run(
        [os.path.join(bin_dir, command[0]), *command[1:]],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    ours = [line for line in output.splitlines() if "mlops_assets/" in line and "Warning" in line]
    assert ours == [], ours


def test_loading_the_code_location_imports_no_heavy_library(tmp_path):
    probe = f"import sys, mlops_assets.definitions; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_asset_explains_itself(tmp_path, monkeypatch, flight_spec, elec2_spec):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    from mlops_assets.factory import build_definitions

    defs = build_definitions([flight_spec, elec2_spec])
    specs = defs.resolve_all_asset_specs()
    # 10 per spec (<spec>/backtest included); flight_delays also has its endpoint, and online_lookups
    # for the hourly weather that endpoint serves
    assert len(specs) == 2 * 10 + 2
    from mlops_assets.common import STAGE_VERSIONS

    # keys are <spec>/<stage>: the lineage groups a spec's stages and labels each node by its stage
    assert {s.key.path[0] for s in specs} == {"flight_delays", "elec2"}
    assert all(len(s.key.path) == 2 and s.key.path[1] in STAGE_VERSIONS for s in specs)
    assert {s.key.to_user_string() for s in specs if s.key.path[1] == "endpoint"} == {"flight_delays/endpoint"}
    for s in specs:
        spec = flight_spec if s.key.path[0] == "flight_delays" else elec2_spec
        assert s.group_name == spec.name
        assert s.owners == ["team:ml-platform"]
        assert s.kinds and s.description and len(s.description) > 40
        assert s.code_version and s.code_version.endswith(spec.spec_hash)
        assert s.tags["mlops/spec"] == spec.name
    job_names = {j.name for j in defs.resolve_all_job_defs()}
    for spec in ("flight_delays", "elec2"):
        assert {f"{k}_{spec}" for k in ("register", "ingest", "train", "score")} <= job_names
    assert defs.resolve_job_def("ingest_flight_delays").partitions_def is not None
    assert "deploy_flight_delays" in job_names and "deploy_elec2" not in job_names
    assert "lookups_flight_delays" in job_names and "lookups_elec2" not in job_names
    assert [s.name for s in defs.schedules] == ["lookups_flight_delays_schedule"]
    assert {s.key.to_user_string() for s in specs if s.key.path[1] == "online_lookups"} == {"flight_delays/online_lookups"}
    lookups = next(s for s in specs if s.key.path[1] == "online_lookups")
    assert lookups.freshness_policy.fail_window.to_timedelta().total_seconds() == 2 * 3600  # the weather's TTL
    endpoint = next(s for s in specs if s.key.to_user_string() == "flight_delays/endpoint")
    assert endpoint.freshness_policy is not None and endpoint.automation_condition is not None


def test_editing_a_spec_changes_the_code_versions(tmp_path, monkeypatch, flight_spec):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    from mlops_assets.factory import build_definitions

    edited = flight_spec.model_copy(update={"training": flight_spec.training.model_copy(update={"window_days": 21})})
    before = {s.key: s.code_version for s in build_definitions([flight_spec]).resolve_all_asset_specs()}
    after = {s.key: s.code_version for s in build_definitions([edited]).resolve_all_asset_specs()}
    assert all(before[k] != after[k] for k in before)


def test_environment_switch_refuses_what_does_not_exist(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import mlops_assets.definitions"],
        cwd=REPO,
        env=_env(tmp_path, MLOPS_ENV="mars"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "MLOPS_ENV" in proc.stderr and "is unknown" in proc.stderr


@pytest.mark.parametrize("env", ["aws", "gcp"])
def test_every_cloud_profile_loads_without_its_services_or_variables(tmp_path, env):
    """A code server starts before its backends answer: no variable of the profile is set here and
    nothing listens, yet the definitions load and validate; the resources read the variables when a
    run starts."""
    (tmp_path / "dagster").mkdir()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "mlops_assets.definitions"],
        cwd=REPO,
        env=_env(tmp_path, MLOPS_ENV=env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_mlflow_links_in_metadata_never_carry_credentials():
    """A tracking URI may hold a password (basic auth, a database URL); the UI links built from it
    for asset metadata must not."""
    from mlops_assets.resources import MlflowTracking

    server = MlflowTracking(tracking_uri="https://ci:s3cret@mlflow.example.org/")
    assert server.run_url("1", "abc") == "https://mlflow.example.org/#/experiments/1/runs/abc"
    database = MlflowTracking(tracking_uri="postgresql://mlflow:s3cret@db:5432/mlflow")
    assert "s3cret" not in database.model_version_url("m", 3)


def test_a_cloud_command_without_its_variables_names_them(tmp_path):
    """`mlops serve` or `mlops land` on a cloud profile whose variables are not set stops with the
    variables' names, not a traceback."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mlops"), "land", "--spec", "flight_delays", "--date", "2013-01-01"],
        cwd=REPO,
        env=_env(tmp_path, MLOPS_ENV="gcp"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "MLOPS_STORAGE_URI" in proc.stderr and "MLOPS_LANDING_URI" in proc.stderr and "Traceback" not in proc.stderr
