"""The Kubernetes side of the ``k8s`` profile (dagster-k8s): runs, steps and their sizes.

``MLOPS_ENV=k8s`` keeps the stores of ``MLOPS_K8S_CLOUD`` (aws or gcp) and moves the compute onto a
cluster, the way the Dagster Helm chart deploys it::

    daemon ── K8sRunLauncher ──> run worker Job (image of the user-code deployment, small)
                                   └─ k8s_job_executor ──> one Job per step, sized by the spec:
                                        training_set_<m>, model_<m>  compute.train   (spot, GPU if asked)
                                        every other step             compute.default

- ``run_launcher_yaml()``: the ``run_launcher:`` section of the instance's dagster.yaml
  (``environments.instance_yaml("k8s")``).
- ``step_executor()``: the code location's executor on ``k8s`` (``environments.executor()``).
- ``op_tags(stage, spec)``: each asset's ``dagster-k8s/config`` tag (``common.asset_kwargs``); only
  dagster-k8s reads it, so it is inert on the other profiles.

Names on the cluster, each read from a variable with a default (nothing is required to load)::

    MLOPS_K8S_NAMESPACE            mlops                      namespace of run and step Jobs
    MLOPS_K8S_SERVICE_ACCOUNT      mlops                      service account of run and step pods
    MLOPS_K8S_SECRET               mlops-secrets              Secret whose keys become the pods' environment
    MLOPS_K8S_CONFIG_MAP           (none)                     optional ConfigMap, the same for non-secret values
    MLOPS_K8S_IMAGE_PULL_POLICY    IfNotPresent
    MLOPS_K8S_INSTANCE_CONFIG_MAP  dagster-instance           as the Dagster Helm chart names them
    MLOPS_K8S_PG_SECRET            dagster-postgresql-secret  (key ``postgresql-password``)
    MLOPS_K8S_JOB_IMAGE            (none)                     run launcher only: pin an image; by default a run
                                                              uses its code location's image (DAGSTER_CURRENT_IMAGE)

A variable set where the config is built (the code server loading the definitions, ``mlops instance``
writing dagster.yaml) is written as a Dagster env reference (``{"env": VAR}``), so Dagster reads it
again where the config is used; an unset one is written as its default.

Secrets never appear in the config, the Job manifests or the UI: every run and step pod takes its
environment from the Secret (``envFrom``), which holds the cloud profile's variables
(``secret_keys()``: ``environments.CLOUD_VARS`` and ``DAGSTER_PG_VARS``). Only ``MLOPS_ENV`` and
``MLOPS_K8S_CLOUD`` are set as plain values. The service account needs, in its namespace, to create,
get, list, watch and delete Jobs and to get, list and watch Pods and their logs: the run worker
launches and watches the step Jobs.

Node groups Terraform must create to match (constants below):

- spot (autoscaling, preemptible): taint ``mlops/spot=true:NoSchedule`` and label ``mlops/spot=true``.
  Steps whose size says ``spot: true`` (training by default) tolerate the taint and prefer the label.
- GPU: taint ``nvidia.com/gpu:NoSchedule`` (what EKS and GKE put on GPU nodes) and label
  ``mlops/gpu=true``. Steps with ``gpu: N`` limit ``nvidia.com/gpu: N``, tolerate it, select the label.

Loading the definitions never imports dagster-k8s (and with it the kubernetes client), on ``k8s``
either: the executor ``step_executor`` returns imports it when a run creates it (in the run worker),
the instance when its dagster.yaml names the ``K8sRunLauncher``; ``op_tags`` builds plain dicts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mlops_assets import environments

if TYPE_CHECKING:
    import dagster as dg

    from mlops_assets.specs import ModelSpec, StepResources

# --- names on the cluster: (variable, default) ----------------------------------------------------

NAMESPACE = ("MLOPS_K8S_NAMESPACE", "mlops")
SERVICE_ACCOUNT = ("MLOPS_K8S_SERVICE_ACCOUNT", "mlops")
SECRET = ("MLOPS_K8S_SECRET", "mlops-secrets")
CONFIG_MAP_VAR = "MLOPS_K8S_CONFIG_MAP"
IMAGE_PULL_POLICY = ("MLOPS_K8S_IMAGE_PULL_POLICY", "IfNotPresent")
INSTANCE_CONFIG_MAP = ("MLOPS_K8S_INSTANCE_CONFIG_MAP", "dagster-instance")
PG_PASSWORD_SECRET = ("MLOPS_K8S_PG_SECRET", "dagster-postgresql-secret")
JOB_IMAGE_VAR = "MLOPS_K8S_JOB_IMAGE"

# DAGSTER_HOME inside the image (infra/Dockerfile)
DAGSTER_HOME_IN_IMAGE = "/opt/mlops_home/dagster"

# The run worker only orchestrates: the steps do the work in their own Jobs.
RUN_WORKER_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}

# --- node groups (Terraform's taints and labels must match) ---------------------------------------

K8S_CONFIG_TAG = "dagster-k8s/config"
TRAINING_STAGES = ("training_set", "model", "backtest")  # the backtest fits a model per day
SPOT_LABEL = ("mlops/spot", "true")
SPOT_TOLERATION = {"key": "mlops/spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = ("mlops/gpu", "true")
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def _setting(name: tuple[str, str]) -> str | dict[str, str]:
    """A name from its variable: an env reference when the variable is set here, else the default."""
    var, default = name
    return {"env": var} if os.environ.get(var) else default


def secret_keys(cloud: str | None = None) -> list[str]:
    """The variables the Secret (``MLOPS_K8S_SECRET``) holds: the cloud profile's stores and the
    Dagster instance's PostgreSQL (``GOOGLE_CLOUD_PROJECT`` only on gcp)."""
    cloud = cloud or environments.cloud("k8s")
    v = environments.CLOUD_VARS
    keys = [getattr(v, f) for f in type(v).__dataclass_fields__ if f != "gcp_project" or cloud == "gcp"]
    return [*keys, *environments.DAGSTER_PG_VARS]


