"""Where endpoints are deployed: one resource that turns a spec's ``deployment.target`` into the
object that applies a deployment there and verifies it (``apply`` / ``verify``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mlops_assets.resources.mlflow import MlflowTracking
from mlops_assets.resources.storage import LakeStorage
from mlops_assets.specs import ModelSpec


class EndpointDeployer(dg.ConfigurableResource):
    """Deploys model servers. The desired deployment and audit history of each endpoint live in the
    platform's storage (``LakeStorage.endpoint_dir``); ``home`` is a folder on this machine for what
    only this machine can use: the local target's server log, pid and spec file.

    The local target deploys through the server's admin route, which always needs a bearer token:
    ``admin_token`` when configured (the cloud profiles read ``MLOPS_ADMIN_TOKEN`` through
    ``dg.EnvVar``, so the value is never in the definitions or the UI), else the home's own token. The
    Kubernetes and SageMaker targets hand the same variable to their containers (a Secret reference,
    or the deploying process's environment), never a value from here."""

    home: str = Field(description="Local folder for the local target's server log and pid (<home>/endpoints/<spec>/).")
    kube_config: str | None = Field(None, description="kubeconfig file for the kubernetes target (default: in-cluster).")
    kube_context: str | None = Field(None, description="kubeconfig context for the kubernetes target.")
    aws_endpoint_url: str | None = Field(None, description="AWS API endpoint override (an emulator in tests).")
    admin_token: str | None = Field(
        None,
        description="Bearer token of the model servers' admin route, which the platform's own deploys send "
        "(cloud profiles: dg.EnvVar('MLOPS_ADMIN_TOKEN')). None: the home's token (environments.admin_token), "
        "generated once into <home>/secrets. A secret: never logged nor put in metadata.",
    )

    def local_run_dir(self, spec: str) -> Path:
        return Path(self.home) / "endpoints" / spec

    def target(self, spec: ModelSpec, mlflow: MlflowTracking, lake: LakeStorage) -> Any:
        if spec.deployment is None:
            raise ValueError(f"spec {spec.name!r} has no deployment section")
        kind = spec.deployment.target
        if kind == "local":
            from mlops_assets.rollout.local import LocalTarget

            run_dir = self.local_run_dir(spec.name)
            return LocalTarget(
                spec,
                lake,
                mlflow.tracking_uri,
                run_dir,
                env={"MLOPS_HOME": self.home},
                admin_token=self.admin_token,
                registry_uri=mlflow.registry_uri,
            )
        if kind == "kubernetes":
            return _Kubernetes(spec, mlflow, self.kube_config, self.kube_context)
        return _SageMaker(spec, mlflow, self.aws_endpoint_url)


class _Kubernetes:
    """Render the manifests, validate them offline, apply them with the Kubernetes client, verify."""

    def __init__(self, spec: ModelSpec, mlflow: MlflowTracking, kube_config: str | None, kube_context: str | None):
        from mlops_assets.rollout.kubernetes_cluster import KubernetesTarget

        self.spec, self.mlflow = spec, mlflow
        self.cluster = KubernetesTarget(kubeconfig=kube_config, context=kube_context)

    def apply(self, deployment) -> dict[str, Any]:
        from mlops_assets.rollout.kubernetes import render
        from mlops_assets.rollout.kubernetes_schemas import validate

        manifests = render(self.spec, deployment, tracking_uri=self.mlflow.tracking_uri)
        validate(manifests)
        return {"action": "; ".join(self.cluster.apply(manifests))}

    def verify(self, deployment) -> dict[str, Any]:
        return self.cluster.verify(self.spec, deployment)


class _SageMaker:
    """Copy each served version's MLflow model to S3, point the endpoint's variants at them, verify."""

    def __init__(self, spec: ModelSpec, mlflow: MlflowTracking, endpoint_url: str | None):
        from mlops_assets.rollout.sagemaker import SageMakerTarget

        self.spec, self.mlflow = spec, mlflow
        self.endpoint = SageMakerTarget(spec, endpoint_url=endpoint_url)

    def apply(self, deployment) -> dict[str, Any]:
        from mlflow.artifacts import download_artifacts

        self.mlflow.client()  # points MLflow at this resource's tracking server
        model_data = {}
        for version in deployment.versions:
            existing = self.endpoint.describe_model(version)
            if existing is not None:  # a version's model is immutable: its artifact is in S3 already
                model_data[version] = existing["PrimaryContainer"]["ModelDataUrl"]
                continue
            with tempfile.TemporaryDirectory() as tmp:
                local = download_artifacts(artifact_uri=f"models:/{self.spec.name}/{version}", dst_path=tmp)
                model_data[version] = self.endpoint.upload_model(version, Path(local))
        return self.endpoint.apply(deployment, model_data)

    def verify(self, deployment) -> dict[str, Any]:
        return self.endpoint.verify(deployment)
