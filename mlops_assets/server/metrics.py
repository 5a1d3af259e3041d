"""Prometheus metrics of one model server, in their own registry (several apps in one process,
as in tests, do not clash): requests by variant, version and status (refused ones under variant
``none``), latency, predictions by class or value, batch sizes, what is served, unknown entities."""

from __future__ import annotations

import numpy as np

from mlops_assets.core.rollout import Deployment
from mlops_assets.specs import ModelSpec

STABLE, CANARY = "stable", "canary"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
VALUE_BUCKETS = tuple(s * m for m in (1, 10, 100, 1000, 10000) for s in (1, 2, 5))


class Metrics:
    """Prometheus metrics of one server (its own registry, so several apps in a process do not clash)."""

    def __init__(self, spec: ModelSpec):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.model = spec.name
        self.classification = spec.target.task == "classification"
        self.requests = Counter(
            "mlops_requests",
            "Prediction requests by variant, served version and HTTP status.",
            ["model", "variant", "version", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_request_latency_seconds",
            "Time to answer a prediction request (parse, features, predict).",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        if self.classification:
            self.predictions = Counter(
                "mlops_predictions",
                "Predictions by served version and predicted class.",
                ["model", "version", "predicted_class"],
                registry=self.registry,
            )
        else:
            self.values = Histogram(
                "mlops_prediction_value",
                "Predicted values (buckets of the value).",
                ["model", "version"],
                buckets=VALUE_BUCKETS,
                registry=self.registry,
            )
        self.batch = Histogram(
            "mlops_batch_requests",
            "Requests answered by one model call: concurrent requests are scored together.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.served_version = Gauge(
            "mlops_served_model_version",
            "Model version served by each variant (absent when none).",
            ["model", "variant"],
            registry=self.registry,
        )
        self.canary_percent = Gauge(
            "mlops_canary_traffic_percent", "Share of requests sent to the canary.", ["model"], registry=self.registry
        )
        self.unknown = Counter(
            "mlops_unknown_entities",
            "Rows whose entity the online store did not know (answered with defaults).",
            ["model", "entity"],
            registry=self.registry,
        )

    def served(self, d: Deployment) -> None:
        for variant, version in ((STABLE, d.stable), (CANARY, d.canary)):
            if version is None:
                try:
                    self.served_version.remove(self.model, variant)
                except KeyError:
                    pass
            else:
                self.served_version.labels(self.model, variant).set(float(version))
        self.canary_percent.labels(self.model).set(d.canary_percent)

    def observe(self, variant: str, version: str, code: int, seconds: float | None, outputs: np.ndarray | None) -> None:
        self.requests.labels(self.model, variant, version, str(code)).inc()
        if seconds is not None:
            self.latency.labels(self.model, variant).observe(seconds)
        if outputs is None:
            return
        if self.classification:
            positives = int(outputs.sum())
            if positives:
                self.predictions.labels(self.model, version, "1").inc(positives)
            if len(outputs) - positives:
                self.predictions.labels(self.model, version, "0").inc(len(outputs) - positives)
        else:
            hist = self.values.labels(self.model, version)
            for v in outputs:
                hist.observe(float(v))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
