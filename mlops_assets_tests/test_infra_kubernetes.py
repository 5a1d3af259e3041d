"""The Kubernetes deployment without a cluster: infra/k8s (kustomize base and cloud overlays, the
Secrets script) and infra/helm (values of Dagster's chart).

- Every object, in the base and in each overlay with its patches applied, validates strictly against
  the Kubernetes schemas bundled with kubernetes-validate, passes the "restricted" Pod Security
  Standard its namespace enforces, and reads only Secret keys the platform's Secret has.
- checkov finds nothing in infra/k8s, scans every object, and each check it skips is explained in
  the object's own annotation. The kustomizations name files and patch paths that exist.
- The Helm values name what mlops_assets.k8s names (namespace, service account, Secrets, instance
  ConfigMap, DAGSTER_HOME, run worker size, pull policy), pin the chart to the installed dagster,
  run mlops_assets.definitions, and embed container fields (probes as the chart renders them,
  resources, security contexts, environment, volumes) that are valid Kubernetes.
- The database Job's own command runs twice against a real PostgreSQL and creates the databases
  once; MLflow's container sets options the installed MLflow CLI has.
- secrets_from_terraform.py turns `terraform output -json` into Secrets with exactly the profile's
  keys and refuses a missing output by name, without printing a value.

Helm cannot validate against the chart's values.schema.json here (no chart offline): the values are
checked against the Kubernetes definitions the chart's schema refers to.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops_assets import environments, k8s
from mlops_assets.rollout import kubernetes as serving_k8s
from mlops_assets.rollout import kubernetes_cluster, kubernetes_schemas
from mlops_assets_tests.conftest import REPO
from mlops_assets_tests.infra_tools import checkov, load_script

K8S_DIR = REPO / "infra" / "k8s"
HELM_DIR = REPO / "infra" / "helm"
VALUES_DIR = HELM_DIR / "dagster"
CLOUDS = ("aws", "gcp")
# EKS and GKE both offer 1.33 in standard support; the manifests use nothing newer
KUBERNETES_VERSION = "1.33.0"
RELEASE = "dagster"  # the Helm release name the READMEs install; the chart names its objects after it
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
# Terraform outputs the install commands read, per cloud: (service account annotation, outputs)
ACCOUNT_VALUES = {
    "aws": ("eks.amazonaws.com/role-arn", ("mlops_role_arn", "ecr_code_location_url", "mlflow_role_arn")),
    "gcp": ("iam.gke.io/gcp-service-account", ("mlops_gsa_email", "artifact_code_location_url", "mlflow_gsa_email")),
}


def default(name: tuple[str, str]) -> str:
    return name[1]


def image_uid() -> int:
    """The uid infra/Dockerfile gives the image's user."""
    return int(re.search(r"useradd[^\n]*--uid (\d+)", (REPO / "infra" / "Dockerfile").read_text()).group(1))


# --- reading the manifests ------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_objects(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomizations() -> list[Path]:
    return sorted(K8S_DIR.rglob("kustomization.yaml"))


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _matches(obj: dict, target: dict) -> bool:
    group, version = _group_version(obj["apiVersion"])
    meta = obj["metadata"]
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": meta["name"], "namespace": meta.get("namespace")}
    return all(wanted[k] == v for k, v in target.items())


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), f"{path}: a JSON pointer starts with /"
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc, parts: list[str], path: str):
    for part in parts:
        if isinstance(doc, list):
            assert part.isdigit() and int(part) < len(doc), f"{path}: no item {part}"
            doc = doc[int(part)]
        else:
            assert isinstance(doc, dict) and part in doc, f"{path}: no {part!r} in the target"
            doc = doc[part]
    return doc


