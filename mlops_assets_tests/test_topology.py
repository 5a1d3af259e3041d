"""The production topology of the aws profile, end to end, as separate processes on real services.

What a deployment runs, on this machine: a Dagster instance on PostgreSQL with the queued run
coordinator (``environments.instance_yaml("aws")``); the code-location image's command
``dagster code-server start -m mlops_assets.definitions`` serving the definitions over gRPC; a
``dagster-daemon`` and a ``dagster-webserver`` that load the location from that gRPC server only
(workspace.yaml with a ``grpc_server`` entry). Everything is configured by environment variables
(``MLOPS_ENV=aws``, the cloud variables of ``test_cloud_profiles.cloud_env``): the lake and the
landing zone on S3 (moto's server), Feast's online store on Redis, MLflow on PostgreSQL + S3.

After a bootstrap by hand (history landed on S3; register, ingest and train in this process on the
same PostgreSQL instance), a new day lands on S3, and with it a bad object: a re-delivery of an
ingested day that lost most of its columns. The daemon's landing sensor must turn the new day into
an ingest run (and nothing else: the history is unchanged) and move the bad object to the
quarantine with its reason; the automation sensor must then score the new day. Both runs go through the run queue (enqueued, dequeued by the
daemon, launched in the code server) and succeed, and the webserver's GraphQL API reports them.

Automation scores the latest partition only, so the data is recent: real Elec2 rows re-dated to
the last days (``test_daemon.recent_elec2``). Every process is started in its own session and
stopped by its process group id; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from mlops_assets_tests.conftest import QUIET, free_port, stop_process_group
from mlops_assets_tests.test_cloud_profiles import cloud_env
from mlops_assets_tests.test_daemon import recent_elec2

BIN = os.path.dirname(sys.executable)
HOST = "127.0.0.1"
SPEC = "elec2_live"  # the name recent_elec2 gives its spec
LOCATION = "mlops_assets"
MAX_CONCURRENT_RUNS = 2
START_TIMEOUT = 120  # s, per process: the code location imports in ~2 s alone, longer on a busy machine
RUNS_TIMEOUT = 300  # s, for the landing run and the scoring run together
HISTORY_DAYS = 6  # ingested by hand before the new day: 4 days to train on, 2 of holdout


def recent_spec(tmp: Path) -> tuple[str, date]:
    """``recent_elec2``'s spec (re-dated Elec2 rows, last day yesterday) cut to ``HISTORY_DAYS`` of
    history, for a shorter bootstrap. Returns the spec path and the new day."""
    spec_path, yesterday = recent_elec2(tmp)
    spec = yaml.safe_load(Path(spec_path).read_text())
    spec["partitions"] = {"start": (yesterday - timedelta(days=HISTORY_DAYS)).isoformat()}
    spec["training"] = {"window_days": HISTORY_DAYS, "holdout_days": 2, "min_rows": 150}  # 4 x 48 rows to train on
    Path(spec_path).write_text(yaml.safe_dump(spec))
    return spec_path, yesterday


def topology_env(tmp: Path, postgres, redis, s3) -> dict[str, str]:
    """``cloud_env("aws", …)`` with buckets and databases of this test's own, so nothing another
    test of the session left there (landed files, runs, registry entries) reaches these servers."""
    from mlops_assets.environments import CLOUD_VARS as V

    env = cloud_env("aws", tmp, postgres, redis, s3)
    for bucket in ("landing", "lake", "io", "artifacts"):
        s3.make_bucket(f"topology-{bucket}")
    for db in ("dagster", "mlflow", "feast"):
        postgres.create_database(f"topology_{db}")
    env.update(
        {
            "DAGSTER_PG_DB": "topology_dagster",
            V.storage: "s3://topology-lake/platform",
            V.landing: "s3://topology-landing/incoming",
            V.io_bucket: "topology-io",
            V.mlflow_tracking: postgres.url("topology_mlflow"),
            V.mlflow_artifacts: "s3://topology-artifacts/mlflow",
            V.feast_registry: postgres.url("topology_feast").replace("postgresql://", "postgresql+psycopg://"),
        }
    )
    return env


class Processes:
    """Servers started in their own sessions, logging to files; stopped by process group id."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env, self.procs = tmp, env, {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [os.path.join(BIN, args[0]), *args[1:]],
                cwd=self.tmp,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.tmp / f"{name}.log"
        return f"--- {name}.log\n" + (path.read_text(errors="replace")[-tail:] if path.exists() else "(none)")

    def logs(self) -> str:
        return "\n".join(self.log(name) for name in self.procs)

    def wait(self, what: str, ready, name: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited ({self.procs[name].returncode}) before {what}\n{self.log(name)}")
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ValueError, subprocess.SubprocessError):
                pass  # not up yet
            time.sleep(0.5)
        pytest.fail(f"{what}: not within {timeout} s\n{self.log(name)}")

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            try:
                stop_process_group(proc)
            except ProcessLookupError:  # the whole group is gone already
                pass


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://{HOST}:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=20) as resp:
        out = json.loads(resp.read())
    assert not out.get("errors"), out["errors"]
    return out["data"]


