"""The ``local`` target: the model server as a process on this machine, told about new deployments
over its loopback admin route (no restart, so no request is dropped while versions change).

**Only its own server.** A port is a machine-wide name: another home's server, a replay's leftover
endpoint or an unrelated program may answer on the spec's port. Before it deploys, the target asks
``GET /healthz`` for the server's ``identity`` (``endpoint_state.server_identity``: the endpoint's
state folder, so home and spec, and the MLflow registry) and talks only to a server whose identity
is its own. Anything else on the port (another identity, a server too old to say, not a model server
at all) is an ``EndpointError`` naming who holds the port (pid, identity) and how to free it: a
deploy into a foreign server would change what someone else serves, and would be verified there.

**Authenticated.** The admin route always needs ``Authorization: Bearer <token>``. The token is the
deployer's (``EndpointDeployer.admin_token``: ``MLOPS_ADMIN_TOKEN`` on the cloud profiles), else the
home's own (``environments.admin_token``, generated once into ``<home>/secrets``). A server this
target starts gets the same token as ``MLOPS_ADMIN_TOKEN`` in its environment, so both agree
whatever the server would otherwise read. The token is sent, never logged nor returned.

**Starting.** When nothing answers on the port, ``apply`` starts ``mlops serve`` in a new session,
with this process's environment (same profile and stores; its log in ``<run_dir>/server.log``, its
pid in ``server.pid``, both on this machine). The server starts on the last recorded deployment
(what a restart must serve); the new deployment then goes through the admin route like any other,
so it is loaded and verified by the server before it is swapped in, and a deployment that cannot
serve never becomes what a restarted server reads. The server is left running: materializing the
endpoint makes the machine serve.

**Stopping.** ``stop`` (also ``mlops serve --stop``) signals the process group in ``server.pid``
only after checking that the process is still the server this target started (its command line is
``mlops_assets.cli serve`` of this run folder's spec file): after a reboot or a crash the pid may
belong to anything. A stale pid file is removed without signalling anyone.

**No temp folders.** ``import feast`` creates a ``feast_metrics_*`` folder in the system's temp
directory for prometheus_client's multiprocess files, removed only by an ``atexit`` hook, which
never runs when the server ends by a signal (uvicorn re-raises SIGTERM after its graceful shutdown;
SIGKILL after a timeout). A server whose spec reads online features (so imports Feast) gets
``PROMETHEUS_MULTIPROCESS_DIR`` in its run folder instead: Feast then creates nothing, and the
target empties that folder when it starts and stops the server. Servers without online features
never import Feast and get nothing (their metrics stay in process memory).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlops_assets.endpoint_state import Deployment, EndpointState, server_identity
from mlops_assets.rollout import EndpointError
from mlops_assets.server import ADMIN_TOKEN_ENV, PROMETHEUS_DIR_ENV
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:
    from mlops_assets.resources import LakeStorage


def _http(
    method: str, url: str, body: dict | None = None, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _json(raw: bytes) -> dict[str, Any]:
    """A body as a JSON object; ``{}`` when it is not one (another program on the port)."""
    try:
        out = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


class LocalTarget:
    def __init__(
        self,
        spec: ModelSpec,
        lake: LakeStorage,
        tracking_uri: str,
        run_dir: str | Path,
        *,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 120.0,
        admin_token: str | None = None,
        registry_uri: str | None = None,
    ):
        if spec.deployment is None:
            raise ValueError(f"spec {spec.name!r} has no deployment section")
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.env = env or {}  # what the server needs beyond this process's environment (its profile's home)
        self.state = EndpointState(lake.endpoint_dir(spec.name))
        self.base_url = f"http://{spec.deployment.host}:{spec.deployment.port}"
        self.start_timeout_s = start_timeout_s
        self._admin_token = admin_token

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/v1/models/{self.spec.name}:predict"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "server.pid"

    @property
    def spec_file(self) -> Path:
        return self.run_dir / "spec.yaml"

    @property
    def prometheus_dir(self) -> Path:
        return self.run_dir / "prometheus"

    @property
    def identity(self) -> dict[str, str]:
        """What this target's server says it serves (``GET /healthz``: ``identity``)."""
        return server_identity(self.state.folder, self.registry_uri)

    def admin_token(self) -> str:
        """The admin routes' bearer token: the deployer's, else the home's (generated on first use)."""
        if self._admin_token is None:
            from mlops_assets.environments import admin_token

            home = self.env.get("MLOPS_HOME")
            self._admin_token = admin_token(Path(home) if home else None)
        return self._admin_token

    # -- who answers on the port -------------------------------------------------------------
    def holder(self) -> dict[str, Any] | None:
        """Who answers on the spec's port: None when nobody listens; else ``{"ours": bool, "pid",
        "identity", "what"}`` (``what`` describes a foreign holder for an error message)."""
        try:
            status, body = _http("GET", f"{self.base_url}/healthz", timeout=5.0)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError):
                return None
            # something accepted the connection but did not answer HTTP (or not in time)
            pid = _listener_pid(self.spec.deployment.port)
            return {"ours": False, "pid": pid, "identity": None, "what": f"a process that does not answer HTTP ({reason})"}
        identity, pid = body.get("identity"), body.get("pid")
        if status == 200 and identity == self.identity:
            return {"ours": True, "pid": pid, "identity": identity, "what": "this target's server"}
        pid = pid if isinstance(pid, int) else _listener_pid(self.spec.deployment.port)
        if status == 200 and isinstance(identity, dict):
            what = f"another model server (serving {body.get('model')!r} for {json.dumps(identity, sort_keys=True)})"
        elif status == 200 and "status" in body:
            what = "a model server that does not say what it serves (an older version, without identity)"
        else:
            what = f"a program that is not a model server (GET /healthz answered {status})"
        return {"ours": False, "pid": pid, "identity": identity, "what": what}

    def _foreign(self, holder: dict[str, Any]) -> EndpointError:
        pid = holder["pid"]
        free = (
            f"stop it (`mlops serve --spec {self.spec.name} --stop` with that server's MLOPS_HOME, "
            f"or `kill {pid}`) or give this spec another deployment.port"
            if pid
            else "stop it or give this spec another deployment.port"
        )
        return EndpointError(
            f"{self.base_url} is held by {holder['what']}{f', pid {pid}' if pid else ''}, not by the server of "
            f"{json.dumps(self.identity, sort_keys=True)}: nothing was deployed there; {free}"
        )

    def is_up(self) -> bool:
        """Whether this target's own server answers on the port (a foreign one does not count)."""
        holder = self.holder()
        return holder is not None and holder["ours"]

    # -- the process ----------------------------------------------------------------------------
    def start(self) -> int:
        """Start ``mlops serve`` for this spec (which reads the saved deployment) and wait until it
        answers as this target's server. The spec is handed over as a file, so specs from any folder
        can be served."""
        holder = self.holder()
        if holder is not None:
            if holder["ours"]:
                raise EndpointError(f"{self.base_url}: this target's server already runs (pid {holder['pid']})")
            raise self._foreign(holder)
        folder = self.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.spec_file.write_text(
            yaml.safe_dump(self.spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
        )
        env = {
            **os.environ,
            **self.env,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_REGISTRY_URI": self.registry_uri,
            ADMIN_TOKEN_ENV: self.admin_token(),
        }
        for var in PROMETHEUS_DIR_ENV:
            env.pop(var, None)  # never this process's (a Feast temp folder that ends with it)
        if self.spec.past_rate_features or self.spec.lookup_features:  # the server imports Feast
            shutil.rmtree(self.prometheus_dir, ignore_errors=True)  # a killed server's files
            self.prometheus_dir.mkdir(parents=True)
            env.update(dict.fromkeys(PROMETHEUS_DIR_ENV, str(self.prometheus_dir)))
        d = self.spec.deployment
        cmd = [
            sys.executable,
            "-m",
            "mlops_assets.cli",
            "serve",
            "--spec",
            str(self.spec_file),
            "--host",
            d.host,
            "--port",
            str(d.port),
        ]
        with (folder / "server.log").open("ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                tail = (folder / "server.log").read_text()[-2000:]
                raise EndpointError(f"the server for {self.spec.name} exited with {proc.returncode}:\n{tail}")
            holder = self.holder()
            if holder is not None:
                if holder["ours"] and holder["pid"] in (None, proc.pid):
                    return proc.pid
                if not holder["ours"]:  # the port was taken meanwhile: ours cannot bind, end it
                    self.stop()
                    raise self._foreign(holder)
            time.sleep(0.2)
        self.stop()
        raise EndpointError(
            f"the server for {self.spec.name} did not answer on {self.base_url} within {self.start_timeout_s:.0f} s"
        )

    def is_own_process(self, pid: int) -> bool:
        """Whether ``pid`` is a live ``mlops serve`` of this run folder's spec file (what ``start``
        ran), the leader of its own process group."""
        cmdline = _cmdline(pid)
        if cmdline is None:
            return False
        served = "mlops_assets.cli" in cmdline and "serve" in cmdline and str(self.spec_file) in cmdline
        try:
            return served and os.getpgid(pid) == pid
        except ProcessLookupError:
            return False

    def stop(self) -> bool:
        """Stop the server this target started (by its process group); False when none runs. A pid
        file whose process is gone or is not that server any more is removed, nothing signalled."""
        if not self.pid_file.exists():
            shutil.rmtree(self.prometheus_dir, ignore_errors=True)
            return False
        try:
            pid = int(self.pid_file.read_text().strip())
        except ValueError:
            pid = 0
        own = pid > 0 and _alive(pid) and self.is_own_process(pid)
        self.pid_file.unlink(missing_ok=True)
        if not own:
            shutil.rmtree(self.prometheus_dir, ignore_errors=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        for _ in range(150):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)
        shutil.rmtree(self.prometheus_dir, ignore_errors=True)
        return True

    # -- the Target interface ---------------------------------------------------------------
    def apply(self, deployment: Deployment) -> dict[str, Any]:
        """Make this target's server serve ``deployment`` through its admin route, starting the
        server first when none runs. Refuses (``EndpointError``) when another process holds the port."""
        holder = self.holder()
        started = None
        if holder is None:
            started = self.start()
        elif not holder["ours"]:
            raise self._foreign(holder)
        if started is not None and self._serves(deployment):  # it restarted on exactly this deployment
            return {"action": f"started server (pid {started})", "url": self.predict_url}
        status, body = _http(
            "PUT",
            f"{self.base_url}/v1/models/{self.spec.name}/deployment",
            deployment.to_json(),
            timeout=300,
            headers={"Authorization": f"Bearer {self.admin_token()}"},
        )
        if status != 200:
            raise EndpointError(f"{self.base_url} refused deployment {deployment.to_json()}: {status} {body}")
        action = f"started server (pid {started}), then deployed" if started else "hot-swapped (no restart)"
        return {"action": action, "url": self.predict_url, "loaded": body.get("loaded")}

    def _serves(self, deployment: Deployment) -> bool:
        status, body = _http("GET", f"{self.base_url}/readyz")
        return status == 200 and _served(body) == _served(deployment.to_json())

    def verify(self, deployment: Deployment, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait until this target's server is ready and serves exactly ``deployment``; raise otherwise."""
        holder = self.holder()
        if holder is None:
            raise EndpointError(f"no server answers on {self.base_url}")
        if not holder["ours"]:
            raise self._foreign(holder)
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, body = _http("GET", f"{self.base_url}/readyz")
            if status == 200:
                served = Deployment.from_json({k: body.get(k) for k in Deployment.__dataclass_fields__})
                if _served(served.to_json()) == _served(deployment.to_json()):
                    return {"ready": True, **served.to_json()}
                raise EndpointError(f"{self.base_url} serves {served.to_json()}, not {deployment.to_json()}")
            time.sleep(0.2)
        raise EndpointError(f"{self.base_url} is not ready after {timeout_s:.0f} s: {body}")


def _served(d: dict[str, Any]) -> tuple:
    percent = d.get("canary_percent") or 0
    return (d.get("stable"), d.get("canary"), float(percent) if d.get("canary") else 0.0)


def _alive(pid: int) -> bool:
    """Whether a process still runs; reaps it when it is our own child that exited (a zombie still
    answers ``kill(pid, 0)``)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # started by another process (an earlier run): only its existence can be checked
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, and certainly not ours to signal
    return True


def _cmdline(pid: int) -> str | None:
    """A process's command line (arguments joined by spaces), None when it is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace") or None
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:  # no /proc (macOS): psutil, which Feast already depends on
        import psutil
    except ImportError:
        return None
    try:
        return " ".join(psutil.Process(pid).cmdline()) or None
    except psutil.Error:
        return None


def _listener_pid(port: int) -> int | None:
    """The pid listening on ``port`` on this machine, when the system tells (for error messages)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except (psutil.Error, OSError):
        return None
    return None
