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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Deployment:
    """What an endpoint serves: ``stable`` takes ``100 - canary_percent`` % of the requests."""

    stable: str | None = None
    canary: str | None = None
    canary_percent: float = 0.0
    canary_started: str | None = None  # ISO 8601, UTC

    def __post_init__(self) -> None:
        if self.canary is None and self.canary_percent:
            raise ValueError("a canary share needs a canary version")
        if not 0 <= self.canary_percent < 100:
            raise ValueError(f"canary_percent must be in [0, 100), got {self.canary_percent}")

    @property
    def versions(self) -> list[str]:
        return [v for v in (self.stable, self.canary) if v is not None]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown deployment fields {sorted(unknown)}")
        return cls(
            stable=None if data.get("stable") is None else str(data["stable"]),
            canary=None if data.get("canary") is None else str(data["canary"]),
            canary_percent=float(data.get("canary_percent") or 0.0),
            canary_started=data.get("canary_started"),
        )


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
