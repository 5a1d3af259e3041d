"""The desired deployment of an endpoint and its audit history, as JSON files in the platform's storage.

``<endpoints>/<spec>/deployment.json`` says what should serve: the stable version, an optional
canary version and its share of the traffic, and when the canary started. A server reads it when it
starts (so a restarted server serves what was last decided) and the endpoint asset rewrites it
before telling the running server. ``history/`` is the audit trail: one file per deploy, canary
start, promotion and rollback (an object store cannot append, so each entry is its own object, named
by its time), also written to the model versions' MLflow tags. The folder is a local path or an
object-store URI (``LakeStorage.endpoint_dir``), so a server in a container reads the same state.

Two writers share the history, told apart by ``action``: the endpoint asset records its decisions
(``deploy``, ``canary_started``, ``rolled_back``, ``promoted``, ...) and the model server records
every change of what it actually serves (``server_start``, ``server_swap``: ``SERVER_ACTIONS``),
whoever asked for it, *before* the change takes effect, with its ``source`` and ``client``. A swap
made by hand on the admin route is therefore in the trail even though no asset decided it, and the
deployment it leaves is saved, so a restarted server serves it again.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from mlops_assets import files
from mlops_assets.core.rollout import Deployment

__all__ = ["SERVER_ACTIONS", "Deployment", "EndpointState"]

SERVER_ACTIONS = ("server_start", "server_swap")  # history entries the model server writes itself


class EndpointState:
    def __init__(self, folder: str):
        self.folder = folder
        self.deployment_file = files.join(folder, "deployment.json")
        self.history_dir = files.join(folder, "history")
        self.legacy_history = files.join(folder, "history.jsonl")  # one file per endpoint, before object stores

    def load(self) -> Deployment | None:
        if not files.exists(self.deployment_file):
            return None
        return Deployment.from_json(json.loads(files.read_text(self.deployment_file)))

    def save(self, deployment: Deployment) -> None:
        files.write_text(self.deployment_file, json.dumps(deployment.to_json(), indent=1))

    def record(self, event: dict[str, Any]) -> str:
        """Write one history entry (its own file, named by time and process); returns its URI."""
        name = f"{time.time_ns():020d}-{os.getpid()}.json"
        return files.write_text(files.join(self.history_dir, name), json.dumps(event))

    def history(self, *, decisions_only: bool = False) -> list[dict[str, Any]]:
        """Every entry, oldest first; ``decisions_only`` leaves out what the server recorded itself
        (``SERVER_ACTIONS``), keeping the endpoint asset's decisions."""
        events = []
        if files.exists(self.legacy_history):
            events += [json.loads(line) for line in files.read_text(self.legacy_history).splitlines() if line.strip()]
        events += [json.loads(files.read_text(e.uri)) for e in files.listing(self.history_dir, ".json")]
        if decisions_only:
            events = [e for e in events if e.get("action") not in SERVER_ACTIONS]
        return events


def server_identity(endpoint_dir: str, registry_uri: str) -> dict[str, str]:
    """What a model server says it serves (``GET /healthz``: ``identity``) and what a deploy expects
    of the server on its port: the endpoint's state folder (home and spec) and the MLflow registry,
    with any password removed. Two servers of different homes or registries never match."""
    return {"endpoint": endpoint_dir, "registry": redact_uri(registry_uri)}


def redact_uri(uri: str) -> str:
    """A URL with its password replaced, fit to print and to compare."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return uri
