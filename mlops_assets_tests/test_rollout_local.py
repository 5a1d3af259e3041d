"""The local target against real processes on 127.0.0.1: it deploys only to its own server (the one
whose ``/healthz`` identity is its home's and registry's), sends the admin token it started the
server with, stops only a process that is still that server, and leaves no temp folder behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlops_assets_tests.conftest import free_port


def target_for(spec, home: Path, port: int, **kwargs):
    """The local target of ``spec`` on ``home``, as the EndpointDeployer resource builds it."""
    from mlops_assets.environments import mlflow_tracking_uri
    from mlops_assets.resources import EndpointDeployer, LakeStorage
    from mlops_assets.rollout.local import LocalTarget
    from mlops_assets.specs import DeploymentSpec

    spec = spec.model_copy(update={"deployment": DeploymentSpec(port=port)})
    run_dir = EndpointDeployer(home=str(home)).local_run_dir(spec.name)
    env = {"MLOPS_HOME": str(home), "MLOPS_ENV": "local"}
    return LocalTarget(spec, LakeStorage(root=str(home)), mlflow_tracking_uri(home), run_dir, env=env, **kwargs)


class Impostor:
    """A real HTTP server on a port: answers ``GET /healthz`` with a fixed status and body, and
    records every other request (a deploy must never reach it)."""

    def __init__(self, port: int, status: int, body: dict):
        received: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                if self.command == "GET" and self.path == "/healthz":
                    data = json.dumps(body).encode()
                    self.send_response(status)
                else:
                    received.append((self.command, self.path))
                    data = b"{}"
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args):
                pass

        self.received = received
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        # another home's model server: same spec, another state folder and registry
        (
            200,
            {
                "status": "ok",
                "model": "elec2",
                "identity": {"endpoint": "/elsewhere/home/lake/endpoints/elec2", "registry": "sqlite:////elsewhere/mlflow.db"},
                "pid": 4242,
            },
            r"another model server \(serving 'elec2' for .*/elsewhere/home/lake/endpoints/elec2.*\), pid 4242",
        ),
        # a model server of an older version, which does not say what it serves
        (200, {"status": "ok"}, "does not say what it serves"),
        # not a model server at all
        (404, {"detail": "Not Found"}, r"not a model server \(GET /healthz answered 404\)"),
    ],
    ids=["another_home", "no_identity", "not_a_model_server"],
)
def test_a_deploy_never_talks_to_a_foreign_server_on_its_port(elec2_spec, tmp_path, status, body, says):
    from mlops_assets.endpoint_state import Deployment
    from mlops_assets.rollout import EndpointError

    port = free_port()
    target = target_for(elec2_spec, tmp_path / "home", port, admin_token="t0ken-of-this-home")
    with Impostor(port, status, body) as impostor:
        holder = target.holder()
        assert holder is not None and not holder["ours"] and not target.is_up()
        for call in (target.apply, target.verify, lambda _d: target.start()):
            with pytest.raises(EndpointError, match=says) as info:
                call(Deployment(stable="1"))
            message = str(info.value)
            assert "nothing was deployed there" in message and "deployment.port" in message  # how to free it
            assert json.dumps(target.identity, sort_keys=True) in message  # and whose deploy it refused
            assert "t0ken-of-this-home" not in message
        assert impostor.received == []  # no PUT, no readyz probe: nothing reached the foreign process
    assert not target.pid_file.exists()  # nothing was started


def test_stop_signals_nothing_but_its_own_server(elec2_spec, tmp_path):
    """A pid file left behind (a crash, a reboot) may name any process: it is removed, and a live
    process that is not this target's ``mlops serve`` is not signalled."""
    target = target_for(elec2_spec, tmp_path / "home", free_port())
    target.run_dir.mkdir(parents=True)
    assert target.stop() is False  # no pid file

    # a live process of someone else, leader of its own group like a server would be
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        target.pid_file.write_text(str(other.pid))
        assert target.stop() is False
        assert not target.pid_file.exists()
        assert other.poll() is None  # still running: not signalled
        # even a `mlops serve` of another run folder is not this target's server
        assert not target.is_own_process(other.pid)
    finally:
        other.kill()
        other.wait()
    # a pid that ended, and garbage
    target.pid_file.write_text(str(other.pid))
    assert target.stop() is False and not target.pid_file.exists()
    target.pid_file.write_text("not a pid")
    assert target.stop() is False and not target.pid_file.exists()


def test_a_server_with_online_features_leaves_no_temp_folder(flight_spec, tmp_path, monkeypatch):
    """The flight spec's server imports Feast (online features), whose metrics module makes a
    ``feast_metrics_*`` folder in the temp directory that only a normal exit removes: the target
    gives it one in the server's run folder, gone once the server is stopped. The server's temp
    directory is this test's own (``TMPDIR``, inherited): other processes importing Feast meanwhile
    (another test worker's servers) leave theirs in the machine's."""
    from mlops_assets.environments import admin_token

    home = tmp_path / "home"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    target = target_for(flight_spec, home, free_port())
    pid = target.start()
    try:
        holder = target.holder()
        assert holder == {"ours": True, "pid": pid, "identity": target.identity, "what": "this target's server"}
        assert target.is_own_process(pid)
        assert target.prometheus_dir.is_dir()
        # the server was started with the home's admin token (generated once into the home)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"MLOPS_ADMIN_TOKEN={admin_token(home)}".encode() in environ
        assert (home / "secrets" / "admin_token").stat().st_mode & 0o777 == 0o600
        assert admin_token(home) not in (target.run_dir / "server.log").read_text()
    finally:
        assert target.stop() is True
    assert not _running(pid)
    assert not target.pid_file.exists() and not target.prometheus_dir.exists()
    assert not list(scratch.glob("feast_metrics_*"))  # nothing left in the server's temp directory
    assert target.stop() is False  # stopped once


