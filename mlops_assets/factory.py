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
    online_lookups,
    policies,
    promotion,
    scoring,
    training,
)
from mlops_assets.core import names
from mlops_assets.spec_check import raise_for, static_problems
from mlops_assets.specs import ModelSpec, load_specs

STAGE_MODULES = (ingest, features, online_lookups, training, promotion, scoring, endpoints, backtest)


def spec_definitions(spec: ModelSpec) -> dg.Definitions:
    """One spec's assets, checks, jobs, sensors (its landing sensor, its canary sensor) and schedule
    (its timestamped lookups online, hourly): what a
    spec file, an ``MLOPS_SPECS`` entry or a ``ModelSpecComponent`` in ``defs/`` adds."""
    raise_for(spec, static_problems(spec))
    assets: list = []
    for module in STAGE_MODULES:
        assets += module.build(spec)
    spec_jobs = jobs.build(spec)
    sensors = [landing.build(spec)]
    deploy_job = next((j for j in spec_jobs if j.name == names.job_name("deploy", spec)), None)
    if (canary := endpoints.canary_sensor(spec, deploy_job)) is not None:
        sensors.append(canary)
    lookups_job = next((j for j in spec_jobs if j.name == names.job_name("lookups", spec)), None)
    schedules = [s for s in [online_lookups.schedule(spec, lookups_job)] if s is not None]
    return dg.Definitions(assets=assets, jobs=spec_jobs, sensors=sensors, schedules=schedules)


def platform_definitions() -> dg.Definitions:
    """What the code location has once, whatever its specs: the automation and run-failure sensors
    (over every asset), the environment profile's resources and executor."""
    return dg.Definitions(
        sensors=[alerts.close_mlflow_runs_and_record_alerts, policies.automation_sensor()],
        resources=environments.resources(),
        executor=environments.executor(),
    )


def build_definitions(specs: list[ModelSpec] | None = None) -> dg.Definitions:
    """The platform with these specs (default: the bundled specs and ``MLOPS_SPECS``)."""
    specs = load_specs() if specs is None else specs
    return dg.Definitions.merge(platform_definitions(), *(spec_definitions(spec) for spec in specs))