def plain_env(cloud: str | None = None) -> list[str]:
    """The variables set as plain values on every run and step pod (nothing secret)."""
    return [f"{environments.ENV_VAR}=k8s", f"{environments.K8S_CLOUD_VAR}={cloud or environments.cloud('k8s')}"]


def pod_config() -> dict[str, Any]:
    """What run and step pods share: namespace, service account, pull policy and environment."""
    config_maps = [{"env": CONFIG_MAP_VAR}] if os.environ.get(CONFIG_MAP_VAR) else []
    return {
        "job_namespace": _setting(NAMESPACE),
        "service_account_name": _setting(SERVICE_ACCOUNT),
        "image_pull_policy": _setting(IMAGE_PULL_POLICY),
        "env_config_maps": config_maps,
        "env_secrets": [_setting(SECRET)],
        "env_vars": plain_env(),
    }


# --- the executor: every step its own Job ---------------------------------------------------------


def executor_config() -> dict[str, Any]:
    """Config of ``k8s_job_executor``. No ``job_image``: a step runs in its run's image."""
    return pod_config()


def step_executor() -> dg.ExecutorDefinition:
    """dagster-k8s's ``k8s_job_executor`` with the profile's config: every step is a Kubernetes Job
    in the run's image and namespace, sized by its asset's ``dagster-k8s/config`` tag (``op_tags``).

    The same executor as ``k8s_job_executor.configured(executor_config(), name="k8s")``, but lazy:
    dagster-k8s and the kubernetes client are imported when a run creates its executor, not when the
    code location loads (the UI, the daemon and every run and step pod load it). The config is taken
    now, as ``configured`` takes it; its env references are read and dagster-k8s's defaults filled in
    when the run creates the executor, as Dagster does for a configured executor
    (``compat.process_executor_config``). Like the configured one, it ignores any run config given it.
    """
    import dagster as dg

    config = executor_config()

    @dg.executor(name="k8s", requirements=dg.multiple_process_executor_requirements())
    def k8s_executor(init_context: dg.InitExecutorContext):
        """dagster-k8s's executor for this run, created by dagster-k8s from the profile's config."""
        from dagster_k8s import k8s_job_executor

        from mlops_assets.compat import process_executor_config

        return k8s_job_executor.executor_creation_fn(
            dg.InitExecutorContext(
                job=init_context.job,
                executor_def=k8s_job_executor,
                executor_config=process_executor_config(k8s_job_executor, config),
                instance=init_context.instance,
            )
        )

    return k8s_executor


# --- the run launcher: every run its own Job ------------------------------------------------------


def run_launcher_config() -> dict[str, Any]:
    """Config of ``dagster_k8s.K8sRunLauncher`` for a daemon and webserver running in the cluster."""
    config: dict[str, Any] = {
        "load_incluster_config": True,
        **pod_config(),
        "instance_config_map": _setting(INSTANCE_CONFIG_MAP),
        "postgres_password_secret": _setting(PG_PASSWORD_SECRET),
        "dagster_home": DAGSTER_HOME_IN_IMAGE,
        "run_k8s_config": {"container_config": {"resources": RUN_WORKER_RESOURCES}},
    }
    if os.environ.get(JOB_IMAGE_VAR):
        config["job_image"] = {"env": JOB_IMAGE_VAR}
    if not config["env_config_maps"]:
        del config["env_config_maps"]
    return config


def run_launcher_yaml() -> str:
    """The ``run_launcher:`` section appended to the ``k8s`` profile's dagster.yaml."""
    import yaml

    section = {"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": run_launcher_config()}}
    header = "# Every run is a Kubernetes Job (dagster-k8s); names and variables: mlops_assets/k8s.py\n"
    return header + yaml.safe_dump(section, sort_keys=False, default_flow_style=False)


# --- each asset's container -----------------------------------------------------------------------


def step_resources(stage: str, spec: ModelSpec) -> StepResources:
    """The spec's size for a stage: ``compute.train`` for training stages, ``compute.default`` else."""
    return spec.compute.train if stage in TRAINING_STAGES else spec.compute.default


def op_tags(stage: str, spec: ModelSpec) -> dict[str, Any]:
    """The ``dagster-k8s/config`` tag of a stage's asset: requests = limits of cpu and memory, a
    ``nvidia.com/gpu`` limit with the GPU toleration and node selector when the size asks for GPUs,
    and the spot toleration (with a preference for spot nodes) when it may run on spot."""
    size = step_resources(stage, spec)
    requests = {"cpu": size.cpu, "memory": size.memory}
    limits = dict(requests)
    pod_spec: dict[str, Any] = {}
    tolerations: list[dict[str, str]] = []
    if size.gpu:
        limits[GPU_RESOURCE] = str(size.gpu)
        tolerations.append(GPU_TOLERATION)
        pod_spec["node_selector"] = {GPU_LABEL[0]: GPU_LABEL[1]}
    if size.spot:
        tolerations.append(SPOT_TOLERATION)
        spot_nodes = {"match_expressions": [{"key": SPOT_LABEL[0], "operator": "In", "values": [SPOT_LABEL[1]]}]}
        pod_spec["affinity"] = {
            "node_affinity": {"preferred_during_scheduling_ignored_during_execution": [{"weight": 100, "preference": spot_nodes}]}
        }
    if tolerations:
        pod_spec["tolerations"] = tolerations
    config: dict[str, Any] = {"container_config": {"resources": {"requests": requests, "limits": limits}}}
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return {K8S_CONFIG_TAG: config}