def apply_json6902(obj: dict, ops: list[dict]) -> None:
    """Apply the operations a kustomization uses (add, replace, remove), asserting that each path
    exists in the object (for add: its parent, and a list index within bounds)."""
    for op in ops:
        parts = _pointer(op["path"])
        parent = _resolve(obj, parts[:-1], op["path"])
        last = parts[-1]
        if op["op"] == "add":
            if isinstance(parent, list):
                assert last == "-" or (last.isdigit() and int(last) <= len(parent)), f"{op['path']}: index out of range"
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                assert isinstance(parent, dict), f"{op['path']}: the parent is not an object"
                parent[last] = copy.deepcopy(op["value"])
        elif op["op"] in ("replace", "remove"):
            _resolve(parent, [last], op["path"])
            if op["op"] == "remove":
                parent.pop(int(last) if isinstance(parent, list) else last)
            else:
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"{op['op']}: not an operation these kustomizations use")


def kustomize_build(directory: Path) -> list[dict]:
    """What `kustomize build` makes of these kustomizations: resources (files and other
    kustomizations) and inline JSON6902 patches, each target matching exactly one object. Any other
    kustomize feature fails the test rather than being ignored."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    assert not unknown, f"{directory}: kustomize features this test does not model: {sorted(unknown)}"
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory / 'kustomization.yaml'}: resource {entry} does not exist"
        if path.is_dir():
            assert (path / "kustomization.yaml").exists(), f"{entry}: a directory resource needs a kustomization.yaml"
            objects += kustomize_build(path)
        else:
            objects += copy.deepcopy(load_objects(path))
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"target", "patch"}, f"{directory}: only inline patches with a target are used here"
        targets = [o for o in objects if _matches(o, patch["target"])]
        assert len(targets) == 1, f"{directory}: patch target {patch['target']} matches {len(targets)} objects"
        apply_json6902(targets[0], yaml.safe_load(patch["patch"]))
    return objects


def overlay(cloud: str) -> list[dict]:
    return kustomize_build(K8S_DIR / "overlays" / cloud)


def find(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def pod_templates(objects: list[dict]):
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]


# --- Pod Security Standard "restricted" -----------------------------------------------------------


def restricted_problems(pod_sc: dict, containers: list[dict], where: str) -> list[str]:
    """What the "restricted" Pod Security Standard refuses (the namespace enforces it), for a pod
    security context and its containers' security contexts; plus the image's uid."""
    problems = []
    pod_sc = pod_sc or {}
    for c in containers:
        sc = c.get("securityContext") or {}
        name = f"{where}/{c.get('name', 'container')}"
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile RuntimeDefault")
        if (sc.get("runAsUser") or pod_sc.get("runAsUser")) != image_uid():
            problems.append(
                f"{name}: runs as uid {sc.get('runAsUser') or pod_sc.get('runAsUser')}, the image's user is {image_uid()}"
            )
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
    return problems


def secret_refs(container: dict) -> list[tuple[str, str | None]]:
    """(Secret, key) pairs a container reads; key None for envFrom (the whole Secret)."""
    refs = [(e["secretRef"]["name"], None) for e in container.get("envFrom", []) if "secretRef" in e]
    refs += [
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in (e.get("valueFrom") or {})
    ]
    return refs


# --- infra/k8s: the objects -----------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S_DIR)))
def test_every_manifest_is_a_valid_kubernetes_object(path):
    objects = load_objects(path)
    assert objects, f"{path}: no object"
    # strict schemas (no unknown field), names, labels, images, selectors: the endpoint target's validation
    kubernetes_schemas.validate(objects, KUBERNETES_VERSION)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == default(k8s.NAMESPACE), f"{path}: {obj['kind']} outside the namespace"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == serving_k8s.PART_OF


@pytest.mark.parametrize("cloud", CLOUDS)
def test_each_overlay_builds_valid_objects_that_pass_the_restricted_standard(cloud):
    objects = overlay(cloud)
    kubernetes_schemas.validate(objects, KUBERNETES_VERSION)
    namespace = find(objects, "Namespace", default(k8s.NAMESPACE))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    problems = []
    for obj, template in pod_templates(objects):
        spec = template["spec"]
        problems += restricted_problems(
            spec.get("securityContext"), spec["containers"] + spec.get("initContainers", []), obj["metadata"]["name"]
        )
        # nothing here talks to the Kubernetes API
        assert spec.get("automountServiceAccountToken") is False, obj["metadata"]["name"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, (
                f"{obj['metadata']['name']}: mount of an undeclared volume"
            )
            # Python in the code-location image writes temporary files (MLflow's downloads, Dagster's)
            if c["image"].startswith("mlops-assets:") and c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), "a read-only root needs a writable /tmp"
    assert not problems, problems


@pytest.mark.parametrize("cloud", CLOUDS)
def test_pods_read_only_keys_the_platform_secret_has(cloud):
    keys = set(k8s.secret_keys(cloud))
    for obj, template in pod_templates(overlay(cloud)):
        for container in template["spec"]["containers"]:
            for secret, key in secret_refs(container):
                assert secret == default(k8s.SECRET), f"{obj['metadata']['name']} reads Secret {secret}"
                assert key is None or key in keys, f"{obj['metadata']['name']} reads {key}, not a key of {secret} on {cloud}"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_config_map_holds_the_profile_plain_settings(cloud):
    config = find(overlay(cloud), "ConfigMap", "mlops-config")
    assert config["data"] == dict(item.split("=", 1) for item in k8s.plain_env(cloud))


def test_the_endpoint_role_grants_what_the_kubernetes_target_does_and_nothing_more():
    objects = load_objects(K8S_DIR / "base" / "rbac-endpoints.yaml")
    role, binding = find(objects, "Role", "mlops-endpoints"), find(objects, "RoleBinding", "mlops-endpoints")
    # KubernetesTarget reads (get), creates and replaces (update) these kinds, and nothing else
    wanted = {("apps", "deployments"), ("", "services"), (serving_k8s.KSERVE_GROUP, serving_k8s.KSERVE_PLURAL)}
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert set(granted) == wanted
    assert all(verbs == {"get", "create", "update"} for verbs in granted.values()), granted
    source = Path(kubernetes_cluster.__file__).read_text()
    for kind in ("Deployment", "Service", "InferenceService"):
        assert f'kind == "{kind}"' in source, f"the target no longer handles {kind}: update the Role"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mlops-endpoints"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": default(k8s.SERVICE_ACCOUNT), "namespace": default(k8s.NAMESPACE)}
    ]


def test_the_exporter_serves_metrics_from_the_chart_instance():
    objects = kustomize_build(K8S_DIR / "base")
    deployment, service = find(objects, "Deployment", "mlops-exporter"), find(objects, "Service", "mlops-exporter")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["mlops", "exporter", "--host", "0.0.0.0", "--port", "9464"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "mlops-exporter"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[environments.ENV_VAR] == "k8s"
    assert env["DAGSTER_HOME"] == k8s.DAGSTER_HOME_IN_IMAGE
    # the instance as Dagster's pods see it: the chart's ConfigMap as $DAGSTER_HOME/dagster.yaml
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == f"{k8s.DAGSTER_HOME_IN_IMAGE}/dagster.yaml"]
    assert volumes[mount["name"]]["configMap"]["name"] == default(k8s.INSTANCE_CONFIG_MAP) == f"{RELEASE}-instance"
    assert mount["subPath"] == "dagster.yaml"
    assert {"configMapRef": {"name": "mlops-config"}} in container["envFrom"]
    assert pod["spec"]["serviceAccountName"] == default(k8s.SERVICE_ACCOUNT)


def test_the_mlflow_server_uses_options_the_installed_mlflow_has():
    from mlflow.cli import server
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY

    options = {o for p in server.params for o in p.opts + p.secondary_opts}
    envvars = {p.envvar for p in server.params if isinstance(p.envvar, str)} | {MLFLOW_DISABLE_TELEMETRY.name}
    deployment = find(load_objects(K8S_DIR / "base" / "mlflow" / "deployment.yaml"), "Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    assert {a for a in container["args"] if a.startswith("--")} <= options
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= envvars, set(env) - envvars
    v = environments.CLOUD_VARS
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["key"] == v.mlflow_tracking
    assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"]["valueFrom"]["secretKeyRef"]["key"] == v.mlflow_artifacts
    port = container["ports"][0]["containerPort"]
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    # the Service's in-cluster names are accepted Host headers (DNS-rebinding protection)
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert f"mlflow.{default(k8s.NAMESPACE)}.svc.cluster.local:{port}" in hosts and f"mlflow:{port}" in hosts


def test_the_database_job_creates_the_missing_databases_once(postgres, tmp_path):
    """The Job's own command and SQL against a real PostgreSQL, twice: the first run creates mlflow
    and feast, the second finds nothing to do. (TLS is turned off only because the throwaway server
    has no certificate.)"""
    from mlops_assets_tests.services import require

    objects = kustomize_build(K8S_DIR / "base")
    job = find(objects, "Job", "mlops-create-databases")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    config_map = find(objects, "ConfigMap", next(v for v in pod["volumes"] if v["name"] == mount["name"])["configMap"]["name"])
    for key, sql in config_map["data"].items():
        (tmp_path / key).write_text(sql)
    command = [
        require("psql", "the database Job's test"),
        *(a.replace(mount["mountPath"], str(tmp_path)) for a in container["command"][1:]),
    ]
    postgres.create_database("dagster")
    secret = {"DAGSTER_PG_HOST": postgres.host, "DAGSTER_PG_PORT": str(postgres.port), "DAGSTER_PG_USER": postgres.user,
              "DAGSTER_PG_PASSWORD": postgres.password, "DAGSTER_PG_DB": "dagster"}  # fmt: skip
    assert set(secret) == set(environments.DAGSTER_PG_VARS)
    env = {e["name"]: secret[e["valueFrom"]["secretKeyRef"]["key"]] if "valueFrom" in e else e["value"] for e in container["env"]}
    assert env["PGSSLMODE"] == "require"
    env["PGSSLMODE"] = "disable"

    def databases() -> set[str]:
        conn = postgres.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database")
                return {row[0] for row in cur.fetchall()}
        finally:
            conn.close()

    before = databases()
    for _ in range(2):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
    assert databases() - before == {"mlflow", "feast"}


# --- infra/k8s: checkov and the kustomizations ----------------------------------------------------


def test_checkov_passes_scans_every_object_and_explains_each_skip():
    report = checkov(K8S_DIR, "kubernetes")
    assert not report["failed"], [(f["check_id"], f["resource"], f["file"]) for f in report["failed"]]
    scanned = {r["resource"] for state in report.values() for r in state}
    for path in manifest_files():
        for obj in load_objects(path):
            if obj["kind"] in (*WORKLOADS, "Service", "ServiceAccount", "ConfigMap", "Role", "RoleBinding"):
                resource = f"{obj['kind']}.{obj['metadata']['namespace']}.{obj['metadata']['name']}"
                assert resource in scanned, f"checkov did not scan {resource} ({path}): does the file parse for it?"
    annotations = {
        value
        for path in manifest_files()
        for obj in load_objects(path)
        for key, value in (obj["metadata"].get("annotations") or {}).items()
        if key.startswith("checkov.io/skip")
    }
    for skipped in report["skipped"]:
        reason = (skipped["reason"] or "").strip()
        assert len(reason) > 30, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
        assert f"{skipped['check_id']}={reason}" in annotations, (
            f"{skipped['check_id']}: the reason must be in the object's annotation"
        )


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S_DIR)))
def test_kustomizations_name_existing_files_and_patch_existing_paths(path):
    # kustomize_build asserts every resource exists and every patch path exists in its one target
    objects = kustomize_build(path.parent)
    assert objects
    if path.parent.parent.name == "overlays":
        assert path.parent.name in CLOUDS
    else:  # the base lists every manifest file, once
        listed = {(path.parent / r).resolve() for r in yaml.safe_load(path.read_text())["resources"]}
        assert listed == {p.resolve() for p in manifest_files() if path.parent in p.parents}


# --- infra/k8s: the Secrets -----------------------------------------------------------------------


def _script():
    return load_script(K8S_DIR / "secrets_from_terraform.py")


def terraform_outputs(cloud: str, **override) -> dict:
    """A `terraform output -json` document: the profile's variables (values a YAML writer could
    mangle), the plain settings and outputs that are not variables."""
    values = {k: f"value of {k}: 'quoted' \"twice\" #not-a-comment ü" for k in k8s.secret_keys(cloud)}
    values["DAGSTER_PG_PORT"] = 5432  # a number output
    values |= {environments.ENV_VAR: "k8s", environments.K8S_CLOUD_VAR: cloud, "cluster_name": "mlops", "lake_bucket": "lake"}
    values |= override
    return {
        k: {"sensitive": k.isupper(), "type": "number" if isinstance(v, int) else "string", "value": v} for k, v in values.items()
    }


def run_script(document: dict, *args: str) -> subprocess.CompletedProcess:
    script = K8S_DIR / "secrets_from_terraform.py"
    return subprocess.run(
        [sys.executable, str(script), *args], input=json.dumps(document), capture_output=True, text=True, timeout=60, check=False
    )


def test_the_script_names_what_the_platform_names():
    script = _script()
    assert script.NAMESPACE == default(k8s.NAMESPACE)
    assert script.SECRET == default(k8s.SECRET)
    assert script.PG_PASSWORD_SECRET == default(k8s.PG_PASSWORD_SECRET)
    assert script.PG_PASSWORD_OUTPUT in environments.DAGSTER_PG_VARS
    assert script.CLOUD_OUTPUT == environments.K8S_CLOUD_VAR and script.NAMESPACE_OUTPUT == k8s.NAMESPACE[0]
    # the copy used where mlops_assets is not installed
    for cloud in CLOUDS:
        assert script.FALLBACK_KEYS[cloud] == k8s.secret_keys(cloud)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_script_prints_secrets_with_exactly_the_profile_keys(cloud):
    document = terraform_outputs(cloud)
    proc = run_script(document)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    secrets = list(yaml.safe_load_all(proc.stdout))
    kubernetes_schemas.validate(secrets, KUBERNETES_VERSION)
    platform, password = find(secrets, "Secret", default(k8s.SECRET)), find(secrets, "Secret", default(k8s.PG_PASSWORD_SECRET))
    assert list(platform["stringData"]) == k8s.secret_keys(cloud)
    assert platform["stringData"] == {k: str(document[k]["value"]) for k in k8s.secret_keys(cloud)}
    assert password["stringData"] == {"postgresql-password": document["DAGSTER_PG_PASSWORD"]["value"]}
    assert {s["metadata"]["namespace"] for s in secrets} == {default(k8s.NAMESPACE)}
    # the env file holds the same pairs
    env = run_script(document, "--format", "env")
    assert env.returncode == 0, env.stderr
    assert dict(line.split("=", 1) for line in env.stdout.splitlines()) == platform["stringData"]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_script_refuses_missing_outputs_by_name_without_printing_a_value(cloud):
    document = terraform_outputs(cloud)
    del document["MLOPS_REDIS"], document["DAGSTER_PG_PASSWORD"]
    proc = run_script(document)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "MLOPS_REDIS" in proc.stderr and "DAGSTER_PG_PASSWORD" in proc.stderr
    assert "value of" not in proc.stderr
    # an empty output, and the cloud taken from --cloud when the outputs do not say
    document = terraform_outputs(cloud, MLOPS_ADMIN_TOKEN="")
    del document[environments.K8S_CLOUD_VAR]
    assert "pass --cloud" in run_script(document).stderr
    proc = run_script(document, "--cloud", cloud)
    assert proc.returncode == 2 and "MLOPS_ADMIN_TOKEN is empty" in proc.stderr and "value of" not in proc.stderr
    if cloud == "gcp":  # the gcp profile also needs the project
        document = terraform_outputs(cloud)
        del document["GOOGLE_CLOUD_PROJECT"]
        assert "GOOGLE_CLOUD_PROJECT" in run_script(document).stderr


def test_the_script_writes_a_private_file_and_refuses_a_line_break_in_an_env_file(tmp_path):
    target = tmp_path / "secrets.yaml"
    proc = run_script(terraform_outputs("aws"), "--output", str(target))
    assert proc.returncode == 0 and proc.stdout == ""
    assert target.stat().st_mode & 0o777 == 0o600
    assert run_script(terraform_outputs("aws"), "--output", str(target)).returncode == 2  # never overwrites
    proc = run_script(terraform_outputs("aws", MLOPS_ADMIN_TOKEN="token-part-one\ntoken-part-two"), "--format", "env")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "MLOPS_ADMIN_TOKEN" in proc.stderr and "token-part" not in proc.stderr


# --- infra/helm: Dagster's chart ------------------------------------------------------------------


def helm_merge(base: dict, override: dict) -> dict:
    """Helm's merge of values files: maps merge key by key, anything else (lists too) is replaced,
    null removes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def helm_values(cloud: str) -> dict:
    base = yaml.safe_load((VALUES_DIR / "values.yaml").read_text())
    return helm_merge(base, yaml.safe_load((VALUES_DIR / f"values-{cloud}.yaml").read_text()))


