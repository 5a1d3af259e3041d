"""The SageMaker target of the ``endpoint_<model>`` asset: a desired ``Deployment`` made real on a SageMaker endpoint.

Why it looks the way it does:

- SageMaker splits traffic between *production variants*, not inside one container, so the canary is a
  second variant (``canary``) next to ``stable``, each running our server image on one model version
  (``MLOPS_DEPLOYMENT={"stable": "<version>"}`` on the container: inside SageMaker the server serves one
  version, the variant's). The traffic split is the variants' weights.
- SageMaker models and endpoint configs are immutable. A model per version (``<spec>-v<version>``) is
  created once and reused; every change of *what* is served needs a new endpoint config (named with a
  timestamp, so it is unique and sorts by age) and ``update_endpoint``, a blue/green replacement that
  takes minutes. A change of the *share* only (the canary going from 10 % to 50 %) goes through
  ``update_endpoint_weights_and_capacities`` instead: no new instances, the config stays.
- ``apply`` is idempotent: applying the deployment the endpoint already serves changes nothing, so the
  asset can be rematerialized freely. ``verify`` reads back what SageMaker reports and names any
  difference, so the asset's health check does not trust the calls that were made.
- The model artifact is a deterministic ``model.tar.gz`` (sorted entries, zeroed times and owners), so
  uploading the same MLflow model twice is detected by its MD5 and skipped.
- The container runs on the platform's profile: ``sagemaker_container`` says what its model definition
  is given (environment, artifact) and where the secret values then live.

Plain Python, no dagster import; boto3 is imported inside the methods so importing this module is free.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlops_assets.endpoint_state import Deployment
from mlops_assets.rollout.sagemaker_container import deterministic_tar_gz, profile_environment
from mlops_assets.server import DEPLOYMENT_ENV, MODEL_DIR_ENV, SAGEMAKER_MODEL_DIR, SPEC_ENV
from mlops_assets.specs import ModelSpec

STABLE, CANARY = "stable", "canary"
MAX_NAME = 63  # SageMaker names: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
TRANSITIONAL = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
_VERSION_RE = re.compile(r"^[A-Za-z0-9]+$")
_SHARE_TOLERANCE = 0.01  # percentage points


def _fit(name: str, limit: int) -> str:
    """``name`` if it fits in ``limit`` characters, else a truncated name made unique by a short hash."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:6]
    return f"{name[: limit - 7].rstrip('-')}-{digest}"


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _not_found(exc: Exception) -> bool:
    """SageMaker answers a missing model, config or endpoint with a ValidationException 'Could not find ...'."""
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", ""))
    return _error_code(exc) == "ValidationException" and "could not find" in message.lower()


def _share(weights: dict[str, float]) -> dict[str, float]:
    """Weights as percentages of the traffic (SageMaker weights are relative: 1 alone is 100 %)."""
    total = sum(weights.values())
    return {k: (100.0 * w / total if total > 0 else 0.0) for k, w in weights.items()}


def variant_weight(variant: dict[str, Any]) -> float:
    """The weight a variant of ``describe_endpoint`` serves with.

    ``CurrentWeight`` is what SageMaker routes by now; ``DesiredWeight`` is the target of an update still
    in progress. Once the endpoint is InService both are equal on AWS, and moto 5.2.5 always fills both
    with the same value (also after ``update_endpoint_weights_and_capacities``). We read ``CurrentWeight``
    and fall back to ``DesiredWeight``; moto leaves both out for a weight of 0 (it tests truthiness), so
    a variant with neither counts as 0.
    """
    for key in ("CurrentWeight", "DesiredWeight"):
        if variant.get(key) is not None:
            return float(variant[key])
    return 0.0


