"""The ``deployment:`` section of a spec: where and how the model is served, and how a new champion
reaches the endpoint (the canary). Read by the ``endpoint_<model>`` asset, ``mlops serve`` and the
rollout targets; part of the spec so that serving is reviewed with the model it serves.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlops_assets.specs.base import StrictModel


class CanarySpec(StrictModel):
    """How a new champion reaches the endpoint. With ``traffic_percent`` 0 it takes all traffic at
    once. Otherwise it serves that share of requests beside the version it replaces, and once
    ``window_minutes`` have passed and each side has served ``min_requests`` requests the canary check
    compares them: the error rate may rise by at most ``max_error_rate_increase``, the p99 latency may
    be at most ``max_latency_ratio`` times the stable side's (plus ``latency_slack_ms``, so that a
    0.8 ms vs 1.1 ms difference is not a regression), and, once ``min_labelled`` served predictions
    of each side have labels, the metric may fall by at most ``max_metric_drop``: with
    ``metric_confidence`` (default 0.9) a larger drop rolls back only when an unpaired bootstrap of
    the two sides shows it at that confidence (a few hundred labelled predictions a side cannot
    tell a 0.02 drop from noise); ``null`` compares the two figures as they are. Likewise a p99
    beyond its limit rolls back only when shown at ``latency_confidence`` (default 0.9; the p99 of a
    few hundred requests is their two or three slowest, which one pause of the host moves). Passing promotes it
    to 100 %; failing rolls the endpoint and the ``champion`` alias back to the stable version."""

    traffic_percent: float = Field(0.0, ge=0, lt=100)
    window_minutes: float = Field(60.0, gt=0)
    min_requests: int = Field(100, ge=1)
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)
    max_latency_ratio: float = Field(1.5, ge=1)
    latency_slack_ms: float = Field(5.0, ge=0)
    max_metric_drop: float = Field(0.02, ge=0)
    metric_confidence: float | None = Field(0.9, gt=0.5, lt=1)
    latency_confidence: float | None = Field(0.9, gt=0.5, lt=1)
    min_labelled: int = Field(100, ge=1)


class KubernetesTargetSpec(StrictModel):
    """A Kubernetes endpoint: a KServe ``InferenceService`` (KServe splits the canary traffic) or a
    ``Deployment`` + ``Service`` running the same server image (the server splits it)."""

    kind: Literal["kserve", "deployment"] = "deployment"
    namespace: str = "mlops"
    image: str = "ghcr.io/mlops-assets/serving:latest"
    replicas: int = Field(2, ge=1)
    cpu: str = "1"
    memory: str = "1Gi"
    service_account: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of the server container.")


class SageMakerTargetSpec(StrictModel):
    """A SageMaker real-time endpoint: one production variant per served version, weighted by the
    canary share. ``image_uri`` is the server image pushed to ECR; ``model_data_prefix`` is where the
    model artifacts of each version are copied (``<prefix>/<model>/<version>/model.tar.gz``)."""

    region: str = "us-east-1"
    image_uri: str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlops-serving:latest"
    role_arn: str = "arn:aws:iam::123456789012:role/mlops-sagemaker"
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = Field(1, ge=1)
    model_data_prefix: str = "s3://mlops-models"


class UnknownEntitySpec(StrictModel):
    """What the server does for an entity the online store has never seen (a new plane, a new
    route): the request is answered and the response flags the row. A past rate gets the prior its
    offline smoothing shrinks towards (the window's mean label, materialized beside the rates), the
    value training gives a group without history; a lookup is left missing, so the model's own
    imputation applies as in training. ``defaults`` fills only what is still missing after that
    (a deliberate override: it makes serving differ from training)."""

    defaults: dict[str, float | str] = Field(default_factory=dict)


class DeploymentSpec(StrictModel):
    """Where and how the model is served (``endpoint_<model>`` asset, ``mlops serve``)."""

    target: Literal["local", "kubernetes", "sagemaker"] = "local"
    host: str = Field("127.0.0.1", description="Local target: interface the server listens on.")
    port: int = Field(8787, ge=1, le=65535, description="Local target: port of the server.")
    max_batch_rows: int = Field(10_000, ge=1, description="Rows one request may carry (413 above).")
    max_body_mb: float = Field(16.0, gt=0, le=1024, description="Largest request body, in MiB (413 above, before parsing).")
    event_time_margin_days: int = Field(
        30,
        ge=0,
        description="How far outside the spec's partitions (start - margin .. end or today + margin) an "
        "event_timestamp may be; anything else is refused 422.",
    )
    api_keys: bool = Field(
        False,
        description="Predictions need an API key (X-API-Key or Authorization: Bearer) from MLOPS_API_KEYS "
        "(comma-separated). Off by default: the local endpoint listens on loopback only.",
    )
    canary: CanarySpec = CanarySpec()
    unknown_entity: UnknownEntitySpec = UnknownEntitySpec()
    kubernetes: KubernetesTargetSpec = KubernetesTargetSpec()
    sagemaker: SageMakerTargetSpec = SageMakerTargetSpec()
