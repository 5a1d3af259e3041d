"""``mlops backtest``: it plays a policy as the real replay does, recommends within the budget, and
shows its work (report, chart, the asset's metadata, the block to paste)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date, timedelta

import dagster as dg
import pytest
import yaml

SHORT = {"start": date(1996, 7, 1), "days": 21}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("backtest_home")
    mp.setenv("MLOPS_HOME", str(path))
    mp.setenv("DAGSTER_HOME", str(path / "dagster"))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def short_report(home, elec2_spec):
    from mlops_assets.backtest import run

    return run(elec2_spec, SHORT["start"], SHORT["days"], 0.1)


def test_the_backtest_plays_a_policy_exactly_as_the_replay_does(elec2_spec, tmp_path, monkeypatch):
    """A short Elec2 replay of a trigger policy (labels a day late, a relative tolerance, a two-day
    cooldown, a retrain budget of one per four days that holds back retrains the cooldown allows)
    through the real platform, and the backtest's play of the same spec over the same days: the
    same retrain days, promotions and prequential accuracy."""
    from mlops_assets.core.backtest import Candidate, Models, play
    from mlops_assets.core.backtest_data import load_history
    from mlops_assets.replay import replay

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    c = Candidate("triggers", 8, 2, None, 1, 0.1, True, "failing", 2, None, budget_days=4)
    spec = c.apply(elec2_spec.model_copy(update={"target": elec2_spec.target.model_copy(update={"label_delay_days": 1})}))
    start, days = date(1996, 6, 3), 14
    real = replay(spec, "default", start=start, days=days, home=tmp_path / "replay", progress=False)

    history = load_history(spec, end=start + timedelta(days=days))
    models, scored = Models(spec, history), [d for d in history.dates if d >= start]
    offline, _ = play(spec, models, Candidate.from_spec(spec), scored)
    unbudgeted, _ = play(spec, models, replace(c, budget_days=None), scored)
    assert Candidate.from_spec(spec) == c
    assert real["retrains"] >= 2, "the window must exercise the trigger"
    assert unbudgeted.retrains > offline.retrains == days // 4, "the budget must hold retrains back"
    assert offline.retrain_days == [r["day"] for r in real["rows"] if r["retrained"]] == real["retrain_days"]
    assert offline.promotion_days == real["promotion_days"] and len(offline.promotion_days) == offline.promotions
    assert offline.promotions == real["promotions"]
    assert offline.metric == pytest.approx(real["metric"], abs=1e-9)


def test_a_short_backtest_recommends_within_the_budget_and_explains_itself(short_report, elec2_spec):
    from mlops_assets.core.backtest import Candidate

    report, svg = short_report
    assert report["scored_days"] == SHORT["days"] and report["start"] == SHORT["start"].isoformat()
    assert report["budget"]["max_retrains"] == 2
    rec = report["recommended"]
    assert rec["retrains"] <= 2
    peers = {p["candidate"]["retrain"]: p for p in report["peers"]}
    assert peers["cron:1"]["retrains"] == SHORT["days"] and peers["static"]["retrains"] == 0
    for versus in ("vs_static", "vs_cron1"):
        ci = rec[versus]
        assert ci["low"] <= ci["difference"] <= ci["high"], ci
    # the best neighbourhood sets the bar; the recommendation is the freshest within one standard error
    best, se = report["best_neighbourhood"], report["one_standard_error"]
    assert se > 0 and all(best["neighbourhood_metric"] >= o["neighbourhood_metric"] - 1e-12 for o in report["best_within_budget"])
    assert rec["neighbourhood_metric"] >= best["neighbourhood_metric"] - se - 1e-12
    assert rec["retrains"] >= best["retrains"]
    # the block pastes into the spec and gives back the recommended candidate
    pasted = Candidate(**rec["candidate"]).apply(elec2_spec)
    blocks = yaml.safe_load(rec["yaml"])
    assert blocks["policies"] == Candidate(**rec["candidate"]).spec_blocks(elec2_spec)["policies"]
    assert Candidate.from_spec(pasted) == Candidate(**rec["candidate"])
    # the chart draws static, cron:1, the spec's policy and the recommendation, with retrain marks
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 4
    assert len(root.findall(f"{ns}line")) >= SHORT["days"]  # cron:1 retrains every day


def test_fitted_models_are_kept_between_runs(short_report, elec2_spec, home):
    from mlops_assets.backtest import run

    first, _ = short_report
    again, _ = run(elec2_spec, SHORT["start"], SHORT["days"], 0.1)
    assert first["models_fitted"] >= SHORT["days"]  # cron:1 alone trains one model per scored day
    assert again["models_fitted"] == 0  # every score came from the cache
    assert again["recommended"] == first["recommended"]


def test_the_asset_shows_the_recommendation_and_the_chart(short_report, elec2_spec, home):
    from mlops_assets.common import key
    from mlops_assets.factory import build_definitions

    defs = build_definitions([elec2_spec])
    asset = defs.resolve_assets_def(key("backtest", elec2_spec))
    assert asset.op.tags.get("dagster-k8s/config")  # sized like training on Kubernetes
    config = {"ops": {"elec2__backtest": {"config": {"start": SHORT["start"].isoformat(), "days": SHORT["days"]}}}}
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], run_config=config, instance=instance)  # the home's resources, bound
        assert result.success
        meta = result.asset_materializations_for_node("elec2__backtest")[0].metadata
    report, _ = short_report
    assert meta["recommended"].value == report["recommended"]["policy"]
    assert "policies:" in meta["paste_into_spec"].value
    assert meta["chart"].value.startswith("![plot](data:image/svg+xml;base64,")
    assert isinstance(meta["policies"], dg.TableMetadataValue) and meta["policies"].records  # rendered in place
    written = json.loads((home / "lake" / "backtest" / "elec2" / "report.json").read_text())
    assert written["recommended"]["policy"] == report["recommended"]["policy"]


def test_the_command_writes_the_report_and_verifies_it_against_a_replay(short_report, elec2_spec, tmp_path, capsys):
    """``--verify`` replays the recommendation through the platform over the same days: the
    backtest's figures are within the stated tolerance of the replay's (here: equal)."""
    from mlops_assets.cli import main

    out = tmp_path / "bt.json"
    args = ["backtest", "--spec", elec2_spec._file, "--start", SHORT["start"].isoformat(), "--days", str(SHORT["days"])]
    assert main([*args, "--out", str(out), "--verify", "--home", str(tmp_path / "verify")]) == 0
    report = json.loads(out.read_text())
    check = report["verification"]
    assert check["within_tolerance"], check
    assert check["replay"]["retrains"] == check["backtest"]["retrains"]
    assert check["replay"]["metric"] == pytest.approx(check["backtest"]["metric"], abs=1e-9)
    nothing = {"only_in_replay": [], "only_in_backtest": []}
    assert check["days_that_differ"] == {"retrain_days": nothing, "promotion_days": nothing}, check
    assert report["chart"].endswith("bt.svg") and ET.parse(report["chart"]).getroot().tag.endswith("svg")
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["recommended"]["policy"] == report["recommended"]["policy"]
    with pytest.raises(SystemExit, match="--budget is a share"):
        main([*args, "--budget", "5"])


def test_a_flat_neighbourhood_beats_a_lucky_spike(elec2_spec):
    """The recommendation is the best neighbourhood within the budget, not the best single point."""
    from dataclasses import replace

    from mlops_assets.core.backtest import Candidate, Outcome
    from mlops_assets.core.backtest_choice import grid, holds_budget, peer, recommend

    assert all(c.budget_days == 10 for c in grid(elec2_spec, 0.1) if c.retrain == "triggers")  # the budget, enforced
    candidates = [c for c in grid(elec2_spec) if c.retrain != "triggers" or (c.window_days, c.holdout_days) == (28, 3)]
    spike = Candidate("triggers", 28, 3, None, 3, 0.05, True, "failing", 7, 30, budget_days=10)  # grid(): budget 0.1
    plateau = replace(spike, performance_window=1, tolerated_drop=0.2, cooldown_days=14, retrain_when="newly_failed")

    def outcome(c: Candidate) -> Outcome:
        metric = 0.70
        if c == spike:
            metric = 0.80
        elif c.retrain == "triggers" and c.retrain_when == "newly_failed" and c.tolerated_drop >= 0.1 and c.cooldown_days >= 7:
            metric = 0.75
        retrains = {"cron:1": 100, "cron:3": 33, "cron:7": 14}.get(c.retrain, 5)
        return Outcome(c, metric, retrains, 0, {}, [], [])

    outcomes = {c: outcome(c) for c in candidates}
    chosen = recommend(elec2_spec, outcomes, budget=10, noise=0.0, every=10)
    assert chosen.candidate != spike and chosen.metric == 0.75 and chosen.robust == 0.75
    assert plateau in outcomes and outcomes[plateau].robust == 0.75
    # over the budget nothing is chosen, however good
    outcomes[spike].retrains = 50
    assert recommend(elec2_spec, outcomes, budget=10, noise=0.0, every=10).retrains <= 10
    # within the noise, the freshest wins
    outcomes[spike].retrains = 5
    outcomes[plateau].retrains = 9
    assert recommend(elec2_spec, outcomes, budget=10, noise=0.01, every=10).candidate == plateau
    # a policy that only happened to stay within the budget on the history is never recommended: the
    # spec's own without budget_days (the same triggers, better on these days), a schedule too close
    unbudgeted = replace(plateau, budget_days=None)
    outcomes[unbudgeted] = Outcome(unbudgeted, 0.79, 9, 0, {}, [], [])
    outcomes[peer(outcomes, "cron:7")].retrains = 4
    outcomes[peer(outcomes, "cron:7")].metric = 0.85
    chosen = recommend(elec2_spec, outcomes, budget=10, noise=0.01, every=10)
    assert chosen.candidate == plateau and chosen.candidate.budget_days == 10
    assert holds_budget(peer(outcomes, "cron:14"), 10) and not holds_budget(peer(outcomes, "cron:7"), 10)
    assert holds_budget(peer(outcomes, "static"), None) and not holds_budget(plateau, None)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_backtests_fast_metrics_equal_the_platforms(task, elec2_spec):
    """The backtest computes a metric half a million times, in numpy; ``core.training.evaluate``
    (scikit-learn) is what the gate and the replay report: they agree on every metric."""
    import numpy as np

    from mlops_assets.core.backtest import metric_value
    from mlops_assets.core.training import evaluate

    rng = np.random.default_rng(3)
    spec = elec2_spec.model_copy(update={"target": elec2_spec.target.model_copy(update={"task": task})})
    if task == "classification":
        y = (rng.random(500) < 0.4).astype(float)
        s = np.round(np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1), 1)  # ties, as a coarse model gives
    else:
        y = rng.gamma(2.0, 50.0, 500)
        s = y + rng.normal(0, 20, 500)
    for name, value in evaluate(y, s, spec).items():
        if name != "positive_rate":
            assert metric_value(name, y, s) == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_a_day_the_platform_would_reject_is_named_with_what_broke_its_check(elec2_spec):
    """The backtest leaves out the days whose blocking checks fail, as ingestion does, and its report
    says why in the check's own terms: the column, its share of missing values and the limit."""
    from mlops_assets.core.backtest_data import _accepted
    from mlops_assets.core.sources import read_table, split_days

    ts = elec2_spec.source.timestamp
    days = split_days(read_table(elec2_spec.source.path, "csv"), ts, elec2_spec.source.path)
    day = date(1996, 7, 1)
    raw = days[day].copy()
    events, why = _accepted(raw, elec2_spec, day)
    assert why is None and len(events) == 48
    raw.loc[raw.index[:30], "nswprice"] = float("nan")  # 30 of 48 half-hours missing: 62.5 %, over the spec's limit
    events, why = _accepted(raw, elec2_spec, day)
    assert events is None
    limit = elec2_spec.checks.null_fraction.get("nswprice", elec2_spec.checks.max_null_fraction)
    assert why.startswith("nulls (") and f"nswprice: 62.5% > {limit:.1%}" in why, why


