"""``<spec>/backtest`` and ``mlops backtest``: which retrain policy to run, chosen from the spec's history.

The work is ``core.backtest_report.backtest`` (plain Python); this module gives it a Dagster asset
(on demand: nothing materializes it by itself, since a backtest fits hundreds of models) whose
metadata shows the recommendation, the block to paste and the chart in the UI, and the command
line. ``verify`` holds a recommendation against the real platform: it replays the candidate with
``mlops replay`` over the same days and compares the two within ``TOLERANCE``.
"""

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from mlops_assets.common import asset_kwargs, svg_markdown, table_metadata
from mlops_assets.resources import LakeStorage
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:  # numpy and the backtest's core are imported only when a backtest runs
    from mlops_assets.core.backtest import Outcome

# How close the backtest must come to the real replay of the same policy over the same days: the
# metric within half a percent (relative), the retrains within 10 % (at least 2). The backtest does
# not play drift checks or failed runs; the recommended blocks turn drift retraining off.
TOLERANCE = {"metric_relative": 0.005, "retrains_relative": 0.10, "retrains_absolute": 2}


class BacktestConfig(dg.Config):
    """The period to score and the retrain budget (a share of the scored days). (This module has no
    ``from __future__ import annotations``: Dagster reads the config class from the real annotation.)"""

    start: str | None = None  # first scored day (YYYY-MM-DD); default: where a replay starts
    days: int | None = None  # scored days; default: to the end of the history
    budget_share: float = 0.1


def run(spec: ModelSpec, start: date | None, days: int | None, budget_share: float, progress=None) -> tuple[dict, str]:
    from mlops_assets.core.backtest_report import backtest
    from mlops_assets.environments import backtest_dir

    return backtest(spec, start=start, days=days, budget_share=budget_share, cache_dir=backtest_dir(spec.name), progress=progress)


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    @dg.asset(
        **asset_kwargs(
            "backtest",
            spec,
            "On demand: candidate retrain policies (static, cron:N, performance triggers over windows, "
            "tolerances, cooldowns, training windows, holdouts and gate confidence) played over the spec's "
            "history from one fitted model per day, and the one to run: the best within the retrain budget, "
            "with its intervals against static and cron:1, the blocks to paste into the spec and a chart.",
            {"scikitlearn", "pandas"},
        )
    )
    def backtest(context: dg.AssetExecutionContext, config: BacktestConfig, lake: LakeStorage) -> dg.MaterializeResult:
        from mlops_assets import files

        start = date.fromisoformat(config.start) if config.start else None
        report, svg = run(spec, start, config.days, config.budget_share, progress=context.log.info)
        files.write_text(lake.path("backtest", spec.name, "chart.svg"), svg)
        files.write_text(lake.path("backtest", spec.name, "report.json"), json.dumps(report, indent=1, default=str))
        return dg.MaterializeResult(metadata=summary_metadata(report, svg))

    return [backtest]


def summary_metadata(report: dict, svg: str) -> dict:
    import pandas as pd

    rec, metric = report["recommended"], report["metric_name"]
    peers = {r["candidate"]["retrain"]: r for r in report["peers"]}
    rows = [peers["static"], peers["cron:1"], report["spec_policy"], rec]
    table = pd.DataFrame(
        {
            "policy": ["static", "cron:1", "spec", "recommended"],
            "setting": [r["policy"] for r in rows],
            metric: [r["metric"] for r in rows],
            "retrains": [r["retrains"] for r in rows],
            "promotions": [r["promotions"] for r in rows],
        }
    )
    ci = {k: rec[k] for k in ("vs_static", "vs_cron1")}
    blocks = [f"{v['change']}:\n```yaml\n{v['yaml']}```" for v in report.get("variants", [])]
    advice = {"advice": dg.MetadataValue.md("\n\n".join(report["advice"] + blocks))} if report.get("advice") else {}
    return {
        "recommended": rec["policy"],
        f"recommended_{metric}": rec["metric"],
        "recommended_retrains": rec["retrains"],
        "retrain_budget": report["budget"]["max_retrains"],
        "period": f"{report['start']}..{report['end']} ({report['scored_days']} days)",
        "paste_into_spec": dg.MetadataValue.md(f"```yaml\n{rec['yaml']}```"),
        "policies": table_metadata(table),
        "intervals": dg.MetadataValue.json(ci),
        "candidates": report["candidates"],
        "models_fitted": report["models_fitted"],
        "chart": svg_markdown(svg),
        **advice,
    }


def verify(spec: ModelSpec, report: dict, home: Path | None = None, which: str = "recommended") -> dict:
    """Replay ``which`` candidate of the report (``recommended`` or ``spec_policy``) through the real
    platform over the report's days and compare it with the backtest's own figures for those days."""
    from datetime import timedelta

    from mlops_assets.core.backtest import Candidate, play
    from mlops_assets.core.backtest_data import load_history
    from mlops_assets.core.backtest_report import cached_models
    from mlops_assets.environments import backtest_dir
    from mlops_assets.replay import replay

    candidate = Candidate(**report[which]["candidate"])
    played = candidate.apply(spec)
    # a replay needs its training window of warm-up before the first scored day
    first = max(spec.partitions.start, date.fromisoformat(report["start"]))
    earliest = spec.partitions.start + timedelta(days=candidate.window_days + candidate.holdout_days)
    start = max(first, earliest)
    end = date.fromisoformat(report["end"])
    policy = "default" if candidate.retrain == "triggers" else candidate.retrain
    real = replay(played, policy, start=start, days=(end - start).days + 1, home=home, progress=False)
    history = load_history(spec, end=end + timedelta(days=1))
    models, _ = cached_models(spec, history, backtest_dir(spec.name))
    days = [d for d in history.dates if start <= d <= end]
    offline, _ = play(spec, models, candidate, days)
    return compare(real, offline)


def compare(real: dict, offline: "Outcome") -> dict:
    """A replay against the backtest's play of the same policy over the same days: the figures, whether
    they agree within ``TOLERANCE``, and the days on which they retrained or promoted differently
    (where to look when they do not)."""
    metric, retrains, promotions = offline.metric, offline.retrains, offline.promotions
    dm = abs(real["metric"] - metric) / abs(real["metric"]) if real["metric"] else float("inf")
    dr = abs(real["retrains"] - retrains)
    allowed = max(TOLERANCE["retrains_absolute"], TOLERANCE["retrains_relative"] * real["retrains"])
    days = {}
    for kind, played in (("retrain_days", offline.retrain_days), ("promotion_days", offline.promotion_days)):
        if kind in real:  # a replay report (reports of older replays lack the days)
            replayed, backtested = set(real[kind]), set(played)
            days[kind] = {"only_in_replay": sorted(replayed - backtested), "only_in_backtest": sorted(backtested - replayed)}
    # the replay's canaries too: what the backtest does not play, and each decision's reasons
    figures = ["metric", "retrains", "promotions", "retrain_causes", "retrain_days", "promotion_days", "canaries"]
    figures += ["start", "end", "seconds"]
    return {
        "replay": {k: real[k] for k in figures if k in real},
        "backtest": {"metric": metric, "retrains": retrains, "promotions": promotions},
        "metric_relative_difference": dm,
        "retrain_difference": dr,
        "tolerance": TOLERANCE,
        "within_tolerance": bool(dm <= TOLERANCE["metric_relative"] and dr <= allowed),
        "days_that_differ": days,
    }
