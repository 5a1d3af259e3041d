"""What the backtest tells a spec's author when no retrain policy within the budget keeps up with
retraining every day, and the spec changes it backtests to show the way.

Falling behind ``cron:1`` by more than the bar means the model follows the series only by being
retrained: no policy with a tenth of the retrains can do that, and the remedy is in the features.
For a regression whose level moves from day to day, the change that helps is known
(``target.relative_to``: the model learns the deviation from a recent level of the target), so the
backtest plays it (``level_variants``) over the same days and reports what it would give.
"""

from __future__ import annotations

import math

from mlops_assets.core.backtest import Outcome
from mlops_assets.core.names import level_feature_name
from mlops_assets.specs import ModelSpec

MAX_LEVEL_VARIANTS = 3  # one backtest each: the grid again, with its own models


def advice(spec: ModelSpec, chosen: Outcome, daily: Outcome, tolerance: float = 0.01) -> list[str]:
    """What the report tells the spec's author when no policy within the budget keeps up with
    retraining every day (by more than ``tolerance``, relative): then the model follows the series
    only by being retrained, and the remedy is in the spec's features, not in its policy. A
    regression is told about ``target.relative_to`` (the target learned relative to a recent level
    of itself: the README's out-of-sample acceptance shows what it did for hourly temperatures)."""
    if not (math.isfinite(chosen.metric) and math.isfinite(daily.metric)) or daily.metric == 0:
        return []
    sign = 1 if spec.higher_is_better else -1
    shortfall = sign * (daily.metric - chosen.metric) / abs(daily.metric)
    if shortfall <= tolerance:
        return []
    metric = spec.promotion.metric
    said = [
        (
            f"cron:1 ({daily.retrains} retrains) beats the recommendation ({chosen.retrains}) by {shortfall:.1%} in "
            f"{metric} on these days: the model keeps up with the series only by being retrained, so within a "
            "budget the remedy is in the features, not in the policy."
        )
    ]
    if spec.target.task == "regression" and spec.target.relative_to is None:
        where = (
            "The backtest tried it by the spec's entities: see below."
            if spec.entities
            else "This spec has no entities to keep a level by: declare the column the level moves with as one."
        )
        said.append(
            "If the target's level moves from day to day (a temperature, a demand, a price), add a past_rate "
            "feature of it by the entities it moves with (window_days: 1, prior_weight: 0) and set "
            "target.relative_to to its name: the model then learns the deviation from that level, which is "
            f"served fresh every day. {where}"
        )
    else:
        said.append(
            "Give the model the recent state of the series as features (past_rate features over short "
            "windows, by the entities it moves with), then backtest again."
        )
    return said


def level_variants(spec: ModelSpec) -> list[tuple[str, ModelSpec]]:
    """For a regression not yet relative to a level, and with entities: the spec relative to the
    target's mean of the day before by each entity (the first ``MAX_LEVEL_VARIANTS``), each as
    (what changed, the changed spec). A spec without entities has no group to keep a level by."""
    if spec.target.task != "regression" or spec.target.relative_to is not None:
        return []
    names = set(spec.feature_names)
    out = []
    for entity in spec.entities[:MAX_LEVEL_VARIANTS]:
        name = level_feature_name(spec.target.column, entity)
        if name in names:
            continue
        data = spec.model_dump(by_alias=True)
        data["features"].append({"kind": "past_rate", "name": name, "by": [entity], "window_days": 1, "prior_weight": 0.0})
        data["target"]["relative_to"] = name
        try:
            variant = ModelSpec.model_validate(data)
        except ValueError:  # a spec the change cannot apply to is not tried (the advice still says it)
            continue
        out.append((f"target.relative_to: {name} (the mean {spec.target.column} of the day before by {entity})", variant))
    return out


def level_blocks(variant: ModelSpec) -> dict:
    """What to change in the spec for a level variant: the target's new key and the feature to add."""
    name = variant.target.relative_to
    feature = next(f for f in variant.past_rate_features if f.name == name)
    return {"target": {"relative_to": name}, "features (add)": [feature.model_dump(mode="json")]}


def variant_advice(spec: ModelSpec, chosen: Outcome, variants: list[dict]) -> list[str]:
    """One line per backtested variant: its recommendation's metric and retrains against the spec's
    recommendation and its ``cron:1``, on the same days; the better ones say so."""
    sign = 1 if spec.higher_is_better else -1
    metric = spec.promotion.metric
    said = []
    for v in variants:
        rec, daily = v["recommended"], v["cron:1"]
        gain = sign * (rec["metric"] - chosen.metric) / abs(chosen.metric) if chosen.metric else math.nan
        verdict = f"{gain:.1%} better than the spec as it is" if gain > 0 else "no better than the spec as it is"
        said.append(
            f"Backtested with {v['change']}: recommended {metric} {rec['metric']:.4g} ({rec['retrains']} retrains), "
            f"{verdict} ({chosen.metric:.4g}); its cron:1 {daily['metric']:.4g}. The change is in the report's variants."
        )
    return said
