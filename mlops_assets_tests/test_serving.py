"""The model server as a real process on 127.0.0.1, and the endpoint asset that deploys to it.

Models are real: Elec2 pipelines fitted on real rows, logged with skops and registered in a real
MLflow SQLite registry. The server is ``mlops serve`` in its own process; requests go over HTTP.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_assets_tests.conftest import DATA_DIR, free_port, stop_process_group

FEATURES = ["day", "period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"]


def elec2_rows() -> pd.DataFrame:
    df = pd.read_csv(DATA_DIR / "elec2" / "elec2_with_timestamp.csv")
    df["day"] = df["day"].astype(str)
    df["label"] = (df["class"] == "UP").astype(int)
    return df


def register(spec, tracking_uri: str, frame: pd.DataFrame, *, shuffle_labels: bool = False) -> str:
    """Fit the spec's pipeline on ``frame`` and register it the way the model asset does (skops)."""
    import mlflow

    from mlops_assets.core.training import feature_frame, fit
    from mlops_assets.resources.mlflow import log_pipeline

    if shuffle_labels:  # a model that learned nothing real: what a bad release looks like
        frame = frame.assign(label=np.random.default_rng(1).permutation(frame["label"].to_numpy()))
    model = fit(spec, frame)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # earlier tests may have pointed the registry elsewhere
    if mlflow.get_experiment_by_name(spec.name) is None:  # artifacts in the test's home, not ./mlruns
        mlflow.create_experiment(
            spec.name, artifact_location=(Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        )
    mlflow.set_experiment(spec.name)
    with mlflow.start_run():
        info = log_pipeline(model, spec.name, feature_frame(frame.head(3), spec))
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, elec2_spec):
    """A home whose MLflow registry holds elec2 v1 (good), v2 (shuffled labels) and v3 (good)."""
    from mlflow import MlflowClient

    from mlops_assets.specs import DeploymentSpec

    home = tmp_path_factory.mktemp("serving_home")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    rows = elec2_rows()
    spec = elec2_spec.model_copy(update={"deployment": DeploymentSpec(port=free_port())})
    spec_file = home / "elec2.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True)))
    versions = [
        register(spec, tracking_uri, rows.iloc[:1344]),
        register(spec, tracking_uri, rows.iloc[:1344], shuffle_labels=True),
        register(spec, tracking_uri, rows.iloc[1344:2688]),
    ]
    assert versions == ["1", "2", "3"]
    MlflowClient(tracking_uri).set_registered_model_alias(spec.name, "champion", "1")
    return {"home": home, "tracking_uri": tracking_uri, "spec": spec, "spec_file": spec_file, "rows": rows}


