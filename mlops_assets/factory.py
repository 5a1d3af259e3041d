"""The asset factory: every spec becomes the same set of assets, checks and jobs."""

from __future__ import annotations

import dagster as dg

from mlops_assets import alerts, endpoints, environments, features, ingest, jobs, landing, policies, promotion, scoring, training
from mlops_assets.specs import ModelSpec, load_specs

STAGE_MODULES = (ingest, features, training, promotion, scoring, endpoints)


def build_definitions(specs: list[ModelSpec] | None = None) -> dg.Definitions:
    specs = load_specs() if specs is None else specs
    assets: list = []
    all_jobs: list = []
    sensors: list = [alerts.close_mlflow_runs_and_record_alerts, policies.automation_sensor()]
    for spec in specs:
        for module in STAGE_MODULES:
            assets += module.build(spec)
        spec_jobs = jobs.build(spec)
        all_jobs += spec_jobs
        sensors.append(landing.build(spec))
        deploy_job = next((j for j in spec_jobs if j.name == jobs.job_name("deploy", spec)), None)
        if (canary := endpoints.canary_sensor(spec, deploy_job)) is not None:
            sensors.append(canary)
    return dg.Definitions(
        assets=assets,
        jobs=all_jobs,
        sensors=sensors,
        resources=environments.resources(),
        executor=environments.executor(),
    )
