"""The model server against careless and hostile clients: deployments that cannot serve, the admin
route's token, API keys, oversized and malformed bodies, and what the server says about itself.

The models are real (Elec2 pipelines registered in a real MLflow registry, one of them fitted on a
column the requests do not have: it loads, but cannot score what the server gives it), the stores
are real folders, and the server runs under uvicorn on 127.0.0.1 in this process, so requests go
over real HTTP (bodies with and without ``Content-Length``, read chunk by chunk).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import socket
import threading
import time
from pathlib import Path

import pytest

from mlops_assets_tests.conftest import free_port
from mlops_assets_tests.test_serving import FEATURES, elec2_rows, instances, register

TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="module")
def models(tmp_path_factory, elec2_spec):
    """elec2 v1 (good, the champion), v2 (fitted on a column named ``nsw_price``: loads, cannot
    score the server's ``nswprice`` input) and v3 (good) in a real MLflow registry."""
    from mlflow import MlflowClient

    from mlops_assets.specs import DeploymentSpec, ModelSpec

    home = tmp_path_factory.mktemp("hardening")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    rows = elec2_rows()
    spec = elec2_spec.model_copy(update={"deployment": DeploymentSpec(port=free_port(), max_body_mb=1)})
    renamed = ModelSpec.model_validate(
        json.loads(json.dumps(spec.model_dump(mode="json", by_alias=True)).replace('"nswprice"', '"nsw_price"'))
    )
    versions = [
        register(spec, tracking_uri, rows.iloc[:1344]),
        register(renamed, tracking_uri, rows.iloc[:1344].rename(columns={"nswprice": "nsw_price"})),
        register(spec, tracking_uri, rows.iloc[1344:2688]),
    ]
    assert versions == ["1", "2", "3"]
    MlflowClient(tracking_uri).set_registered_model_alias(spec.name, "champion", "1")
    return {"home": home, "tracking_uri": tracking_uri, "spec": spec, "rows": rows}


def stores_in(folder: Path, tracking_uri: str):
    from mlops_assets.server import ServerStores

    return ServerStores(
        predictions_root=str(folder / "lake"), endpoint_dir=str(folder / "endpoints" / "elec2"), tracking_uri=tracking_uri
    )


@contextlib.contextmanager
def live(app):
    """The app under uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def call(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, dict | str, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    except (BrokenPipeError, ConnectionResetError):
        pass  # a body over the limit is answered 413 from its headers and the connection closed: read that answer
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data), dict(resp.getheaders())
    except ValueError:
        return resp.status, data.decode(), dict(resp.getheaders())


ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PREDICT = "/v1/models/elec2:predict"
DEPLOY = "/v1/models/elec2/deployment"


@pytest.fixture
def served(models, tmp_path):
    """A server of the champion on fresh stores (its own endpoint state and prediction log)."""
    from mlops_assets.server import build_server
    from mlops_assets.server.http import create_app

    stores = stores_in(tmp_path, models["tracking_uri"])
    server = build_server(models["spec"], stores)
    with live(create_app(server, admin_token=TOKEN)) as port:
        yield {"port": port, "server": server, "stores": stores, **models}


def test_a_deployment_that_cannot_score_changes_nothing(served):
    """v2 loads but cannot score, v99 does not exist: both answered 409 saying why, and the
    server keeps serving v1 (ready, predicting, nothing recorded, deployment.json unchanged)."""
    from mlops_assets.endpoint_state import EndpointState

    port, state = served["port"], EndpointState(served["stores"].endpoint_dir)
    payload = {"instances": instances(served["rows"].iloc[:5])}
    before = call(port, "POST", PREDICT, payload)[1]["scores"]
    cases = [
        ({"stable": "2"}, "version 2 cannot score"),
        ({"stable": "1", "canary": "2", "canary_percent": 50}, "version 2 cannot score"),
        ({"stable": "99"}, "version 99 cannot be loaded"),
    ]
    for body, why in cases:
        status, out, _ = call(port, "PUT", DEPLOY, body, ADMIN)
        assert status == 409 and out["error"] == "deployment failed" and why in out["detail"], out
        status, ready, _ = call(port, "GET", "/readyz")
        assert status == 200 and (ready["stable"], ready["canary"]) == ("1", None), ready
        status, out, _ = call(port, "POST", PREDICT, payload)
        assert status == 200 and out["model_version"] == "1" and out["scores"] == before
    assert [e["action"] for e in state.history()] == ["server_start"]  # no swap recorded
    assert state.load().stable == "1"


def test_admin_route_needs_the_token_and_every_swap_is_recorded_then_served_after_restart(served):
    from mlops_assets.endpoint_state import EndpointState
    from mlops_assets.server import build_server
    from mlops_assets.server.http import create_app

    port, state = served["port"], EndpointState(served["stores"].endpoint_dir)
    step = {"stable": "3", "canary": "1", "canary_percent": 20}
    status, out, headers = call(port, "PUT", DEPLOY, step)
    assert status == 401 and "Bearer" in out["detail"] and headers.get("www-authenticate") == "Bearer"
    assert call(port, "PUT", DEPLOY, step, {"Authorization": f"Basic {TOKEN}"})[0] == 401
    status, out, _ = call(port, "PUT", DEPLOY, step, {"Authorization": "Bearer not-the-token"})
    assert status == 403 and "not-the-token" not in json.dumps(out)
    assert call(port, "GET", "/readyz")[1]["stable"] == "1"  # refused: nothing changed
    assert [e["action"] for e in state.history()] == ["server_start"]

    status, out, _ = call(port, "PUT", DEPLOY, step, ADMIN)
    assert status == 200 and out["deployment"]["stable"] == "3" and out["loaded"] == ["1", "3"], out
    assert call(port, "PUT", DEPLOY, step, ADMIN)[0] == 200  # the same again: no change, no entry
    history = state.history()
    assert [e["action"] for e in history] == ["server_start", "server_swap"]
    swap = history[1]
    assert (swap["stable"], swap["canary"], swap["canary_percent"]) == ("3", "1", 20.0)
    assert swap["previous"]["stable"] == "1" and swap["source"] == "admin route"
    assert swap["client"].startswith("127.0.0.1:") and swap["pid"] == os.getpid()
    assert TOKEN not in json.dumps(history)
    assert state.load().to_json()["stable"] == "3"

    restarted = build_server(served["spec"], served["stores"], log_predictions=False)  # a restart on the same stores
    from starlette.testclient import TestClient

    with TestClient(create_app(restarted, admin_token=TOKEN)) as c:
        ready = c.get("/readyz").json()
        assert (ready["stable"], ready["canary"], ready["canary_percent"]) == ("3", "1", 20.0)
    last = state.history()[-1]
    assert last["action"] == "server_start" and last["source"] == "deployment.json"


def test_create_app_refuses_to_build_without_an_admin_token(served):
    from mlops_assets.server.http import create_app

    for token in (None, ""):
        with pytest.raises(ValueError, match="admin_token"):
            create_app(served["server"], admin_token=token)


def refused_counts(metrics: str) -> dict[str, float]:
    """``mlops_requests_total`` of refused requests (variant "none") by status code. Compared before
    and after, each code refused once before the first reading: once Feast is imported,
    prometheus_client keeps values per process and metric name (its multiprocess mode), so servers
    built in one test process add to the same counters, and a counter's line appears (with the
    process's total so far) only once this server has counted it."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("mlops_requests_total{") and 'variant="none"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            counts[code] = float(line.rsplit(" ", 1)[1])
    return counts


def test_api_keys_protect_predict_and_invocations_when_the_spec_asks(served, monkeypatch):
    from starlette.testclient import TestClient

    from mlops_assets.server import api_keys
    from mlops_assets.server.http import create_app

    spec = served["spec"]
    assert api_keys(spec) is None  # off by default: predictions are open on loopback
    keyed = spec.model_copy(update={"deployment": spec.deployment.model_copy(update={"api_keys": True})})
    monkeypatch.delenv("MLOPS_API_KEYS", raising=False)
    with pytest.raises(ValueError, match="MLOPS_API_KEYS"):
        api_keys(keyed)
    monkeypatch.setenv("MLOPS_API_KEYS", "key-one, key-two")
    keys = api_keys(keyed)
    assert keys == ["key-one", "key-two"]
    payload = {"instances": instances(served["rows"].iloc[:2])}
    with TestClient(create_app(served["server"], admin_token=TOKEN, api_keys=keys)) as c:
        assert c.post(PREDICT, json=payload).status_code == 401  # this server's 401 counter exists
        before = refused_counts(c.get("/metrics").text)["401"]
        for path in (PREDICT, "/invocations"):
            assert c.post(path, json=payload).status_code == 401
            assert c.post(path, json=payload, headers={"X-API-Key": "key-three"}).status_code == 401
            assert c.post(path, json=payload, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
            assert c.post(path, json=payload, headers={"X-API-Key": "key-two"}).status_code == 200
            assert c.post(path, json=payload, headers={"Authorization": "Bearer key-one"}).status_code == 200
        assert c.get("/v1/models/elec2").json()["api_key_required"] is True
        metrics = c.get("/metrics").text
    assert refused_counts(metrics)["401"] - before == 6  # every request refused for its key is counted


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


def test_a_body_over_the_limit_is_refused_before_it_is_read(served):
    """Limit 1 MiB (deployment.max_body_mb). A declared 64 MiB body is answered 413 without one byte
    of it being sent; a 64 MiB chunked body is answered 413 while the client is still sending, after
    a few MiB at most (what the socket buffers hold): the server never reads, let alone parses, it."""
    port, limit = served["port"], 2**20
    sock = _raw(port)
    t0 = time.monotonic()
    sock.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {64 * limit}\r\n\r\n".encode()
    )
    status, out = _response(sock)
    assert status == 413 and str(limit) in out["detail"] and "max_body_mb" in out["detail"], out
    assert time.monotonic() - t0 < 5
    sock.close()

    sock = _raw(port)
    sock.sendall(
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk, sent, answer = b"[" * 65536, 0, None
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while sent < 64 * limit:
        if select.select([sock], [], [], 0)[0]:
            answer = _response(sock)
            break
        try:
            sock.sendall(framed)
        except OSError:  # the server closed the connection after answering
            answer = _response(sock)
            break
        sent += len(chunk)
    sock.close()
    assert answer is not None and answer[0] == 413, answer
    assert sent < 16 * limit, f"{sent} bytes sent before the answer"

    # the admin route has the same limit (answered on the headers: a client still sending the body
    # would find the connection closed, so only the headers are sent); a body under it is parsed as usual
    sock = _raw(port)
    sock.sendall(
        f"PUT {DEPLOY} HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
    )
    status, out = _response(sock)
    sock.close()
    assert status == 413 and "max_body_mb" in out["detail"], out
    small = json.dumps({"instances": instances(served["rows"].iloc[:1])}).encode() + b" " * (limit - 500)
    assert call(port, "POST", PREDICT, small)[0] == 200
    status, out, _ = call(port, "GET", "/v1/models/elec2")
    assert out["max_body_bytes"] == limit


def test_nesting_and_undecodable_bodies_get_4xx_never_5xx(served):
    port = served["port"]
    row = {**instances(served["rows"].iloc[:1])[0]}
    deep = "[" * 5000 + "]" * 5000
    status, out, _ = call(port, "POST", PREDICT, '{"instances": ' + deep + "}")
    assert status == 400 and out["error"] == "invalid JSON"  # deeper than the decoder's 1024 levels
    nested = "[" * 1000 + "1" + "]" * 1000  # within the decoder's limit, deeper than Python's recursion limit
    fields = ", ".join(f'"{k}": {json.dumps(v)}' for k, v in row.items() if k != "nswprice")
    status, out, _ = call(port, "POST", PREDICT, '{"instances": [{' + fields + ', "nswprice": ' + nested + "}]}")
    assert status == 422 and ["instances", 0, "nswprice"] in [e["loc"] for e in out["detail"]], out
    columns = ", ".join(f'"{f}": [{nested}]' for f in FEATURES)
    status, out, _ = call(port, "POST", PREDICT, '{"inputs": {' + columns + "}}")
    assert status == 422, out
    for body in (b"\xff\xfe", b"", b"{", b"null", b'{"instances": [NaN]}', b"[1e400]", b"\x00" * 100):
        assert 400 <= call(port, "POST", PREDICT, body)[0] < 500, body
    for body in (b"[]", b'"x"', b'{"stable": {"a": 1}}', b'{"stable": "1", "canary_percent": "NaN"}', b"{"):
        assert call(port, "PUT", DEPLOY, body, ADMIN)[0] in (409, 422), body
    assert call(port, "GET", "/readyz")[1]["stable"] == "1"


def test_every_refused_request_is_counted_and_logged(served):
    """Each kind of refusal, counted in /metrics (variant "none") and, after a flush, in the
    requests log with its status (version 0)."""
    import pandas as pd

    from mlops_assets.prediction_store import REQUESTS, read_since

    port = served["port"]
    expected = {
        400: [("POST", PREDICT, "{not json", None)],
        401: [("PUT", DEPLOY, {"stable": "1"}, None)],
        403: [("PUT", DEPLOY, {"stable": "1"}, {"Authorization": "Bearer wrong"})],
        404: [("POST", "/v1/models/other:predict", {"instances": [{}]}, None), ("GET", "/nowhere", None, None)],
        405: [("GET", PREDICT, None, None), ("DELETE", "/healthz", None, None)],
        413: [("POST", PREDICT, b"1" * (2**20 + 1), None)],
        422: [("POST", PREDICT, {"instances": []}, None), ("PUT", DEPLOY, {"stable": "1", "colour": 1}, ADMIN)],
    }
    for code, requests in expected.items():  # once, so that every counter exists before the first reading
        method, path, body, headers = requests[0]
        assert call(port, method, path, body, headers)[0] == code, (method, path)
    before, since = refused_counts(call(port, "GET", "/metrics")[1]), pd.Timestamp.now(tz="UTC")
    for code, requests in expected.items():
        for method, path, body, headers in requests:
            assert call(port, method, path, body, headers)[0] == code, (method, path)
    after = refused_counts(call(port, "GET", "/metrics")[1])
    assert {c: after.get(str(c), 0.0) - before.get(str(c), 0.0) for c in expected} == {c: len(r) for c, r in expected.items()}
    served["server"].log.flush()
    logged = read_since(served["stores"].predictions_root, REQUESTS, "elec2", since)
    refused = logged[logged["variant"] == "none"]
    assert refused["status"].value_counts().to_dict() == {c: len(r) for c, r in expected.items()}
    assert set(refused["model_version"]) == {0} and set(refused["rows"]) == {0}


def test_describe_the_model_and_the_server_identity(served):
    from mlops_assets.endpoint_state import server_identity

    port = served["port"]
    status, out, _ = call(port, "GET", "/v1/models/elec2")
    assert status == 200 and out["model"] == "elec2" and out["task"] == "classification"
    assert set(FEATURES) <= set(out["request"]["required"]) and "event_timestamp" in out["request"]["optional"]
    assert out["request"]["max_rows"] == served["spec"].deployment.max_batch_rows
    assert out["deployment"]["stable"] == "1" and out["loaded_versions"] == ["1"] and out["api_key_required"] is False
    assert call(port, "GET", "/v1/models/bike_sharing")[0] == 404
    status, health, _ = call(port, "GET", "/healthz")
    assert status == 200 and health["model"] == "elec2" and health["pid"] == os.getpid()
    assert health["identity"] == server_identity(served["stores"].endpoint_dir, served["tracking_uri"])


def test_readyz_is_503_when_a_served_version_stops_scoring(served):
    """Ready means the served versions score the probe now: a model whose scoring breaks after it
    was loaded (its estimator lost, here) makes /readyz 503, and ready again once it scores."""
    port = served["port"]
    predictor = served["server"].serving.models["1"]
    estimator = predictor.model.steps[-1]
    predictor.model.steps[-1] = ("model", None)
    fast, predictor.fast = predictor.fast, False
    try:
        status, out, _ = call(port, "GET", "/readyz")
        assert status == 503 and "version 1 cannot score" in out["detail"], out
    finally:
        predictor.model.steps[-1], predictor.fast = estimator, fast
    assert call(port, "GET", "/readyz")[0] == 200


def test_a_prediction_the_log_cannot_file_is_answered_503(models, tmp_path):
    """The prediction log refuses rows (its write-ahead folder is gone, then it is closed for
    shutdown): the request is answered 503 ``prediction not logged``, never 200, and counted."""
    import shutil

    from mlops_assets.prediction_store import PredictionLog
    from mlops_assets.server.app import ModelServer, Pending
    from mlops_assets.server.runtime import MlflowVersions

    versions = MlflowVersions(models["tracking_uri"])
    wal = tmp_path / "wal"
    log = PredictionLog(str(tmp_path / "lake"), "elec2", "UTC", wal_dir=wal)
    server = ModelServer(models["spec"], lambda v: versions.load("elec2", v), prediction_log=log, initial=None)
    from mlops_assets.core.rollout import Deployment

    server.deploy(Deployment(stable="1"))
    payloads = [{"instances": instances(models["rows"].iloc[i : i + 2])} for i in (0, 2)]
    assert server.predict(payloads[0])[0] == 200
    log.flush()
    shutil.rmtree(wal)
    answers = server.predict_batch([server.admit(p) for p in payloads])
    assert all(isinstance(server.admit(p), Pending) for p in payloads)
    assert [s for s, _ in answers] == [503, 503] and answers[0][1]["error"] == "prediction not logged"
    assert "write-ahead" in answers[0][1]["detail"]
    log.close()
    status, out = server.predict(payloads[1])
    assert status == 503 and "closed" in out["detail"]
    metrics = server.metrics.exposition().decode()
    assert 'mlops_requests_total{code="503",model="elec2",variant="stable",version="1"} 3.0' in metrics


FLUSH = "/v1/models/elec2/flush"


def test_no_client_can_move_a_production_servers_clock(served):
    """A production server stamps what it logs and records with the wall clock, whatever a request
    says: headers claiming another time, event times years back, the admin token. The replay-only
    flush route does not exist (404, even with the token), and no other route sets time."""
    from datetime import UTC, datetime, timedelta

    import pandas as pd

    from mlops_assets.endpoint_state import EndpointState
    from mlops_assets.prediction_store import REQUESTS, SERVED, read_since

    port, server, stores = served["port"], served["server"], served["stores"]
    rows = instances(served["rows"].iloc[:3])
    for r in rows:
        r["event_timestamp"] = "1997-03-04T10:00:00+00:00"
    spoof = {
        "X-Mlops-Replay-Time": "1997-03-04T10:00:00Z",
        "X-Mlops-Clock": "857469600000000000",
        "Date": "Tue, 04 Mar 1997 10:00:00 GMT",
    }
    before = datetime.now(UTC) - timedelta(seconds=1)
    status, out, _ = call(port, "POST", PREDICT, {"instances": rows}, spoof)
    assert status == 200, out
    assert call(port, "POST", FLUSH, None, {**ADMIN, **spoof})[0] == 404
    assert call(port, "PUT", DEPLOY, {"stable": "3"}, {**ADMIN, **spoof})[0] == 200
    server.log.flush()
    after = datetime.now(UTC) + timedelta(seconds=1)

    since = pd.Timestamp(before)
    requests = read_since(stores.predictions_root, REQUESTS, "elec2", since)
    predictions = read_since(stores.predictions_root, SERVED, "elec2", since)
    assert len(requests) == 2 and set(requests["status"]) == {200, 404}  # the prediction and the refused flush
    for frame in (requests, predictions):
        assert frame["received_at"].between(since, pd.Timestamp(after)).all(), frame["received_at"]
    assert (predictions["event_timestamp"] == pd.Timestamp("1997-03-04T10:00:00", tz="UTC")).all()  # the event's own
    swap = [e for e in EndpointState(stores.endpoint_dir).history() if e["action"] == "server_swap"]
    assert len(swap) == 1 and before <= datetime.fromisoformat(swap[0]["time"]) <= after


def test_a_replay_clock_is_refused_beyond_loopback(models, tmp_path, monkeypatch):
    """``MLOPS_REPLAY_CLOCK`` makes a server live on a replay's clock file, and only on loopback: a
    server that would listen on any other address refuses to start, before it loads anything."""
    from datetime import UTC, datetime

    from mlops_assets.server import serve
    from mlops_assets.server.clock import REPLAY_CLOCK_ENV, server_clock, set_file_clock

    clock = tmp_path / "replay_clock"
    moment = datetime(1997, 3, 4, 5, 35, tzinfo=UTC)
    set_file_clock(clock, moment)
    monkeypatch.setenv(REPLAY_CLOCK_ENV, str(clock))
    for host in ("0.0.0.0", "::", "10.1.2.3", "models.example.com"):
        with pytest.raises(ValueError, match="loopback"):
            serve(models["spec"], host, free_port(), stores_in(tmp_path, models["tracking_uri"]), admin_token=TOKEN)
    assert server_clock("127.0.0.1")() == moment and server_clock("::1")() == moment
    monkeypatch.delenv(REPLAY_CLOCK_ENV)
    assert server_clock("0.0.0.0") is None


def test_a_replay_server_lives_on_the_replays_clock(models, tmp_path):
    """On a replay's clock file: the start and a swap are recorded at the file's time; a request is
    received at its event's time when that is later than the clock (sent at its own time), else at
    the clock (sent late); the flush route needs the admin token and files everything at once, under
    names no earlier than the rows they hold."""
    from datetime import UTC, datetime

    import pandas as pd

    from mlops_assets.endpoint_state import EndpointState
    from mlops_assets.prediction_store import REQUESTS, SERVED, day_dir, read_since
    from mlops_assets.server import build_server
    from mlops_assets.server.clock import FileClock, set_file_clock
    from mlops_assets.server.http import create_app

    clock_file = tmp_path / "replay_clock"
    t0, t1 = datetime(1997, 3, 4, 5, 35, tzinfo=UTC), datetime(1997, 3, 4, 11, 0, tzinfo=UTC)
    set_file_clock(clock_file, t0)
    stores = stores_in(tmp_path, models["tracking_uri"])
    server = build_server(models["spec"], stores, clock=FileClock(clock_file))

    def at(stamp: str) -> list[dict]:
        rows = instances(models["rows"].iloc[:2])
        for r in rows:
            r["event_timestamp"] = stamp
        return rows

    with live(create_app(server, admin_token=TOKEN)) as port:
        assert call(port, "POST", PREDICT, {"instances": at("1997-03-04T10:00:00+00:00")})[0] == 200
        assert call(port, "POST", PREDICT, {"instances": at("1997-03-03T10:00:00+00:00")})[0] == 200
        assert call(port, "POST", FLUSH)[0] == 401
        set_file_clock(clock_file, t1)
        assert call(port, "PUT", DEPLOY, {"stable": "3"}, ADMIN)[0] == 200
        status, out, _ = call(port, "POST", FLUSH, None, ADMIN)
        assert status == 200 and out["written"] >= 2, out

        requests = read_since(stores.predictions_root, REQUESTS, "elec2", pd.Timestamp("1997-01-01", tz="UTC"))
        got = requests.sort_values("received_at")
        assert list(got["status"]) == [200, 401, 200]
        assert list(got["received_at"]) == [pd.Timestamp(t0)] * 2 + [pd.Timestamp("1997-03-04T10:00:00", tz="UTC")]
        predictions = read_since(stores.predictions_root, SERVED, "elec2", pd.Timestamp(t0))
        assert len(predictions) == 4
        for day in ("1997-03-03", "1997-03-04"):  # filed under their events' days, named after their rows
            from mlops_assets import files

            for entry in files.listing(day_dir(stores.predictions_root, SERVED, "elec2", day), ".parquet"):
                assert int(entry.name.split("-")[0]) >= pd.Timestamp("1997-03-04T10:00:00", tz="UTC").value
    history = EndpointState(stores.endpoint_dir).history()
    assert [(e["action"], datetime.fromisoformat(e["time"])) for e in history] == [("server_start", t0), ("server_swap", t1)]
