"""The Kubernetes target of the ``endpoint_<model>`` asset: render the manifests (then validate, apply, verify).

Why this module exists: the endpoint asset decides a :class:`~mlops_assets.endpoint_state.Deployment`
(stable version, optional canary and its share); on Kubernetes that decision has to become objects in a
cluster, and the asset must only report success once the cluster actually serves it. The four steps are
kept apart so each can be tested without a cluster; this module renders, ``kubernetes_schemas``
validates, ``kubernetes_cluster`` applies and verifies:

``render``    spec + deployment + profile -> manifests (plain dicts, deterministic), two flavours:

              * ``kind: deployment`` - an ``apps/v1 Deployment`` and a ``v1 Service`` running the same
                server image as ``mlops serve``. The container gets the whole Deployment as JSON in
                ``MLOPS_DEPLOYMENT``, so *the server* splits the canary traffic (as the local endpoint does).
              * ``kind: kserve`` - one ``serving.kserve.io/v1beta1 InferenceService`` with a custom predictor
                container. Here *KServe* splits the traffic: the predictor runs only the newest version
                and ``canaryTrafficPercent`` sends that share to it, the rest to KServe's previous revision.

              Either way the container gets the platform's profile, so the server in the pod reads and
              writes the platform's stores (online features from Redis, its prediction log on the
              object store, where the ``canary`` check reads it): ``MLOPS_ENV`` (the profile's cloud,
              ``aws`` or ``gcp``, also when the platform runs on ``k8s``: the server needs the stores,
              not the executor) and the store variables the server reads (``server_vars``). Values
              without credentials (``MLOPS_STORAGE_URI``, ``MLOPS_LANDING_URI``, ``MLFLOW_ARTIFACT_URI``,
              ``GOOGLE_CLOUD_PROJECT``) are rendered as plain values, read from this process's
              environment; the ones that carry credentials (``SECRET_VARS``: ``MLFLOW_TRACKING_URI``,
              ``FEAST_REGISTRY_URI``, ``MLOPS_REDIS``, and the admin route's ``MLOPS_ADMIN_TOKEN`` as an
              optional key) only as ``secretKeyRef``s into the Secret named by
              ``render(secret=...)``, else ``MLOPS_K8S_SECRET``, else ``mlops-secrets``: the same Secret
              the ``k8s`` profile's run and step pods use (``mlops_assets.k8s``), which holds every
              cloud variable. No secret value is ever written into a manifest. One key reference per
              variable, not ``envFrom`` of the whole Secret: the server gets only what it reads (not
              the Dagster instance's database password), and a missing key stops the pod at start
              (``CreateContainerConfigError`` naming it) instead of starting a server without its
              registry. Object-store access itself comes from the pod's identity (IRSA on EKS,
              Workload Identity on GKE: ``kubernetes.service_account``), not from keys in the pod.
              On the ``local`` profile the container gets ``MLOPS_ENV=local`` and the tracking URI from
              the Secret: its stores are then inside the container (a trial, not a platform).

``validate``  (``kubernetes_schemas``) offline: built-in kinds against the official Kubernetes JSON schemas bundled with the
              ``kubernetes-validate`` package; the InferenceService (a CRD, not in those schemas) by its
              structure, with its pod part validated against the bundled ``PodSpec``/``Container``
              definitions. Every problem is reported with the manifest and the JSON path.
``KubernetesTarget.apply`` (``kubernetes_cluster``)  create-or-replace each object through the official client.
``KubernetesTarget.verify``  wait until the rollout is complete and serves the expected versions.

Plain Python (no Dagster at import); the profile's names (``environments``) are imported inside
functions so that importing the code location stays cheap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from typing import Any

from mlops_assets.endpoint_state import Deployment
from mlops_assets.server import ADMIN_TOKEN_ENV, DEPLOYMENT_ENV, WAL_DIR_ENV
from mlops_assets.specs import ModelSpec

CONTAINER_PORT = 8080
SERVICE_PORT = 80
SERVER_UID = 10001  # the image's ``mlops`` user; runAsNonRoot cannot check a named (non-numeric) USER
PART_OF = "mlops-assets"
LABEL_SPEC = "mlops/spec"
LABEL_STABLE = "mlops/stable-version"
LABEL_CANARY = "mlops/canary-version"
LABEL_SERVING = "mlops/serving-version"  # KServe predictor pods: the one version that revision runs
KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
KSERVE_API_VERSION = f"{KSERVE_GROUP}/{KSERVE_VERSION}"
KSERVE_CONTAINER = "kserve-container"  # the name KServe gives (and expects for) a custom predictor container
SECRET_VARS = ("MLFLOW_TRACKING_URI", "FEAST_REGISTRY_URI", "MLOPS_REDIS")  # carry credentials: Secret only
# The bearer token of the server's admin route (ADMIN_TOKEN_ENV) is an optional key of the same
# Secret, on every profile (the pod's server generates an unknown one without it). The prediction
# log's write-ahead folder (WAL_DIR_ENV) is an emptyDir volume: it outlives a crashed or OOM-killed
# container (the pod restarts it and the new server replays what was answered).
WAL_MOUNT, WAL_VOLUME = "/var/lib/mlops/wal", "prediction-log-wal"
# every name the target sets; a spec's ``kubernetes.env`` may not set them
RESERVED_ENV = (
    DEPLOYMENT_ENV,
    "MLOPS_ENV",
    "MLOPS_K8S_CLOUD",
    "MLOPS_STORAGE_URI",
    "MLOPS_LANDING_URI",
    "MLFLOW_ARTIFACT_URI",
    "GOOGLE_CLOUD_PROJECT",
    *SECRET_VARS,
    ADMIN_TOKEN_ENV,
    WAL_DIR_ENV,
)


# --- render -----------------------------------------------------------------------------------


def dns_name(name: str, max_len: int = 63) -> str:
    """A DNS-1123 label (also a DNS-1035 label, as spec names start with a letter) from a spec name:
    underscores become dashes; a name too long keeps a hash of the original so two names stay apart."""
    out = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-") or "model"
    if len(out) > max_len:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        out = f"{out[: max_len - 9].rstrip('-')}-{digest}"
    return out


def _labels(spec: ModelSpec, name: str, deployment: Deployment) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": PART_OF,
        LABEL_SPEC: spec.name,
    }
    if deployment.stable is not None:
        labels[LABEL_STABLE] = deployment.stable
    if deployment.canary is not None:
        labels[LABEL_CANARY] = deployment.canary
    return labels


def _selector(name: str) -> dict[str, str]:
    """Selector labels: never a version, since a Deployment's selector cannot change after creation."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": PART_OF}


