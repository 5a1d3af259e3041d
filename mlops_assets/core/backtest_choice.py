"""Which policy to recommend: a grid of candidates, a retrain budget, and the evidence for the choice.

The grid is the same for every spec, written in the spec's own units: training windows and holdouts
as multiples of the spec's, tolerances relative to the champion's holdout metric. Nothing in it is
fitted to one series.

Picking the single best of a few hundred candidates on one history mostly picks noise: a day's
shift in when retrains happen moves Elec2's accuracy by up to a point. So a trigger candidate is
scored by the **median metric of its grid neighbourhood** (itself and every candidate one step away
in one setting): a setting that only works at one exact point is not recommended over one whose
neighbours work too. Within the retrain budget (a share of the scored days: ``cron:1`` retrains
every day; every trigger candidate enforces it with ``policies.budget_days``), the best
neighbourhood sets the bar, and among the candidates within one standard error
of it the freshest (most retrains) is recommended (``recommend``). Fixed schedules form one axis
from ``cron:1`` to ``static``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date

import numpy as np

from mlops_assets.core.backtest import Candidate, Models, Outcome, Scored, neighbours, play
from mlops_assets.specs import ModelSpec

CRON_PEERS = (1, 3, 7, 14, 30)
PERFORMANCE_WINDOWS = [1, 3, 7]
RELATIVE_DROPS = [0.02, 0.05, 0.1, 0.2]
COOLDOWNS = [3, 7, 14]
RETRAIN_WHEN = ["newly_failed", "failing"]
CONFIDENCES = [None, 0.8]


def training_designs(spec: ModelSpec) -> list[tuple[int, int]]:
    """(window, holdout) pairs: the spec's, twice its window, and twice its holdout (a longer holdout
    is a steadier gate; a longer window a steadier model), while a window keeps most of its days
    for training."""
    W, H = spec.training.window_days, spec.training.holdout_days
    designs = []
    for w in (W, 2 * W):
        for h in (H, 2 * H):
            if h <= w // 2 and (w, h) not in designs:
                designs.append((w, h))
    return designs


def budget_days(budget_share: float) -> int | None:
    """The ``policies.budget_days`` that holds a policy to ``budget_share`` of the days (None: no
    retrain at all is allowed, which only ``static`` meets)."""
    return math.ceil(1 / budget_share - 1e-9) if budget_share > 0 else None


def grid(spec: ModelSpec, budget_share: float = 0.1) -> list[Candidate]:
    """The peers (``static``, ``cron:N`` at the spec's training design) and the trigger candidates,
    each held to the budget by ``budget_days``: a trigger policy that stayed within the budget on
    the history may not on the days that follow (drift comes in bursts), so the budget is part of
    the policy, not only a filter on the backtest's figures."""
    W, H = spec.training.window_days, spec.training.holdout_days
    fresh = math.floor(spec.policies.freshness.model_days) if spec.policies.freshness.model_days else None
    peers = [Candidate("static", W, H), *(Candidate(f"cron:{n}", W, H) for n in CRON_PEERS)]
    budget = budget_days(budget_share)
    triggers = [
        Candidate("triggers", w, h, conf, pw, drop, True, when, cd, fresh, budget)
        for w, h in training_designs(spec)
        for conf in CONFIDENCES
        for pw in PERFORMANCE_WINDOWS
        for drop in RELATIVE_DROPS
        for when in RETRAIN_WHEN
        for cd in COOLDOWNS
    ]
    return peers + triggers


def grid_axes(spec: ModelSpec) -> dict[str, list]:
    designs = training_designs(spec)
    return {
        "performance_window": PERFORMANCE_WINDOWS,
        "tolerated_drop": RELATIVE_DROPS,
        "cooldown_days": COOLDOWNS,
        "window_days": sorted({w for w, _ in designs}),
        "holdout_days": sorted({h for _, h in designs}),
    }


def better(spec: ModelSpec, a: float, b: float) -> bool:
    if math.isnan(b):
        return not math.isnan(a)
    if math.isnan(a):
        return False
    return a > b if spec.higher_is_better else a < b


def holds_budget(c: Candidate, every: int | None) -> bool:
    """Whether the policy keeps to the budget (one retrain per ``every`` days, None: none at all) on
    any days, not only on the history played: ``static``, a schedule at least that far apart, or
    triggers whose ``budget_days`` the automation enforces. A spec's own policy without a budget
    is reported beside the others, never recommended: its retrains on the history say nothing of
    the drift to come."""
    if c.retrain == "static":
        return True
    if every is None:
        return False
    if c.retrain.startswith("cron:"):
        return int(c.retrain.split(":")[1]) >= every
    return c.budget_days is not None and c.budget_days >= every


def best_neighbourhood(spec: ModelSpec, outcomes: dict[Candidate, Outcome], budget: int, every: int | None) -> Outcome:
    """The candidate with the best neighbourhood metric among those that held the budget on the
    history (at most ``budget`` retrains) and hold it on any days (``holds_budget``: one retrain
    per ``every`` days); each such outcome gets its ``robust`` figure; a tie goes to fewer retrains."""
    axes = grid_axes(spec)
    sign = 1 if spec.higher_is_better else -1
    best, best_key = None, None
    for c, o in outcomes.items():
        if o.retrains > budget or not holds_budget(c, every):
            continue
        near = neighbours(c, axes) if c.retrain == "triggers" else _schedule_neighbours(c)
        o.robust = float(np.nanmedian([o.metric, *(outcomes[n].metric for n in near if n in outcomes)]))
        key = (sign * o.robust, sign * o.metric, -o.retrains)
        if best_key is None or key > best_key:
            best, best_key = o, key
    if best is None:
        raise ValueError("no candidate stays within the retrain budget")  # static always does: unreachable
    return best


def recommend(spec: ModelSpec, outcomes: dict[Candidate, Outcome], budget: int, noise: float, every: int | None) -> Outcome:
    """Among the candidates within the budget whose neighbourhood metric is within ``noise`` (one
    standard error of the best one's difference to ``cron:1``) of the best, the one that retrains
    most; then the better neighbourhood.

    The one-standard-error rule: what the history cannot tell apart is decided by a prior, and on a
    drifting series the prior is freshness, as in the gate's tie rule. A policy that retrained
    rarely in the history because the history happened to be calm (Elec2's first months) is the
    one that falls behind when drift comes; within the budget, a fresher model is the safer bet."""
    best = best_neighbourhood(spec, outcomes, budget, every)
    sign = 1 if spec.higher_is_better else -1
    pool = [
        o
        for o in outcomes.values()
        if o.retrains <= budget and holds_budget(o.candidate, every) and sign * o.robust >= sign * best.robust - noise - 1e-12
    ]
    return max(pool, key=lambda o: (o.retrains, sign * o.robust, sign * o.metric))


def _schedule_neighbours(c: Candidate) -> list[Candidate]:
    """Fixed schedules form one axis, from daily to never: cron:1 … cron:30, static."""
    order = [*(f"cron:{n}" for n in CRON_PEERS), "static"]
    i = order.index(c.retrain)
    return [replace(c, retrain=order[j]) for j in (i - 1, i + 1) if 0 <= j < len(order)]


def run_grid(spec: ModelSpec, models: Models, candidates: list[Candidate], days: list[date], progress=None) -> tuple:
    """Every candidate's outcome, and what each served (for the intervals)."""
    outcomes: dict[Candidate, Outcome] = {}
    served: dict[Candidate, Scored] = {}
    for i, c in enumerate(candidates, 1):
        outcomes[c], served[c] = play(spec, models, c, days)
        if progress:
            progress(i, len(candidates), models)
    return outcomes, served


# --- the evidence for a choice: a block bootstrap over days -------------------------------------------


def _day_stats(metric: str, y: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """Sufficient statistics of a day for metrics that pool by summing (None: pool the rows)."""
    n = float(len(y))
    if metric == "accuracy":
        return np.array([float(np.sum((s >= 0.5) == (y == 1))), n])
    if metric in ("rmse",):
        return np.array([float(np.sum((s - y) ** 2)), n])
    if metric == "mae":
        return np.array([float(np.sum(np.abs(s - y))), n])
    if metric == "log_loss":
        p = np.clip(s, 1e-7, 1 - 1e-7)
        return np.array([float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))), n])
    if metric == "r2":
        return np.array([float(np.sum((y - s) ** 2)), float(np.sum(y)), float(np.sum(y * y)), n])
    if metric == "f1":
        pred = s >= 0.5
        return np.array([float(np.sum(pred & (y == 1))), float(np.sum(pred)), float(np.sum(y == 1))])
    return None


