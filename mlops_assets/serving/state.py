"""The desired deployment of an endpoint and its audit history, as plain JSON files.

``<home>/endpoints/<spec>/deployment.json`` says what should serve: the stable version, an optional
canary version and its share of the traffic, and when the canary started. The local server reads it
when it starts (so a restarted server serves what was last decided) and the endpoint asset rewrites
it before telling the running server. ``history.jsonl`` is the audit trail: one line per deploy,
canary start, promotion and rollback, also written to the model versions' MLflow tags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlops_assets.core.serving import Deployment

__all__ = ["Deployment", "EndpointState"]


class EndpointState:
    def __init__(self, home: str | Path, spec: str):
        self.folder = Path(home) / "endpoints" / spec
        self.deployment_file = self.folder / "deployment.json"
        self.history_file = self.folder / "history.jsonl"

    def load(self) -> Deployment | None:
        if not self.deployment_file.exists():
            return None
        return Deployment.from_json(json.loads(self.deployment_file.read_text()))

    def save(self, deployment: Deployment) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.deployment_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(deployment.to_json(), indent=1))
        os.replace(tmp, self.deployment_file)

    def record(self, event: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.history_file.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def history(self) -> list[dict[str, Any]]:
        if not self.history_file.exists():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]
