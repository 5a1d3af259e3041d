"""Static checks of the Terraform trees (no Terraform binary nor provider can be downloaded here):
every file parses (python-hcl2), checkov finds nothing with every skip explained in the file, and
the outputs, the profiles' variables, the Kubernetes names and the node pools' taints agree."""

from __future__ import annotations

import functools
import json
import re

import hcl2
import pytest

from mlops_assets import environments, k8s
from mlops_assets_tests.conftest import REPO
from mlops_assets_tests.infra_tools import checkov

TERRAFORM = REPO / "infra" / "terraform"
CLOUDS = ("aws", "gcp")
# values of the profile that are not stores but say which profile and where on the cluster
PROFILE_SETTINGS = {environments.ENV_VAR, environments.K8S_CLOUD_VAR, k8s.NAMESPACE[0], k8s.SERVICE_ACCOUNT[0]}
# outputs that carry a password, a token or a connection string with one inside
SECRET_OUTPUTS = {"MLFLOW_TRACKING_URI", "FEAST_REGISTRY_URI", "MLOPS_REDIS", "MLOPS_ADMIN_TOKEN", "DAGSTER_PG_PASSWORD"}


def plain(node):
    """python-hcl2 (v8) keeps HCL's quotes on labels, keys and string literals: drop them, so names
    and literals compare as Terraform reads them (interpolations stay ``${...}``)."""
    if isinstance(node, dict):
        return {plain(k): plain(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


@functools.cache
def tree(cloud: str) -> dict[str, list]:
    """Every block of a Terraform tree by kind ("resource", "output", "variable", ...), all files merged."""
    blocks: dict[str, list] = {}
    for path in sorted((TERRAFORM / cloud).glob("*.tf")):
        with path.open() as f:
            for kind, items in plain(hcl2.load(f)).items():
                blocks.setdefault(kind, []).extend(items)
    return blocks


def named(cloud: str, kind: str) -> dict[str, dict]:
    return {name: body for item in tree(cloud).get(kind, []) for name, body in item.items()}


def resources(cloud: str, rtype: str) -> dict[str, dict]:
    return {name: body for item in tree(cloud).get("resource", []) if rtype in item for name, body in item[rtype].items()}


def resolve(cloud: str, value):
    """A literal, or what a plain ``${var.name}`` (its default) or ``${local.name.key}`` refers to."""
    match = re.fullmatch(r"\$\{\(?(var|local)\.([\w.]+)\)?\}", value) if isinstance(value, str) else None
    if match is None:
        return value
    kind, path = match.groups()
    name, *keys = path.split(".")
    found = named(cloud, "variable")[name].get("default") if kind == "var" else locals_(cloud)[name]
    for k in keys:
        found = found[k]
    return resolve(cloud, found)


def locals_(cloud: str) -> dict:
    return {k: v for block in tree(cloud).get("locals", []) for k, v in block.items()}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_tf_file_parses(cloud):
    files = sorted((TERRAFORM / cloud).glob("*.tf"))
    assert len(files) >= 5
    for path in files:
        with path.open() as f:
            assert hcl2.load(f), f"{path} is empty"
    assert named(cloud, "output") and named(cloud, "variable") and tree(cloud).get("resource")


@pytest.mark.parametrize("cloud", CLOUDS)
def test_checkov_passes_with_every_skip_explained(cloud):
    report = checkov(TERRAFORM / cloud, "terraform")
    assert len(report["passed"]) > 50, "checkov scanned (almost) nothing"
    failed = [f"{r['check_id']} {r['resource']} ({r['file']})" for r in report["failed"]]
    assert failed == []
    unexplained = [f"{r['check_id']} {r['resource']}" for r in report["skipped"] if len((r["reason"] or "").strip()) < 15]
    assert unexplained == [], "a skipped check needs its reason in the file (# checkov:skip=ID:reason)"


def profile_variables(cloud: str) -> set[str]:
    """What the cloud profile reads (environments.CLOUD_VARS, DAGSTER_PG_VARS) on this cloud."""
    return set(k8s.secret_keys(cloud))


@pytest.mark.parametrize("cloud", CLOUDS)
def test_outputs_are_named_after_the_profile_variables(cloud):
    outputs = named(cloud, "output")
    env_outputs = {name for name in outputs if name.isupper()}
    assert env_outputs == profile_variables(cloud) | PROFILE_SETTINGS
    for name in SECRET_OUTPUTS:
        assert outputs[name].get("sensitive") is True, f"output {name} carries a secret: sensitive = true"
    assert (outputs[environments.K8S_CLOUD_VAR]["value"]) == cloud
    assert (outputs[environments.ENV_VAR]["value"]) == "k8s"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_kubernetes_names_default_to_the_k8s_profile(cloud):
    """The service account that Terraform trusts (IRSA / Workload Identity) is the one runs use."""
    variables = named(cloud, "variable")
    defaults = {body.get("default") for body in variables.values() if isinstance(body.get("default"), str)}
    assert k8s.NAMESPACE[1] in defaults and k8s.SERVICE_ACCOUNT[1] in defaults
    outputs = named(cloud, "output")
    for variable, default in (k8s.NAMESPACE, k8s.SERVICE_ACCOUNT):
        assert resolve(cloud, outputs[variable]["value"]) == default


def _spot_pools(cloud: str, rtype: str) -> dict[str, dict]:
    pools = resources(cloud, rtype)
    if cloud == "aws":
        return {name: body for name, body in pools.items() if resolve(cloud, body.get("capacity_type")) == "SPOT"}
    return {name: body for name, body in pools.items() if body.get("node_config", [{}])[0].get("spot") is True}


@pytest.mark.parametrize(("cloud", "rtype"), [("aws", "aws_eks_node_group"), ("gcp", "google_container_node_pool")])
def test_the_spot_training_pool_carries_the_taint_and_label_the_steps_tolerate(cloud, rtype):
    spot = _spot_pools(cloud, rtype)
    assert "training" in spot, f"no spot {rtype} named training in {cloud}"
    for name, body in spot.items():
        holder = body if cloud == "aws" else body["node_config"][0]
        taints = [{k: resolve(cloud, v) for k, v in t.items()} for t in holder.get("taint", [])]
        wanted = {**k8s.SPOT_TOLERATION, "effect": "NO_SCHEDULE"}
        assert any(all(t.get(k) == wanted[k] for k in ("key", "value", "effect")) for t in taints), (name, taints)
        labels = {resolve(cloud, k): resolve(cloud, v) for k, v in (holder.get("labels") or {}).items()}
        assert labels.get(k8s.SPOT_LABEL[0]) == k8s.SPOT_LABEL[1], (name, labels)
    training = spot["training"]
    if cloud == "aws":
        assert resolve(cloud, training["scaling_config"][0]["min_size"]) == 0, "the training pool scales to zero"
    else:
        scaling = training["autoscaling"][0]
        assert resolve(cloud, scaling.get("total_min_node_count", scaling.get("min_node_count"))) == 0
    on_demand = set(resources(cloud, rtype)) - set(spot)
    assert "system" in on_demand, "an on-demand system pool runs the webserver, daemon and code server"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_variable_and_output_explains_itself_and_inputs_are_validated(cloud):
    variables, outputs = named(cloud, "variable"), named(cloud, "output")
    assert [name for name, body in variables.items() if not body.get("description", "").strip()] == []
    assert [name for name, body in outputs.items() if not body.get("description", "").strip()] == []
    # every input but an on/off switch is checked before anything is planned
    unvalidated = [name for name, body in variables.items() if body.get("type") != "bool" and not body.get("validation")]
    assert unvalidated == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_terraform_outputs_become_the_secret_the_helm_release_and_the_profile_read(cloud):
    """The three places that name the platform's variables agree: the outputs this tree declares,
    turned into Secrets by infra/k8s/secrets_from_terraform.py, are exactly what the profile reads
    (k8s.secret_keys), and the Helm values point the code location, its runs and the chart's
    PostgreSQL password at those Secrets."""
    from mlops_assets_tests.test_infra_kubernetes import _script, helm_values, names, user_deployment

    script = _script()
    declared = {name: {"value": f"value-of-{name}", "sensitive": False, "type": "string"} for name in named(cloud, "output")}
    declared[k8s.NAMESPACE[0]]["value"] = k8s.NAMESPACE[1]
    declared[environments.K8S_CLOUD_VAR]["value"] = cloud
    outputs = script.read_outputs(json.dumps(declared))
    secret, pg_secret = script.secrets(outputs, cloud, k8s.NAMESPACE[1])
    assert list(secret["stringData"]) == k8s.secret_keys(cloud)
    assert pg_secret["stringData"] == {"postgresql-password": "value-of-DAGSTER_PG_PASSWORD"}

    values = helm_values(cloud)
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert names(launcher["envSecrets"]) == names(user_deployment(values)["envSecrets"]) == [secret["metadata"]["name"]]
    assert values["global"]["postgresqlSecretName"] == pg_secret["metadata"]["name"]
    assert secret["metadata"]["name"] == k8s.SECRET[1] and pg_secret["metadata"]["name"] == k8s.PG_PASSWORD_SECRET[1]