def _from_stats(metric: str, t: np.ndarray) -> float:
    if metric == "accuracy" or metric == "mae" or metric == "log_loss":
        return t[0] / t[1]
    if metric == "rmse":
        return math.sqrt(t[0] / t[1])
    if metric == "r2":
        ss = t[2] - t[1] ** 2 / t[3]
        return 1 - t[0] / ss if ss > 0 else float("nan")
    if metric == "f1":
        return 2 * t[0] / (t[1] + t[2]) if t[1] + t[2] else 0.0
    raise ValueError(metric)


def difference_interval(spec: ModelSpec, a: Scored, b: Scored, draws: int = 2000, seed: int = 0) -> dict:
    """The pooled metric of ``a`` minus ``b`` with a 95 % moving-block bootstrap interval over
    days (blocks of max(7, n^(1/3)) days keep the series' autocorrelation and its weekly cycle).
    The difference is signed so that positive means ``a`` is better."""
    from mlops_assets.core.backtest import metric_value

    metric = spec.promotion.metric
    sign = 1 if spec.higher_is_better else -1
    n = len(a.ys)
    block = max(7, round(n ** (1 / 3)))
    stats_a = [_day_stats(metric, y, s) for y, s in zip(a.ys, a.scores, strict=True)]
    stats_b = [_day_stats(metric, y, s) for y, s in zip(b.ys, b.scores, strict=True)]
    additive = stats_a[0] is not None

    def pooled(picks: np.ndarray, scored: Scored, stats) -> float:
        if additive:
            return _from_stats(metric, np.sum([stats[i] for i in picks], axis=0))
        return metric_value(
            metric, np.concatenate([scored.ys[i] for i in picks]), np.concatenate([scored.scores[i] for i in picks])
        )

    everything = np.arange(n)
    observed = sign * (pooled(everything, a, stats_a) - pooled(everything, b, stats_b))
    rng = np.random.default_rng(seed)
    starts_max = max(1, n - block + 1)
    blocks = math.ceil(n / block)
    draws = draws if additive else min(draws, 300)  # a pooled ROC AUC sorts every row per draw
    diffs = []
    for _ in range(draws):
        starts = rng.integers(0, starts_max, blocks)
        picks = np.concatenate([np.arange(s, min(n, s + block)) for s in starts])[:n]
        diffs.append(sign * (pooled(picks, a, stats_a) - pooled(picks, b, stats_b)))
    low, high = np.nanpercentile(diffs, [2.5, 97.5])
    return {"difference": float(observed), "low": float(low), "high": float(high), "block_days": block, "draws": draws}


def peer(outcomes: dict[Candidate, Outcome], retrain: str) -> Candidate:
    return next(c for c in outcomes if c.retrain == retrain)


def spec_candidate(spec: ModelSpec, candidates: list[Candidate]) -> Candidate:
    """The spec's own policy (added to the grid when it is not already in it)."""
    own = Candidate.from_spec(spec)
    return next((c for c in candidates if c == own), own)