class Client:
    """Keep-alive HTTP client of one server (what a real caller would use)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: bytes | str | dict | None = None, headers=None) -> tuple[int, dict | str]:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        self.conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode()


@pytest.fixture(scope="module")
def server(registry):
    """``mlops serve`` in its own process group, serving the champion (v1). Its home (lake, endpoint
    state, admin token) is its own: the swaps it records stay out of the endpoint asset's tests."""
    spec = registry["spec"]
    port = spec.deployment.port
    home = registry["home"] / "served"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "MLOPS_HOME": str(home), "MLFLOW_TRACKING_URI": registry["tracking_uri"]}
    cmd = [sys.executable, "-m", "mlops_assets.cli", "serve", "--spec", str(registry["spec_file"]), "--port", str(port)]
    log = home / "server.log"
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if Client(port).call("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("the server did not become ready")
        yield {**registry, "port": port, "proc": proc, "log": log, "home": home, "admin": admin_headers(home)}
    finally:
        stop_process_group(proc)


def admin_headers(home: Path) -> dict[str, str]:
    """What the deployment route needs: the home's admin token (the one ``mlops serve`` generated or
    found in ``<home>/secrets``), as a bearer token."""
    from mlops_assets.environments import admin_token

    return {"Content-Type": "application/json", "Authorization": f"Bearer {admin_token(home)}"}


def instances(rows: pd.DataFrame) -> list[dict]:
    out = rows[FEATURES].to_dict(orient="records")
    for r in out:
        r["day"] = int(r["day"])  # Elec2's day arrives as a number; the server takes it as the category
    return out


def test_predictions_match_the_registered_model(server):
    """One row and a batch, as rows and as columns: the exact probabilities of the registered model."""
    import mlflow.sklearn

    from mlops_assets.core.training import feature_frame

    spec, rows = server["spec"], server["rows"].iloc[5000:5300]
    mlflow.set_tracking_uri(server["tracking_uri"])
    mlflow.set_registry_uri(server["tracking_uri"])
    expected = mlflow.sklearn.load_model("models:/elec2/1").predict_proba(feature_frame(rows, spec))[:, 1]
    c = Client(server["port"])
    status, one = c.call("POST", "/v1/models/elec2:predict", {"instances": instances(rows.head(1))})
    assert status == 200 and one["model_version"] == "1" and one["variant"] == "stable"
    assert one["scores"] == pytest.approx(expected[:1], abs=1e-12)
    status, batch = c.call("POST", "/v1/models/elec2:predict", {"instances": instances(rows)})
    assert status == 200, (batch, server["log"].read_text()[-3000:])
    np.testing.assert_allclose(batch["scores"], expected, rtol=0, atol=1e-12)
    assert batch["predictions"] == [int(s >= 0.5) for s in expected]
    columns = {f: [r[f] for r in instances(rows)] for f in FEATURES}
    status, col = c.call("POST", "/v1/models/elec2:predict", {"inputs": columns})
    assert status == 200 and col["scores"] == batch["scores"]
    assert "unknown_entities" not in batch  # Elec2 has no entities to look up


@pytest.mark.parametrize(
    ("body", "status", "loc"),
    [
        ("{not json", 400, None),
        ({"instances": []}, 422, ["instances"]),
        ({"rows": [{}]}, 422, ["body"]),
        ({"instances": [{"period": 0.5}]}, 422, ["instances", 0, "day"]),
        ({"instances": [{**dict.fromkeys(FEATURES, 0.1), "day": 2, "nswprice": "cheap"}]}, 422, ["instances", 0, "nswprice"]),
        ({"instances": [{**dict.fromkeys(FEATURES, 0.1), "day": 2, "colour": "red"}]}, 422, ["instances", 0, "colour"]),
        ({"instances": [{**dict.fromkeys(FEATURES, 0.1), "day": True}]}, 422, ["instances", 0, "day"]),
        ({"inputs": {**{f: [0.1, 0.2] for f in FEATURES}, "day": [1]}}, 422, ["inputs"]),
        ({"instances": [{**dict.fromkeys(FEATURES, 0.1), "day": 2, "event_timestamp": "yesterday"}]}, 422, None),
        ({"instances": [{**dict.fromkeys(FEATURES, 0.1), "day": 2}] * 10_001}, 413, ["instances"]),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(server, body, status, loc):
    got, out = Client(server["port"]).call("POST", "/v1/models/elec2:predict", body)
    assert got == status, out
    if loc is not None:
        assert loc in [e["loc"] for e in out["detail"]], out


def test_wrong_model_method_and_garbage_never_give_500(server):
    c = Client(server["port"])
    assert c.call("POST", "/v1/models/bike_sharing:predict", {"instances": [{}]})[0] == 404
    assert c.call("GET", "/v1/models/elec2:predict")[0] == 405
    rng = random.Random(0)
    junk = [None, 1, "x", [], {}, {"instances": None}, {"instances": [None]}, {"inputs": []}, {"inputs": {"day": "1"}}]
    values = [None, "a", 1e308, -1, [], {}, True, 2**70]
    junk += [{"instances": [{f: rng.choice(values) for f in FEATURES}]} for _ in range(40)]
    junk += [{"inputs": {f: [rng.choice(values)] for f in FEATURES}} for _ in range(40)]
    codes = {c.call("POST", "/v1/models/elec2:predict", j)[0] for j in junk}
    assert codes and max(codes) < 500, codes


def test_health_readiness_and_prometheus_metrics(server):
    c = Client(server["port"])
    status, health = c.call("GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["model"] == "elec2"
    assert health["pid"] == server["proc"].pid and health["identity"]["registry"] == server["tracking_uri"]
    status, ready = c.call("GET", "/readyz")
    assert status == 200 and ready["ready"] and ready["stable"] == "1"
    c.call("POST", "/v1/models/elec2:predict", {"instances": instances(server["rows"].iloc[:50])})
    status, text = c.call("GET", "/metrics")
    assert status == 200
    assert 'mlops_requests_total{code="200",model="elec2",variant="stable",version="1"}' in text
    assert 'mlops_request_latency_seconds_bucket{le="0.01",model="elec2",variant="stable"}' in text
    assert 'mlops_predictions_total{model="elec2",predicted_class="1",version="1"}' in text
    assert 'mlops_served_model_version{model="elec2",variant="stable"} 1.0' in text


def test_every_prediction_is_logged_to_the_prediction_store(server):
    from mlops_assets.prediction_store import REQUESTS, SERVED, read_since

    since = pd.Timestamp.now(tz="UTC")
    rows = instances(server["rows"].iloc[:7])
    for i, r in enumerate(rows):
        r["event_id"] = f"evt-{i}"
    status, out = Client(server["port"]).call("POST", "/v1/models/elec2:predict", {"instances": rows})
    assert status == 200
    time.sleep(2.5)  # the log is written by a background thread every second
    from mlops_assets.resources import LakeStorage

    store = LakeStorage(root=str(server["home"])).predictions_root()
    served = read_since(store, SERVED, "elec2", since)
    mine = served[served["request_id"] == out["request_id"]]
    assert list(mine["event_id"]) == [f"evt-{i}" for i in range(7)]
    assert list(mine["score"]) == pytest.approx(out["scores"])
    assert set(mine["model_version"]) == {1}
    assert mine["feature.nswprice"].tolist() == [r["nswprice"] for r in rows]
    requests = read_since(store, REQUESTS, "elec2", since)
    assert requests.set_index("request_id").loc[out["request_id"], "rows"] == 7


def test_version_swap_under_load_fails_no_request(server):
    """Four clients keep predicting while the deployment moves v1 -> v3 -> v3 + canary v1 -> v1."""
    port, stop = server["port"], threading.Event()
    payload = json.dumps({"instances": instances(server["rows"].iloc[:20])})
    seen: list[tuple[int, str]] = []

    def hammer() -> None:
        c = Client(port)
        while not stop.is_set():
            status, out = c.call("POST", "/v1/models/elec2:predict", payload)
            seen.append((status, out.get("model_version") if isinstance(out, dict) else None))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    admin = Client(port)
    steps = [{"stable": "3"}, {"stable": "3", "canary": "1", "canary_percent": 50}, {"stable": "1"}]
    try:
        time.sleep(0.5)
        for step in steps:
            before = len(seen)
            status, out = admin.call("PUT", "/v1/models/elec2/deployment", step, server["admin"])
            assert status == 200, out
            time.sleep(1.0)
            assert len(seen) > before  # traffic kept flowing across the swap
    finally:
        stop.set()
        for t in threads:
            t.join()
    codes = {s for s, _ in seen}
    assert codes == {200}, f"{len(seen)} requests, statuses {codes}"
    assert {"1", "3"} <= {v for _, v in seen}
    assert len(seen) > 100
    assert admin.call("PUT", "/v1/models/elec2/deployment", {"stable": "99"}, server["admin"])[0] == 409  # unknown: refused...
    assert admin.call("GET", "/readyz")[1]["stable"] == "1"  # ...and the served one stays


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_concurrent_requests_are_scored_together_each_with_its_own_answer(server):
    """16 clients send at once (rows of 1 to 4, as rows or columns, some with event ids): requests
    that queue together share a model call, and each answer holds exactly its own rows' scores."""
    import mlflow.sklearn

    from mlops_assets.core.training import feature_frame

    spec, rows = server["spec"], server["rows"].iloc[6000:6200].reset_index(drop=True)
    mlflow.set_tracking_uri(server["tracking_uri"])
    mlflow.set_registry_uri(server["tracking_uri"])
    expected = mlflow.sklearn.load_model("models:/elec2/1").predict_proba(feature_frame(rows, spec))[:, 1]
    port, clients = server["port"], 16
    metrics_before = Client(port).call("GET", "/metrics")[1]

    def body(k: int) -> tuple[dict, slice]:
        lo = (k * 7) % 150
        part = slice(lo, lo + 1 + k % 4)
        inst = instances(rows.iloc[part])
        if k % 3 == 0:
            for j, r in enumerate(inst):
                r["event_id"] = f"c{k}-{j}"
        if k % 2:
            return {"inputs": {f: [r[f] for r in inst] for f in inst[0]}}, part
        return {"instances": inst}, part

    results: dict[int, list] = {}

    def client(k: int, barrier: threading.Barrier) -> None:
        c, (payload, part) = Client(port), body(k)
        barrier.wait()
        results[k] = [c.call("POST", "/v1/models/elec2:predict", payload), part]

    for round_ in range(10):
        barrier = threading.Barrier(clients)
        threads = [threading.Thread(target=client, args=(round_ * clients + k, barrier)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        metrics = Client(port).call("GET", "/metrics")[1]
        calls = _metric_sum(metrics, "mlops_batch_requests_count") - _metric_sum(metrics_before, "mlops_batch_requests_count")
        answered = _metric_sum(metrics, "mlops_batch_requests_sum") - _metric_sum(metrics_before, "mlops_batch_requests_sum")
        if round_ >= 2 and answered > calls:
            break
    assert answered > calls, f"{answered} requests in {calls} model calls: never batched"
    for (status, out), part in results.values():
        assert status == 200, out
        np.testing.assert_allclose(out["scores"], expected[part], rtol=0, atol=1e-12)
    assert len({out["request_id"] for (_, out), _ in results.values()}) == len(results)


def test_a_request_the_model_cannot_score_fails_alone(registry):
    """When a merged model call fails, each request is retried alone: only the one that breaks the
    model gets its 500, with the batch's other requests answered 200 and unchanged."""
    import mlflow.sklearn

    from mlops_assets.core.rollout import Deployment
    from mlops_assets.server.app import ModelServer, Pending

    mlflow.set_tracking_uri(registry["tracking_uri"])
    mlflow.set_registry_uri(registry["tracking_uri"])
    model = mlflow.sklearn.load_model("models:/elec2/1")
    server = ModelServer(registry["spec"], lambda v: model, initial=Deployment(stable="1"))
    server.load_initial()
    predictor = server.serving.models["1"]
    real_scores = predictor.scores

    def fragile_scores(columns):  # a model that breaks on one input value
        if (np.asarray(columns["nswprice"]) == 0.12345).any():
            raise FloatingPointError("cannot score nswprice 0.12345")
        return real_scores(columns)

    rows = registry["rows"].iloc[:9]
    payloads = [{"instances": instances(rows.iloc[i : i + 3])} for i in (0, 3, 6)]
    alone = [server.predict(p)[1]["scores"] for p in payloads]
    payloads[1]["instances"][0]["nswprice"] = 0.12345  # within checks.ranges: the parser admits it
    admitted = [server.admit(p) for p in payloads]
    assert all(isinstance(a, Pending) for a in admitted)
    predictor.scores = fragile_scores
    answers = server.predict_batch(admitted)
    assert [status for status, _ in answers] == [200, 500, 200]
    assert answers[1][1]["error"] == "prediction failed"
    np.testing.assert_allclose(answers[0][1]["scores"], alone[0], rtol=0, atol=0)
    np.testing.assert_allclose(answers[2][1]["scores"], alone[2], rtol=0, atol=0)


def test_a_bounded_load_gets_no_5xx(server):
    """30 s budget: 8 concurrent clients, 800 single-row requests."""
    port, statuses, lock = server["port"], [], threading.Lock()
    payloads = [json.dumps({"instances": instances(server["rows"].iloc[i : i + 1])}) for i in range(100)]

    def client() -> None:
        c = Client(port)
        got = [c.call("POST", "/v1/models/elec2:predict", p)[0] for p in payloads]
        with lock:
            statuses.extend(got)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert time.monotonic() - t0 < 30
    assert len(statuses) == 800 and set(statuses) == {200}


# --- the endpoint asset on the local target ------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint_home(registry, tmp_path_factory):
    """The endpoint asset of the Elec2 spec with a fast canary (1 % of an hour... of a minute), its
    partitions open-ended: the labelled requests are today's and yesterday's events, which a server of
    the 1996-1998 series refuses as outside its horizon (deployment.event_time_margin_days)."""
    from mlops_assets.specs import CanarySpec, DeploymentSpec

    spec = registry["spec"].model_copy(
        update={
            "partitions": registry["spec"].partitions.model_copy(update={"end": None}),
            "deployment": DeploymentSpec(
                port=free_port(),
                canary=CanarySpec(
                    traffic_percent=50, window_minutes=0.01, min_requests=20, min_labelled=100, max_metric_drop=0.05
                ),
            ),
        }
    )
    home = registry["home"]
    yield {"spec": spec, "home": home, "tracking_uri": registry["tracking_uri"], "rows": registry["rows"]}
    from mlops_assets.resources import EndpointDeployer, LakeStorage
    from mlops_assets.rollout.local import LocalTarget

    run_dir = EndpointDeployer(home=str(home)).local_run_dir(spec.name)
    LocalTarget(spec, LakeStorage(root=str(home)), registry["tracking_uri"], run_dir).stop()


def materialize_endpoint(ctx, instance):
    import dagster as dg

    from mlops_assets.endpoints import build
    from mlops_assets.resources import EndpointDeployer, LakeStorage, MlflowTracking

    home = str(ctx["home"])
    result = dg.materialize(
        build(ctx["spec"]),
        instance=instance,
        resources={
            "deployer": EndpointDeployer(home=home),
            "mlflow": MlflowTracking(tracking_uri=ctx["tracking_uri"]),
            "lake": LakeStorage(root=home),
        },
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    mat = result.asset_materializations_for_node("elec2__endpoint")[0].metadata
    checks = result.get_asset_check_evaluations()  # none outside a canary: the canary check is skipped
    return {k: v.value for k, v in mat.items()}, checks[0] if checks else None


def canary_sensor_requests(ctx, instance) -> list:
    import dagster as dg

    from mlops_assets.endpoints import canary_sensor
    from mlops_assets.resources import EndpointDeployer, LakeStorage

    sensor = canary_sensor(ctx["spec"], dg.define_asset_job("deploy_elec2"))
    home = str(ctx["home"])
    context = dg.build_sensor_context(
        instance=instance, resources={"deployer": EndpointDeployer(home=home), "lake": LakeStorage(root=home)}
    )
    result = sensor.evaluate_tick(context)
    return result.run_requests or []


def send_labelled(ctx, rows: pd.DataFrame, day: str) -> None:
    """Requests carrying event ids, and those events' labels in the lake (as ingest writes them)."""
    from mlops_assets.resources import LakeStorage

    lake = LakeStorage(root=str(ctx["home"]))
    ids = [f"{day}-{i:06d}" for i in range(len(rows))]
    lake.write(pd.DataFrame({"event_id": ids, "label": rows["label"].to_numpy()}), lake.partition_path("dataset", "elec2", day))
    c = Client(ctx["spec"].deployment.port)
    for i, r in enumerate(instances(rows)):
        status, _ = c.call(
            "POST", "/v1/models/elec2:predict", {"instances": [{**r, "event_id": ids[i], "event_timestamp": f"{day}T12:00:00Z"}]}
        )
        assert status == 200
    time.sleep(2.5)  # the prediction log's flush


def test_endpoint_deploys_canaries_rolls_back_and_promotes(endpoint_home):
    import dagster as dg
    from mlflow import MlflowClient

    from mlops_assets.endpoint_state import EndpointState

    ctx, client = endpoint_home, MlflowClient(endpoint_home["tracking_uri"])
    client.set_registered_model_alias("elec2", "champion", "1")
    today = datetime.now(UTC).date()
    with dg.instance_for_test() as instance:
        meta, check = materialize_endpoint(ctx, instance)  # no server yet: the asset starts one
        assert meta["action"] == "deploy" and meta["stable_version"] == 1
        # no canary to judge: the canary check yields no result (skipped, not passed) and says why
        assert check is None and meta["not_judged_canary"].startswith("no canary to judge (deploy")
        assert Client(ctx["spec"].deployment.port).call("GET", "/readyz")[1]["stable"] == "1"

        client.set_registered_model_alias("elec2", "champion", "2")  # the gate let a bad model through
        meta, check = materialize_endpoint(ctx, instance)
        assert meta["action"] == "canary_started" and meta["canary_version"] == 2 and meta["canary_percent"] == 50
        assert check is None  # the canary has only started: nothing judged yet
        # rows just after v1 and v3 were fitted: v1 0.74 accurate, shuffled v2 0.52, v3 0.82
        send_labelled(ctx, ctx["rows"].iloc[2688:3288], (today - timedelta(days=1)).isoformat())
        assert canary_sensor_requests(ctx, instance)  # the sensor sees the canary is due
        meta, check = materialize_endpoint(ctx, instance)
        assert meta["action"] == "rolled_back", meta
        assert not check.passed and "accuracy" in check.description
        assert str(client.get_model_version_by_alias("elec2", "champion").version) == "1"  # batch scoring too
        assert client.get_model_version("elec2", "2").tags["mlops.canary"] == "rolled_back"
        served = Client(ctx["spec"].deployment.port).call("GET", "/readyz")[1]
        assert (served["stable"], served["canary"]) == ("1", None)

        client.set_registered_model_alias("elec2", "champion", "3")  # a good new model
        meta, _ = materialize_endpoint(ctx, instance)
        assert meta["action"] == "canary_started" and meta["canary_version"] == 3
        assert not canary_sensor_requests(ctx, instance)  # no request on the canary yet: nothing is due
        send_labelled(ctx, ctx["rows"].iloc[2688:3288], today.isoformat())
        meta, check = materialize_endpoint(ctx, instance)
        assert meta["action"] == "promoted" and meta["stable_version"] == 3 and check.passed, meta
        assert client.get_model_version("elec2", "3").tags["mlops.canary"] == "promoted"

    from mlops_assets.resources import LakeStorage

    history = EndpointState(LakeStorage(root=str(ctx["home"])).endpoint_dir("elec2")).history(decisions_only=True)
    assert [e["action"] for e in history] == ["deploy", "canary_started", "rolled_back", "canary_started", "promoted"]
    decisions = [(r.data["action"], r.data["stable"]) for r in meta["history"].records]  # a native table
    assert ("rolled_back", "1") in decisions and ("promoted", "3") in decisions


def test_endpoint_decisions_live_on_dagsters_clock(endpoint_home):
    """A replay freezes Dagster's clock at each simulated moment (compat.dagster_now reads it): the
    endpoint's decisions take that time, when a canary started and the audit entry, not the
    wall clock, so a canary can be judged on the replay's days like every other decision."""
    import dagster as dg
    from dagster._core.test_utils import freeze_time
    from mlflow import MlflowClient

    from mlops_assets.compat import dagster_now
    from mlops_assets.endpoint_state import EndpointState
    from mlops_assets.resources import LakeStorage

    simulated = datetime(1997, 3, 4, 0, 35, tzinfo=UTC)
    with freeze_time(simulated):
        assert dagster_now() == simulated
    assert abs((dagster_now() - datetime.now(UTC)).total_seconds()) < 60

    ctx, client = endpoint_home, MlflowClient(endpoint_home["tracking_uri"])
    state = EndpointState(LakeStorage(root=str(ctx["home"])).endpoint_dir("elec2"))
    with dg.instance_for_test() as instance:
        client.set_registered_model_alias("elec2", "champion", "3")
        materialize_endpoint(ctx, instance)  # version 3 serves (deployed, or already serving)
        assert state.load().stable == "3" and state.load().canary is None
        client.set_registered_model_alias("elec2", "champion", "1")
        with freeze_time(simulated):
            meta, _ = materialize_endpoint(ctx, instance)
    assert meta["action"] == "canary_started" and meta["canary_version"] == 1
    assert datetime.fromisoformat(state.load().canary_started) == simulated
    assert datetime.fromisoformat(state.history(decisions_only=True)[-1]["time"]) == simulated


def test_the_gate_never_promotes_a_version_its_canary_rolled_back(registry):
    """v2 carries the rollback tag: the gate keeps v1 although it is asked to judge v2 again."""
    import dagster as dg
    from mlflow import MlflowClient

    from mlops_assets import promotion
    from mlops_assets.resources import LakeStorage, MlflowTracking
    from mlops_assets.training import training_set_paths

    spec, home, client = registry["spec"], registry["home"], MlflowClient(registry["tracking_uri"])
    client.set_registered_model_alias("elec2", "champion", "1")
    client.set_registered_model_alias("elec2", "challenger", "2")
    client.set_model_version_tag("elec2", "2", "mlops.canary", "rolled_back")
    lake = LakeStorage(root=str(home))
    train_path, holdout_path, _ = training_set_paths(lake, spec)
    lake.write(registry["rows"].iloc[:1000], train_path)
    lake.write(registry["rows"].iloc[1000:1200], holdout_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            promotion.build(spec),
            instance=instance,
            resources={"lake": lake, "mlflow": MlflowTracking(tracking_uri=registry["tracking_uri"])},
        )
    meta = result.asset_materializations_for_node("elec2__champion")[0].metadata
    assert meta["decision"].value == "kept champion" and "rolled back by its canary" in meta["reason"].value
    assert str(client.get_model_version_by_alias("elec2", "champion").version) == "1"


def test_sagemaker_endpoint_from_the_registry_on_moto(registry, monkeypatch):
    """The endpoint asset on the sagemaker target: the champion's MLflow model is copied to S3 and a
    SageMaker endpoint serves it, against moto's server on 127.0.0.1."""
    import boto3
    import dagster as dg
    from mlflow import MlflowClient
    from moto.server import ThreadedMotoServer

    from mlops_assets.endpoints import build
    from mlops_assets.resources import EndpointDeployer, LakeStorage, MlflowTracking
    from mlops_assets.specs import DeploymentSpec, SageMakerTargetSpec

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    spec = registry["spec"].model_copy(
        update={"deployment": DeploymentSpec(target="sagemaker", sagemaker=SageMakerTargetSpec(model_data_prefix="s3://models"))}
    )
    MlflowClient(registry["tracking_uri"]).set_registered_model_alias("elec2", "champion", "3")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="models")
        home = registry["home"] / "sagemaker_state"
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                build(spec),
                instance=instance,
                resources={
                    "deployer": EndpointDeployer(home=str(home), aws_endpoint_url=url),
                    "mlflow": MlflowTracking(tracking_uri=registry["tracking_uri"]),
                    "lake": LakeStorage(root=str(home)),
                },
            )
        meta = result.asset_materializations_for_node("elec2__endpoint")[0].metadata
        assert meta["action"].value == "deploy" and meta["stable_version"].value == 3
        sm = boto3.client("sagemaker", endpoint_url=url)
        endpoint = sm.describe_endpoint(EndpointName="elec2")
        assert endpoint["EndpointStatus"] == "InService"
        model = sm.describe_model(ModelName="elec2-v3")
        key = model["PrimaryContainer"]["ModelDataUrl"].removeprefix("s3://models/")
        assert boto3.client("s3", endpoint_url=url).head_object(Bucket="models", Key=key)["ContentLength"] > 1000
    finally:
        moto.stop()


def test_a_sagemaker_container_serves_its_unpacked_model(registry, monkeypatch, tmp_path):
    """What a SageMaker variant runs: the model from /opt/ml/model (here a folder), not the registry,
    answering /ping and /invocations."""
    import mlflow
    from starlette.testclient import TestClient

    from mlops_assets.environments import server_stores
    from mlops_assets.server import build_server
    from mlops_assets.server.http import create_app

    mlflow.set_tracking_uri(registry["tracking_uri"])
    mlflow.set_registry_uri(registry["tracking_uri"])
    model_dir = mlflow.artifacts.download_artifacts(artifact_uri="models:/elec2/3", dst_path=str(tmp_path))
    monkeypatch.setenv("MLOPS_MODEL_DIR", model_dir)
    monkeypatch.setenv("MLOPS_DEPLOYMENT", json.dumps({"stable": "3"}))
    from mlops_assets.resources import FeastFeatureStore, LakeStorage, MlflowTracking

    feast = FeastFeatureStore(registry=str(tmp_path / "registry.db"), online_store_path=str(tmp_path / "online.db"))
    lake, registry_client = LakeStorage(root=str(tmp_path)), MlflowTracking(tracking_uri="sqlite:///nowhere.db")
    server = build_server(
        registry["spec"],
        server_stores({"lake": lake, "feast": feast, "mlflow": registry_client}, registry["spec"]),
        log_predictions=False,
    )
    with TestClient(create_app(server, admin_token="sagemaker-test-token")) as c:
        assert c.get("/ping").json()["stable"] == "3"
        out = c.post("/invocations", json={"instances": instances(registry["rows"].iloc[:3])}).json()
    assert out["model_version"] == "3" and len(out["scores"]) == 3
