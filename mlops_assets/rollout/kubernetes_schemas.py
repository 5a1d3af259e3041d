"""Offline validation of the manifests the Kubernetes target renders (``validate``).

Why offline: a manifest the cluster would refuse should fail the endpoint asset before anything is
applied, and CI has no cluster. Built-in kinds are checked against the official Kubernetes JSON
schemas bundled with ``kubernetes-validate`` (strict: no unknown fields), plus what those schemas
cannot say (names, label values, a container image, the selector). KServe's InferenceService is a
CRD outside those schemas: its structure is checked here and its pod part against the bundled
``PodSpec``/``Container`` definitions. Every problem names the manifest and the JSON path.

``kubernetes_validate``, ``jsonschema`` and ``referencing`` are imported inside functions, so that
importing the code location stays cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from mlops_assets.rollout.kubernetes import KSERVE_API_VERSION

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


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


def shorten(message: str, limit: int = 240) -> str:
    """A message cut to ``limit`` characters: one schema error can quote a whole object."""
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
    return [f"{_json_path(e.absolute_path, prefix)}: {shorten(e.message)}" for e in errors]


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