def test_when_no_policy_within_the_budget_keeps_up_the_report_says_what_to_change(elec2_spec):
    """Behind ``cron:1`` by more than 1 %, the report says the remedy is in the features: for a
    regression, a level the target is learned relative to (``target.relative_to``)."""
    from mlops_assets.core.backtest import Candidate, Outcome
    from mlops_assets.core.backtest_advice import advice
    from mlops_assets.specs import load_spec
    from mlops_assets_tests.conftest import REPO

    bike = load_spec(REPO / "examples" / "specs" / "bike_sharing.yaml")
    daily = Candidate("cron:1", 28, 3)

    def outcome(metric: float, retrains: int = 30) -> Outcome:
        return Outcome(Candidate("cron:7", 28, 3), metric, retrains, 0, {}, [], [])

    cron1 = Outcome(daily, 60.0, 300, 0, {}, [], [])
    said = advice(bike, outcome(66.0), cron1)  # RMSE 10 % worse
    assert len(said) == 2 and "cron:1 (300 retrains) beats the recommendation (30) by 10.0% in rmse" in said[0]
    assert "target.relative_to" in said[1]
    assert advice(bike, outcome(60.5), cron1) == []  # within 1 %
    assert advice(bike, outcome(59.0), cron1) == []  # better
    # a classification (higher is better) is told about recent-state features, not relative_to
    said = advice(elec2_spec, outcome(0.76), Outcome(daily, 0.80, 300, 0, {}, [], []))
    assert "by 5.0% in accuracy" in said[0] and "relative_to" not in said[1] and "past_rate" in said[1]


def test_kept_scores_are_not_reused_by_other_code_or_libraries(elec2_spec, monkeypatch):
    """The score cache is keyed by what decides a model's scores: the spec's content, and the code
    and libraries that fit and score (an earlier release's scores were reused after the pipeline
    recipe changed, and the backtest reported figures of a pipeline that no longer existed)."""
    import importlib.metadata

    from mlops_assets.core import backtest_report
    from mlops_assets.core.backtest_report import cache_key

    key = cache_key(elec2_spec)
    assert cache_key(elec2_spec.model_copy()) == key
    versions = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "0.0" if d == "scikit-learn" else versions(d))
    backtest_report._recipe_fingerprint.cache_clear()
    try:
        assert cache_key(elec2_spec) != key
    finally:
        monkeypatch.undo()
        backtest_report._recipe_fingerprint.cache_clear()
    assert cache_key(elec2_spec) == key
    target = elec2_spec.target.model_copy(update={"label_delay_days": 1})
    assert cache_key(elec2_spec.model_copy(update={"target": target})) != key