def _prometheus_annotations() -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(CONTAINER_PORT), "prometheus.io/path": "/metrics"}


# --- the profile the server container runs on -------------------------------------------------


def server_vars(env: str | None = None) -> tuple[str, list[str], list[str]]:
    """What a server container needs to run on profile ``env`` (default: this process's ``MLOPS_ENV``):
    ``(MLOPS_ENV value, plain variable names, secret variable names)``.

    The server (``environments.runtime``) reads the lake and landing URIs, the Feast registry and Redis,
    MLflow's tracking URI and artifact root; on gcp also the project. The Dagster IO bucket and the
    instance's PostgreSQL are the platform's, not the server's. On ``local`` the stores are files on
    this machine, which no container can reach: only the tracking URI is handed over."""
    from mlops_assets import environments

    env = env or environments.current_env()
    if env not in environments.ENVIRONMENTS:
        raise ValueError(f"{environments.ENV_VAR}={env!r} is unknown; available: {', '.join(environments.ENVIRONMENTS)}")
    cloud = environments.cloud(env)
    if cloud is None:
        return "local", [], ["MLFLOW_TRACKING_URI"]
    v = environments.CLOUD_VARS
    names = [v.storage, v.landing, v.mlflow_tracking, v.mlflow_artifacts, v.feast_registry, v.redis]
    names += [v.gcp_project] if cloud == "gcp" else []
    return cloud, [n for n in names if n not in SECRET_VARS], [n for n in names if n in SECRET_VARS]


def secret_name(secret: str | None = None) -> str:
    """The Secret the secret variables come from: ``secret`` when given, else ``MLOPS_K8S_SECRET``, else
    ``mlops-secrets`` (``mlops_assets.k8s.SECRET``: the Secret of the ``k8s`` profile's pods)."""
    if secret:
        return secret
    var, default = ("MLOPS_K8S_SECRET", "mlops-secrets")  # mlops_assets.k8s.SECRET, which imports Dagster
    return os.environ.get(var) or default


