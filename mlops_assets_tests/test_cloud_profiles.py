"""The flight-delays pipeline end to end on the aws- and gcp-shaped profiles, on real services.

``MLOPS_ENV=aws``: the Dagster instance, MLflow's backend store and the Feast registry on a real
PostgreSQL; landing zone, lake, prediction store, endpoint state, Dagster IO and MLflow artifacts on
S3 (moto's server, which speaks S3's HTTP protocol); Feast's online store on a real Redis.
``MLOPS_ENV=gcp``: the same with GCS (gcp-storage-emulator). Everything is configured the way a
deployment would configure it: environment variables only, read when a run starts.

Per profile: files land on the object store; the landing sensor turns them into partition runs and
quarantines a bad object with its reason; ingest, register, train, gate and score run on the
PostgreSQL instance; the local endpoint serves the champion with features read from Redis and logs
its predictions to the object store; running a partition again changes no row anywhere.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import date, timedelta

import dagster as dg
import pandas as pd
import pytest

from mlops_assets import files
from mlops_assets_tests.conftest import QUIET, free_port

START, DAYS = date(2013, 1, 1), 5
KEYS = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]
SPEC = "flight_delays"


def cloud_env(which: str, tmp, postgres, redis, store) -> dict[str, str]:
    """The variables a deployment of the profile sets (``environments.CLOUD_VARS`` and the instance's)."""
    from mlops_assets.environments import CLOUD_VARS as V

    scheme = "s3" if which == "aws" else "gs"
    for bucket in ("landing", "lake", "io", "artifacts"):
        store.make_bucket(f"{which}-{bucket}")
    for db in ("dagster", "mlflow", "feast"):
        postgres.create_database(f"{which}_{db}")
    return {
        **store.env,
        "MLOPS_ENV": which,
        "MLOPS_HOME": str(tmp / "home"),  # this machine only: the local server's pid and log
        "DAGSTER_HOME": str(tmp / "dagster"),
        "DAGSTER_PG_HOST": postgres.host,
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": postgres.user,
        "DAGSTER_PG_PASSWORD": postgres.password,
        "DAGSTER_PG_DB": f"{which}_dagster",
        V.storage: f"{scheme}://{which}-lake/platform",
        V.landing: f"{scheme}://{which}-landing/incoming",
        V.io_bucket: f"{which}-io",
        V.mlflow_tracking: postgres.url(f"{which}_mlflow"),
        V.mlflow_artifacts: f"{scheme}://{which}-artifacts/mlflow",
        V.feast_registry: postgres.url(f"{which}_feast").replace("postgresql://", "postgresql+psycopg://"),
        V.redis: redis.connection_string,
        V.admin_token: "cloud-admin-token-for-tests",
    }


class CloudPlatform:
    """The code location and a Dagster instance on PostgreSQL, configured from the environment."""

    def __init__(self, which: str, spec, dagster_home):
        from mlops_assets.environments import instance_yaml, runtime
        from mlops_assets.factory import build_definitions

        self.which, self.spec = which, spec
        dagster_home.mkdir(parents=True, exist_ok=True)
        (dagster_home / "dagster.yaml").write_text(instance_yaml(which))
        self.instance = dg.DagsterInstance.get()
        self.defs = build_definitions([spec])
        self.resources = runtime()
        self.lake = self.resources["lake"]

    def run(self, kind: str, partition: str | None = None):
        from mlops_assets.core.names import job_name

        job = self.defs.resolve_job_def(job_name(kind, self.spec.name))
        result = job.execute_in_process(instance=self.instance, partition_key=partition, raise_on_error=False, run_config=QUIET)
        assert result.success, [e.message for e in result.all_events if e.is_failure][:3]
        return result

    def landing_tick(self, cursor: str | None = None):
        ctx = dg.build_sensor_context(instance=self.instance, cursor=cursor, resources={"lake": self.lake}, definitions=self.defs)
        return self.defs.get_sensor_def(f"landing_{self.spec.name}").evaluate_tick(ctx)

    def latest(self, asset: str) -> dict:
        event = self.instance.get_latest_materialization_event(dg.AssetKey.from_user_string(asset))
        assert event is not None, f"{asset} was never materialized"
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    def state(self) -> dict:
        """Every row the platform keeps for the pipeline's days: lake partitions, the Feast offline
        sources' rows of those days, and the spec's entity rows in the Redis online store."""
        from mlops_assets.core.names import EVENTS_VIEW

        feast = self.resources["feast"]
        out = {"online_rows": feast.online_row_count(self.spec)}
        for day in KEYS:
            for stage in ("raw", "dataset"):
                out[f"{stage}/{day}"] = self.lake.read(self.lake.partition_path(stage, SPEC, day))
            for table in (EVENTS_VIEW, *[f.name for f in self.spec.past_rate_features]):
                out[f"{table}/{day}"] = self.lake.read_feature_day(SPEC, table, day)
        return out


@pytest.fixture(scope="module", params=["aws", "gcp"])
def cloud(request, tmp_path_factory, flight_spec, postgres, redis):
    from mlops_assets.cli import land
    from mlops_assets.resources.feast import cached_feature_store
    from mlops_assets.rollout.local import LocalTarget
    from mlops_assets.specs import CanarySpec

    which = request.param
    store = request.getfixturevalue("s3" if which == "aws" else "gcs")
    tmp = tmp_path_factory.mktemp(f"cloud_{which}")
    deployment = flight_spec.deployment.model_copy(update={"port": free_port(), "canary": CanarySpec()})
    spec = flight_spec.model_copy(update={"deployment": deployment})
    with pytest.MonkeyPatch.context() as mp:
        for k, v in cloud_env(which, tmp, postgres, redis, store).items():
            mp.setenv(k, v)
        cached_feature_store.cache_clear()  # a new registry and online store behind the same names
        p = CloudPlatform(which, spec, tmp / "dagster")
        target = LocalTarget(spec, p.lake, p.resources["mlflow"].tracking_uri, p.resources["deployer"].local_run_dir(spec.name))
        try:
            p.landed = land(spec, START, DAYS)
            bad = pd.DataFrame({"carrier": ["UA"], "flight": [1]})  # a day without most of its columns
            p.bad = p.lake.land(SPEC, "2013-01-09", bad)
            p.tick = p.landing_tick()
            p.run("register")
            p.ingested = {r.partition_key: p.run("ingest", r.partition_key) for r in p.tick.run_requests}
            p.trained = p.run("train")
            p.scored = p.run("score", KEYS[-1])
            p.deployed = p.run("deploy")
            yield p
        finally:
            target.stop()
            cached_feature_store.cache_clear()
            p.instance.dispose()


def test_files_land_on_the_object_store_and_a_bad_object_is_quarantined_with_its_reason(cloud):
    scheme = "s3://" if cloud.which == "aws" else "gs://"
    assert all(uri.startswith(scheme) for uri in cloud.landed) and len(cloud.landed) == DAYS
    assert sorted(r.partition_key for r in cloud.tick.run_requests) == KEYS
    quarantined = {e.name for e in cloud.lake.quarantined(SPEC)}
    assert quarantined == {"2013-01-09.csv", "2013-01-09.csv.reason.txt"}
    reason = files.read_text(f"{cloud.lake.root}/quarantine/{SPEC}/2013-01-09.csv.reason.txt")
    assert "missing columns" in reason and "2013-01-09.csv" in reason
    assert cloud.lake.landing_file(SPEC, "2013-01-09") is None  # gone from the landing zone
    again = cloud.landing_tick(cloud.tick.cursor)
    assert not again.run_requests  # nothing new: the cursor remembers every object's version


def test_the_pipeline_runs_on_postgres_and_the_object_store(cloud):
    assert cloud.instance.run_storage.__class__.__name__ == "PostgresRunStorage"
    runs = cloud.instance.get_runs()
    assert len(runs) >= DAYS + 4 and all(r.is_success for r in runs)
    for day in KEYS:
        assert files.exists(cloud.lake.partition_path("dataset", SPEC, day))
    assert cloud.lake.partition_path("dataset", SPEC, KEYS[0]).startswith(cloud.lake.root)
    model = cloud.latest(f"{SPEC}/model")
    assert 0.5 < model["holdout_roc_auc"] <= 1.0  # two training days: the plumbing is under test here
    from mlflow import MlflowClient

    mlflow = cloud.resources["mlflow"]
    client = MlflowClient(mlflow.tracking_uri)
    version = client.get_model_version_by_alias(SPEC, "champion")
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith(mlflow.artifact_location)  # artifacts on the object store
    assert "reference" in {a.path for a in client.list_artifacts(run.info.run_id)}
    fs, root = files.filesystem(mlflow.artifact_location)
    assert any(path.endswith("/MLmodel") for path in fs.find(root))  # the registered model's files
    assert mlflow.tracking_uri.startswith("postgresql://")
    checks = {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in cloud.scored.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert {"feature_drift", "prediction_drift", "performance"} <= set(checks)


def test_the_endpoint_serves_online_features_from_redis_and_logs_to_the_object_store(cloud):
    from mlops_assets.prediction_store import SERVED, read_day

    endpoint = cloud.latest(f"{SPEC}/endpoint")
    assert endpoint["action"] == "deploy"
    assert (
        cloud.resources["feast"].online_store_type == "redis" and cloud.latest(f"{SPEC}/online_features")["online_rows_total"] > 0
    )
    events = cloud.lake.read(cloud.lake.partition_path("dataset", SPEC, KEYS[-1]))
    known = events.dropna(subset=["tailnum"]).iloc[0]
    row = {k: str(known[k]) for k in ("carrier", "origin", "dest", "tailnum")}
    row.update(distance=float(known["distance"]), event_id="cloud-1", event_timestamp=known["event_timestamp"].isoformat())
    unknown = {**row, "tailnum": "N0NE", "dest": "XXX", "event_id": "cloud-2"}
    d = cloud.spec.deployment
    req = urllib.request.Request(
        f"http://{d.host}:{d.port}/v1/models/{SPEC}:predict",
        data=json.dumps({"instances": [row, unknown]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert resp.status == 200 and len(out["scores"]) == 2
    # the landed day's entities are in Redis; a plane and a route it never saw are flagged
    assert out["unknown_entities"] == [[], ["origin+dest", "tailnum"]], out
    import time

    deadline = time.monotonic() + 20  # the server flushes its log every second
    served = None
    while time.monotonic() < deadline and (served is None or "cloud-1" not in set(served["event_id"])):
        time.sleep(0.5)
        served = read_day(cloud.lake.predictions_root(), SERVED, SPEC, KEYS[-1])
    assert served is not None and "cloud-1" in set(served["event_id"])
    assert served.loc[served["event_id"] == "cloud-1", "feature.carrier_delay_rate"].notna().all()
    state = files.read_text(f"{cloud.lake.endpoint_dir(SPEC)}/deployment.json")
    assert json.loads(state)["stable"] == str(endpoint["stable_version"])


def test_a_partition_run_twice_gives_identical_rows_everywhere(cloud):
    before = cloud.state()
    cloud.run("ingest", KEYS[2])
    after = cloud.state()
    assert before.keys() == after.keys()
    assert after["online_rows"] == before["online_rows"]
    for name, frame in before.items():
        if name == "online_rows":
            continue
        pd.testing.assert_frame_equal(frame.reset_index(drop=True), after[name].reset_index(drop=True), obj=name)
        if "event_id" in frame.columns:
            assert not frame["event_id"].duplicated().any(), name
