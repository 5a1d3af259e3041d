"""Endpoint stage: make the spec's target serve what the registry and the gate decided, and prove it.

``<spec>/endpoint`` reads what serves now (``endpoints/<spec>/deployment.json`` in the storage) and the
``champion`` alias, and plans the next deployment (``core.serving.plan_deployment``): the first
champion is deployed outright; a new champion goes through a canary when the spec sets
``deployment.canary.traffic_percent``. It applies the plan to the target (local server, Kubernetes,
SageMaker), then verifies that the target is healthy and serves exactly the planned versions before
the materialization succeeds.

During a canary the ``canary`` check compares the two sides from the prediction store (errors, p99
latency, and the metric once labels arrived). A canary that holds up is promoted to 100 %; one that
regresses is rolled back, and so is the ``champion`` alias, so batch scoring stops using it too, and
the gate will not promote that version again. Each deploy, canary start, promotion and rollback is
appended to the audit history: one JSON file per entry under ``history/`` beside the deployment, a
table in the asset's metadata, and tags on the MLflow model versions concerned. On the local target
the deploy goes only to this home's own server (its ``/healthz`` identity), with the admin token; a
foreign process on the port fails the materialization, naming it (``rollout.local``).

Every time here is Dagster's clock (``compat.dagster_now``): the wall clock in production, the
simulated moment in a replay, where ``replay_traffic`` sends the endpoint its traffic while a canary
is in progress and ticks the canary sensor at simulated hours, and the replay's server stamps its
logs on the same clock (``server.clock``), so a canary is judged on the replay's days.
"""

from datetime import datetime

import dagster as dg

from mlops_assets.common import asset_kwargs, asset_with_optional_checks, failure, key, table_metadata
from mlops_assets.compat import dagster_now
from mlops_assets.core.names import CANARY_REASON_TAG, CHAMPION, ROLLED_BACK, ROLLED_BACK_TAG, sensor_name
from mlops_assets.resources import EndpointDeployer, LakeStorage, MlflowTracking
from mlops_assets.specs import ModelSpec

HISTORY_ROWS = 30


def canary_verdict(spec: ModelSpec, lake: LakeStorage, current, now: datetime):
    """The canary check's verdict on a running canary, from the prediction store."""
    from mlops_assets.core.rollout import judge_canary
    from mlops_assets.core.training import metric
    from mlops_assets.rollout.canary_stats import canary_sides

    def labels(days: list[str]):
        return lake.read_partitions("dataset", spec.name, days)

    stable, canary = canary_sides(lake.predictions_root(), spec, current, labels)
    started = datetime.fromisoformat(current.canary_started)
    return judge_canary(
        stable,
        canary,
        started=started,
        now=now,
        policy=spec.deployment.canary.model_dump(),
        metric=spec.promotion.metric,
        higher_is_better=spec.higher_is_better,
        metric_fn=lambda y, scores: metric(y, scores, spec),
    )


def _history_table(history: list[dict]) -> dg.MetadataValue:
    """The newest decisions of the endpoint, newest first, as a native table."""
    return table_metadata(
        [
            {
                "time": e["time"][:19],
                "action": e["action"],
                "stable": e.get("stable"),
                "canary": e.get("canary"),
                "canary_percent": e.get("canary_percent"),
                "reason": e.get("reason"),
            }
            for e in history[-HISTORY_ROWS:][::-1]
        ],
        max_rows=HISTORY_ROWS,
    )


def _verdict_table(verdict) -> dg.MetadataValue:
    """The canary's criteria (stable side, canary side, limit, passed; passed is empty for a criterion
    that only informs, like the request counts)."""
    return table_metadata(verdict.table, max_rows=len(verdict.table))


