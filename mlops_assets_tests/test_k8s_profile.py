"""The ``k8s`` profile without a cluster: the definitions load, dagster.yaml is a valid instance config,
and the Job manifests dagster-k8s itself builds for a run and for its steps are valid Kubernetes.

Nothing here reaches a cluster: dagster-k8s's config loading is stubbed, the one call that would
create a Job is captured instead, and any other Kubernetes API call fails the test. The Jobs are built
by dagster-k8s 0.29.27's own code (``K8sRunLauncher.launch_run`` and ``K8sStepHandler.launch_step``
of the executor built from the profile's config), then validated strictly against the Kubernetes
schemas of the version the endpoint manifests are checked with (``rollout.kubernetes_schemas.validate``).

The profile's executor (``k8s.step_executor``) imports dagster-k8s only when a run creates it; the
step Jobs it builds are compared with those of ``k8s_job_executor.configured(executor_config())``,
the eager executor it replaces, and loading the definitions is checked not to import dagster-k8s.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlops_assets import environments, k8s
from mlops_assets_tests.conftest import REPO

IMAGE = "registry.example.com/mlops-assets:1.2.3"
K8S_NAME_VARS = (
    k8s.NAMESPACE[0],
    k8s.SERVICE_ACCOUNT[0],
    k8s.SECRET[0],
    k8s.CONFIG_MAP_VAR,
    k8s.IMAGE_PULL_POLICY[0],
    k8s.INSTANCE_CONFIG_MAP[0],
    k8s.PG_PASSWORD_SECRET[0],
    k8s.JOB_IMAGE_VAR,
)
CLOUD_VAR_NAMES = [getattr(environments.CLOUD_VARS, f) for f in type(environments.CLOUD_VARS).__dataclass_fields__]


def _kubernetes_version() -> str:
    from mlops_assets.rollout.kubernetes_schemas import validate

    return inspect.signature(validate).parameters["kubernetes_version"].default


def assert_valid_k8s(manifest: dict) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, _kubernetes_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:  # the full message quotes the whole schema
        pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {str(exc).splitlines()[0]} at {list(exc.path)}")


def as_dict(k8s_object) -> dict:
    import kubernetes

    return kubernetes.client.ApiClient().sanitize_for_serialization(k8s_object)


@pytest.fixture
def k8s_env(monkeypatch, tmp_path):
    """MLOPS_ENV=k8s and nothing else: no cloud variable, no cluster name variable, no kubeconfig."""
    monkeypatch.setenv(environments.ENV_VAR, "k8s")
    monkeypatch.setenv(environments.HOME_VAR, str(tmp_path / "home"))
    for var in (*CLOUD_VAR_NAMES, *environments.DAGSTER_PG_VARS, *K8S_NAME_VARS, environments.K8S_CLOUD_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path


@pytest.fixture
def no_cluster(monkeypatch):
    """dagster-k8s with no cluster: config loading stubbed, Job creation captured (namespace, V1Job),
    every other Kubernetes API call an error."""
    import dagster_k8s.launcher
    import kubernetes
    from dagster._core.events import DagsterEvent
    from dagster_k8s.client import DagsterKubernetesClient

    created: list[tuple[str, object]] = []

    def no_api_call(*args, **kwargs):
        raise AssertionError("a Kubernetes API call was attempted")

    monkeypatch.setattr(kubernetes.client.ApiClient, "call_api", no_api_call)
    monkeypatch.setattr(dagster_k8s.launcher, "load_kubernetes_config", lambda **kwargs: None)
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda *a, **k: None)
    monkeypatch.setattr(
        DagsterKubernetesClient,
        "create_namespaced_job_with_retries",
        lambda self, body, namespace, **kw: created.append((namespace, body)),
    )
    # the step-started event needs a real step execution context; it only reports, it builds nothing
    monkeypatch.setattr(DagsterEvent, "step_worker_starting", staticmethod(lambda *a, **k: None))
    return created


@pytest.fixture
def flight_defs(k8s_env, flight_spec):
    from mlops_assets.factory import build_definitions

    return build_definitions([flight_spec])


def _job_origin(job_name: str):
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

    repository = RepositoryPythonOrigin(
        executable_path="/usr/local/bin/python",
        code_pointer=ModuleCodePointer("mlops_assets.definitions", "defs", None),
        container_image=IMAGE,  # what the code server reports from DAGSTER_CURRENT_IMAGE
    )
    return JobPythonOrigin(job_name, repository)


def _instance_with_k8s_launcher():
    """A test instance (SQLite) with the k8s profile's run launcher section, as dagster.yaml writes it."""
    launcher = yaml.safe_load(k8s.run_launcher_yaml())["run_launcher"]
    return dg.instance_for_test(overrides={"run_launcher": launcher})