def test_a_killed_server_leaves_its_metrics_files_in_its_run_folder_not_in_the_temp_directory(flight_spec, tmp_path, monkeypatch):
    """A server killed outright (out of memory, SIGKILL) runs no shutdown to remove its metrics
    folder (``server._own_metrics_dir``, or Feast's ``feast_metrics_*``): given the run folder's
    ``PROMETHEUS_MULTIPROCESS_DIR``, it makes none in the temp directory, and the next stop (or
    start) clears the run folder. Without that setting this test fails (the server's folder lands in
    ``TMPDIR`` and stays)."""
    import signal

    from mlops_assets.rollout.local import _alive

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    target = target_for(flight_spec, tmp_path / "home", free_port())
    pid = target.start()
    try:
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:  # reaps our child, as the target does
            time.sleep(0.1)
        assert not _alive(pid)
        assert not list(scratch.iterdir())  # nothing in the temp directory, even killed
        assert target.prometheus_dir.is_dir()  # the metrics folder is in the run folder
    finally:
        assert target.stop() is False  # nothing left to stop: the pid file and the folder are cleared
    assert not target.pid_file.exists() and not target.prometheus_dir.exists()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_platforms_deploys_send_the_admin_token(elec2_spec, tmp_path):
    """A real server started by the target on a home with a registered Elec2 model: the first apply
    starts it on the champion, later ones go through the authenticated admin route; a deploy with
    another token is refused by the server and changes nothing."""
    from mlflow import MlflowClient

    from mlops_assets.endpoint_state import Deployment
    from mlops_assets.environments import mlflow_tracking_uri
    from mlops_assets.rollout import EndpointError
    from mlops_assets_tests.test_serving import elec2_rows, register

    home = tmp_path / "home"
    (home / "mlflow").mkdir(parents=True)
    tracking = mlflow_tracking_uri(home)
    rows = elec2_rows()
    assert [register(elec2_spec, tracking, rows.iloc[:600]), register(elec2_spec, tracking, rows.iloc[600:1200])] == ["1", "2"]
    MlflowClient(tracking).set_registered_model_alias(elec2_spec.name, "champion", "1")
    port = free_port()
    target = target_for(elec2_spec, home, port)
    try:
        applied = target.apply(Deployment(stable="1"))
        assert applied["action"].startswith("started server")
        assert target.verify(Deployment(stable="1"))["stable"] == "1"

        applied = target.apply(Deployment(stable="1", canary="2", canary_percent=25.0))
        assert applied["action"] == "hot-swapped (no restart)"
        served = target.verify(Deployment(stable="1", canary="2", canary_percent=25.0))
        assert (served["stable"], served["canary"], served["canary_percent"]) == ("1", "2", 25.0)

        # the same server, another token: refused by the server, and what is served stays
        intruder = target_for(elec2_spec, home, port, admin_token="not-the-token")
        assert intruder.is_up()  # same home and registry: the same identity
        with pytest.raises(EndpointError, match="refused deployment .* 40[13]"):
            intruder.apply(Deployment(stable="2"))
        target.verify(Deployment(stable="1", canary="2", canary_percent=25.0))
    finally:
        target.stop()
    deadline = time.monotonic() + 10
    while target.holder() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.holder() is None  # the port is free again


def test_a_server_started_by_hand_leaves_no_temp_folder(flight_spec, tmp_path):
    """``mlops serve`` started directly (a container, a person) and stopped with SIGTERM: Feast's
    metrics folder would stay in the temp directory (its ``atexit`` hook never runs when uvicorn
    re-raises the signal); the server makes its own and removes it in its graceful shutdown."""
    import signal

    import yaml

    from mlops_assets.environments import mlflow_tracking_uri
    from mlops_assets.specs import DeploymentSpec

    home, temp = tmp_path / "home", tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    spec = flight_spec.model_copy(update={"deployment": DeploymentSpec(port=port)})
    spec_file = tmp_path / "flight_delays.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    env |= {"MLOPS_HOME": str(home), "MLOPS_ENV": "local", "TMPDIR": str(temp), "MLFLOW_TRACKING_URI": mlflow_tracking_uri(home)}
    cmd = [sys.executable, "-m", "mlops_assets.cli", "serve", "--spec", str(spec_file), "--port", str(port)]
    with (tmp_path / "server.log").open("wb") as log:
        # started as a container starts it: SIGTERM at its default disposition (an ignored SIGTERM is
        # inherited through exec, and something earlier in the test session leaves it ignored here:
        # uvicorn's re-raise would then be a no-op and the server exit 0 after its atexit hooks)
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL),  # noqa: PLW1509 - one signal call
        )
    try:
        deadline = time.monotonic() + 120
        folders: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            folders = [p.name for p in temp.iterdir()]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        folders = [p.name for p in temp.iterdir()]
        assert any(f.startswith("mlops_serve_flight_delays_metrics_") for f in folders), folders  # Feast was imported
        assert not any(f.startswith("feast_metrics_") for f in folders), folders
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # uvicorn re-raised the signal: no atexit hook ran
    assert list(temp.iterdir()) == [], [p.name for p in temp.iterdir()]