LOCATION_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
INSTANCE_QUERY = """{ instance { runQueuingSupported runQueueConfig { maxConcurrentRuns }
  daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"""
# A queued run: RUN_ENQUEUED by the QueuedRunCoordinator when a sensor submits it (the default
# coordinator launches at once and never emits it), RUN_STARTING by the daemon's queue when it
# dequeues and launches it, RUN_START and RUN_SUCCESS by the run worker.
LIFECYCLE = [
    dg.DagsterEventType.RUN_ENQUEUED,
    dg.DagsterEventType.RUN_STARTING,
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_SUCCESS,
]
RUNS_QUERY = """query Runs($ids: [String]) { runsOrError(filter: {runIds: $ids}) {
  __typename ... on Runs { results { runId status jobName tags { key value } } } } }"""


def grpc_healthy(port: int) -> bool:
    """What the code-location image's HEALTHCHECK runs."""
    check = [os.path.join(BIN, "dagster"), "api", "grpc-health-check", "-h", HOST, "-p", str(port)]
    return subprocess.run(check, capture_output=True, timeout=30, check=False).returncode == 0


def location_loaded(port: int) -> bool:
    entries = graphql(port, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    entry = next(e for e in entries if e["name"] == LOCATION)
    if entry["loadStatus"] != "LOADED":
        return False
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    return True


def failures(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The errors of a failed run's steps (and the run's own failure message)."""
    out = []
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}):
        error = getattr(entry.dagster_event.event_specific_data, "error", None)
        out.append(f"{entry.message} {error.to_string() if error else ''}".strip())
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)  # outer bound; every wait inside is bounded, and `finally` stops the servers
def test_the_aws_topology_runs_the_landing_sensor_and_automation_through_the_run_queue(
    tmp_path, monkeypatch, postgres, redis, s3
):
    from mlops_assets import files
    from mlops_assets.cli import land
    from mlops_assets.environments import instance_yaml, runtime
    from mlops_assets.factory import build_definitions
    from mlops_assets.resources.feast import cached_feature_store
    from mlops_assets.specs import load_spec

    phases = {"start": time.monotonic()}
    spec_path, yesterday = recent_spec(tmp_path)
    env = {**topology_env(tmp_path, postgres, redis, s3), "MLOPS_SPECS": spec_path}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    dagster_home = Path(env["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(instance_yaml("aws", max_concurrent_runs=MAX_CONCURRENT_RUNS))
    cached_feature_store.cache_clear()  # a registry and online store of its own behind known names
    spec = load_spec(spec_path)
    defs = build_definitions([spec])
    lake = runtime()["lake"]
    history = [yesterday - timedelta(days=HISTORY_DAYS - i) for i in range(HISTORY_DAYS)]
    new_day = yesterday.isoformat()
    procs = Processes(tmp_path, {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})

    with dg.DagsterInstance.get() as instance:
        try:
            assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
            assert instance.run_storage.__class__.__name__ == "PostgresRunStorage"

            # The code location, as its image runs it; the daemon and the webserver only know its address.
            grpc_port, web_port = free_port(), free_port()
            procs.start(
                "code-server",
                "dagster",
                "code-server",
                "start",
                "-m",
                "mlops_assets.definitions",
                "-h",
                HOST,
                "-p",
                str(grpc_port),
                "--location-name",
                LOCATION,
            )
            workspace = tmp_path / "workspace.yaml"
            workspace.write_text(
                f"load_from:\n  - grpc_server:\n      host: {HOST}\n      port: {grpc_port}\n      location_name: {LOCATION}\n"
            )

            # Bootstrap a champion by hand, as an operator would on day one, while the servers start
            # (the webserver as soon as the code server answers; the daemon after the bootstrap, or its
            # landing sensor would ingest the history too).
            land(spec, history[0], len(history))
            procs.wait("the code server answers its health check", lambda: grpc_healthy(grpc_port), "code-server")
            procs.start("webserver", "dagster-webserver", "-w", str(workspace), "-h", HOST, "-p", str(web_port))
            for kind, partition in [("register", None), *[("ingest", d.isoformat()) for d in history], ("train", None)]:
                result = defs.resolve_job_def(f"{kind}_{SPEC}").execute_in_process(
                    instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET
                )
                assert result.success, (kind, partition, [e.message for e in result.all_events if e.is_failure][:3])
            before = {r.run_id for r in instance.get_runs()}
            phases["bootstrap"] = time.monotonic()

            # The new day arrives, and with it a re-delivery of an ingested day that lost columns; then
            # the daemon starts (its first landing tick sees them: no wait for a second tick).
            land(spec, yesterday, 1)
            bad_day = history[0].isoformat()
            lake.land(SPEC, bad_day, pd.DataFrame({"date": [0.1], "nswprice": [0.05]}))
            procs.start("daemon", "dagster-daemon", "run", "-w", str(workspace))

            def server_info() -> bool:
                with urllib.request.urlopen(f"http://{HOST}:{web_port}/server_info", timeout=5) as resp:
                    return resp.status == 200 and "dagster_webserver_version" in json.loads(resp.read())

            procs.wait("the webserver answers /server_info", server_info, "webserver")
            procs.wait("the webserver loads the location from the code server", lambda: location_loaded(web_port), "webserver")
            phases["servers"] = time.monotonic()

            landed = scored = None
            deadline = time.monotonic() + RUNS_TIMEOUT
            while time.monotonic() < deadline and not (landed and scored):
                time.sleep(2)
                for run in instance.get_runs():
                    if run.run_id in before:
                        continue
                    if run.tags.get("dagster/sensor_name") == f"landing_{SPEC}" and run.tags.get("dagster/partition") == new_day:
                        landed = run
                    if run.tags.get("dagster/sensor_name") == "mlops_automation" and run.tags.get("dagster/partition") == new_day:
                        scored = run
                    if run.status == dg.DagsterRunStatus.FAILURE:
                        pytest.fail(
                            f"run {run.run_id} ({run.job_name}, {run.tags}) failed: {failures(instance, run.run_id)}\n{procs.logs()}"
                        )
                landed = landed if landed and landed.status == dg.DagsterRunStatus.SUCCESS else None
                scored = scored if scored and scored.status == dg.DagsterRunStatus.SUCCESS else None
            phases["runs"] = time.monotonic()
            assert landed is not None, f"no successful ingest run of {new_day} from the landing sensor\n{procs.logs()}"
            assert scored is not None, f"automation did not score {new_day}\n{procs.logs()}"

            # The landing sensor, in the daemon, read S3: one run for the new day (the history is the
            # same bytes as its raw partitions), the bad object moved to the quarantine with its reason.
            assert landed.job_name == f"ingest_{SPEC}" and landed.tags["mlops/landed_file"] == f"{new_day}.csv"
            by_landing = [r for r in instance.get_runs() if r.tags.get("dagster/sensor_name") == f"landing_{SPEC}"]
            assert [r.run_id for r in by_landing] == [landed.run_id]
            quarantined = {e.name for e in lake.quarantined(SPEC)}
            assert quarantined == {f"{bad_day}.csv", f"{bad_day}.csv.reason.txt"}
            reason = files.read_text(files.join(lake.root, "quarantine", SPEC, f"{bad_day}.csv.reason.txt"))
            assert "missing columns" in reason and f"{bad_day}.csv" in reason
            assert lake.landing_file(SPEC, bad_day) is None

            # Both runs went through the queue: enqueued by the sensor, dequeued by the daemon's run
            # coordinator, launched in the code server (which runs the aws profile: the rows are on S3).
            for run in (landed, scored):
                kinds = [e.dagster_event.event_type for e in instance.all_logs(run.run_id) if e.is_dagster_event]
                assert [k for k in kinds if k in LIFECYCLE] == LIFECYCLE, (run.job_name, kinds)
                assert run.remote_job_origin.location_name == LOCATION
            for stage in ("raw", "dataset"):
                assert files.exists(lake.partition_path(stage, SPEC, new_day))
            assert lake.partition_path("dataset", SPEC, new_day).startswith("s3://topology-lake/")
            assert new_day in instance.get_materialized_partitions(dg.AssetKey([SPEC, "predictions"]))

            # The webserver (its own process, same PostgreSQL instance) sees the queue and the runs.
            info = graphql(web_port, INSTANCE_QUERY)["instance"]
            assert info["runQueuingSupported"] and info["runQueueConfig"]["maxConcurrentRuns"] == MAX_CONCURRENT_RUNS
            daemons = {d["daemonType"]: d for d in info["daemonHealth"]["allDaemonStatuses"]}
            assert daemons["QUEUED_RUN_COORDINATOR"]["required"] and daemons["QUEUED_RUN_COORDINATOR"]["healthy"], daemons
            assert daemons["SENSOR"]["healthy"], daemons
            runs = graphql(web_port, RUNS_QUERY, {"ids": [landed.run_id, scored.run_id]})["runsOrError"]
            assert runs["__typename"] == "Runs", runs
            listed = {r["runId"]: r for r in runs["results"]}
            assert {i: r["status"] for i, r in listed.items()} == {landed.run_id: "SUCCESS", scored.run_id: "SUCCESS"}
            tags = {i: {t["key"]: t["value"] for t in r["tags"]} for i, r in listed.items()}
            assert tags[landed.run_id]["dagster/sensor_name"] == f"landing_{SPEC}"
            assert tags[scored.run_id]["dagster/sensor_name"] == "mlops_automation"
            assert tags[scored.run_id]["dagster/partition"] == new_day
        finally:
            procs.stop_all()
            cached_feature_store.cache_clear()
    phases["stopped"] = time.monotonic()
    print("topology: " + ", ".join(f"{k} at {v - phases['start']:.0f} s" for k, v in phases.items() if k != "start"))


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_an_object_another_process_writes_after_a_listing_is_seen(protocol, request, monkeypatch):
    """Processes share the store: after this process listed a folder, an object another process
    wrote there exists and reads, and one it rewrote reads whole (fsspec's per-process listing cache
    would answer "missing" and fail on the listed ETag: ``files.REMOTE_OPTIONS``)."""
    from mlops_assets import files

    server = request.getfixturevalue("s3" if protocol == "s3" else "gcs")
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    bucket = server.make_bucket(f"topology-cache-{protocol}")
    folder = f"{protocol}://{bucket}/shared"
    files.write_text(files.join(folder, "old.txt"), "old")
    assert [e.name for e in files.listing(folder)] == ["old.txt"]
    script = (
        "import sys; from mlops_assets import files; "
        "files.write_text(sys.argv[1] + '/new.txt', 'new'); files.write_text(sys.argv[1] + '/old.txt', 'rewritten')"
    )
    subprocess.run([sys.executable, "-c", script, folder], check=True, timeout=60, env=os.environ)
    assert files.exists(files.join(folder, "new.txt"))
    assert files.read_text(files.join(folder, "new.txt")) == "new"
    fs, path = files.filesystem(files.join(folder, "old.txt"))
    with fs.open(path, "rb") as f:
        assert f.read() == b"rewritten"
