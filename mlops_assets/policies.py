"""Policies, compiled: the one place that turns a spec's policies into Dagster automation.

Nothing retrains unless a policy says so. For each spec:

* ``<spec>/model`` rematerializes when a monitoring check on ``<spec>/predictions`` (feature drift,
  prediction drift, performance) **newly** fails, when the model's freshness fails (older than
  ``policies.freshness.model_days``), or when its code version changes. A trigger stays pending
  until handled, but the model is never requested within ``policies.cooldown_days`` of its last
  training, while it (or its training set) is in progress, or while the latest blocking check of
  ``<spec>/dataset`` is failing.
* A check whose policy says ``retrain_when: failing`` retrains for as long as its newest result
  since the last training is a failure, at most once per cooldown: on autocorrelated series a check
  fails in long runs and rarely *newly* fails, and a challenger the gate rejected leaves the failing
  champion serving. Such a trigger is not latched: a failure that clears during the cooldown
  retrains nothing.
* ``policies.budget_days`` caps how many retrains there are, whatever fires them: on average at
  most one per ``budget_days`` since the model's first training; a due retrain beyond it waits.
* ``<spec>/training_set`` evaluates the same retrain decision, and the model is only requested
  together with it: a retrain always runs training set + model (+ gate) in one run on fresh data.
* ``policies.retrain`` swaps those triggers for ``static`` (no automation on training set and
  model) or ``cron:N`` (retrain once the model is N days old), the peers a replay compares against.
* ``<spec>/champion`` (the promotion gate) follows the model (``eager``).
* ``<spec>/predictions`` scores the newest featurised day as soon as it and a champion exist
  (``eager``, ignoring champion updates): a day keeps the predictions that were served for it.
* raw → dataset → features → online store run from the landing sensor, one run per landed file.

Freshness policies (``FreshnessPolicy.time_window``) go on features and model so the UI shows
their state; the model's automation computes the same window itself, so it does not depend on the
freshness daemon having run (and replays with simulated time behave like production).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from datetime import timedelta

import dagster as dg

from mlops_assets.common import key
from mlops_assets.core.names import AUTOMATION_SENSOR
from mlops_assets.specs import ModelSpec

# Labels of the retrain triggers: the UI shows them in the evaluation tree, and a replay reads the
# cause of each retrain from them (the freshness and cron labels go on with their figures).
TRIGGER_CHECK = "check "  # + "<check name>" + TRIGGER_NEWLY or TRIGGER_FAILING
TRIGGER_NEWLY = " newly failed"
TRIGGER_FAILING = " failing"
TRIGGER_FRESHNESS = "freshness failed"
TRIGGER_CODE_VERSION = "code version changed"
TRIGGER_CRON = "cron:"


def _latest_materialization_time(context: dg.AutomationContext) -> float | None:
    """When the target (an unpartitioned asset of the retrain chain) was last materialized, from the
    asset record the evaluation has already fetched for every asset: asking the instance instead
    costs a database round trip per condition and tick (on PostgreSQL, most of a tick's time)."""
    by_time = context.asset_graph_view.compute_subsets_by_latest_materialization_timestamp(context.candidate_subset)
    return max(by_time) if by_time else None


class UpdatedWithin(dg.AutomationCondition):
    """True while the target's latest materialization is younger than ``window``.

    Measured against the evaluation time (the daemon's clock, or a replay's simulated clock), from
    the materialization's own timestamp."""

    def __init__(self, window: timedelta):
        self._window = window

    @property
    def name(self) -> str:
        return f"updated within the last {self._window.total_seconds() / 86400:g} days"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        materialized_at = _latest_materialization_time(context)
        recent = (
            materialized_at is not None and context.evaluation_time.timestamp() - materialized_at < self._window.total_seconds()
        )
        return dg.AutomationResult(
            context=context, true_subset=context.candidate_subset if recent else context.get_empty_subset()
        )


class CheckFailing(dg.AutomationCondition):
    """True while the newest result of one asset check is a failure (with ``since_training``: a
    failure recorded after the target's latest materialization).

    Dagster's ``any_checks_match`` cannot single out one check of an asset, and a policy treats the
    drift checks and the performance check differently. The newest result is that of the newest
    scored partition (scoring runs day after day). For a level trigger, a failure recorded before
    the model's last training judged the model it replaced, or one the gate kept: either way the
    next scoring judges again, and until then there is nothing to act on. An edge trigger watches
    the check itself, so a check that keeps failing across a retrain is not *newly* failing."""

    def __init__(self, check_key: dg.AssetCheckKey, label: str | None = None, since_training: bool = False):
        self._check_key = check_key
        self._label = label
        self._since_training = since_training

    @property
    def name(self) -> str:
        since = " since the last training" if self._since_training else ""
        return f"newest {self._check_key.name} result{since} is a failure"

    def get_label(self) -> str | None:
        return self._label

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        from mlops_assets.compat import latest_check_failure

        failed_at = latest_check_failure(context.asset_graph_view.instance, self._check_key)
        failing = failed_at is not None
        if failing and self._since_training and (trained_at := _latest_materialization_time(context)) is not None:
            failing = failed_at > trained_at  # the evaluation's time (simulated in a replay)
        return dg.AutomationResult(
            context=context, true_subset=context.candidate_subset if failing else context.get_empty_subset()
        )


class WithinBudget(dg.AutomationCondition):
    """True while a retrain now stays within the spec's retrain budget: at most one retrain per
    ``budget`` on average since the model was first trained (its first materialization).

    Evaluated last in the retrain condition, so it reads the event log only when a retrain is
    otherwise due: the first materialization, then at most as many later ones as the budget allows.
    Times are the events' own (simulated in a replay), with the cooldown's hour of slack."""

    def __init__(self, model_key: dg.AssetKey, budget: timedelta):
        self._model_key = model_key
        self._budget = budget

    @property
    def name(self) -> str:
        return f"within the retrain budget (one per {self._budget.total_seconds() / 86400:g} days)"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance = context.asset_graph_view.instance
        first = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=self._model_key), limit=1, ascending=True)
        within = True
        if first.records:
            since = first.records[0]
            elapsed = context.evaluation_time.timestamp() - since.timestamp + 3600
            earned = math.floor(elapsed / self._budget.total_seconds())  # retrains allowed so far, this one included
            within = earned > 0  # none earned yet: no need to count the retrains
            if within:
                later = dg.AssetRecordsFilter(asset_key=self._model_key, after_storage_id=since.storage_id)
                within = len(instance.fetch_materializations(later, limit=earned).records) < earned
        return dg.AutomationResult(
            context=context, true_subset=context.candidate_subset if within else context.get_empty_subset()
        )


