"""Rollout: the Dagster side of serving. The endpoint asset decides a ``Deployment``
(``core.rollout.plan_deployment``) and hands it to the spec's target, which makes it serve there:

    local        rollout.local.LocalTarget       a ``mlops serve`` process on this machine
    kubernetes   rollout.kubernetes              a Deployment or KServe InferenceService (rendered here,
                 rollout.kubernetes_schemas      validated offline against the Kubernetes schemas,
                 rollout.kubernetes_cluster      applied and verified by KubernetesTarget)
    sagemaker    rollout.sagemaker               a SageMaker endpoint with one variant per version
                 rollout.sagemaker_container     (its container's environment and model artifact)

A canary on any target is judged on what each version served (``rollout.canary_stats``, from the
prediction store).

Every target has the same two operations (``Target``). The model server itself (``server/``) is a
separate program: the two sides share only plain modules (``core``, ``endpoint_state``,
``prediction_store``), never each other's code.
"""

from __future__ import annotations

from typing import Any, Protocol

from mlops_assets.core.rollout import Deployment


class EndpointError(RuntimeError):
    """The endpoint does not serve what was decided; the message says what it serves instead."""


class Target(Protocol):
    def apply(self, deployment: Deployment) -> dict[str, Any]:
        """Make the target serve ``deployment``; what was done, for the asset's metadata."""

    def verify(self, deployment: Deployment) -> dict[str, Any]:
        """Wait until the target is healthy and serves exactly ``deployment``; raise ``EndpointError`` otherwise."""
