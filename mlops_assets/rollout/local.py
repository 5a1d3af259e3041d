"""The ``local`` target: the model server as a process on this machine, told about new deployments
over its loopback admin route (no restart, so no request is dropped while versions change).

When no server answers on the spec's port, ``apply`` starts one (``mlops serve`` in a new session,
with this process's environment, so it runs on the same profile and stores; its log in
``<run_dir>/server.log``, its pid in ``server.pid``, both on this machine) and leaves it running:
materializing the endpoint makes the machine serve. ``stop`` ends the process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlops_assets.endpoint_state import Deployment, EndpointState
from mlops_assets.rollout import EndpointError
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:
    from mlops_assets.resources import LakeStorage


def _http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


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
    ):
        if spec.deployment is None:
            raise ValueError(f"spec {spec.name!r} has no deployment section")
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.env = env or {}  # what the server needs beyond this process's environment (its profile's home)
        self.state = EndpointState(lake.endpoint_dir(spec.name))
        self.base_url = f"http://{spec.deployment.host}:{spec.deployment.port}"
        self.start_timeout_s = start_timeout_s

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/v1/models/{self.spec.name}:predict"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "server.pid"

    def is_up(self) -> bool:
        try:
            return _http("GET", f"{self.base_url}/healthz", timeout=2.0)[0] == 200
        except OSError:
            return False

    def start(self) -> int:
        """Start ``mlops serve`` for this spec (which reads the saved deployment) and wait until it
        answers. The spec is handed over as a file, so specs from any folder can be served."""
        folder = self.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        spec_file = folder / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(self.spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False))
        env = {**os.environ, **self.env, "MLFLOW_TRACKING_URI": self.tracking_uri}
        d = self.spec.deployment
        cmd = [
            sys.executable,
            "-m",
            "mlops_assets.cli",
            "serve",
            "--spec",
            str(spec_file),
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
                tail = (folder / "server.log").read_text()[-2000:]
                raise EndpointError(f"the server for {self.spec.name} exited with {proc.returncode}:\n{tail}")
            if self.is_up():
                return proc.pid
            time.sleep(0.2)
        raise EndpointError(
            f"the server for {self.spec.name} did not answer on {self.base_url} within {self.start_timeout_s:.0f} s"
        )

    def stop(self) -> bool:
        """Stop the server this target started (by its process group); False when none runs."""
        if not self.pid_file.exists():
            return False
        pid = int(self.pid_file.read_text())
        self.pid_file.unlink()
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        for _ in range(100):
            if not _alive(pid):
                return True
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
        return True

    def apply(self, deployment: Deployment) -> dict[str, Any]:
        """Save the deployment (a restarted server serves it) and tell the running server, or start one."""
        self.state.save(deployment)
        if not self.is_up():
            pid = self.start()
            return {"action": f"started server (pid {pid})", "url": self.predict_url}
        status, body = _http("PUT", f"{self.base_url}/v1/models/{self.spec.name}/deployment", deployment.to_json(), timeout=300)
        if status != 200:
            raise EndpointError(f"{self.base_url} refused deployment {deployment.to_json()}: {status} {body}")
        return {"action": "hot-swapped (no restart)", "url": self.predict_url, "loaded": body.get("loaded")}

    def verify(self, deployment: Deployment, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait until the server is ready and serves exactly ``deployment``; raise otherwise."""
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, body = _http("GET", f"{self.base_url}/readyz")
            if status == 200:
                served = Deployment.from_json({k: body.get(k) for k in Deployment.__dataclass_fields__})
                if (served.stable, served.canary, served.canary_percent) == (
                    deployment.stable,
                    deployment.canary,
                    deployment.canary_percent,
                ):
                    return {"ready": True, **served.to_json()}
                raise EndpointError(f"{self.base_url} serves {served.to_json()}, not {deployment.to_json()}")
            time.sleep(0.2)
        raise EndpointError(f"{self.base_url} is not ready after {timeout_s:.0f} s: {body}")


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
    return True