def user_deployment(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def names(refs: list[dict]) -> list[str]:
    return [r["name"] for r in refs]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_helm_values_name_what_the_platform_names(cloud, monkeypatch):
    for var in (k8s.NAMESPACE[0], k8s.SERVICE_ACCOUNT[0], k8s.SECRET[0], k8s.CONFIG_MAP_VAR, k8s.IMAGE_PULL_POLICY[0],
                k8s.INSTANCE_CONFIG_MAP[0], k8s.PG_PASSWORD_SECRET[0], k8s.JOB_IMAGE_VAR):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    expected = k8s.run_launcher_config()  # the launcher the profile writes without a chart
    values = helm_values(cloud)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert launcher["jobNamespace"] == expected["job_namespace"] == default(k8s.NAMESPACE)
    assert names(launcher["envSecrets"]) == expected["env_secrets"] == [default(k8s.SECRET)]
    assert launcher["imagePullPolicy"] == expected["image_pull_policy"]
    assert launcher["loadInclusterConfig"] is expected["load_incluster_config"] is True
    assert launcher["runK8sConfig"]["containerConfig"] == expected["run_k8s_config"]["container_config"]
    assert values["global"]["postgresqlSecretName"] == expected["postgres_password_secret"] == default(k8s.PG_PASSWORD_SECRET)
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["serviceAccountName"] == values["serviceAccount"]["name"] == expected["service_account_name"]
    assert values["serviceAccount"]["create"] is True
    assert values["global"]["dagsterHome"] == expected["dagster_home"] == k8s.DAGSTER_HOME_IN_IMAGE
    # the chart names the instance ConfigMap after the release
    assert f"{RELEASE}-instance" == expected["instance_config_map"]
    assert values["telemetry"] == {"enabled": False}
    # the database: the instance's, as the profile writes it (environments.instance_yaml)
    pg = values["postgresql"]
    assert pg["enabled"] is False and pg["postgresqlDatabase"] == "dagster" and pg["service"]["port"] == 5432
    assert f"scheme: {pg['postgresqlScheme']}" in environments.instance_yaml("aws")
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert f"max_concurrent_runs: {queued['maxConcurrentRuns']}" in environments.instance_yaml("aws")
    # the code location and its runs: the platform's Secret and settings, the run worker's size
    code = user_deployment(values)
    assert names(code["envSecrets"]) == [default(k8s.SECRET)]
    assert code["image"]["pullPolicy"] == launcher["imagePullPolicy"]
    assert code["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert code["resources"] == k8s.RUN_WORKER_RESOURCES  # the container context gives runs this size
    config_map = {e["name"]: e["value"] for e in code["env"]}[k8s.CONFIG_MAP_VAR]
    assert names(code["envConfigMaps"]) == names(launcher["envConfigMaps"]) == [config_map]
    plain = find(overlay(cloud), "ConfigMap", config_map)["data"]
    launched = dict(v.split("=", 1) for v in launcher["envVars"]) | plain
    assert all(launched.get(k) == v for k, v in (item.split("=", 1) for item in k8s.plain_env(cloud)))
    # one image for every Dagster process
    images = {
        values["dagsterWebserver"]["image"]["repository"],
        values["dagsterDaemon"]["image"]["repository"],
        code["image"]["repository"],
    }
    assert images == {"mlops-assets"}


def test_helm_chart_version_is_the_installed_dagster():
    version = importlib.metadata.version("dagster")
    texts = {p: p.read_text() for p in [HELM_DIR / "README.md", *VALUES_DIR.glob("values*.yaml")]}
    pinned = [(p.name, v) for p, text in texts.items() for v in re.findall(r"--version (\S+)", text)]
    assert len([1 for name, _ in pinned if name == "README.md"]) == len(CLOUDS), pinned
    assert all(v == version for _, v in pinned), (version, pinned)
    assert f"dagster/dagster {version}" in texts[VALUES_DIR / "values.yaml"]


def test_the_code_location_runs_the_definitions():
    code = user_deployment(yaml.safe_load((VALUES_DIR / "values.yaml").read_text()))
    assert code["name"] == "mlops-assets"
    assert code["dagsterApiGrpcArgs"] == ["-m", "mlops_assets.definitions"]
    assert importlib.util.find_spec("mlops_assets.definitions") is not None
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert f"EXPOSE {code['port']}" in dockerfile and f'"-p", "{code["port"]}", "-m", "mlops_assets.definitions"' in dockerfile


def _probe_as_rendered(probe: dict, default_exec: list[str] | None = None) -> dict:
    """A probe as the chart writes it into the pod: without its `enabled` switch, and for the code
    location with `dagster api grpc-health-check` when it names no handler."""
    rendered = {k: v for k, v in probe.items() if k != "enabled"}
    if default_exec and not any(h in rendered for h in ("exec", "httpGet", "tcpSocket", "grpc")):
        rendered["exec"] = {"command": default_exec}
    return rendered


def _snake_to_camel(node):
    if isinstance(node, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): _snake_to_camel(v) for k, v in node.items()}
    return node


def _components(values: dict):
    """(name, component values, default probe command) of each Dagster Deployment the chart makes."""
    code = user_deployment(values)
    yield "webserver", values["dagsterWebserver"], None
    yield "daemon", values["dagsterDaemon"], None
    yield "code location", code, ["dagster", "api", "grpc-health-check", "-p", str(code["port"])]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_helm_container_fields_are_valid_kubernetes(cloud):
    values = helm_values(cloud)

    def check(instance, definition: str, where: str) -> list[str]:
        schema = kubernetes_schemas._definition(f"io.k8s.api.core.v1.{definition}")
        return kubernetes_schemas._schema_errors(instance, schema, KUBERNETES_VERSION, where)

    problems: list[str] = []
    for name, component, default_exec in _components(values):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert component.get(probe), f"{name}: no {probe}"
            assert component[probe].get("enabled", True) is True, f"{name}: {probe} disabled"
            rendered = _probe_as_rendered(component[probe], default_exec)
            assert sum(h in rendered for h in ("exec", "httpGet", "tcpSocket", "grpc")) == 1, f"{name}: {probe} handler"
            if "httpGet" in rendered:
                assert rendered["httpGet"]["port"] == values["dagsterWebserver"]["service"]["port"]
            problems += check(rendered, "Probe", f"{name}.{probe}")
        problems += check(component["resources"], "ResourceRequirements", f"{name}.resources")
        assert component["resources"]["limits"]["memory"] and component["resources"]["requests"]["cpu"], name
        if "initContainerResources" in component:
            problems += check(component["initContainerResources"], "ResourceRequirements", f"{name}.initContainerResources")
        problems += check(component["podSecurityContext"], "PodSecurityContext", f"{name}.podSecurityContext")
        problems += check(component["securityContext"], "SecurityContext", f"{name}.securityContext")
        problems += restricted_problems(component["podSecurityContext"], [{"name": name, **component}], name)
        problems += [p for i, e in enumerate(component.get("env", [])) for p in check(e, "EnvVar", f"{name}.env[{i}]")]
        for field, definition in (("envSecrets", "SecretEnvSource"), ("envConfigMaps", "ConfigMapEnvSource"),
                                  ("volumes", "Volume"), ("volumeMounts", "VolumeMount")):  # fmt: skip
            problems += [p for i, x in enumerate(component.get(field, [])) for p in check(x, definition, f"{name}.{field}[{i}]")]
        assert {m["name"] for m in component["volumeMounts"]} <= {v["name"] for v in component["volumes"]}, name
        if component["securityContext"].get("readOnlyRootFilesystem"):
            mounted = {m["mountPath"] for m in component["volumeMounts"]}
            assert {"/tmp", str(Path(k8s.DAGSTER_HOME_IN_IMAGE).parent)} <= mounted, (
                f"{name}: a read-only root needs /tmp and the home"
            )
        for e in component.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            assert ref is None or (ref["name"] == default(k8s.SECRET) and ref["key"] in k8s.secret_keys(cloud)), e
    # run and step pods: the run launcher's container and pod security contexts, the run worker's size
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    problems += check(launcher["securityContext"], "SecurityContext", "runLauncher.securityContext")
    pod_sc = _snake_to_camel(launcher["runK8sConfig"]["podSpecConfig"]["security_context"])
    problems += check(pod_sc, "PodSecurityContext", "runLauncher.runK8sConfig.podSpecConfig.security_context")
    problems += check(launcher["runK8sConfig"]["containerConfig"]["resources"], "ResourceRequirements", "runLauncher.resources")
    problems += restricted_problems(pod_sc, [{"name": "run", "securityContext": launcher["securityContext"]}], "runLauncher")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_readmes_take_account_values_from_terraform_outputs(cloud):
    """The install commands set what belongs to one account from outputs the Terraform tree declares."""
    annotation, outputs = ACCOUNT_VALUES[cloud]
    helm_readme = (HELM_DIR / "README.md").read_text()
    (command,) = [
        c for c in re.findall(r"helm upgrade --install .*?(?:\n\n|```)", helm_readme, re.DOTALL) if f"values-{cloud}.yaml" in c
    ]
    assert command.startswith(f"helm upgrade --install {RELEASE} dagster/dagster ")
    assert f"-n {default(k8s.NAMESPACE)} " in command
    assert f"serviceAccount.annotations.{annotation.replace('.', chr(92) + '.')}=" in command
    for field in ("dagsterWebserver.image", "dagsterDaemon.image", "dagster-user-deployments.deployments[0].image"):
        assert f"{field}.repository=$IMAGE" in command and f"{field}.tag=$TAG" in command, field
    assert "postgresql.postgresqlHost=$($TF output -raw DAGSTER_PG_HOST)" in command
    assert "postgresql.postgresqlUsername=$($TF output -raw DAGSTER_PG_USER)" in command
    text = helm_readme + (K8S_DIR / "README.md").read_text()
    for output in outputs:
        assert f"output -raw {output}" in text, output
    from mlops_assets_tests.test_infra import named

    declared = set(named(cloud, "output"))
    used = set(re.findall(r"output -raw (\w+)", helm_readme + (K8S_DIR / "README.md").read_text()))
    cloud_specific = {o for c, (_, outs) in ACCOUNT_VALUES.items() if c != cloud for o in outs}
    assert used - cloud_specific <= declared, (used - cloud_specific) - declared