def build(spec: ModelSpec) -> list:
    if spec.deployment is None:
        return []
    name = spec.name
    d = spec.deployment
    kinds = {"mlflow", {"local": "python", "kubernetes": "kubernetes", "sagemaker": "sagemaker"}[d.target]}

    endpoint_key = key("endpoint", spec)

    # The canary check yields a result only when a canary was judged: outside a canary it is skipped.
    @asset_with_optional_checks(
        asset_kwargs(
            "endpoint",
            spec,
            f"The {d.target} endpoint serving '{name}': the '{CHAMPION}' version "
            + (
                f"rolled out through a {d.canary.traffic_percent:g} % canary judged after {d.canary.window_minutes:g} min"
                if d.canary.traffic_percent
                else "deployed outright"
            )
            + ", verified healthy and serving exactly the planned versions. Metadata: what serves, the action "
            "taken and the audit history of deploys, promotions and rollbacks.",
            kinds,
        ),
        deps=[key("champion", spec)],
        check_specs=[
            dg.AssetCheckSpec(
                "canary",
                asset=endpoint_key,
                description="During a canary: the canary's error rate, p99 latency and (with labels) metric against "
                "the stable version's. Fails when the canary was rolled back.",
            )
        ],
    )
    def endpoint(context: dg.AssetExecutionContext, deployer: EndpointDeployer, mlflow: MlflowTracking, lake: LakeStorage):
        if endpoint_key not in context.selected_asset_keys:
            raise failure(f"the canary check of {endpoint_key.to_user_string()} is judged when it runs: materialize it")
        from mlops_assets.core.rollout import plan_deployment
        from mlops_assets.endpoint_state import EndpointState

        state = EndpointState(lake.endpoint_dir(name))
        current = state.load()
        champion = mlflow.version_by_alias(name, CHAMPION)
        if champion is None:
            raise failure(f"model '{name}' has no '{CHAMPION}' version to serve; run the train job first")
        now = dagster_now()  # a replay's simulated moment, like every other decision in it
        verdict = canary_verdict(spec, lake, current, now) if current is not None and current.canary else None
        plan = plan_deployment(current, str(champion.version), canary_percent=d.canary.traffic_percent, now=now, verdict=verdict)
        target = deployer.target(spec, mlflow, lake)
        try:
            applied = target.apply(plan.deployment)
            verified = target.verify(plan.deployment)
        except Exception as exc:
            raise failure(
                f"{name}: the {d.target} endpoint does not serve {plan.deployment.to_json()}: {exc}", action=plan.action
            ) from exc
        state.save(plan.deployment)
        client = mlflow.client()
        if plan.action == "rolled_back":
            # the live evidence overrides the offline gate: batch scoring returns to the stable version
            client.set_registered_model_alias(name, CHAMPION, plan.deployment.stable)
            client.set_model_version_tag(name, current.canary, ROLLED_BACK_TAG, ROLLED_BACK)
            client.set_model_version_tag(name, current.canary, CANARY_REASON_TAG, plan.reason[:5000])
        elif plan.action == "promoted":
            client.set_model_version_tag(name, plan.deployment.stable, ROLLED_BACK_TAG, "promoted")
        elif plan.action in ("canary_started", "canary_restarted"):
            client.set_model_version_tag(name, plan.deployment.canary, ROLLED_BACK_TAG, "started")
        if plan.action not in ("unchanged", "canary_waiting"):
            event = {
                "time": now.isoformat(),
                "action": plan.action,
                **plan.deployment.to_json(),
                "reason": plan.reason,
                "dagster_run_id": context.run.run_id,
            }
            state.record(event)
            for version in {v for v in (plan.deployment.stable, plan.deployment.canary, current and current.canary) if v}:
                client.set_model_version_tag(name, version, f"mlops.endpoint.{plan.action}", now.isoformat())
        context.log.info(f"{name}: {plan.action}: {plan.reason} ({applied.get('action', '')})")
        dep = plan.deployment
        meta = {
            "action": plan.action,
            "reason": plan.reason,
            "target": d.target,
            "stable_version": int(dep.stable),
            "applied": str(applied.get("action", "")),
            "verified": dg.MetadataValue.json(verified),
            "history": _history_table(state.history()),
        }
        if dep.canary:  # without a canary there is no canary version or share: no 0 stands in for them
            meta["canary_version"] = int(dep.canary)
            meta["canary_percent"] = float(dep.canary_percent)
        if applied.get("url"):
            meta["url"] = dg.MetadataValue.url(applied["url"])
        check_results = []
        if verdict is None and plan.action != "rolled_back":  # no canary ran: nothing to judge, no result
            meta["not_judged_canary"] = dg.MetadataValue.text(f"no canary to judge ({plan.action}: {plan.reason})")
        elif any(k.name == "canary" for k in context.selected_asset_check_keys):
            check_meta = {"action": plan.action}
            if verdict is not None:
                check_meta["comparison"] = _verdict_table(verdict)
            description = {
                "rolled_back": f"canary v{current.canary if current else ''} rolled back: {plan.reason}",
                "promoted": f"canary promoted: {plan.reason}",
            }.get(plan.action, f"canary v{dep.canary} at {dep.canary_percent:g} %: {plan.reason}")
            check_results.append(
                dg.AssetCheckResult(
                    check_name="canary",
                    passed=plan.action != "rolled_back",
                    severity=dg.AssetCheckSeverity.WARN,
                    description=description,
                    metadata=check_meta,
                )
            )
        yield dg.MaterializeResult(asset_key=endpoint_key, metadata=meta, check_results=check_results)

    assets: list = [endpoint]
    return assets


def canary_sensor(spec: ModelSpec, job) -> dg.SensorDefinition | None:
    """Materializes the endpoint once its canary can be judged (window over, enough requests), so a
    rollout is promoted or rolled back without anybody watching. Quiet while nothing is due."""
    if spec.deployment is None or not spec.deployment.canary.traffic_percent:
        return None

    @dg.sensor(
        name=sensor_name("canary", spec),
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Judges the canary of {spec.name}/endpoint when it is due and runs the endpoint to promote or roll back.",
    )
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeStorage):
        from mlops_assets.endpoint_state import EndpointState

        current = EndpointState(lake.endpoint_dir(spec.name)).load()
        if current is None or current.canary is None:
            return dg.SkipReason("no canary in progress")
        verdict = canary_verdict(spec, lake, current, dagster_now())
        if verdict.decision == "wait":
            return dg.SkipReason("; ".join(verdict.reasons))
        return dg.RunRequest(run_key=f"{current.canary}-{current.canary_started}-{verdict.decision}")

    return _sensor
