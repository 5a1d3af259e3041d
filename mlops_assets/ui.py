"""``mlops ui``: the Dagster UI and the MLflow UI of one home, started and stopped together.

The model, gate and run metadata link to MLflow (``MlflowTracking.ui_url``, by default
``http://127.0.0.1:5000`` for a file-backed store); those links only work while an MLflow UI serves
the same store. So one command starts both: ``dagster dev`` on the workspace and, when the tracking
store is local (SQLite), ``mlflow ui`` on that store. A tracking server (http) is already a UI, and
is only printed.

Each server runs in its own process group, so stopping reaches its children (``dagster dev``
starts a webserver, a daemon and a code server). Ctrl-C, SIGTERM or either server exiting stops
both: SIGTERM to each group, SIGKILL to what is left after a grace period. A stop by the user exits
0 (``make ui`` then ends quietly, not with "Error 1"); a server that died on its own exits 1 and
says which.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

GRACE_SECONDS = 15.0
READY_TIMEOUT_SECONDS = 180.0
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    name: str
    url: str
    health: str  # a URL that answers 200 once the server is up
    proc: subprocess.Popen


def _start(name: str, argv: list[str], url: str, health: str, env: dict[str, str]) -> Server:
    # its own session (process group): a stop reaches every process it starts, and the terminal's
    # Ctrl-C reaches only us, so the two stop in order instead of racing
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True)
    return Server(name, url, health, proc)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(servers: list[Server]) -> None:
    for s in servers:
        if s.proc.poll() is None:
            os.killpg(s.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for s in servers:
        try:
            s.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # what is left of the group (also children of a server that exited first)
            os.killpg(s.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        s.proc.wait()


class _Stop(Exception):
    pass


def run_ui(host: str = "127.0.0.1", port: int = 3000, mlflow_port: int | None = None) -> int:
    """Start both UIs on ``host``; block until stopped. Returns the exit code. The MLflow UI's port
    is by default the one the UI's links point at (``MLOPS_MLFLOW_UI_URL``, else 5000)."""
    from mlops_assets.environments import current_env, ensure_dagster_home, mlops_home, runtime

    home = mlops_home()
    env = dict(os.environ)
    if current_env() == "local":
        env["DAGSTER_HOME"] = str(ensure_dagster_home(home))
    mlflow = runtime()["mlflow"]
    tracking = mlflow.tracking_uri  # the profile's, secrets from the environment
    if mlflow_port is None:
        mlflow_port = urlsplit(mlflow.ui_base_url()).port or 5000
    bin_dir = Path(sys.executable).parent
    servers = []

    def interrupted(signum, frame):
        raise _Stop

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if tracking.startswith(("http://", "https://")):
            print("MLflow UI: the profile's tracking server (the links in the Dagster UI point there)")
        else:
            servers.append(
                _start(
                    "MLflow UI",
                    [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", tracking, "--host", host, "--port", str(mlflow_port)],
                    f"http://{host}:{mlflow_port}",
                    f"http://{host}:{mlflow_port}/health",
                    env,
                )
            )
        servers.append(
            _start(
                "Dagster UI",
                [str(bin_dir / "dagster"), "dev", "-w", str(ROOT / "workspace.yaml"), "-h", host, "-p", str(port)],
                f"http://{host}:{port}",
                f"http://{host}:{port}/server_info",
                env,
            )
        )
        waiting = list(servers)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while all(s.proc.poll() is None for s in servers):
            for s in list(waiting):
                if _answers(s.health):
                    print(f"{s.name}: {s.url}", flush=True)
                    waiting.remove(s)
                    if not waiting:
                        print("Ctrl-C stops both.", flush=True)
            if waiting and time.monotonic() > deadline:
                print(
                    f"mlops ui: {', '.join(s.name for s in waiting)} not answering after {READY_TIMEOUT_SECONDS:.0f} s; still waiting",
                    file=sys.stderr,
                )
                deadline = float("inf")
            time.sleep(0.5)
        dead = next(s for s in servers if s.proc.poll() is not None)
        print(f"mlops ui: the {dead.name} exited ({dead.proc.returncode}); stopping the rest", file=sys.stderr)
        return 1
    except _Stop:
        print("\nmlops ui: stopping", flush=True)
        return 0
    finally:
        for sig in previous:  # a second Ctrl-C or SIGTERM does not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        _stop(servers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
