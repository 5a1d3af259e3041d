"""The Kubernetes target of the endpoint asset, without a cluster.

Rendering and offline validation run against the official schemas bundled in ``kubernetes-validate``;
``apply`` and ``verify`` run the real ``kubernetes`` client against a small HTTP server on 127.0.0.1 that
emulates just the API paths they use, so the requests the client really sends are asserted.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from mlops_assets.endpoint_state import Deployment
from mlops_assets.rollout.kubernetes import dns_name, render, to_yaml
from mlops_assets.rollout.kubernetes_cluster import KubernetesTarget
from mlops_assets.rollout.kubernetes_schemas import validate
from mlops_assets.specs import DeploymentSpec, KubernetesTargetSpec, ModelSpec, find_spec

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PLAIN = Deployment(stable="3")
CANARY = Deployment(stable="3", canary="4", canary_percent=12.5, canary_started="2024-01-02T03:04:05+00:00")

# what a deployment of a cloud profile sets where the endpoint asset runs; the three with credentials
# must reach the container only as references into the Secret
SECRET_VALUES = {
    "MLFLOW_TRACKING_URI": "postgresql://mlflow:tr4ck-pw@db.internal:5432/mlflow",
    "FEAST_REGISTRY_URI": "postgresql+psycopg://feast:r3g-pw@db.internal:5432/feast",
    "MLOPS_REDIS": "redis.internal:6379,password=r3dis-pw,ssl=true",
}
PASSWORDS = ("tr4ck-pw", "r3g-pw", "r3dis-pw")
PLAIN_VALUES = {
    "aws": {
        "MLOPS_STORAGE_URI": "s3://acme-lake/platform",
        "MLOPS_LANDING_URI": "s3://acme-landing/incoming",
        "MLFLOW_ARTIFACT_URI": "s3://acme-artifacts/mlflow",
    },
    "gcp": {
        "MLOPS_STORAGE_URI": "gs://acme-lake/platform",
        "MLOPS_LANDING_URI": "gs://acme-landing/incoming",
        "MLFLOW_ARTIFACT_URI": "gs://acme-artifacts/mlflow",
        "GOOGLE_CLOUD_PROJECT": "acme-ml",
    },
}
PROFILE_VARS = ("MLOPS_ENV", "MLOPS_K8S_CLOUD", "MLOPS_K8S_SECRET", "MLOPS_IO_BUCKET", *SECRET_VALUES, *PLAIN_VALUES["gcp"])


@pytest.fixture(autouse=True)
def local_profile(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Every test starts on the local profile, whatever the shell exports."""
    for var in PROFILE_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def use_profile(monkeypatch: pytest.MonkeyPatch, env: str, cloud: str | None = None) -> dict[str, str]:
    """Configure a profile by environment, as a deployment does; returns the values set."""
    values = {"MLOPS_ENV": env, **SECRET_VALUES, **PLAIN_VALUES[cloud or env], "MLOPS_IO_BUCKET": "acme-io"}
    if cloud:
        values["MLOPS_K8S_CLOUD"] = cloud
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture(scope="module")
def flights() -> ModelSpec:
    return find_spec("flight_delays")


