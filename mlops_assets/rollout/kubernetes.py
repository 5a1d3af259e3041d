"""The Kubernetes target of the ``endpoint_<model>`` asset: render, validate, apply and verify manifests.

Why this module exists: the endpoint asset decides a :class:`~mlops_assets.endpoint_state.Deployment`
(stable version, optional canary and its share); on Kubernetes that decision has to become objects in a
cluster, and the asset must only report success once the cluster actually serves it. The four steps are
kept apart so each can be tested without a cluster:

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

``validate``  offline: built-in kinds against the official Kubernetes JSON schemas bundled with the
              ``kubernetes-validate`` package; the InferenceService (a CRD, not in those schemas) by its
              structure, with its pod part validated against the bundled ``PodSpec``/``Container``
              definitions. Every problem is reported with the manifest and the JSON path.
``KubernetesTarget.apply``   create-or-replace each object through the official client.
``KubernetesTarget.verify``  wait until the rollout is complete and serves the expected versions.

Plain Python (no Dagster at import); ``kubernetes``, ``kubernetes_validate`` and the profile's names
(``environments``) are imported inside functions so that importing the code location stays cheap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
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

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


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


# --- validate ---------------------------------------------------------------------------------

_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
_EXTENSION_KEYS = {  # KServe ComponentExtensionSpec fields of a predictor, beside the inline PodSpec
    "minReplicas": "int",
    "maxReplicas": "int",
    "scaleTarget": "int",
    "scaleMetric": "str",
    "scaleMetricType": "str",
    "containerConcurrency": "int",
    "timeout": "int",
    "canaryTrafficPercent": "percent",
    "labels": "map",
    "annotations": "map",
    "logger": "object",
    "batcher": "object",
    "autoScaling": "object",
    "deploymentStrategy": "object",
    "storageUris": "list",
}
_FRAMEWORK_KEYS = {  # model-framework predictors; a custom predictor uses none of them
    "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "pmml", "lightgbm", "paddle", "huggingface", "model",
    "workerSpec",
}  # fmt: skip


def _json_path(parts: Iterable[Any], prefix: str = "") -> str:
    out = prefix
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _short(message: str, limit: int = 240) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


@lru_cache(maxsize=4)
def _schema_dir(kubernetes_version: str) -> str:
    from kubernetes_validate.utils import all_versions
    from packaging.version import Version

    wanted = Version(kubernetes_version.lstrip("v"))
    wanted_mm = (wanted.major, wanted.minor)
    available = all_versions()
    candidates = [v for v in available if (Version(v).major, Version(v).minor) <= wanted_mm]
    if not candidates or wanted_mm > (Version(available[-1]).major, Version(available[-1]).minor):
        raise ValueError(f"no bundled Kubernetes schemas for {kubernetes_version}; kubernetes-validate has {available}")
    return f"kubernetes-json-schema/v{candidates[-1]}-local-strict"


@lru_cache(maxsize=64)
def _load_json(relative: str) -> Any:
    import importlib.resources

    try:
        return json.loads(importlib.resources.files("kubernetes_validate").joinpath(relative).read_text())
    except FileNotFoundError:
        return None


@lru_cache(maxsize=4)
def _registry(kubernetes_version: str):
    from referencing import Registry, Resource

    definitions = _load_json(f"{_schema_dir(kubernetes_version)}/_definitions.json")
    return Registry().with_resource(_DEFS_ID, Resource.from_contents(definitions))


def _schema_errors(instance: Any, schema: dict[str, Any], kubernetes_version: str, prefix: str = "") -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema, registry=_registry(kubernetes_version))
    errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_json_path(e.absolute_path, prefix)}: {_short(e.message)}" for e in errors]


def _definition(name: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"{_DEFS_ID}#/$defs/{name}"}


def _builtin_schema(manifest: dict[str, Any], kubernetes_version: str) -> dict[str, Any] | None:
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(manifest.get("apiVersion")))
    return _load_json(f"{_schema_dir(kubernetes_version)}/{str(manifest.get('kind')).lower()}-{api_version}.json")


def _metadata_problems(manifest: dict[str, Any]) -> list[str]:
    problems = []
    meta = manifest.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: must be an object"]
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 63 or not _DNS1123_LABEL.match(name):
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 label (lower case alphanumerics and '-', at most 63)")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not _DNS1123_LABEL.match(ns)):
        problems.append(f"metadata.namespace: {ns!r} is not a DNS-1123 label")
    problems += _label_problems(meta.get("labels"), "metadata.labels")
    return problems


def _label_problems(labels: Any, path: str) -> list[str]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [f"{path}: must be a map of strings"]
    problems = []
    for key, value in labels.items():
        name = str(key).rsplit("/", 1)[-1]
        if not _LABEL_NAME.match(name) or len(name) > 63:
            problems.append(f"{path}.{key}: not a valid label key")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"{path}.{key}: {value!r} is not a valid label value")
    return problems


def _container_image_problems(containers: Any, path: str) -> list[str]:
    """The OpenAPI schema leaves ``image`` optional (for controllers that fill it in); a server needs one."""
    if not isinstance(containers, list):
        return []
    return [
        f"{path}[{i}].image: a container needs an image"
        for i, c in enumerate(containers)
        if isinstance(c, dict) and not (isinstance(c.get("image"), str) and c["image"].strip())
    ]


def _builtin_problems(manifest: dict[str, Any], kubernetes_version: str) -> list[str]:
    schema = _builtin_schema(manifest, kubernetes_version)
    if schema is None:
        return [f"<root>: no Kubernetes {kubernetes_version} schema for apiVersion {manifest.get('apiVersion')!r}"]
    problems = _schema_errors(manifest, schema, kubernetes_version)
    problems += _metadata_problems(manifest)
    if manifest.get("kind") == "Deployment":
        spec = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {}
        template = spec.get("template") if isinstance(spec.get("template"), dict) else {}
        pod = template.get("spec") if isinstance(template.get("spec"), dict) else {}
        problems += _container_image_problems(pod.get("containers"), "spec.template.spec.containers")
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        if (
            isinstance(selector, dict)
            and isinstance(pod_labels, dict)
            and any(pod_labels.get(k) != v for k, v in selector.items())
        ):
            problems.append("spec.selector.matchLabels: does not match spec.template.metadata.labels")
    return problems


def _kserve_problems(manifest: dict[str, Any], kubernetes_version: str) -> list[str]:
    problems = []
    if manifest.get("apiVersion") != KSERVE_API_VERSION:
        problems.append(f"apiVersion: {manifest.get('apiVersion')!r} is not {KSERVE_API_VERSION!r}")
    unknown = sorted(set(manifest) - {"apiVersion", "kind", "metadata", "spec", "status"})
    if unknown:
        problems.append(f"<root>: unknown fields {unknown}")
    problems += _metadata_problems(manifest)
    spec = manifest.get("spec")
    if not isinstance(spec, dict):
        return [*problems, "spec: must be an object"]
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        return [*problems, "spec.predictor: must be an object"]
    for key, kind in _EXTENSION_KEYS.items():
        if key not in predictor:
            continue
        value, path = predictor[key], f"spec.predictor.{key}"
        if kind in ("int", "percent") and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            problems.append(f"{path}: {value!r} is not a non-negative integer")
        elif kind == "percent" and value > 100:
            problems.append(f"{path}: {value!r} is not in 0..100")
        elif kind == "str" and not isinstance(value, str):
            problems.append(f"{path}: {value!r} is not a string")
        elif kind == "object" and not isinstance(value, dict):
            problems.append(f"{path}: must be an object")
        elif kind == "list" and not isinstance(value, list):
            problems.append(f"{path}: must be a list")
        elif kind == "map":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                problems.append(f"{path}: must be a map of strings")
            elif key == "labels":
                problems += _label_problems(value, path)
    frameworks = sorted(set(predictor) & _FRAMEWORK_KEYS)
    if frameworks:
        problems.append(f"spec.predictor: a custom-container predictor takes no framework ({frameworks})")
    # the rest of a predictor is an inline PodSpec: validate it (and so each container against
    # io.k8s.api.core.v1.Container) with the official definitions
    pod = {k: v for k, v in predictor.items() if k not in _EXTENSION_KEYS and k not in _FRAMEWORK_KEYS}
    if not pod.get("containers"):
        problems.append("spec.predictor.containers: a custom predictor needs one container")
    problems += _schema_errors(pod, _definition("io.k8s.api.core.v1.PodSpec"), kubernetes_version, "spec.predictor")
    problems += _container_image_problems(pod.get("containers"), "spec.predictor.containers")
    return problems


def validate(manifests: Sequence[dict[str, Any]], kubernetes_version: str = "1.30.0") -> None:
    """Check manifests offline; raise ``ValueError`` listing every problem as ``<Kind> <ns>/<name>: <path>: <why>``.

    Built-in kinds are validated against the strict (no unknown fields) JSON schemas of that Kubernetes
    version bundled in ``kubernetes-validate``, plus what those schemas cannot say (names are DNS-1123
    labels, label values are valid, a container has an image, the selector matches the pod labels).
    An InferenceService is a CRD outside those schemas: its structure is checked here, its pod part
    against the bundled ``PodSpec`` (hence ``Container``) definitions, ``canaryTrafficPercent`` as 0..100.
    """
    problems: list[str] = []
    for i, manifest in enumerate(manifests):
        if not isinstance(manifest, dict):
            problems.append(f"manifest #{i}: not an object")
            continue
        meta = manifest.get("metadata") if isinstance(manifest.get("metadata"), dict) else {}
        kind = manifest.get("kind") or f"manifest #{i}"
        where = f"{kind} {meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
        found = _kserve_problems(manifest, kubernetes_version) if kind == "InferenceService" else None
        if found is None:
            found = _builtin_problems(manifest, kubernetes_version)
        problems += [f"{where}: {p}" for p in found]
    if problems:
        raise ValueError("invalid Kubernetes manifests:\n  " + "\n  ".join(problems))


# --- apply and verify -------------------------------------------------------------------------


def _describe(manifest: dict[str, Any]) -> str:
    meta = manifest["metadata"]
    return f"{manifest['kind']} {meta.get('namespace', 'default')}/{meta['name']}"


class KubernetesTarget:
    """Applies rendered manifests to a cluster and waits until they serve.

    ``api_client``: a ``kubernetes.client.ApiClient`` (tests pass one pointed at a fake API server).
    Without one it is built on first use from ``kubeconfig``/``context`` when given, else from the
    in-cluster service account when running in a pod, else from the default kubeconfig.
    """

    def __init__(self, api_client: Any = None, kubeconfig: str | None = None, context: str | None = None):
        self._api_client = api_client
        self.kubeconfig = kubeconfig
        self.context = context

    @property
    def api_client(self) -> Any:
        if self._api_client is None:
            from kubernetes import client, config

            if self.kubeconfig is None and self.context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                self._api_client = client.ApiClient(configuration)
            else:
                self._api_client = config.new_client_from_config(config_file=self.kubeconfig, context=self.context)
        return self._api_client

    # -- one place that knows which client call handles which kind --

    def _ops(self, kind: str, namespace: str, name: str) -> tuple[Any, Any, Any]:
        """(read, create(body), replace(body)) for one object; each returns the raw JSON as a dict."""
        from kubernetes import client

        raw = {"_preload_content": False}

        def parsed(call):
            def run(*args):
                return json.loads(call(*args, **raw).data or b"{}")

            return run

        if kind == "Deployment":
            api = client.AppsV1Api(self.api_client)
            return (
                parsed(lambda **kw: api.read_namespaced_deployment(name, namespace, **kw)),
                parsed(lambda body, **kw: api.create_namespaced_deployment(namespace, body, **kw)),
                parsed(lambda body, **kw: api.replace_namespaced_deployment(name, namespace, body, **kw)),
            )
        if kind == "Service":
            api = client.CoreV1Api(self.api_client)
            return (
                parsed(lambda **kw: api.read_namespaced_service(name, namespace, **kw)),
                parsed(lambda body, **kw: api.create_namespaced_service(namespace, body, **kw)),
                parsed(lambda body, **kw: api.replace_namespaced_service(name, namespace, body, **kw)),
            )
        if kind == "InferenceService":
            api = client.CustomObjectsApi(self.api_client)
            g, v, p = KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL
            return (
                parsed(lambda **kw: api.get_namespaced_custom_object(g, v, namespace, p, name, **kw)),
                parsed(lambda body, **kw: api.create_namespaced_custom_object(g, v, namespace, p, body, **kw)),
                parsed(lambda body, **kw: api.replace_namespaced_custom_object(g, v, namespace, p, name, body, **kw)),
            )
        raise ValueError(f"the Kubernetes target does not apply {kind!r} objects")

    def apply(self, manifests: Sequence[dict[str, Any]]) -> list[str]:
        """Create each object, or replace it (``PUT`` with the live ``resourceVersion``) when it exists.

        Replace, not merge-patch: the object becomes exactly the manifest, so a field the new manifest
        drops (an env var, KServe's ``canaryTrafficPercent`` at promotion) is dropped in the cluster too.
        A Service keeps the cluster IP it was allocated. Returns one line per object, e.g.
        ``"created Deployment mlops/flight-delays"``.
        """
        from kubernetes.client.exceptions import ApiException

        done = []
        for manifest in manifests:
            meta = manifest["metadata"]
            read, create, replace = self._ops(manifest["kind"], meta.get("namespace", "default"), meta["name"])
            what = _describe(manifest)
            for attempt in range(3):  # a 409 means someone changed it between our read and write: read again
                try:
                    try:
                        live = read()
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                        create(copy.deepcopy(manifest))
                        done.append(f"created {what}")
                        break
                    body = copy.deepcopy(manifest)
                    body["metadata"]["resourceVersion"] = live.get("metadata", {}).get("resourceVersion")
                    if manifest["kind"] == "Service":
                        for key in ("clusterIP", "clusterIPs"):
                            if key in live.get("spec", {}):
                                body["spec"][key] = live["spec"][key]
                    replace(body)
                    done.append(f"replaced {what}")
                    break
                except ApiException as exc:
                    if exc.status == 409 and attempt < 2:
                        continue
                    raise RuntimeError(f"cannot apply {what}: {exc.status} {exc.reason}: {_short(str(exc.body or ''))}") from exc
        return done

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._ops(kind, namespace, name)[0]()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise RuntimeError(f"cannot read {kind} {namespace}/{name}: {exc.status} {exc.reason}") from exc

    def verify(self, spec: ModelSpec, deployment: Deployment, timeout_s: float = 300, poll_s: float = 2.0) -> dict[str, Any]:
        """Wait until the cluster serves ``deployment``; return what was observed.

        Deployment: the controller has seen the newest generation, the pod template carries the
        expected version labels, and the rollout is complete (as ``kubectl rollout status``: all
        replicas updated, available, and no old ones left). InferenceService: ``Ready`` is True for the
        newest generation and the predictor's traffic gives the latest revision the expected share
        (the canary percent, or 100 without a canary). Raises ``RuntimeError`` on timeout, on a
        rollout that exceeded its progress deadline, or when another deployment replaced this one.
        """
        if spec.deployment is None:
            raise ValueError(f"spec {spec.name!r} has no deployment section")
        k8s = spec.deployment.kubernetes
        manifest = render(spec, deployment, env="local")[0]  # names and labels only: no profile needed
        kind, name, namespace = manifest["kind"], manifest["metadata"]["name"], k8s.namespace
        check = self._deployment_state if kind == "Deployment" else self._kserve_state
        started = time.monotonic()
        while True:
            obj = self._read(kind, namespace, name)
            done, detail, observed = check(obj, manifest, deployment)
            elapsed = time.monotonic() - started
            if done:
                return {"kind": kind, "namespace": namespace, "name": name, "seconds": round(elapsed, 3), **observed}
            if elapsed >= timeout_s:
                raise RuntimeError(f"{kind} {namespace}/{name} not ready after {timeout_s:g} s: {detail}")
            time.sleep(min(poll_s, max(0.0, timeout_s - elapsed)))

    @staticmethod
    def _expect_labels(labels: dict[str, Any], where: str, what: str, deployment: Deployment) -> None:
        expected = {LABEL_STABLE: deployment.stable, LABEL_CANARY: deployment.canary}
        wrong = {k: labels.get(k) for k, v in expected.items() if labels.get(k) != v}
        if wrong:
            raise RuntimeError(
                f"{what}: {where} carries {wrong}, expected {expected}; another deployment replaced this one (apply it again)"
            )

    def _deployment_state(self, obj: dict | None, manifest: dict, deployment: Deployment) -> tuple[bool, str, dict]:
        what = _describe(manifest)
        if obj is None:
            return False, "it does not exist (not applied yet?)", {}
        meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
        labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
        self._expect_labels(labels, "its pod template", what, deployment)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                raise RuntimeError(f"{what}: rollout exceeded its progress deadline: {cond.get('message')}")
        want = int(spec.get("replicas", 1))
        observed = {
            "replicas": want,
            "updated_replicas": int(status.get("updatedReplicas") or 0),
            "available_replicas": int(status.get("availableReplicas") or 0),
            "stable_version": deployment.stable,
            "canary_version": deployment.canary,
        }
        total = int(status.get("replicas") or 0)
        if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
            return False, "the controller has not seen the newest generation yet", observed
        if observed["updated_replicas"] < want:
            return False, f"{observed['updated_replicas']} of {want} replicas updated", observed
        if total > observed["updated_replicas"]:
            return False, f"{total - observed['updated_replicas']} old replicas pending termination", observed
        if observed["available_replicas"] != want:
            return False, f"{observed['available_replicas']} of {want} replicas available", observed
        return True, "available", observed

    def _kserve_state(self, obj: dict | None, manifest: dict, deployment: Deployment) -> tuple[bool, str, dict]:
        what = _describe(manifest)
        if obj is None:
            return False, "it does not exist (not applied yet?)", {}
        meta, status = obj.get("metadata", {}), obj.get("status") or {}
        labels = (obj.get("spec", {}).get("predictor") or {}).get("labels") or meta.get("labels") or {}
        self._expect_labels(labels, "its predictor", what, deployment)
        percent = kserve_canary_percent(deployment)
        expected_latest = 100 if percent is None else percent
        traffic = ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []
        latest = [t for t in traffic if t.get("latestRevision")]
        observed = {
            "traffic": traffic,
            "url": status.get("url"),
            "stable_version": deployment.stable,
            "canary_version": deployment.canary,
            "canary_percent": percent,
        }
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if status.get("observedGeneration") is not None and int(status["observedGeneration"]) < int(meta.get("generation") or 0):
            return False, "KServe has not seen the newest generation yet", observed
        if ready is None or str(ready.get("status")) != "True":
            reason = f"{ready.get('reason')}: {ready.get('message')}" if ready else "no Ready condition yet"
            return False, f"not Ready ({reason})", observed
        got = sum(int(t.get("percent") or 0) for t in latest) if latest else None  # a tag-only entry carries no share
        if got != expected_latest:
            hint = " (KServe's stable side is its previous revision: was the stable version deployed first?)" if percent else ""
            return False, f"the latest revision has {got}% of the traffic, expected {expected_latest}%{hint}", observed
        return True, "ready", observed
