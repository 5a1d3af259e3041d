"""The asset factory: every spec becomes the same set of assets, checks and jobs.

Before a spec becomes assets, what can be checked without data or heavy imports is
(``spec_check.static_problems``: the estimator's module and class located on disk): a misspelled
estimator fails the code location's load, so ``dagster definitions validate`` names the spec file
and field instead of the first training run failing days later. What needs data (columns, the
timestamp's parts) is checked by ``mlops check`` and by the landing sensor before a file is ingested.
"""

from __future__ import annotations

import dagster as dg

from mlops_assets import (
    alerts,
    backtest,
    endpoints,
    environments,
    features,
    ingest,
    jobs,
    landing,
    policies,
    promotion,
    scoring,
    training,
)
from mlops_assets.core import names
from mlops_assets.spec_check import raise_for, static_problems
from mlops_assets.specs import ModelSpec, load_specs

STAGE_MODULES = (ingest, features, training, promotion, scoring, endpoints, backtest)


def build_definitions(specs: list[ModelSpec] | None = None) -> dg.Definitions:
    specs = load_specs() if specs is None else specs
    assets: list = []
    all_jobs: list = []
    sensors: list = [alerts.close_mlflow_runs_and_record_alerts, policies.automation_sensor()]
    for spec in specs:
        raise_for(spec, static_problems(spec))
    for spec in specs:
        for module in STAGE_MODULES:
            assets += module.build(spec)
        spec_jobs = jobs.build(spec)
        all_jobs += spec_jobs
        sensors.append(landing.build(spec))
        deploy_job = next((j for j in spec_jobs if j.name == names.job_name("deploy", spec)), None)
        if (canary := endpoints.canary_sensor(spec, deploy_job)) is not None:
            sensors.append(canary)
    return dg.Definitions(
        assets=assets,
        jobs=all_jobs,
        sensors=sensors,
        resources=environments.resources(),
        executor=environments.executor(),
    )