# Each monitoring check on <spec>/predictions and the spec policy whose thresholds it applies
# (policies.drift or policies.performance); the policy's name is also the retrain cause a replay reports.
# The served_ checks judge the endpoint's prediction log and exist only for specs with a deployment.
# They are shown and alerted (MLOpsServedCheckFailing, MLOpsFeatureDrift), never retrain triggers:
# the batch checks already judge every event of the day scored by the same champion, so a served
# check adds only what the batch cannot see (what the endpoint served differs from what batch scoring
# joins: a skew, which a retrain does not fix) and the noise of a subset of the traffic (a canary's
# tenth), which would spend the retrain budget on nothing the backtest that chose the policy played.
SERVED_PREFIX = "served_"
_BATCH_CHECK_POLICY = {"feature_drift": "drift", "prediction_drift": "drift", "performance": "performance"}
CHECK_POLICY = {**_BATCH_CHECK_POLICY, **{f"{SERVED_PREFIX}{c}": p for c, p in _BATCH_CHECK_POLICY.items()}}


def monitoring_checks(spec: ModelSpec) -> list[str]:
    """The monitoring checks ``<spec>/predictions`` has."""
    return [c for c in CHECK_POLICY if spec.deployment is not None or not c.startswith(SERVED_PREFIX)]


def trigger_checks(spec: ModelSpec) -> list[str]:
    """The monitoring checks that can make a retrain due: the batch ones, for every spec (see above)."""
    return list(_BATCH_CHECK_POLICY)


def check_triggers(spec: ModelSpec) -> tuple[dg.AutomationCondition | None, dg.AutomationCondition | None]:
    """The monitoring checks' triggers: (edge triggers, which stay pending until handled; level
    triggers, true only while their check is failing)."""
    edges, levels = [], []
    for check in trigger_checks(spec):
        policy = CHECK_POLICY[check]
        when = getattr(spec.policies, policy).retrain_when
        check_key = dg.AssetCheckKey(key("predictions", spec), check)
        if when == "newly_failed":
            edges.append(CheckFailing(check_key).newly_true().with_label(f"{TRIGGER_CHECK}{check}{TRIGGER_NEWLY}"))
        elif when == "failing":
            levels.append(CheckFailing(check_key, label=f"{TRIGGER_CHECK}{check}{TRIGGER_FAILING}", since_training=True))
    return _any(edges), _any(levels)


def _any(conditions: list[dg.AutomationCondition]) -> dg.AutomationCondition | None:
    return functools.reduce(operator.or_, conditions) if conditions else None


