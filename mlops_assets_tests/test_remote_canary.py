"""A canary judged for a remote-style endpoint: the model server runs the way its container runs it.

The server is ``python -m mlops_assets.cli serve`` with the spec from ``MLOPS_SPEC`` and its whole
configuration from environment variables only: exactly the environment the Kubernetes target renders
for the aws profile (``MLOPS_ENV=aws`` and the store variables from ``cloud_env``), the variables the
manifest takes from the Secret filled in as the kubelet would from that Secret, and the S3 keys and
endpoint standing in for the pod's identity (IRSA on EKS). Nothing of the test process is inherited:
a variable the container does not get, the server does not have. Behind it, real services: MLflow's
tracking store and registry on PostgreSQL with its artifacts on S3 (moto's server), the lake and
the prediction log on S3, Feast's online store on Redis.

The ``endpoint`` asset is then materialized in this process with the aws profile's resources
(``environments.runtime()``) on a local-target spec with a fast canary: the local target finds the
server already answering on the spec's port and hot-swaps it over its admin route, as a remote
target would roll out a new deployment. The ``canary`` check reads what the server logged from S3:
a challenger with shuffled labels is rolled back (the ``champion`` alias too), a good one is
promoted, and the audit history on S3 records every step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_assets_tests.conftest import free_port, stop_process_group
from mlops_assets_tests.test_cloud_profiles import cloud_env
from mlops_assets_tests.test_serving import Client, elec2_rows, instances

SPEC = "elec2"
START_TIMEOUT = 120  # seconds: imports, and three models' first load from S3
LOG_TIMEOUT = 30  # seconds: the server flushes its log to S3 every second


def register(spec, tracking_uri: str, artifact_uri: str, frame: pd.DataFrame, *, shuffle_labels: bool = False) -> str:
    """Fit the spec's pipeline on ``frame`` and register it as the model asset does (skops), in the
    MLflow on PostgreSQL, its artifacts under the profile's artifact root on S3."""
    import mlflow

    from mlops_assets.core.training import feature_frame, fit
    from mlops_assets.resources.mlflow import log_pipeline

    if shuffle_labels:  # a model that learned nothing real: what a bad release looks like
        frame = frame.assign(label=np.random.default_rng(1).permutation(frame["label"].to_numpy()))
    model = fit(spec, frame)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if mlflow.get_experiment_by_name(spec.name) is None:
        mlflow.create_experiment(spec.name, artifact_location=artifact_uri)
    mlflow.set_experiment(spec.name)
    with mlflow.start_run():
        info = log_pipeline(model, spec.name, feature_frame(frame.head(3), spec))
    return str(info.registered_model_version)


def container_env(spec, platform_env: dict[str, str], version: str) -> dict[str, str]:
    """The environment a pod of the Kubernetes target gets: the rendered container's variables, the
    ``secretKeyRef`` ones resolved from the Secret (which holds the profile's variables, as
    ``mlops_assets.k8s.secret_keys`` says), nothing else of the platform."""
    from mlops_assets.endpoint_state import Deployment
    from mlops_assets.k8s import secret_keys
    from mlops_assets.rollout.kubernetes import render, secret_name
    from mlops_assets.specs import DeploymentSpec

    on_k8s = spec.model_copy(update={"deployment": DeploymentSpec(target="kubernetes")})
    (manifest, _service) = render(on_k8s, Deployment(stable=version))  # the version the pod is rolled out with
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    secret = {"name": secret_name(), "data": {k: platform_env[k] for k in secret_keys("aws") if k in platform_env}}
    out = {}
    for e in container["env"]:
        if "value" in e:
            out[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["name"], ref
            if ref["key"] not in secret["data"] and ref.get("optional"):
                continue  # an optional key the Secret does not hold: Kubernetes leaves the variable unset
            out[e["name"]] = secret["data"][ref["key"]]
    # no secret value is written into the manifest: each is a reference into the Secret
    refs = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"MLFLOW_TRACKING_URI", "FEAST_REGISTRY_URI", "MLOPS_REDIS", "MLOPS_ADMIN_TOKEN"}, refs
    assert platform_env["MLFLOW_TRACKING_URI"] not in json.dumps(manifest)
    return out


