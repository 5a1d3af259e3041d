"""`dagster dev` and `dg dev` both find the code location and serve its asset graph.

Each server runs on a free loopback port in its own process group, is asked over GraphQL for the
asset graph, and is stopped by its process-group id (the dev server ignores a plain SIGTERM sent
to its parent when started from a script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from mlops_assets_tests.conftest import REPO, free_port, stop_process_group

BIN = os.path.dirname(sys.executable)
QUERY = "{ assetNodes { assetKey { path } groupName } }"


def asset_graph(port: int, deadline: float) -> dict[str, str] | None:
    body = json.dumps({"query": QUERY}).encode()
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                nodes = json.loads(resp.read())["data"]["assetNodes"]
            if nodes:
                return {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        except (OSError, KeyError, TypeError, ValueError):
            pass
        time.sleep(1)
    return None


@pytest.mark.parametrize(
    "command",
    [
        ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "{port}"],
        ["dg", "dev", "--host", "127.0.0.1", "--port", "{port}"],
    ],
    ids=["dagster-dev", "dg-dev"],
)
def test_dev_server_serves_the_asset_graph(tmp_path, command):
    port = free_port()
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "MLOPS_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "VIRTUAL_ENV": os.path.dirname(BIN),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    args = [os.path.join(BIN, command[0]), *(a.format(port=port) for a in command[1:])]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - held by the server process, closed in the finally
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        graph = asset_graph(port, time.monotonic() + 120)
    finally:
        stop_process_group(proc)
        log.close()
    assert graph is not None, (tmp_path / "server.log").read_text()[-4000:]
    stages = (
        "raw",
        "dataset",
        "feature_registry",
        "features",
        "online_features",
        "training_set",
        "model",
        "champion",
        "predictions",
    )
    assert {f"flight_delays/{s}" for s in stages} <= set(graph)
    assert graph["flight_delays/model"] == "flight_delays"