def retrain_triggers(spec: ModelSpec) -> dg.AutomationCondition:
    """The events that make a retrain due (each labelled, so the UI says which one fired)."""
    A = dg.AutomationCondition
    triggers = A.code_version_changed().with_label(TRIGGER_CODE_VERSION)
    edges, _ = check_triggers(spec)
    if edges is not None:
        triggers = edges | triggers
    if spec.policies.freshness.model_days:
        stale = ~UpdatedWithin(timedelta(days=spec.policies.freshness.model_days))
        triggers = triggers | (stale & ~A.missing()).newly_true().with_label(
            f"{TRIGGER_FRESHNESS} (model older than {spec.policies.freshness.model_days:g} days)"
        )
    return triggers


def retrain_condition(spec: ModelSpec) -> dg.AutomationCondition | None:
    A = dg.AutomationCondition
    if spec.policies.retrain == "static":
        return None  # trained once, by hand or CI (the train job), never again by itself
    if spec.policies.cron_days:
        n = spec.policies.cron_days  # an hour's slack so a daily tick is never a few minutes early
        due = (~UpdatedWithin(timedelta(days=n, hours=-1)) & ~A.missing()).with_label(f"{TRIGGER_CRON} every {n} days")
        return _within_budget(spec, due & ~A.in_progress() & ~A.any_deps_in_progress())
    due = retrain_triggers(spec).since(A.newly_requested() | A.newly_updated())
    _, failing = check_triggers(spec)
    if failing is not None:
        due = due | failing
    condition = due.with_label("retrain due") & ~A.in_progress() & ~A.any_deps_in_progress()
    if spec.policies.cooldown_days:  # the cooldown, with the same hour's slack as cron: a model trained
        # at a day's tick may retrain at the tick N days later, not a day after that
        cooldown = timedelta(days=spec.policies.cooldown_days, hours=-1)
        condition = condition & ~UpdatedWithin(cooldown)
    upstream_failing = A.asset_matches(key("dataset", spec), A.any_checks_match(A.check_failed(), blocking_only=True))
    return _within_budget(spec, condition & ~upstream_failing.with_label("an upstream blocking check is failing"))


def _within_budget(spec: ModelSpec, condition: dg.AutomationCondition) -> dg.AutomationCondition:
    if not spec.policies.budget_days:
        return condition
    return condition & WithinBudget(key("model", spec), timedelta(days=spec.policies.budget_days))


def automation_condition(stage: str, spec: ModelSpec) -> dg.AutomationCondition | None:
    """The automation condition of a stage's asset, or None for assets the landing sensor drives."""
    A = dg.AutomationCondition
    if stage == "training_set":
        return retrain_condition(spec)
    if stage == "model":
        condition = retrain_condition(spec)
        return (
            None
            if condition is None
            else condition & A.any_deps_match(A.will_be_requested()).with_label("training set refreshed in the same run")
        )
    if stage == "champion":
        return A.eager()
    if stage == "endpoint":
        # a gate decision (new champion or not) is applied and re-verified; the canary sensor drives
        # the rest of a rollout
        return A.eager()
    if stage == "predictions":
        # A day is scored once, by the champion serving when it arrives; a later promotion does not
        # rewrite what was served (monitoring and replays judge the predictions that were made).
        return A.eager().ignore(dg.AssetSelection.assets(key("champion", spec))) & ~A.any_deps_missing()
    return None


def freshness_policy(stage: str, spec: ModelSpec) -> dg.FreshnessPolicy | None:
    f = spec.policies.freshness
    if stage == "features" and f.features_hours:
        return dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=f.features_hours))
    if stage == "model" and f.model_days:
        return dg.FreshnessPolicy.time_window(fail_window=timedelta(days=f.model_days))
    if stage == "endpoint" and f.endpoint_hours:
        return dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=f.endpoint_hours))
    if stage == "online_lookups" and spec.served_timed_lookups:
        # once the hourly run is older than a lookup's TTL, the server leaves that lookup missing
        hours = min(spec.lookups[t].ttl_hours for t in spec.served_timed_lookups)
        return dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=hours))
    return None


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates every condition above. Runs by default (Dagster's implicit sensor starts stopped),
    and in the code server because ``UpdatedWithin`` is Python the daemon cannot import."""
    with warnings.catch_warnings():  # use_user_code_server is beta; we need it for UpdatedWithin
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.AutomationConditionSensorDefinition(
            AUTOMATION_SENSOR,
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
            use_user_code_server=True,
            minimum_interval_seconds=30,
            description="Retrains, gates and re-scores models when their policies say so (mlops_assets.policies).",
        )