def profile_env(env: str | None = None, secret: str | None = None) -> list[dict[str, Any]]:
    """The container's ``env`` entries of the profile: ``MLOPS_ENV``, the plain store variables with
    their values from this process's environment, the secret ones as ``secretKeyRef``s. Raises
    ``ValueError`` naming a plain variable that is not set here (the pod could not start)."""
    value, plain, secret_vars = server_vars(env)
    missing = [k for k in plain if not os.environ.get(k)]
    if missing:
        raise ValueError(
            f"MLOPS_ENV={value}: the server container needs {', '.join(missing)}, not set where the manifests are rendered"
        )
    name = secret_name(secret)
    return [
        {"name": "MLOPS_ENV", "value": value},
        *({"name": k, "value": os.environ[k]} for k in plain),
        *({"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k}}} for k in secret_vars),
        admin_token_env(name),
    ]


def admin_token_env(secret: str) -> dict[str, Any]:
    """The container's ``MLOPS_ADMIN_TOKEN``: a reference to the key of that name in the Secret, never
    a value. ``optional``: a Secret without it still starts the pod, whose server then generates a
    token nobody knows, so its admin route stays closed (the target itself changes what a pod serves
    by rolling out manifests, not through that route)."""
    return {"name": ADMIN_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": ADMIN_TOKEN_ENV, "optional": True}}}


def _container(
    spec: ModelSpec, served: Deployment, profile: list[dict[str, Any]], *, name: str, port_name: str
) -> dict[str, Any]:
    k8s = spec.deployment.kubernetes  # type: ignore[union-attr]
    clash = sorted(set(k8s.env) & set(RESERVED_ENV))
    if clash:
        raise ValueError(f"deployment.kubernetes.env must not set {clash}: the Kubernetes target sets them")
    env = [
        {"name": DEPLOYMENT_ENV, "value": json.dumps(served.to_json(), sort_keys=True, separators=(",", ":"))},
        *copy.deepcopy(profile),
        {"name": WAL_DIR_ENV, "value": WAL_MOUNT},
        *({"name": k, "value": v} for k, v in sorted(k8s.env.items())),
    ]
    resources = {"cpu": k8s.cpu, "memory": k8s.memory}
    return {
        "name": name,
        "image": k8s.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["mlops", "serve", "--spec", spec.name, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)],
        "ports": [{"name": port_name, "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": env,
        "volumeMounts": [{"name": WAL_VOLUME, "mountPath": WAL_MOUNT}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # ready once a model is loaded (the server loads it before it answers at all)
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": CONTAINER_PORT},
            "initialDelaySeconds": 5,
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        # generous: loading the model (MLflow download, Feast warm-up) happens before the first answer
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": CONTAINER_PORT},
            "initialDelaySeconds": 60,
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 4,
        },
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _wal_volume() -> dict[str, Any]:
    return {"name": WAL_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": SERVER_UID, "runAsGroup": SERVER_UID, "seccompProfile": {"type": "RuntimeDefault"}}


def _render_deployment(spec: ModelSpec, deployment: Deployment, profile: list[dict[str, Any]]) -> list[dict[str, Any]]:
    k8s = spec.deployment.kubernetes  # type: ignore[union-attr]
    name = dns_name(spec.name)
    labels = _labels(spec, name, deployment)
    pod_spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [_container(spec, deployment, profile, name="server", port_name="http")],
        "volumes": [_wal_volume()],
    }
    if k8s.service_account:
        pod_spec = {"serviceAccountName": k8s.service_account, **pod_spec}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels},
            "spec": {
                "replicas": k8s.replicas,
                "selector": {"matchLabels": _selector(name)},
                # no request is dropped during a rollout: a new pod is ready before an old one goes
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": dict(labels), "annotations": _prometheus_annotations()},
                    "spec": pod_spec,
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": k8s.namespace, "labels": dict(labels)},
            "spec": {
                "type": "ClusterIP",
                "selector": _selector(name),
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": CONTAINER_PORT, "protocol": "TCP"}],
            },
        },
    ]


def kserve_canary_percent(deployment: Deployment) -> int | None:
    """``canaryTrafficPercent`` for a deployment: None without a canary, else the share as an integer.

    KServe takes whole percents: the share is rounded half up, but a share above 0 keeps at least 1 %
    (the canary must get traffic) and one below 100 at most 99 % (the stable side must keep some)."""
    if deployment.canary is None:
        return None
    share = deployment.canary_percent
    percent = math.floor(share + 0.5)
    return min(max(percent, 1), 99) if share > 0 else 0


def _render_kserve(spec: ModelSpec, deployment: Deployment, profile: list[dict[str, Any]]) -> list[dict[str, Any]]:
    k8s = spec.deployment.kubernetes  # type: ignore[union-attr]
    name = dns_name(spec.name, max_len=45)  # KServe derives longer host names (<name>-predictor-<ns>...)
    labels = _labels(spec, name, deployment)
    newest = deployment.canary or deployment.stable
    served = Deployment(stable=newest)  # this revision serves one version; KServe's previous revision is the stable side
    predictor: dict[str, Any] = {
        "minReplicas": k8s.replicas,
        "labels": {**labels, LABEL_SERVING: newest},
        "annotations": _prometheus_annotations(),
    }
    percent = kserve_canary_percent(deployment)
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    if k8s.service_account:
        predictor["serviceAccountName"] = k8s.service_account
    predictor["securityContext"] = _pod_security()
    predictor["containers"] = [_container(spec, served, profile, name=KSERVE_CONTAINER, port_name="http1")]
    predictor["volumes"] = [_wal_volume()]
    return [
        {
            "apiVersion": KSERVE_API_VERSION,
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels},
            "spec": {"predictor": predictor},
        }
    ]


def render(
    spec: ModelSpec,
    deployment: Deployment,
    *,
    tracking_uri: str | None = None,
    env: str | None = None,
    secret: str | None = None,
) -> list[dict[str, Any]]:
    """The manifests that make ``spec``'s endpoint serve ``deployment`` on ``spec.deployment.kubernetes``.

    The container runs on profile ``env`` (default: this process's ``MLOPS_ENV``), its secret variables
    from the Secret ``secret`` (default ``MLOPS_K8S_SECRET``, else ``mlops-secrets``): see
    :func:`profile_env`. ``tracking_uri`` is accepted for earlier callers and never written into a
    manifest (it may hold a password): the container reads ``MLFLOW_TRACKING_URI`` from the Secret.

    ``kind: deployment``: a Deployment + Service; the container receives the whole ``deployment`` (stable,
    canary, share) in ``MLOPS_DEPLOYMENT`` and the server splits the traffic itself.

    ``kind: kserve``: one InferenceService; KServe splits the traffic. Its predictor always runs the
    *newest* version (the canary when there is one, else the stable) with ``MLOPS_DEPLOYMENT`` naming just
    that version as stable, and ``canaryTrafficPercent`` is the canary's share. KServe's stable side is
    its *previous ready revision*, not a version named here: the asset must therefore apply the stable
    version first (a plain deploy, no canary) and only then the canary, or KServe will split traffic
    between the canary and whatever revision happened to precede it. Promotion is a plain deploy of the
    canary version (the field disappears and the latest revision takes 100 %); rollback is a plain deploy
    of the stable version (a new revision of the old version).

    Same inputs and environment, same dicts (and the same YAML from :func:`to_yaml`).
    """
    if spec.deployment is None:
        raise ValueError(f"spec {spec.name!r} has no deployment section")
    if deployment.stable is None:
        raise ValueError(f"{spec.name}: a deployment needs a stable version")
    del tracking_uri  # the Secret's value is what the container uses
    kind = spec.deployment.kubernetes.kind
    if kind not in ("deployment", "kserve"):
        raise ValueError(f"unknown Kubernetes target kind {kind!r}")
    profile = profile_env(env, secret)
    if kind == "deployment":
        return _render_deployment(spec, deployment, profile)
    return _render_kserve(spec, deployment, profile)


def to_yaml(manifests: Iterable[dict[str, Any]]) -> str:
    """Multi-document YAML (``kubectl apply -f`` ready), keys in rendering order."""
    import yaml

    return yaml.safe_dump_all(list(manifests), sort_keys=False, default_flow_style=False)