def with_target(spec: ModelSpec, kind: str, **kw: Any) -> ModelSpec:
    return spec.model_copy(
        update={"deployment": DeploymentSpec(target="kubernetes", kubernetes=KubernetesTargetSpec(kind=kind, **kw))}
    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the ``valueFrom`` reference of a variable taken from elsewhere."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in container["env"]}


def ref(key: str, secret: str = "mlops-secrets") -> dict[str, Any]:
    return {"secretKeyRef": {"name": secret, "key": key}}


def containers_of(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in manifests:
        if m["kind"] == "Deployment":
            out += m["spec"]["template"]["spec"]["containers"]
        elif m["kind"] == "InferenceService":
            out += m["spec"]["predictor"]["containers"]
    return out


# --- render + validate ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["local", "aws", "gcp", "k8s"])
@pytest.mark.parametrize("kind", ["deployment", "kserve"])
@pytest.mark.parametrize("deployment", [PLAIN, CANARY], ids=["plain", "canary"])
def test_render_validates_and_is_deterministic(flights, kind, deployment, profile, local_profile):
    if profile != "local":
        use_profile(local_profile, profile, "aws" if profile == "k8s" else None)
    spec = with_target(flights, kind, service_account="mlops-serving", env={"LOG_LEVEL": "info"})
    manifests = render(spec, deployment)
    validate(manifests)
    validate(manifests, kubernetes_version="1.33.2")
    assert render(spec, deployment) == manifests
    text = to_yaml(manifests)
    assert text == to_yaml(render(spec, deployment))
    assert list(yaml.safe_load_all(text)) == manifests
    for m in manifests:
        assert DNS1123.match(m["metadata"]["name"]) and m["metadata"]["name"] == "flight-delays"
        assert m["metadata"]["namespace"] == "mlops"
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "mlops-assets"
        assert labels["mlops/spec"] == "flight_delays"
        assert labels["mlops/stable-version"] == "3"
        assert labels.get("mlops/canary-version") == deployment.canary


def test_deployment_kind(flights):
    spec = with_target(flights, "deployment", replicas=3, cpu="500m", memory="2Gi", service_account="sa", env={"A": "1"})
    dep, svc = render(spec, CANARY)
    assert (dep["apiVersion"], dep["kind"], svc["apiVersion"], svc["kind"]) == ("apps/v1", "Deployment", "v1", "Service")
    assert dep["spec"]["replicas"] == 3
    template = dep["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    assert template["metadata"]["labels"]["mlops/canary-version"] == "4"
    assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(template["metadata"]["labels"].items())
    assert not any("version" in k for k in dep["spec"]["selector"]["matchLabels"])  # the selector is immutable
    pod = template["spec"]
    assert pod["serviceAccountName"] == "sa" and pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["command"] == ["mlops", "serve", "--spec", "flight_delays", "--host", "0.0.0.0", "--port", "8080"]
    assert c["ports"][0]["containerPort"] == 8080
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "500m", "memory": "2Gi"}}
    env = env_of(c)
    assert Deployment.from_json(json.loads(env["MLOPS_DEPLOYMENT"])) == CANARY  # the server splits the traffic
    assert env["A"] == "1"
    # the local profile: its stores are files on this machine, only the registry is handed over
    assert env["MLOPS_ENV"] == "local" and env["MLFLOW_TRACKING_URI"] == ref("MLFLOW_TRACKING_URI")
    assert list(env) == ["MLOPS_DEPLOYMENT", "MLOPS_ENV", "MLFLOW_TRACKING_URI", "MLOPS_ADMIN_TOKEN", "MLOPS_WAL_DIR", "A"]
    # the prediction log's write-ahead folder is a volume of the pod: it outlives a killed container
    (mount,) = c["volumeMounts"]
    assert env["MLOPS_WAL_DIR"] == mount["mountPath"]
    assert {"name": mount["name"], "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    # the admin route's token: an optional key of the same Secret, never a value
    assert env["MLOPS_ADMIN_TOKEN"] == {"secretKeyRef": {"name": "mlops-secrets", "key": "MLOPS_ADMIN_TOKEN", "optional": True}}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # no canary: no canary label; no service account: none set
    dep, _ = render(with_target(flights, "deployment"), PLAIN)
    assert "mlops/canary-version" not in dep["spec"]["template"]["metadata"]["labels"]
    assert "serviceAccountName" not in dep["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("deployment", "percent", "serving"),
    [
        (PLAIN, None, "3"),
        (CANARY, 13, "4"),
        (Deployment("3", "4", 0.2), 1, "4"),
        (Deployment("3", "4", 99.7), 99, "4"),
        (Deployment("3", "4"), 0, "4"),
    ],
)
def test_kserve_kind_canary_percent(flights, deployment, percent, serving):
    (isvc,) = render(with_target(flights, "kserve"), deployment)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor.get("canaryTrafficPercent") == percent
    (c,) = predictor["containers"]
    assert c["name"] == "kserve-container" and c["ports"][0]["containerPort"] == 8080
    # KServe splits: the predictor runs only the newest version, as its stable
    assert json.loads(env_of(c)["MLOPS_DEPLOYMENT"]) == Deployment(stable=serving).to_json()
    assert predictor["labels"]["mlops/serving-version"] == serving
    assert predictor["annotations"]["prometheus.io/path"] == "/metrics"
    validate([isvc])


def test_dns_names(flights):
    assert dns_name("flight_delays") == "flight-delays"
    assert dns_name("a__b_") == "a-b"
    long = dns_name("x" * 80 + "_model")
    assert len(long) <= 63 and DNS1123.match(long) and long != dns_name("x" * 80 + "_other")
    (isvc,) = render(with_target(flights.model_copy(update={"name": "m" * 70}), "kserve"), PLAIN)
    assert len(isvc["metadata"]["name"]) <= 45 and DNS1123.match(isvc["metadata"]["name"])


def test_reserved_env_is_refused(flights):
    with pytest.raises(ValueError, match="MLOPS_DEPLOYMENT"):
        render(with_target(flights, "deployment", env={"MLOPS_DEPLOYMENT": "{}"}), PLAIN)
    # the profile's variables are the target's too: a spec cannot point the server at other stores
    for var in ("MLOPS_ENV", "MLOPS_STORAGE_URI", "MLOPS_REDIS", "MLFLOW_TRACKING_URI"):
        with pytest.raises(ValueError, match=var):
            render(with_target(flights, "kserve", env={var: "x"}), PLAIN)


# --- the container runs on the platform's profile ------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "cloud", "served_env"),
    [("aws", None, "aws"), ("gcp", None, "gcp"), ("k8s", "aws", "aws"), ("k8s", "gcp", "gcp")],
)
@pytest.mark.parametrize("kind", ["deployment", "kserve"])
def test_the_container_gets_the_profile_and_secrets_only_by_reference(flights, local_profile, kind, profile, cloud, served_env):
    """The server in the pod reads and writes the platform's stores: MLOPS_ENV and the store variables,
    plain values as values, the credential-bearing ones as secretKeyRefs; no secret value anywhere."""
    use_profile(local_profile, profile, cloud)
    local_profile.setenv("MLOPS_ADMIN_TOKEN", "admin-token-never-rendered")  # where the manifests are rendered
    spec = with_target(flights, kind, env={"LOG_LEVEL": "debug"})
    manifests = render(spec, CANARY, tracking_uri=SECRET_VALUES["MLFLOW_TRACKING_URI"])  # a caller's URI is not written
    validate(manifests)
    (c,) = containers_of(manifests)
    env = env_of(c)
    plain = PLAIN_VALUES[served_env]
    assert env["MLOPS_ENV"] == served_env  # the stores' profile: a server needs no k8s executor
    assert {k: env[k] for k in plain} == plain
    assert {k: env[k] for k in SECRET_VALUES} == {k: ref(k) for k in SECRET_VALUES}
    assert env["LOG_LEVEL"] == "debug"
    # nothing else of the platform: no IO bucket, no Dagster database, no whole-Secret envFrom
    assert set(env) == {
        "MLOPS_DEPLOYMENT",
        "MLOPS_ENV",
        "LOG_LEVEL",
        "MLOPS_ADMIN_TOKEN",
        "MLOPS_WAL_DIR",
        *plain,
        *SECRET_VALUES,
    }
    assert env["MLOPS_ADMIN_TOKEN"]["secretKeyRef"] == {"name": "mlops-secrets", "key": "MLOPS_ADMIN_TOKEN", "optional": True}
    assert "envFrom" not in c
    text = to_yaml(manifests)
    assert not [p for p in PASSWORDS if p in text]
    assert "admin-token-never-rendered" not in text
    # the Secret is named by MLOPS_K8S_SECRET (as for the k8s profile's run and step pods) or by the caller
    local_profile.setenv("MLOPS_K8S_SECRET", "ml-prod-secrets")
    (c,) = containers_of(render(spec, CANARY))
    assert env_of(c)["MLOPS_REDIS"] == ref("MLOPS_REDIS", "ml-prod-secrets")
    (c,) = containers_of(render(spec, CANARY, secret="serving-secrets"))
    assert env_of(c)["MLFLOW_TRACKING_URI"] == ref("MLFLOW_TRACKING_URI", "serving-secrets")


def test_a_profile_value_missing_here_is_named_before_anything_is_applied(flights, local_profile):
    use_profile(local_profile, "aws")
    local_profile.delenv("MLOPS_LANDING_URI")
    local_profile.delenv("MLFLOW_ARTIFACT_URI")
    with pytest.raises(ValueError, match="MLOPS_ENV=aws: the server container needs MLOPS_LANDING_URI, MLFLOW_ARTIFACT_URI"):
        render(with_target(flights, "deployment"), PLAIN)
    # secret values are the Secret's business: they need not be set where the manifests are rendered
    for k in SECRET_VALUES:
        local_profile.delenv(k)
    local_profile.setenv("MLOPS_LANDING_URI", "s3://l/i")
    local_profile.setenv("MLFLOW_ARTIFACT_URI", "s3://a/m")
    validate(render(with_target(flights, "deployment"), PLAIN))


def test_secret_vars_are_the_profiles_credential_bearing_variables():
    from mlops_assets.environments import CLOUD_VARS
    from mlops_assets.k8s import SECRET, secret_keys
    from mlops_assets.rollout.kubernetes import SECRET_VARS, secret_name

    assert set(SECRET_VARS) == {CLOUD_VARS.mlflow_tracking, CLOUD_VARS.feast_registry, CLOUD_VARS.redis}
    assert set(SECRET_VARS) <= set(secret_keys("aws"))  # the k8s profile's Secret holds them
    assert secret_name() == SECRET[1]  # the same default Secret as the k8s profile's pods


def refused(manifests: list[dict[str, Any]]) -> str:
    with pytest.raises(ValueError) as info:
        validate(manifests)
    return str(info.value)


def test_broken_deployment_is_refused_with_paths(flights):
    dep, svc = render(with_target(flights, "deployment"), CANARY)
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["ports"][0]["containerPort"] = "8080"
    del c["image"]
    c["livenessProb"] = c.pop("livenessProbe")
    message = refused([bad, svc])
    assert "Deployment mlops/flight-delays: spec.replicas: 'two' is not of type" in message
    assert "spec.template.spec.containers[0].ports[0].containerPort: '8080' is not of type 'integer'" in message
    assert "spec.template.spec.containers[0].image: a container needs an image" in message
    assert "'livenessProb' was unexpected" in message
    assert "Service" not in message  # the valid one is not blamed

    bad_svc = copy.deepcopy(svc)
    bad_svc["metadata"]["name"] = "flight_delays"
    bad_svc["spec"]["ports"][0]["port"] = "80"
    message = refused([dep, bad_svc])
    assert "Service mlops/flight_delays: metadata.name: 'flight_delays' is not a DNS-1123 label" in message
    assert "spec.ports[0].port: '80' is not of type 'integer'" in message

    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = "other"
    assert "spec.selector.matchLabels: does not match" in refused([bad])
    bad = copy.deepcopy(dep)
    bad["apiVersion"] = "apps/v1beta9"
    assert "no Kubernetes 1.30.0 schema" in refused([bad])


def test_broken_inference_service_is_refused_with_paths(flights):
    (isvc,) = render(with_target(flights, "kserve"), CANARY)
    bad = copy.deepcopy(isvc)
    predictor = bad["spec"]["predictor"]
    predictor["canaryTrafficPercent"] = 150
    predictor["minReplicas"] = "two"
    predictor["containers"][0]["ports"][0]["containerPort"] = "8080"
    predictor["containers"][0]["image"] = ""
    predictor["containers"][0]["env"][0]["value"] = 3
    message = refused([bad])
    assert "InferenceService mlops/flight-delays: spec.predictor.canaryTrafficPercent: 150 is not in 0..100" in message
    assert "spec.predictor.minReplicas: 'two' is not a non-negative integer" in message
    assert "spec.predictor.containers[0].ports[0].containerPort: '8080' is not of type 'integer'" in message
    assert "spec.predictor.containers[0].image: a container needs an image" in message
    assert "spec.predictor.containers[0].env[0].value: 3 is not of type" in message

    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["canaryTrafficPercent"] = 12.5
    assert "spec.predictor.canaryTrafficPercent: 12.5 is not a non-negative integer" in refused([bad])
    bad = copy.deepcopy(isvc)
    del bad["spec"]["predictor"]["containers"]
    assert "spec.predictor.containers: a custom predictor needs one container" in refused([bad])
    bad = copy.deepcopy(isvc)
    bad["apiVersion"] = "serving.kserve.io/v1alpha1"
    bad["metadata"]["labels"]["mlops/stable-version"] = "not a label value"
    message = refused([bad])
    assert "apiVersion: 'serving.kserve.io/v1alpha1' is not 'serving.kserve.io/v1beta1'" in message
    assert "metadata.labels.mlops/stable-version: 'not a label value' is not a valid label value" in message


# --- apply + verify against an emulated API server --------------------------------------------

_PATH = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$")


class FakeKube:
    """Just enough of the Kubernetes API: GET/POST/PUT/PATCH of namespaced deployments, services and
    inferenceservices, resourceVersion/generation bookkeeping, and status as a healthy cluster reports it."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.available = True
        self.lock = threading.Lock()

    def status(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        gen = obj["metadata"]["generation"]
        if plural == "deployments":
            n = obj["spec"]["replicas"]
            ready = n if self.available else 0
            return {
                "observedGeneration": gen,
                "replicas": n,
                "updatedReplicas": ready,
                "availableReplicas": ready,
                "readyReplicas": ready,
            }
        if plural == "inferenceservices":
            name, percent = obj["metadata"]["name"], obj["spec"]["predictor"].get("canaryTrafficPercent")
            latest = {"revisionName": f"{name}-predictor-{gen:05d}", "latestRevision": True, "tag": "latest"}
            traffic = [{**latest, "percent": 100}]
            if percent is not None and gen > 1:
                prev = {"revisionName": f"{name}-predictor-{gen - 1:05d}", "latestRevision": False, "tag": "prev"}
                traffic = [{**latest, "percent": percent}, {**prev, "percent": 100 - percent}]
            ready = "True" if self.available else "False"
            return {
                "observedGeneration": gen,
                "url": f"http://{name}.example.com",
                "conditions": [{"type": "Ready", "status": ready}],
                "components": {"predictor": {"traffic": traffic}},
            }
        return {"loadBalancer": {}}

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path.split("?", 1)[0])
        if not match:
            return 404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": f"no route {path}"}
        ns, plural = match["ns"], match["plural"]
        name = match["name"] or (body or {}).get("metadata", {}).get("name")
        key = (plural, ns, name)
        with self.lock:
            self.requests.append((method, path, body))
            live = self.objects.get(key)
            if method == "GET":
                if live is None:
                    return 404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": f"{plural} {name!r} not found"}
                return 200, {**live, "status": self.status(plural, live)}
            if method == "POST":
                if live is not None:
                    return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
                obj = copy.deepcopy(body)
                obj["metadata"].update(resourceVersion="1", generation=1)
                if plural == "services":
                    obj["spec"]["clusterIP"] = "10.96.0.7"
                self.objects[key] = obj
                return 201, obj
            if live is None:
                return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
            if method == "PUT":
                if body["metadata"].get("resourceVersion") != live["metadata"]["resourceVersion"]:
                    return 409, {"kind": "Status", "code": 409, "reason": "Conflict"}
                obj = copy.deepcopy(body)
            else:  # PATCH: a merge of the top-level sections is enough here
                obj = copy.deepcopy(live)
                for section, value in (body or {}).items():
                    obj[section] = {**obj.get(section, {}), **value} if isinstance(value, dict) else value
            obj["metadata"]["resourceVersion"] = str(int(live["metadata"]["resourceVersion"]) + 1)
            obj["metadata"]["generation"] = live["metadata"]["generation"] + 1
            self.objects[key] = obj
            return 200, obj


@pytest.fixture
def kube() -> Iterator[tuple[FakeKube, Any]]:
    from kubernetes import client

    fake = FakeKube()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, payload = fake.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    configuration.proxy = None  # the sandbox's proxy variables must not route loopback requests
    api_client = client.ApiClient(configuration)
    try:
        yield fake, api_client
    finally:
        api_client.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_apply_and_verify_deployment(flights, kube, local_profile):
    fake, api_client = kube
    use_profile(local_profile, "aws")
    spec = with_target(flights, "deployment")
    target = KubernetesTarget(api_client=api_client)

    done = target.apply(render(spec, PLAIN))
    assert done == ["created Deployment mlops/flight-delays", "created Service mlops/flight-delays"]
    sent = [(m, p, (b or {}).get("kind")) for m, p, b in fake.requests]
    assert sent == [
        ("GET", "/apis/apps/v1/namespaces/mlops/deployments/flight-delays", None),
        ("POST", "/apis/apps/v1/namespaces/mlops/deployments", "Deployment"),
        ("GET", "/api/v1/namespaces/mlops/services/flight-delays", None),
        ("POST", "/api/v1/namespaces/mlops/services", "Service"),
    ]
    posted = fake.requests[1][2]
    assert posted["spec"]["template"]["metadata"]["labels"]["mlops/stable-version"] == "3"
    # what the client really sent: the profile, and the secrets only as references
    sent_env = env_of(posted["spec"]["template"]["spec"]["containers"][0])
    assert sent_env["MLOPS_ENV"] == "aws" and sent_env["MLOPS_STORAGE_URI"] == PLAIN_VALUES["aws"]["MLOPS_STORAGE_URI"]
    assert sent_env["MLOPS_REDIS"] == ref("MLOPS_REDIS")
    result = target.verify(spec, PLAIN, timeout_s=5, poll_s=0.05)
    assert result["available_replicas"] == result["replicas"] == 2 and result["stable_version"] == "3"

    # a canary: both objects are replaced (PUT with the live resourceVersion; the Service keeps its IP)
    fake.requests.clear()
    done = target.apply(render(spec, CANARY))
    assert done == ["replaced Deployment mlops/flight-delays", "replaced Service mlops/flight-delays"]
    methods = [(m, p) for m, p, _ in fake.requests]
    assert methods == [
        ("GET", "/apis/apps/v1/namespaces/mlops/deployments/flight-delays"),
        ("PUT", "/apis/apps/v1/namespaces/mlops/deployments/flight-delays"),
        ("GET", "/api/v1/namespaces/mlops/services/flight-delays"),
        ("PUT", "/api/v1/namespaces/mlops/services/flight-delays"),
    ]
    put_dep, put_svc = fake.requests[1][2], fake.requests[3][2]
    assert put_dep["metadata"]["resourceVersion"] == "1"
    assert put_dep["spec"]["template"]["metadata"]["labels"]["mlops/canary-version"] == "4"
    env = env_of(put_dep["spec"]["template"]["spec"]["containers"][0])
    assert json.loads(env["MLOPS_DEPLOYMENT"])["canary_percent"] == 12.5
    assert put_svc["spec"]["clusterIP"] == "10.96.0.7"
    assert target.verify(spec, CANARY, timeout_s=5, poll_s=0.05)["canary_version"] == "4"
    assert not [p for _, _, body in fake.requests for p in PASSWORDS if p in json.dumps(body)]

    # the cluster serves the canary deployment, not the plain one: refused at once, not after the timeout
    with pytest.raises(RuntimeError, match="another deployment replaced this one"):
        target.verify(spec, PLAIN, timeout_s=30, poll_s=0.05)

    # pods never become available: a clear timeout
    fake.available = False
    with pytest.raises(RuntimeError, match=r"Deployment mlops/flight-delays not ready after 0.3 s: 0 of 2 replicas updated"):
        target.verify(spec, CANARY, timeout_s=0.3, poll_s=0.05)


def test_apply_and_verify_inference_service(flights, kube):
    fake, api_client = kube
    spec = with_target(flights, "kserve")
    target = KubernetesTarget(api_client=api_client)
    path = "/apis/serving.kserve.io/v1beta1/namespaces/mlops/inferenceservices"

    # KServe's stable side is its previous revision: the stable version goes first, as a plain deploy
    assert target.apply(render(spec, PLAIN)) == ["created InferenceService mlops/flight-delays"]
    assert [(m, p) for m, p, _ in fake.requests] == [("GET", f"{path}/flight-delays"), ("POST", path)]
    assert fake.requests[1][2]["kind"] == "InferenceService"
    assert target.verify(spec, PLAIN, timeout_s=5, poll_s=0.05)["traffic"][0]["percent"] == 100

    fake.requests.clear()
    assert target.apply(render(spec, CANARY)) == ["replaced InferenceService mlops/flight-delays"]
    (method, sent_path, body) = fake.requests[1]
    assert (method, sent_path) == ("PUT", f"{path}/flight-delays")
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 13
    assert body["metadata"]["labels"]["mlops/canary-version"] == "4"
    result = target.verify(spec, CANARY, timeout_s=5, poll_s=0.05)
    assert result["canary_percent"] == 13
    assert sorted(t["percent"] for t in result["traffic"]) == [13, 87]

    # promotion: a plain deploy of the canary version drops canaryTrafficPercent (replace, not merge)
    promoted = Deployment(stable="4")
    target.apply(render(spec, promoted))
    assert "canaryTrafficPercent" not in fake.requests[-1][2]["spec"]["predictor"]
    assert target.verify(spec, promoted, timeout_s=5, poll_s=0.05)["traffic"] == [
        {"revisionName": "flight-delays-predictor-00003", "latestRevision": True, "tag": "latest", "percent": 100}
    ]

    fake.available = False
    with pytest.raises(RuntimeError, match=r"InferenceService mlops/flight-delays not ready after 0.3 s: not Ready"):
        target.verify(spec, promoted, timeout_s=0.3, poll_s=0.05)


def test_verify_before_apply_times_out(flights, kube):
    _, api_client = kube
    with pytest.raises(RuntimeError, match="does not exist"):
        KubernetesTarget(api_client=api_client).verify(with_target(flights, "deployment"), PLAIN, timeout_s=0.2, poll_s=0.05)


def test_module_imports_no_kubernetes_at_top():
    import subprocess
    import sys

    code = "import sys, mlops_assets.rollout.kubernetes, mlops_assets.rollout.kubernetes_schemas, mlops_assets.rollout.kubernetes_cluster; print(any(m.split('.')[0] in ('kubernetes', 'kubernetes_validate') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_kserve_canary_without_a_stable_revision_is_reported(flights, kube):
    """Applied as the first revision, a canary gets all the traffic: verify says why it never converges."""
    _, api_client = kube
    spec = with_target(flights, "kserve")
    target = KubernetesTarget(api_client=api_client)
    target.apply(render(spec, CANARY))
    with pytest.raises(
        RuntimeError, match=r"has 100% of the traffic, expected 13% \(KServe's stable side is its previous revision"
    ):
        target.verify(spec, CANARY, timeout_s=0.2, poll_s=0.05)