def _launch_run_job(instance, job_name: str):
    """The run worker Job dagster-k8s's K8sRunLauncher builds for a run of ``job_name``."""
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.test_utils import create_run_for_test

    run = create_run_for_test(instance, job_name=job_name, job_code_origin=_job_origin(job_name))
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return run


def _create_executor(instance, defs: dg.Definitions, job_name: str, executor_def: dg.ExecutorDefinition | None = None):
    """The executor a run of ``job_name`` creates, as Dagster creates it (``create_executor``): the
    executor config Dagster resolves for the job handed to the executor's creation function. The job's
    own executor (the profile's ``step_executor()``) unless ``executor_def`` is given."""
    from dagster._core.definitions.job_base import InMemoryJob

    job = defs.resolve_job_def(job_name)
    executor_def = executor_def or job.executor_def
    resolved = executor_def.apply_config_mapping({"config": {}})
    assert resolved.success, resolved.errors
    return executor_def.executor_creation_fn(
        dg.InitExecutorContext(
            job=InMemoryJob(job), executor_def=executor_def, executor_config=resolved.value["config"], instance=instance
        )
    )


def _launch_step_job(
    instance, defs: dg.Definitions, job_name: str, asset_name: str, run, executor_def: dg.ExecutorDefinition | None = None
):
    """The step Job the profile's executor builds for ``asset_name``'s step: the executor is created
    for the job (``_create_executor``: dagster-k8s's executor, created by dagster-k8s), and its step
    handler launches the step with the op's tags, as in a run."""
    from dagster._grpc.types import ExecuteStepArgs

    executor = _create_executor(instance, defs, job_name, executor_def)
    handler = executor._step_handler  # K8sStepHandler
    op = defs.get_assets_def(dg.AssetKey.from_user_string(asset_name)).op  # its step key is the op's name
    context = types.SimpleNamespace(
        execute_step_args=ExecuteStepArgs(
            job_origin=_job_origin(job_name),
            run_id=run.run_id,
            step_keys_to_execute=[op.name],
            instance_ref=instance.get_ref(),
        ),
        dagster_run=run,
        instance=instance,
        step_tags={op.name: op.tags},
        get_step_context=lambda step_key: types.SimpleNamespace(step=types.SimpleNamespace(op_name=op.name)),
    )
    list(handler.launch_step(context))


def _container(manifest: dict) -> dict:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


# --- the definitions load without any service or variable -------------------------------------


def test_definitions_load_on_k8s_with_no_cloud_variable(k8s_env, monkeypatch):
    from mlops_assets.factory import build_definitions
    from mlops_assets.specs import SPEC_PATHS_ENV

    monkeypatch.delenv(SPEC_PATHS_ENV, raising=False)
    defs = build_definitions()  # the bundled specs, as the code location loads them
    job = defs.resolve_job_def("train_flight_delays")
    assert job.executor_def.name == "k8s"
    asset_specs = defs.resolve_all_asset_specs()
    assert asset_specs
    for spec in asset_specs:
        assert k8s.K8S_CONFIG_TAG in defs.get_assets_def(spec.key).op.tags, spec.key


def _bare_k8s_env(tmp_path: Path) -> dict[str, str]:
    """A process environment with MLOPS_ENV=k8s and nothing a deployment sets (no cloud variable)."""
    (tmp_path / "dagster").mkdir(exist_ok=True)
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    bin_dir = os.path.dirname(sys.executable)
    return env | {
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "MLOPS_ENV": "k8s",
        "MLOPS_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
        "DO_NOT_TRACK": "1",
    }