class SageMakerTarget:
    """One spec's SageMaker endpoint (named after the spec, ``_`` -> ``-``), its models and configs."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        endpoint_url: str | None = None,
        session: Any = None,
        poll_seconds: float = 15.0,
        timeout_seconds: float = 3600.0,
    ):
        if spec.deployment is None:
            raise ValueError(f"spec {spec.name!r} has no deployment section")
        import boto3

        self.spec = spec
        self.target = spec.deployment.sagemaker
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        session = session or boto3.Session(region_name=self.target.region)
        self.sagemaker = session.client("sagemaker", region_name=self.target.region, endpoint_url=endpoint_url)
        self.s3 = session.client("s3", region_name=self.target.region, endpoint_url=endpoint_url)
        base = spec.name.replace("_", "-").strip("-")
        self.endpoint_name = _fit(base, MAX_NAME)
        self._config_prefix = _fit(base, MAX_NAME - 19) + "-c"  # + 17-digit UTC timestamp (ms)
        self._config_re = re.compile(re.escape(self._config_prefix) + r"\d{17}$")

    # --- names -------------------------------------------------------------------------------------

    def model_name(self, version: str) -> str:
        if not _VERSION_RE.match(version):
            raise ValueError(f"model version {version!r} must be alphanumeric to name a SageMaker model")
        suffix = f"-v{version}"
        return _fit(self.spec.name.replace("_", "-").strip("-"), MAX_NAME - len(suffix)) + suffix

    def new_config_name(self) -> str:
        return self._config_prefix + datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")[:-3]

    # --- model artifacts ---------------------------------------------------------------------------

    def model_data_uri(self, version: str) -> str:
        prefix = self.target.model_data_prefix
        parsed = urlparse(prefix)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"sagemaker.model_data_prefix must be an s3:// URI, got {prefix!r}")
        key = "/".join(p for p in (parsed.path.strip("/"), self.spec.name, version, "model.tar.gz") if p)
        return f"s3://{parsed.netloc}/{key}"

    def upload_model(self, version: str, model_dir: Path) -> str:
        """Pack the MLflow model directory as ``model.tar.gz`` and put it under the prefix; the upload is
        skipped when the object there already has the same size and MD5 (ETag, or our ``md5`` metadata
        for multipart uploads). Returns the S3 URI."""
        from botocore.exceptions import ClientError

        model_dir = Path(model_dir)
        if not (model_dir / "MLmodel").is_file():
            raise ValueError(f"{model_dir} is not an MLflow model directory (no MLmodel file)")
        uri = self.model_data_uri(version)
        parsed = urlparse(uri)
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "model.tar.gz"
            md5 = deterministic_tar_gz(model_dir, archive)
            size = archive.stat().st_size
            try:
                head = self.s3.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                    raise
                head = None
            same_md5 = head is not None and md5 in (head.get("ETag", "").strip('"'), head.get("Metadata", {}).get("md5"))
            if same_md5 and head.get("ContentLength") == size:  # type: ignore[union-attr]
                return uri
            self.s3.upload_file(
                str(archive), bucket, key, ExtraArgs={"Metadata": {"md5": md5}, "ContentType": "application/gzip"}
            )
        return uri

    # --- apply -------------------------------------------------------------------------------------

    def desired_variants(self, deployment: Deployment) -> list[dict[str, Any]]:
        """The production variants a deployment asks for: ``stable`` alone (weight 1), or ``stable`` and
        ``canary`` weighted ``100 - canary_percent`` and ``canary_percent``."""
        if deployment.stable is None:
            raise ValueError("the deployment has no stable version: nothing to serve")
        if deployment.canary is None:
            return [{"variant": STABLE, "version": deployment.stable, "model": self.model_name(deployment.stable), "weight": 1.0}]
        return [
            {
                "variant": STABLE,
                "version": deployment.stable,
                "model": self.model_name(deployment.stable),
                "weight": 100.0 - deployment.canary_percent,
            },
            {
                "variant": CANARY,
                "version": deployment.canary,
                "model": self.model_name(deployment.canary),
                "weight": float(deployment.canary_percent),
            },
        ]

    def describe_model(self, version: str) -> dict[str, Any] | None:
        """The SageMaker model of a version, or None when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            return self.sagemaker.describe_model(ModelName=self.model_name(version))
        except ClientError as exc:
            if not _not_found(exc):
                raise
            return None

    def container_environment(self, version: str) -> dict[str, str]:
        """The ``Environment`` of a version's container: what it serves and the profile it runs on."""
        return {
            # SageMaker unpacks ModelDataUrl into /opt/ml/model: the server loads the version from
            # there (MODEL_DIR_ENV), not from the registry, and serves the spec named here
            DEPLOYMENT_ENV: json.dumps({"stable": version}),
            MODEL_DIR_ENV: SAGEMAKER_MODEL_DIR,
            SPEC_ENV: self.spec.name,
            **profile_environment(),
        }

    def ensure_model(self, version: str, model_data_url: str) -> bool:
        """Create the SageMaker model of a version unless it exists; True if it was created. An existing
        model with another image, artifact or environment is an error: models are immutable and named by
        version (the message names the variables that differ, never their values)."""
        name = self.model_name(version)
        environment = self.container_environment(version)
        existing = self.describe_model(version)
        if existing is not None:
            container = existing.get("PrimaryContainer", {})
            found = (container.get("Image"), container.get("ModelDataUrl"))
            if found != (self.target.image_uri, model_data_url):
                raise RuntimeError(
                    f"SageMaker model {name} exists with image {found[0]!r} and data {found[1]!r}, not "
                    f"{self.target.image_uri!r} and {model_data_url!r}; models are immutable: delete it to recreate it"
                )
            had = container.get("Environment") or {}
            differ = sorted(k for k in set(had) | set(environment) if had.get(k) != environment.get(k))
            if differ:
                raise RuntimeError(
                    f"SageMaker model {name} exists with another container environment (differs in {', '.join(differ)} "
                    "from this process's profile); models are immutable: delete it to recreate it"
                )
            return False
        self.sagemaker.create_model(
            ModelName=name,
            ExecutionRoleArn=self.target.role_arn,
            PrimaryContainer={
                "Image": self.target.image_uri,
                "ModelDataUrl": model_data_url,
                "Environment": environment,
            },
            Tags=[{"Key": "mlops:spec", "Value": self.spec.name}, {"Key": "mlops:version", "Value": version}],
        )
        return True

    def describe_endpoint(self) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.sagemaker.describe_endpoint(EndpointName=self.endpoint_name)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise

    def wait_in_service(self, config_name: str | None = None) -> dict[str, Any]:
        """Poll until the endpoint is InService (on ``config_name`` when given) and return its description.

        Raises ``RuntimeError`` with SageMaker's ``FailureReason`` when it ends Failed, when an update was
        rolled back (InService again, but on another config, with a failure reason), or on timeout."""
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            desc = self.describe_endpoint()
            if desc is None:
                raise RuntimeError(f"SageMaker endpoint {self.endpoint_name} does not exist")
            status = desc.get("EndpointStatus")
            reason = desc.get("FailureReason")
            if status == "Failed":
                raise RuntimeError(f"SageMaker endpoint {self.endpoint_name} failed: {reason or 'no FailureReason given'}")
            if status == "InService":
                if config_name is None or desc.get("EndpointConfigName") == config_name:
                    return desc
                if reason:
                    raise RuntimeError(
                        f"SageMaker endpoint {self.endpoint_name}: the update to {config_name} was rolled back "
                        f"(still on {desc.get('EndpointConfigName')}): {reason}"
                    )
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"SageMaker endpoint {self.endpoint_name} is still {status} (config {desc.get('EndpointConfigName')}) "
                    f"after {self.timeout_seconds:.0f} s"
                )
            time.sleep(self.poll_seconds)

    def _wait_deleted(self) -> None:
        deadline = time.monotonic() + self.timeout_seconds
        while self.describe_endpoint() is not None:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"SageMaker endpoint {self.endpoint_name} is still there after {self.timeout_seconds:.0f} s")
            time.sleep(self.poll_seconds)

    def served_variants(self, endpoint: dict[str, Any]) -> list[dict[str, Any]]:
        """What an endpoint serves: each variant's model, instances (from its config) and weight (from
        the endpoint, which is where ``update_endpoint_weights_and_capacities`` changes it)."""
        config = self.sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        weights = {v["VariantName"]: variant_weight(v) for v in endpoint.get("ProductionVariants", [])}
        return [
            {
                "variant": v["VariantName"],
                "model": v.get("ModelName"),
                "instance_type": v.get("InstanceType"),
                "instance_count": v.get("InitialInstanceCount"),
                "weight": weights.get(v["VariantName"], 0.0),
            }
            for v in config.get("ProductionVariants", [])
        ]

    def _create_config(self, variants: list[dict[str, Any]]) -> str:
        name = self.new_config_name()
        self.sagemaker.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": v["variant"],
                    "ModelName": v["model"],
                    "InitialInstanceCount": self.target.initial_instance_count,
                    "InstanceType": self.target.instance_type,
                    "InitialVariantWeight": v["weight"],
                }
                for v in variants
            ],
            Tags=[{"Key": "mlops:spec", "Value": self.spec.name}],
        )
        return name

    def apply(self, deployment: Deployment, model_data: dict[str, str]) -> dict[str, Any]:
        """Make the endpoint serve ``deployment``; ``model_data`` maps each served version to its S3 URI
        (``upload_model``). Waits until the endpoint is InService on the result and returns what was done:
        ``action`` is ``created``, ``recreated`` (the endpoint had Failed), ``updated`` (new config),
        ``weights`` (the share only) or ``unchanged``."""
        missing = [v for v in deployment.versions if v not in model_data]
        if missing:
            raise ValueError(f"no model data for version(s) {missing}: upload_model them first")
        desired = self.desired_variants(deployment)
        models_created = [self.model_name(v) for v in dict.fromkeys(deployment.versions) if self.ensure_model(v, model_data[v])]

        endpoint = self.describe_endpoint()
        recreated = False
        if endpoint is not None and endpoint.get("EndpointStatus") in TRANSITIONAL:
            endpoint = self._wait_settled()
        if endpoint is not None and endpoint.get("EndpointStatus") == "Failed":
            # a Failed endpoint serves nothing and cannot be updated: the only way forward is a new one
            self.sagemaker.delete_endpoint(EndpointName=self.endpoint_name)
            self._wait_deleted()
            endpoint, recreated = None, True

        config_created: str | None = None
        if endpoint is None:
            config_name = config_created = self._create_config(desired)
            self.sagemaker.create_endpoint(
                EndpointName=self.endpoint_name,
                EndpointConfigName=config_name,
                Tags=[{"Key": "mlops:spec", "Value": self.spec.name}],
            )
            action = "recreated" if recreated else "created"
        else:
            config_name = endpoint["EndpointConfigName"]
            current = self.served_variants(endpoint)
            shape = {(v["variant"], v["model"], self.target.instance_type, self.target.initial_instance_count) for v in desired}
            current_shape = {(v["variant"], v["model"], v["instance_type"], v["instance_count"]) for v in current}
            want = _share({v["variant"]: v["weight"] for v in desired})
            have = _share({v["variant"]: v["weight"] for v in current})
            if shape == current_shape and all(abs(want[k] - have[k]) <= _SHARE_TOLERANCE for k in want):
                action = "unchanged"
            elif shape == current_shape:
                # same variants on the same models: only the split moves, no new instances
                self.sagemaker.update_endpoint_weights_and_capacities(
                    EndpointName=self.endpoint_name,
                    DesiredWeightsAndCapacities=[{"VariantName": v["variant"], "DesiredWeight": v["weight"]} for v in desired],
                )
                action = "weights"
            else:
                config_name = config_created = self._create_config(desired)
                self.sagemaker.update_endpoint(EndpointName=self.endpoint_name, EndpointConfigName=config_name)
                action = "updated"
        final = self.wait_in_service(config_name)
        return {
            "endpoint": self.endpoint_name,
            "endpoint_arn": final.get("EndpointArn"),
            "config": config_name,
            "action": action,
            "config_created": config_created,
            "models_created": models_created,
            "variants": [{k: v[k] for k in ("variant", "version", "model", "weight")} for v in desired],
        }

    def _wait_settled(self) -> dict[str, Any] | None:
        """Wait out a create/update in progress (SageMaker refuses changes meanwhile); Failed is returned."""
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            desc = self.describe_endpoint()
            if desc is None or desc.get("EndpointStatus") not in TRANSITIONAL:
                return desc
            if time.monotonic() >= deadline:
                status = desc.get("EndpointStatus")
                raise RuntimeError(
                    f"SageMaker endpoint {self.endpoint_name} is still {status} after {self.timeout_seconds:.0f} s"
                )
            time.sleep(self.poll_seconds)

    # --- verify and clean up ----------------------------------------------------------------------

    def verify(self, deployment: Deployment) -> dict[str, Any]:
        """Check that the endpoint is InService and serves ``deployment``: the same variants, each on the
        model of its version, with its share of the traffic. Raises ``RuntimeError`` naming each mismatch."""
        endpoint = self.describe_endpoint()
        if endpoint is None:
            raise RuntimeError(f"SageMaker endpoint {self.endpoint_name} does not exist")
        status = endpoint.get("EndpointStatus")
        if status != "InService":
            reason = endpoint.get("FailureReason")
            raise RuntimeError(
                f"SageMaker endpoint {self.endpoint_name} is {status}, not InService" + (f": {reason}" if reason else "")
            )
        desired = {v["variant"]: v for v in self.desired_variants(deployment)}
        served = {v["variant"]: v for v in self.served_variants(endpoint)}
        problems: list[str] = []
        if set(desired) != set(served):
            problems.append(f"variants {sorted(served)} are served, expected {sorted(desired)}")
        want = _share({k: v["weight"] for k, v in desired.items()})
        have = _share({k: v["weight"] for k, v in served.items()})
        for name in sorted(set(desired) & set(served)):
            if served[name]["model"] != desired[name]["model"]:
                problems.append(f"variant {name!r} serves model {served[name]['model']}, expected {desired[name]['model']}")
            if abs(want[name] - have[name]) > _SHARE_TOLERANCE:
                problems.append(f"variant {name!r} takes {have[name]:.2f} % of the traffic, expected {want[name]:.2f} %")
        if problems:
            raise RuntimeError(f"SageMaker endpoint {self.endpoint_name} does not match the deployment: " + "; ".join(problems))
        return {
            "endpoint": self.endpoint_name,
            "status": status,
            "config": endpoint["EndpointConfigName"],
            "variants": [
                {"variant": k, "model": served[k]["model"], "weight": served[k]["weight"], "percent": round(have[k], 4)}
                for k in sorted(served)
            ],
        }

    def delete_old_configs(self, keep: int = 2) -> list[str]:
        """Delete this endpoint's configs except the one in use and the ``keep`` newest (the one in use
        counts when it is among them); returns the names deleted."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        endpoint = self.describe_endpoint()
        in_use = endpoint.get("EndpointConfigName") if endpoint else None
        names: list[str] = []
        for page in self.sagemaker.get_paginator("list_endpoint_configs").paginate(NameContains=self._config_prefix):
            names += [
                c["EndpointConfigName"] for c in page.get("EndpointConfigs", []) if self._config_re.match(c["EndpointConfigName"])
            ]
        # the UTC timestamp in the name sorts like the creation time (newest first)
        ordered = sorted(names, reverse=True)
        kept = set(ordered[:keep]) | {in_use}
        deleted = []
        for name in ordered:
            if name not in kept:
                self.sagemaker.delete_endpoint_config(EndpointConfigName=name)
                deleted.append(name)
        return deleted