def wait_ready(port: int, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            status, body = Client(port).call("GET", "/readyz")
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the server did not become ready within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def remote(tmp_path_factory, elec2_spec, postgres, redis, s3):
    """MLflow (PostgreSQL + S3) holding elec2 v1 (good), v2 (shuffled labels), v3 (good), champion v1,
    and the model server started as its container starts it, on the aws profile by environment only."""
    from mlflow import MlflowClient

    from mlops_assets.environments import CLOUD_VARS, runtime
    from mlops_assets.resources.feast import cached_feature_store
    from mlops_assets.specs import CanarySpec, DeploymentSpec

    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("remote_canary")
    env = cloud_env("aws", tmp, postgres, redis, s3)
    canary = CanarySpec(traffic_percent=50, window_minutes=0.01, min_requests=20, min_labelled=100, max_metric_drop=0.05)
    # partitions open-ended: the labelled requests are today's events, outside the 1996-1998 series' horizon
    spec = elec2_spec.model_copy(
        update={
            "partitions": elec2_spec.partitions.model_copy(update={"end": None}),
            "deployment": DeploymentSpec(port=free_port(), canary=canary),
        }
    )
    spec_file = tmp / "elec2.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False))
    rows = elec2_rows()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("MLOPS_K8S_SECRET", "MLOPS_K8S_CLOUD", "MLOPS_SPEC", "MLOPS_DEPLOYMENT", "MLOPS_MODEL_DIR"):
            mp.delenv(k, raising=False)
        cached_feature_store.cache_clear()
        resources = runtime()
        tracking, artifacts = env[CLOUD_VARS.mlflow_tracking], env[CLOUD_VARS.mlflow_artifacts]
        versions = [
            register(spec, tracking, artifacts, rows.iloc[:1344]),
            register(spec, tracking, artifacts, rows.iloc[:1344], shuffle_labels=True),
            register(spec, tracking, artifacts, rows.iloc[1344:2688]),
        ]
        client = MlflowClient(tracking)
        client.set_registered_model_alias(SPEC, "champion", versions[0])
        registered = time.monotonic() - t0

        # the container: its environment is the rendered one, plus the pod identity's S3 access
        served_env = container_env(spec, env, versions[0])
        home = tmp / "container"
        home.mkdir()
        process_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "MLOPS_SPEC": str(spec_file),  # what `mlops serve` serves when it gets no --spec
            **s3.env,  # AWS keys and endpoint: on EKS the service account's role (IRSA)
            **served_env,
        }
        log = tmp / "server.log"
        port = spec.deployment.port
        cmd = [sys.executable, "-m", "mlops_assets.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        t1 = time.monotonic()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                env=process_env,
                cwd=home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            ready = wait_ready(port, proc, log)
            assert ready["stable"] == versions[0], ready
            timings = {"register_s": round(registered, 1), "server_start_s": round(time.monotonic() - t1, 1)}
            yield {
                "spec": spec,
                "env": env,
                "served_env": served_env,
                "versions": versions,
                "rows": rows,
                "resources": resources,
                "client": client,
                "port": port,
                "proc": proc,
                "log": log,
                "s3": s3,
                "timings": timings,
            }
        finally:
            stop_process_group(proc)
            cached_feature_store.cache_clear()


def s3_keys(s3, uri: str) -> list[str]:
    """Every object under an s3:// prefix, listed with boto3 (not through the platform's file layer)."""
    parsed = urlparse(uri)
    paginator = s3.client().get_paginator("list_objects_v2")
    prefix = parsed.path.strip("/") + "/"
    return [o["Key"] for page in paginator.paginate(Bucket=parsed.netloc, Prefix=prefix) for o in page.get("Contents", [])]


def wait_logged(lake, since: pd.Timestamp, ids: set[str], table: str = "served", column: str = "event_id") -> pd.DataFrame:
    """The rows of ``table`` whose ``column`` is in ``ids``, once the server's log holds every one of
    them (read from S3). Each table's files are written by the log's own flush, one after the other,
    and a request's two blocks may fall into two flushes: each table is waited for by itself."""
    from mlops_assets.prediction_store import read_since

    deadline = time.monotonic() + LOG_TIMEOUT
    rows = None
    while time.monotonic() < deadline:
        rows = read_since(lake.predictions_root(), table, SPEC, since)
        if rows is not None and ids <= set(rows[column].dropna()):
            return rows[rows[column].isin(ids)]
        time.sleep(0.5)
    got = 0 if rows is None else len(ids & set(rows[column].dropna()))
    pytest.fail(f"{got} of {len(ids)} {table} rows reached the log on S3 within {LOG_TIMEOUT} s")


def send_labelled(ctx, rows: pd.DataFrame, day: str) -> None:
    """Single-row requests carrying event ids, and those events' labels in the lake on S3 (as ingest
    writes them); returns once the server's log on S3 holds every prediction."""
    lake = ctx["resources"]["lake"]
    since = pd.Timestamp.now(tz="UTC")
    ids = [f"{day}-{i:06d}" for i in range(len(rows))]
    lake.write(pd.DataFrame({"event_id": ids, "label": rows["label"].to_numpy()}), lake.partition_path("dataset", SPEC, day))
    c = Client(ctx["port"])
    for i, r in enumerate(instances(rows)):
        status, out = c.call(
            "POST",
            f"/v1/models/{SPEC}:predict",
            {"instances": [{**r, "event_id": ids[i], "event_timestamp": f"{day}T12:00:00Z"}]},
        )
        assert status == 200, out
    wait_logged(lake, since, set(ids))


def materialize_endpoint(ctx, instance):
    """The endpoint asset with the aws profile's resources, read from the environment now."""
    import dagster as dg

    from mlops_assets.endpoints import build

    r = ctx["resources"]
    result = dg.materialize(
        build(ctx["spec"]),
        instance=instance,
        resources={k: r[k] for k in ("deployer", "mlflow", "lake")},
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    mat = result.asset_materializations_for_node(f"{SPEC}__endpoint")[0].metadata
    checks = result.get_asset_check_evaluations()  # none outside a canary: the canary check is skipped
    return {k: v.value for k, v in mat.items()}, checks[0] if checks else None


def test_the_container_environment_is_the_aws_profile(remote):
    """The server got the profile from the rendered environment alone: MLOPS_ENV=aws, the store URIs
    as values, the credential-bearing ones from the Secret."""
    env, served = remote["env"], remote["served_env"]
    assert served["MLOPS_ENV"] == "aws"
    for var in (
        "MLOPS_STORAGE_URI",
        "MLOPS_LANDING_URI",
        "MLFLOW_ARTIFACT_URI",
        "MLFLOW_TRACKING_URI",
        "FEAST_REGISTRY_URI",
        "MLOPS_REDIS",
    ):
        assert served[var] == env[var], var
    assert served["MLFLOW_TRACKING_URI"].startswith("postgresql://") and served["MLOPS_STORAGE_URI"].startswith("s3://")
    assert "MLOPS_IO_BUCKET" not in served and "DAGSTER_PG_PASSWORD" not in served  # the platform's, not the server's


def test_the_server_logs_its_predictions_to_s3(remote):
    """Predictions answered by the server land as parquet objects under the profile's prediction
    store on S3 (``LakeStorage.predictions_root()``), where the canary check reads them."""
    from mlops_assets.prediction_store import REQUESTS

    lake = remote["resources"]["lake"]
    root = lake.predictions_root()
    assert root.startswith(remote["env"]["MLOPS_STORAGE_URI"] + "/") and root.startswith("s3://aws-lake/")
    since = pd.Timestamp.now(tz="UTC")
    rows = instances(remote["rows"].iloc[4000:4010])
    ids = [f"s3-log-{i}" for i in range(len(rows))]
    status, out = Client(remote["port"]).call(
        "POST", f"/v1/models/{SPEC}:predict", {"instances": [{**r, "event_id": ids[i]} for i, r in enumerate(rows)]}
    )
    assert status == 200 and out["model_version"] == remote["versions"][0], out
    served = wait_logged(lake, since, set(ids))
    assert list(served["event_id"]) == ids and list(served["score"]) == pytest.approx(out["scores"])
    requests = wait_logged(lake, since, {out["request_id"]}, table=REQUESTS, column="request_id")
    assert requests.set_index("request_id").loc[out["request_id"], "rows"] == len(rows)
    keys = s3_keys(remote["s3"], root)
    assert any(k.startswith(f"platform/lake/served/{SPEC}/") and k.endswith(".parquet") for k in keys), keys[:10]
    assert any(k.startswith(f"platform/lake/requests/{SPEC}/") and k.endswith(".parquet") for k in keys), keys[:10]
    # and nothing in the container's home: the log is not written inside the image
    assert not list((remote["log"].parent / "container").rglob("*.parquet"))


def test_the_endpoint_canaries_the_remote_server_rolls_back_and_promotes(remote):
    import dagster as dg

    from mlops_assets import files
    from mlops_assets.endpoint_state import EndpointState

    ctx, client = remote, remote["client"]
    v1, v2, v3 = ctx["versions"]
    lake = ctx["resources"]["lake"]
    port = ctx["port"]
    today = datetime.now(UTC).date()
    t0 = time.monotonic()
    with dg.instance_for_test() as instance:
        meta, check = materialize_endpoint(ctx, instance)  # the server answers already: hot-swapped, not started
        assert meta["action"] == "deploy" and meta["stable_version"] == int(v1) and check is None, meta
        assert meta["applied"] == "hot-swapped (no restart)", meta
        assert not (Path(ctx["resources"]["deployer"].local_run_dir(SPEC)) / "server.pid").exists()  # nothing started here

        # a bad model passed the gate: canary, judged from the log on S3, rolled back
        client.set_registered_model_alias(SPEC, "champion", v2)
        meta, check = materialize_endpoint(ctx, instance)
        assert meta["action"] == "canary_started" and meta["canary_version"] == int(v2) and meta["canary_percent"] == 50
        assert Client(port).call("GET", "/readyz")[1]["canary"] == v2
        # rows just after v1 and v3 were fitted: v1 ~0.74 accurate, shuffled v2 ~0.52, v3 ~0.82
        send_labelled(ctx, ctx["rows"].iloc[2688:3288], (today - timedelta(days=1)).isoformat())
        meta, check = materialize_endpoint(ctx, instance)
        assert meta["action"] == "rolled_back", meta
        assert not check.passed and "accuracy" in check.description, check.description
        assert str(client.get_model_version_by_alias(SPEC, "champion").version) == v1  # batch scoring returns too
        assert client.get_model_version(SPEC, v2).tags["mlops.canary"] == "rolled_back"
        served = Client(port).call("GET", "/readyz")[1]
        assert (served["stable"], served["canary"]) == (v1, None)

        # a good model: canary, promoted
        client.set_registered_model_alias(SPEC, "champion", v3)
        meta, _ = materialize_endpoint(ctx, instance)
        assert meta["action"] == "canary_started" and meta["canary_version"] == int(v3)
        send_labelled(ctx, ctx["rows"].iloc[2688:3288], today.isoformat())
        meta, check = materialize_endpoint(ctx, instance)
        assert meta["action"] == "promoted" and meta["stable_version"] == int(v3) and check.passed, meta
        assert client.get_model_version(SPEC, v3).tags["mlops.canary"] == "promoted"
        served = Client(port).call("GET", "/readyz")[1]
        assert (served["stable"], served["canary"]) == (v3, None)
    canary_s = time.monotonic() - t0

    # the audit history and the deployment live on S3, beside the lake
    folder = lake.endpoint_dir(SPEC)
    assert folder.startswith("s3://aws-lake/")
    history = EndpointState(folder).history(decisions_only=True)  # the endpoint asset's decisions
    assert [e["action"] for e in history] == ["deploy", "canary_started", "rolled_back", "canary_started", "promoted"]
    assert [(e["stable"], e["canary"]) for e in history] == [(v1, None), (v1, v2), (v1, None), (v1, v3), (v3, None)]
    assert "accuracy" in history[2]["reason"]
    keys = s3_keys(ctx["s3"], folder)
    # one object per entry: the decisions and the server's own start and swap records
    everything = EndpointState(folder).history()
    assert {e["action"] for e in everything} - {e["action"] for e in history} <= {"server_start", "server_swap"}
    assert sum(k.startswith(f"platform/endpoints/{SPEC}/history/") for k in keys) == len(everything) > 5, keys
    assert json.loads(files.read_text(files.join(folder, "deployment.json")))["stable"] == v3
    assert {"rolled_back", "promoted"} <= {r.data["action"] for r in meta["history"].records}
    print(f"\nremote canary timings: {ctx['timings']} canary rounds {canary_s:.1f} s")
