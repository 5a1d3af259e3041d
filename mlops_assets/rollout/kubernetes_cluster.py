"""The cluster side of the Kubernetes target: apply rendered manifests and wait until they serve.

Why apart from rendering: ``render`` and ``validate`` are pure and run everywhere (tests, CI, a
laptop); this part talks to a cluster through the official client, and is tested against a fake API
server. ``apply`` creates or replaces each object; ``verify`` waits until the rollout is complete and
serves the versions the endpoint asset decided, so the asset reports success only once it does.

``kubernetes`` is imported inside methods, so that importing the code location stays cheap.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from mlops_assets.endpoint_state import Deployment
from mlops_assets.rollout.kubernetes import (
    KSERVE_GROUP,
    KSERVE_PLURAL,
    KSERVE_VERSION,
    LABEL_CANARY,
    LABEL_STABLE,
    kserve_canary_percent,
    render,
)
from mlops_assets.rollout.kubernetes_schemas import shorten
from mlops_assets.specs import ModelSpec


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
                    raise RuntimeError(f"cannot apply {what}: {exc.status} {exc.reason}: {shorten(str(exc.body or ''))}") from exc
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