def test_loading_the_k8s_definitions_does_not_import_dagster_k8s(tmp_path):
    """The UI, the daemon and every run and step pod load the code location: dagster-k8s and the
    kubernetes client are imported only when a run creates its executor."""
    code = (
        "import json, sys, mlops_assets.definitions as d; "
        "job = d.defs.resolve_job_def('train_flight_delays'); "
        "print(json.dumps({'executor': job.executor_def.name, "
        "'imported': sorted(m for m in sys.modules if m.split('.')[0] in ('dagster_k8s', 'kubernetes'))}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_bare_k8s_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {"executor": "k8s", "imported": []}


def test_dagster_validates_the_k8s_code_location_in_a_bare_environment(tmp_path):
    env = _bare_k8s_env(tmp_path)
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.run(
        [os.path.join(bin_dir, "dagster"), "definitions", "validate", "-m", "mlops_assets.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


# --- the executor -------------------------------------------------------------------------------


def test_executor_config_defaults_when_no_variable_is_set(k8s_env):
    config = k8s.executor_config()
    assert config == {
        "job_namespace": "mlops",
        "service_account_name": "mlops",
        "image_pull_policy": "IfNotPresent",
        "env_config_maps": [],
        "env_secrets": ["mlops-secrets"],
        "env_vars": ["MLOPS_ENV=k8s", "MLOPS_K8S_CLOUD=aws"],
    }
    assert "job_image" not in config  # a step runs in its run's image
    executor = k8s.step_executor()
    assert executor.name == "k8s"
    assert executor.get_requirements({}) == dg.multiple_process_executor_requirements()
    resolved = executor.apply_config_mapping({"config": {}})  # like the configured executor: no run config
    assert resolved.success, resolved.errors


def test_process_executor_config_is_what_dagster_makes_of_the_configured_executor(k8s_env, monkeypatch):
    """``compat.process_executor_config`` (private ``dagster._config.process_config``) gives
    dagster-k8s the config a run of ``k8s_job_executor.configured(executor_config())`` resolves:
    env references read, every default of dagster-k8s's schema filled in (``retries`` is indexed)."""
    from dagster_k8s import k8s_job_executor

    from mlops_assets.compat import process_executor_config

    def configured(config):
        resolved = k8s_job_executor.configured(config, name="k8s").apply_config_mapping({"config": {}})
        assert resolved.success, resolved.errors
        return resolved.value["config"]

    config = k8s.executor_config()
    processed = process_executor_config(k8s_job_executor, config)
    assert processed == configured(config)
    assert processed["job_namespace"] == "mlops"
    assert processed["retries"] == {"enabled": {}}
    assert (processed["per_step_k8s_config"], processed["enable_owner_references"]) == ({}, False)

    monkeypatch.setenv("MLOPS_K8S_NAMESPACE", "ml-prod")
    config = k8s.executor_config()  # {"env": "MLOPS_K8S_NAMESPACE"}
    assert process_executor_config(k8s_job_executor, config) == configured(config)
    assert process_executor_config(k8s_job_executor, config)["job_namespace"] == "ml-prod"
    monkeypatch.setenv("MLOPS_K8S_NAMESPACE", "ml-staging")  # read when processed, not when written
    assert process_executor_config(k8s_job_executor, config)["job_namespace"] == "ml-staging"
    monkeypatch.delenv("MLOPS_K8S_NAMESPACE")
    with pytest.raises(dg.DagsterInvalidConfigError, match="MLOPS_K8S_NAMESPACE"):
        process_executor_config(k8s_job_executor, config)
    with pytest.raises(dg.DagsterInvalidConfigError):
        process_executor_config(k8s_job_executor, {"job_namespace": "x", "no_such_key": 1})


def test_executor_config_reads_the_names_from_the_environment(k8s_env, monkeypatch):
    names = {
        "MLOPS_K8S_NAMESPACE": "ml-prod",
        "MLOPS_K8S_SERVICE_ACCOUNT": "ml-runner",
        "MLOPS_K8S_SECRET": "ml-prod-secrets",
        "MLOPS_K8S_CONFIG_MAP": "ml-prod-config",
        "MLOPS_K8S_IMAGE_PULL_POLICY": "Always",
        "MLOPS_K8S_CLOUD": "gcp",
    }
    for var, value in names.items():
        monkeypatch.setenv(var, value)
    config = k8s.executor_config()
    assert config["job_namespace"] == {"env": "MLOPS_K8S_NAMESPACE"}  # read again where the run runs
    assert config["env_secrets"] == [{"env": "MLOPS_K8S_SECRET"}]
    assert config["env_vars"] == ["MLOPS_ENV=k8s", "MLOPS_K8S_CLOUD=gcp"]


def test_the_executor_reads_the_names_when_a_run_creates_it(k8s_env, monkeypatch, flight_spec, no_cluster):
    """The env references are read where the run creates its executor (as for a configured executor),
    not where the definitions load: the step Job has the values set there."""
    from mlops_assets.factory import build_definitions

    names = {
        "MLOPS_K8S_NAMESPACE": "ml-prod",
        "MLOPS_K8S_SERVICE_ACCOUNT": "ml-runner",
        "MLOPS_K8S_SECRET": "ml-prod-secrets",
        "MLOPS_K8S_CONFIG_MAP": "ml-prod-config",
        "MLOPS_K8S_IMAGE_PULL_POLICY": "Always",
    }
    for var in names:
        monkeypatch.setenv(var, "set-where-the-definitions-load")
    defs = build_definitions([flight_spec])  # the executor config: env references
    for var in names:
        monkeypatch.delenv(var)
    with _instance_with_k8s_launcher() as instance:  # the run launcher with the defaults
        for var, value in names.items():
            monkeypatch.setenv(var, value)
        run = _launch_run_job(instance, "train_flight_delays")
        _launch_step_job(instance, defs, "train_flight_delays", "flight_delays/model", run)
    (run_ns, _), (step_ns, step_job) = no_cluster
    assert (run_ns, step_ns) == ("mlops", "ml-prod")
    manifest = as_dict(step_job)
    assert_valid_k8s(manifest)
    assert manifest["spec"]["template"]["spec"]["serviceAccountName"] == "ml-runner"
    container = _container(manifest)
    assert container["imagePullPolicy"] == "Always"
    assert {"secretRef": {"name": "ml-prod-secrets"}} in container["envFrom"]
    assert {"configMapRef": {"name": "ml-prod-config"}} in container["envFrom"]


def test_secret_holds_the_cloud_profile_variables(k8s_env):
    assert k8s.secret_keys("aws") == [v for v in CLOUD_VAR_NAMES if v != "GOOGLE_CLOUD_PROJECT"] + list(
        environments.DAGSTER_PG_VARS
    )
    assert "GOOGLE_CLOUD_PROJECT" in k8s.secret_keys("gcp")


# --- the Dagster instance -----------------------------------------------------------------------


def _check_instance_yaml(home: Path, text: str, monkeypatch) -> dict:
    """Load dagster.yaml the way Dagster does, check each configured class's own config schema, and
    build what can be built without a server (run coordinator, run launcher). Returns the classes."""
    import importlib

    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.instance.ref import InstanceRef

    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(text)
    for var in environments.DAGSTER_PG_VARS:  # values exist only where the instance runs
        monkeypatch.setenv(var, "5432" if var.endswith("PORT") else "x")
    dagster_instance_config(str(home))  # raises DagsterInvalidConfigError when invalid
    ref = InstanceRef.from_dir(str(home))
    classes = {}
    for name in ("storage_data", "run_coordinator_data", "run_launcher_data"):
        data = getattr(ref, name)
        if data is None:
            continue
        klass = getattr(importlib.import_module(data.module_name), data.class_name)
        result = process_config(klass.config_type(), data.config_dict)
        assert result.success, (name, result.errors)
        classes[name] = klass.__name__
    assert ref.run_coordinator is not None and type(ref.run_coordinator).__name__ == "QueuedRunCoordinator"
    return classes


@pytest.mark.parametrize("env", ["aws", "gcp"])
def test_cloud_instance_yaml_is_valid(k8s_env, monkeypatch, env):
    classes = _check_instance_yaml(k8s_env / env, environments.instance_yaml(env), monkeypatch)
    assert classes == {
        "storage_data": "DagsterPostgresStorage",
        "run_coordinator_data": "QueuedRunCoordinator",
        "run_launcher_data": "DefaultRunLauncher",
    }


def test_k8s_instance_yaml_is_valid_and_builds_the_k8s_run_launcher(k8s_env, monkeypatch, no_cluster):
    from dagster._core.instance.ref import InstanceRef

    text = environments.instance_yaml("k8s")
    classes = _check_instance_yaml(k8s_env / "k8s", text, monkeypatch)
    assert classes["run_launcher_data"] == "K8sRunLauncher"
    assert classes["storage_data"] == "DagsterPostgresStorage"
    launcher = InstanceRef.from_dir(str(k8s_env / "k8s")).run_launcher
    assert type(launcher).__name__ == "K8sRunLauncher"
    assert launcher.load_incluster_config is True
    assert (launcher.job_namespace, launcher.service_account_name) == ("mlops", "mlops")
    assert (launcher.instance_config_map, launcher.postgres_password_secret) == ("dagster-instance", "dagster-postgresql-secret")
    assert launcher.env_secrets == ["mlops-secrets"]
    assert launcher.job_image is None  # the image comes from the user-code deployment (DAGSTER_CURRENT_IMAGE)
    assert launcher.run_k8s_config["container_config"]["resources"] == k8s.RUN_WORKER_RESOURCES


def test_k8s_instance_yaml_reads_the_names_from_the_environment(k8s_env, monkeypatch, no_cluster):
    from dagster._core.instance.ref import InstanceRef

    monkeypatch.setenv("MLOPS_K8S_NAMESPACE", "ml-prod")
    monkeypatch.setenv("MLOPS_K8S_PG_SECRET", "pg-password")
    monkeypatch.setenv("MLOPS_K8S_JOB_IMAGE", IMAGE)
    text = environments.instance_yaml("k8s")
    assert "env: MLOPS_K8S_NAMESPACE" in text and IMAGE not in text  # a reference, read where the daemon runs
    _check_instance_yaml(k8s_env / "k8s", text, monkeypatch)
    launcher = InstanceRef.from_dir(str(k8s_env / "k8s")).run_launcher
    assert (launcher.job_namespace, launcher.postgres_password_secret, launcher.job_image) == ("ml-prod", "pg-password", IMAGE)


# --- the Jobs dagster-k8s builds ------------------------------------------------------------------


def test_run_worker_job_is_valid_kubernetes(k8s_env, no_cluster):
    with _instance_with_k8s_launcher() as instance:
        _launch_run_job(instance, "train_flight_delays")
    ((namespace, job),) = no_cluster
    manifest = as_dict(job)
    assert_valid_k8s(manifest)
    assert namespace == "mlops"
    pod = manifest["spec"]["template"]["spec"]
    container = _container(manifest)
    assert container["image"] == IMAGE
    assert pod["serviceAccountName"] == "mlops"
    assert container["resources"] == k8s.RUN_WORKER_RESOURCES
    assert container["envFrom"] == [{"secretRef": {"name": "mlops-secrets"}}]
    plain = {e["name"]: e.get("value") for e in container["env"] if "value" in e}
    assert plain["MLOPS_ENV"] == "k8s" and plain["MLOPS_K8S_CLOUD"] == "aws"
    assert not set(plain) & {*CLOUD_VAR_NAMES, *environments.DAGSTER_PG_VARS}  # secrets only by reference
    password = next(e for e in container["env"] if e["name"] == "DAGSTER_PG_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"


def test_training_and_ingest_step_jobs_are_valid_and_sized_by_the_spec(flight_defs, flight_spec, no_cluster):
    with _instance_with_k8s_launcher() as instance:
        train_run = _launch_run_job(instance, "train_flight_delays")
        _launch_step_job(instance, flight_defs, "train_flight_delays", "flight_delays/model", train_run)
        ingest_run = _launch_run_job(instance, "ingest_flight_delays")
        _launch_step_job(instance, flight_defs, "ingest_flight_delays", "flight_delays/raw", ingest_run)
    manifests = [as_dict(job) for _, job in no_cluster]
    for manifest in manifests:
        assert_valid_k8s(manifest)
    assert [ns for ns, _ in no_cluster] == ["mlops"] * 4
    _, model_step, _, raw_step = manifests
    assert model_step["metadata"]["labels"]["dagster/op"] == "flight_delays__model"
    assert raw_step["metadata"]["labels"]["dagster/op"] == "flight_delays__raw"

    train = flight_spec.compute.train
    model_pod = model_step["spec"]["template"]["spec"]
    model_container = _container(model_step)
    assert model_container["image"] == IMAGE  # the run's image
    assert model_container["resources"] == {
        "requests": {"cpu": train.cpu, "memory": train.memory},
        "limits": {"cpu": train.cpu, "memory": train.memory},
    }
    assert (train.cpu, train.memory) == ("2", "4Gi")
    assert k8s.SPOT_TOLERATION in model_pod["tolerations"]
    assert {"key": "mlops/spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in model_pod["tolerations"]
    assert model_pod["serviceAccountName"] == "mlops"
    assert model_container["envFrom"] == [{"secretRef": {"name": "mlops-secrets"}}]
    assert {"MLOPS_ENV", "MLOPS_K8S_CLOUD", "DAGSTER_RUN_STEP_KEY"} <= {e["name"] for e in model_container["env"]}

    raw_pod = raw_step["spec"]["template"]["spec"]
    assert _container(raw_step)["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    assert "tolerations" not in raw_pod and "affinity" not in raw_pod


@pytest.mark.parametrize("names", [{}, {"MLOPS_K8S_NAMESPACE": "ml-prod", "MLOPS_K8S_CONFIG_MAP": "ml-prod-config"}])
def test_the_lazy_executor_builds_the_step_jobs_of_the_configured_one(k8s_env, monkeypatch, flight_spec, no_cluster, names):
    """The step Jobs of ``step_executor()`` are those of the eager executor it replaces,
    ``k8s_job_executor.configured(executor_config(), name="k8s")``, for the same run and step."""
    from dagster_k8s import k8s_job_executor

    from mlops_assets.factory import build_definitions

    for var, value in names.items():
        monkeypatch.setenv(var, value)
    defs = build_definitions([flight_spec])
    eager = k8s_job_executor.configured(k8s.executor_config(), name="k8s")
    with _instance_with_k8s_launcher() as instance:
        for job_name, asset_name in (
            ("train_flight_delays", "flight_delays/model"),
            ("ingest_flight_delays", "flight_delays/raw"),
        ):
            run = _launch_run_job(instance, job_name)
            _launch_step_job(instance, defs, job_name, asset_name, run)
            _launch_step_job(instance, defs, job_name, asset_name, run, executor_def=eager)
    _, lazy_model, eager_model, _, lazy_raw, eager_raw = no_cluster  # run, lazy step, eager step per job
    for (lazy_ns, lazy_job), (eager_ns, eager_job) in ((lazy_model, eager_model), (lazy_raw, eager_raw)):
        lazy, eager_manifest = as_dict(lazy_job), as_dict(eager_job)
        assert_valid_k8s(lazy)
        assert (lazy_ns, lazy) == (eager_ns, eager_manifest)
        assert lazy_ns == names.get("MLOPS_K8S_NAMESPACE", "mlops")


def test_a_gpu_training_step_gets_the_gpu_and_its_node_group(k8s_env, flight_spec, no_cluster):
    from mlops_assets.factory import build_definitions

    gpu_train = flight_spec.compute.train.model_copy(update={"gpu": 1})
    spec = flight_spec.model_copy(update={"compute": flight_spec.compute.model_copy(update={"train": gpu_train})})
    defs = build_definitions([spec])
    with _instance_with_k8s_launcher() as instance:
        run = _launch_run_job(instance, "train_flight_delays")
        _launch_step_job(instance, defs, "train_flight_delays", "flight_delays/training_set", run)
    manifest = as_dict(no_cluster[-1][1])
    assert_valid_k8s(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert _container(manifest)["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"mlops/gpu": "true"}
    assert k8s.GPU_TOLERATION in pod["tolerations"] and k8s.SPOT_TOLERATION in pod["tolerations"]


def test_the_validator_refuses_what_kubernetes_would(k8s_env, flight_spec):
    """The strict schema check is not a rubber stamp: a misspelt field fails it."""
    import kubernetes_validate

    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": IMAGE}], "toleration": []}}
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, _kubernetes_version(), strict=True)


# --- the spec's compute section -------------------------------------------------------------------


def test_compute_defaults_and_op_tags(flight_spec):
    default, train = flight_spec.compute.default, flight_spec.compute.train
    assert (default.cpu, default.memory, default.gpu, default.spot) == ("500m", "1Gi", 0, False)
    assert (train.cpu, train.memory, train.gpu, train.spot) == ("2", "4Gi", 0, True)
    for stage in ("training_set", "model"):
        tag = k8s.op_tags(stage, flight_spec)[k8s.K8S_CONFIG_TAG]
        assert tag["container_config"]["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
        assert tag["pod_spec_config"]["tolerations"] == [k8s.SPOT_TOLERATION]
    for stage in ("raw", "dataset", "features", "online_features", "champion", "predictions", "endpoint"):
        assert k8s.op_tags(stage, flight_spec) == {
            k8s.K8S_CONFIG_TAG: {
                "container_config": {
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}
                }
            }
        }


def _spec_file(tmp_path: Path, compute: dict | None) -> Path:
    from mlops_assets.specs import BUNDLED_SPEC_DIR

    raw = yaml.safe_load((BUNDLED_SPEC_DIR / "flight_delays.yaml").read_text())
    if compute is not None:
        raw["compute"] = compute
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("compute", "key", "words"),
    [
        ({"train": {"memory": "8 gigs"}}, "compute.train.memory", "not a Kubernetes memory quantity"),
        ({"train": {"cpu": "two"}}, "compute.train.cpu", "not a Kubernetes CPU quantity"),
        ({"default": {"memory": 512}}, "compute.default.memory", "a number without a unit is bytes"),
        ({"default": {"cpu": 0}}, "compute.default.cpu", "more than 0"),
        ({"train": {"gpu": -1}}, "compute.train.gpu", "greater than or equal to 0"),
        ({"train": {"gpus": 1}}, "compute.train.gpus", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_compute_size_is_refused_naming_the_spec_key(tmp_path, compute, key, words):
    from mlops_assets.specs import SpecError, load_spec

    path = _spec_file(tmp_path, compute)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and key in message and words in message


def test_compute_sizes_load_and_do_not_change_the_spec_hash(tmp_path):
    from mlops_assets.specs import load_spec

    plain = load_spec(_spec_file(tmp_path, None))
    sized = load_spec(_spec_file(tmp_path, {"train": {"cpu": 4, "memory": "16Gi", "gpu": 1}, "default": {"cpu": 0.25}}))
    assert (sized.compute.train.cpu, sized.compute.train.memory, sized.compute.train.gpu) == ("4", "16Gi", 1)
    assert sized.compute.train.spot is True  # a partial section keeps the training defaults
    assert (sized.compute.default.cpu, sized.compute.default.memory) == ("0.25", "1Gi")
    assert sized.spec_hash == plain.spec_hash  # resizing a step neither stales assets nor retrains


def test_the_commented_compute_example_in_the_bundled_spec_loads(tmp_path):
    import re

    from mlops_assets.specs import BUNDLED_SPEC_DIR, load_spec

    text = (BUNDLED_SPEC_DIR / "flight_delays.yaml").read_text()
    start = text.index("# compute:")
    path = tmp_path / "uncommented.yaml"
    path.write_text(text[:start] + re.sub(r"^# ?", "", text[start:], flags=re.MULTILINE))
    spec = load_spec(path)
    assert spec.compute == load_spec(BUNDLED_SPEC_DIR / "flight_delays.yaml").compute
