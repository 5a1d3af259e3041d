"""``mlops backtest``'s work and its report: every candidate played, one recommended, a chart.

The report (JSON) holds the period, the budget, the peers (``static``, ``cron:N``), the spec's own
policy, the best candidates, and ``recommended``: its metric, retrains and promotions, the 95 %
bootstrap interval of its difference to ``static`` and to ``cron:1``, and the blocks to paste into
the spec (``yaml``). The chart (SVG) draws the rolling metric of the peers, the spec's policy and
the recommendation over time, with a mark under each for every retrain.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import yaml

from mlops_assets.core.backtest import Candidate, Models, Outcome
from mlops_assets.core.backtest_advice import advice, level_blocks, level_variants, variant_advice
from mlops_assets.core.backtest_choice import (
    best_neighbourhood,
    budget_days,
    difference_interval,
    grid,
    peer,
    recommend,
    run_grid,
    spec_candidate,
)
from mlops_assets.core.backtest_data import load_history
from mlops_assets.specs import ModelSpec

TOP = 10
COLOURS = {"static": "#7f7f7f", "cron:1": "#1f77b4", "spec": "#2ca02c", "recommended": "#d62728"}


def scored_days(spec: ModelSpec, available: list[date], start: date | None, days: int | None) -> list[date]:
    """The scored days: from ``start`` (default: the first day ``mlops replay`` scores, after its
    warm-up) for ``days`` days (default: to the end of the history)."""
    first = spec.partitions.start + timedelta(days=spec.training.window_days + spec.training.holdout_days)
    start = max(start or first, min(available) + timedelta(days=spec.training.window_days))
    end = start + timedelta(days=days) if days else None
    return [d for d in available if d >= start and (end is None or d < end)]


# The code that turns a spec's data into a model's scores: a change to any of them (a new release, a
# fix) makes the kept scores stale, as does an upgrade of the libraries that fit and read.
_RECIPE_MODULES = ("sources", "validation", "features", "training", "relative_target", "backtest_data", "backtest")
_RECIPE_LIBRARIES = ("scikit-learn", "numpy", "pandas", "pyarrow")


@functools.cache
def _recipe_fingerprint() -> str:
    import importlib
    import importlib.metadata

    digest = hashlib.sha256()
    for name in _RECIPE_MODULES:
        digest.update(Path(importlib.import_module(f"mlops_assets.core.{name}").__file__).read_bytes())
    for dist in _RECIPE_LIBRARIES:
        digest.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    return digest.hexdigest()


def cache_key(spec: ModelSpec) -> str:
    """What decides a fitted model's scores: the data, its typing and checks, the features, the
    target (and the level it is learned relative to), the estimator and the minimum rows (not the
    policies, which only choose among the models), how far back past rates reach (a property of the
    spec, not in its dump), and the code and libraries that fit and score (``_recipe_fingerprint``:
    scores kept by an earlier release are not reused by the next)."""
    decides = spec.model_dump_json(
        include={"source", "target", "features", "lookups", "entities", "estimator", "checks", "partitions"}
    )
    reach = [f.lookback_days for f in spec.past_rate_features]
    return hashlib.sha256(f"{decides}{spec.training.min_rows}{reach}{_recipe_fingerprint()}".encode()).hexdigest()[:16]


def cached_models(spec: ModelSpec, history, cache_dir: Path | None) -> tuple[Models, Path | None]:
    """The per-day models over ``history``, with the scores an earlier backtest of the spec kept in
    ``cache_dir`` (the file ``Models.store`` writes back to)."""
    models = Models(spec, history)
    cache = (cache_dir / f"scores-{cache_key(spec)}.pkl") if cache_dir else None
    if cache is not None and cache.exists():
        models.load(cache)
    return models, cache


@dataclass
class _Choice:
    """One spec's grid played over the scored days, and what it recommends."""

    outcomes: dict
    served: dict
    models: Models
    static: Candidate
    daily: Candidate
    own: Candidate
    best: Outcome
    noise: float
    chosen: Outcome
    budget: int  # the most retrains a candidate may have on the scored days


def _choose(spec, history, scored, budget_share, cache_dir, candidates, progress) -> _Choice:
    models, cache = cached_models(spec, history, cache_dir)
    candidates = candidates or grid(spec, budget_share)
    own = spec_candidate(spec, candidates)
    if own not in candidates:
        candidates = [*candidates, own]

    def tick(i: int, n: int, m: Models) -> None:
        if progress and (i % 25 == 0 or i == n):
            progress(f"{i}/{n} candidates, {m.fits} models fitted ({m.fit_seconds:.0f} s)")

    outcomes, served = run_grid(spec, models, candidates, scored, tick)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        models.store(cache)
    budget = math.floor(budget_share * len(scored))
    static, daily = peer(outcomes, "static"), peer(outcomes, "cron:1")
    every = budget_days(budget_share)
    best = best_neighbourhood(spec, outcomes, budget, every)
    spread = difference_interval(spec, served[best.candidate], served[daily])
    noise = (spread["high"] - spread["low"]) / (2 * 1.96)  # one standard error of the difference
    chosen = recommend(spec, outcomes, budget, noise, every)
    chosen.extra = {
        "vs_static": difference_interval(spec, served[chosen.candidate], served[static]),
        "vs_cron1": difference_interval(spec, served[chosen.candidate], served[daily]),
        "spec_blocks": chosen.candidate.spec_blocks(spec),
    }
    chosen.extra["yaml"] = yaml.safe_dump(chosen.extra["spec_blocks"], sort_keys=False)
    return _Choice(outcomes, served, models, static, daily, own, best, noise, chosen, budget)


def backtest(
    spec: ModelSpec,
    *,
    start: date | None = None,
    days: int | None = None,
    budget_share: float = 0.1,
    cache_dir: Path | None = None,
    candidates: list[Candidate] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict, str]:
    """Play every candidate over the scored days and recommend one; the report and the SVG chart.
    When no policy within the budget keeps up with ``cron:1`` (``advice``), the spec changes the
    advice names (``level_variants``) are backtested over the same days too."""
    t0 = time.perf_counter()
    end = None
    if start and days:
        end = start + timedelta(days=days)
    history = load_history(spec, end=end)
    scored = scored_days(spec, history.dates, start, days)
    if len(scored) < 2:
        raise ValueError(
            f"{spec.name}: fewer than 2 days to score from {start or 'the replay start'} (history {history.dates[0]}..{history.dates[-1]})"
        )
    c = _choose(spec, history, scored, budget_share, cache_dir, candidates, progress)
    outcomes, chosen, budget = c.outcomes, c.chosen, c.budget
    sign = 1 if spec.higher_is_better else -1
    within = sorted(
        (o for o in outcomes.values() if o.retrains <= budget and o.robust is not None),
        key=lambda o: (-sign * o.robust, o.retrains),
    )
    said = advice(spec, chosen, outcomes[c.daily])
    variants = []
    if said:
        for change, variant in level_variants(spec):
            if progress:
                progress(f"backtesting the spec with {change}")
            v_history = load_history(variant, end=end)
            v_scored = [d for d in scored if d in v_history.days]  # the same days (its checks could refuse one)
            v = _choose(variant, v_history, v_scored, budget_share, cache_dir, candidates, progress)
            variants.append(
                {
                    "change": change,
                    "spec_blocks": level_blocks(variant),
                    "yaml": yaml.safe_dump(level_blocks(variant), sort_keys=False),
                    "static": v.outcomes[v.static].summary(),
                    "cron:1": v.outcomes[v.daily].summary(),
                    "recommended": v.chosen.summary(),
                }
            )
        said += variant_advice(spec, chosen, variants)
    report = {
        "spec": spec.name,
        "metric_name": spec.promotion.metric,
        "higher_is_better": spec.higher_is_better,
        "start": scored[0].isoformat(),
        "end": scored[-1].isoformat(),
        "scored_days": len(scored),
        "rejected_days": {d.isoformat(): why for d, why in history.rejected.items() if scored[0] <= d <= scored[-1]},
        "budget": {"share_of_days": budget_share, "max_retrains": budget},
        "best_neighbourhood": c.best.summary(),
        "one_standard_error": c.noise,
        "candidates": len(outcomes),
        "models_fitted": c.models.fits,
        "peers": [o.summary() for cand, o in outcomes.items() if cand.retrain != "triggers"],
        "spec_policy": outcomes[c.own].summary(),
        "best_within_budget": [o.summary() for o in within[:TOP]],
        "recommended": chosen.summary(),
        "advice": said,
        "variants": variants,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    lines = {"static": outcomes[c.static], "cron:1": outcomes[c.daily], "spec": outcomes[c.own], "recommended": chosen}
    return report, chart(spec, scored, lines)


def chart(spec: ModelSpec, days: list[date], lines: dict[str, Outcome]) -> str:
    """Rolling metric (a window of about a twentieth of the period, at least 7 days) of each policy,
    with one tick per retrain under the plot, as standalone SVG."""
    n = len(days)
    window = max(7, n // 20)
    left, top, w, h, lane = 56, 30, 720, 240, 12
    bottom = top + h
    height = bottom + 30 + lane * len(lines) + 20
    series = {}
    for name, o in lines.items():
        values = np.array([np.nan if v is None else v for v in o.daily_metric], dtype="float64")
        rolled = [
            np.nanmean(values[max(0, i - window + 1) : i + 1])
            if np.isfinite(values[max(0, i - window + 1) : i + 1]).any()
            else np.nan
            for i in range(n)
        ]
        series[name] = np.array(rolled)
    finite = np.concatenate([s[np.isfinite(s)] for s in series.values()])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or 0.01
    lo, hi = lo - pad, hi + pad

    def px(i: float) -> float:
        return left + w * i / max(1, n - 1)

    def py(v: float) -> float:
        return bottom - h * (v - lo) / (hi - lo)

    title = f"{spec.name}: {spec.promotion.metric}, rolling {window} days, {days[0]}..{days[-1]}"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + w + 150}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{left + w / 2}" y="16" text-anchor="middle" font-weight="bold">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#333"/>',
    ]
    for t in np.linspace(lo, hi, 5):
        out.append(f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    for k in range(0, n, max(1, n // 6)):
        out.append(f'<text x="{px(k):.1f}" y="{bottom + 14}" text-anchor="middle">{days[k]}</text>')
    index = {d.isoformat(): i for i, d in enumerate(days)}
    for row, (name, o) in enumerate(lines.items()):
        colour = COLOURS[name]
        s = series[name]
        points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(s) if np.isfinite(v))
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.4"/>')
        y0 = bottom + 24 + lane * row
        for d in o.retrain_days:
            x = px(index[d])
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + lane - 3}" stroke="{colour}" stroke-width="0.8"/>')
        label = f"{name} ({o.retrains} retrains)"
        out.append(f'<text x="{left + w + 8}" y="{y0 + 9}" fill="{colour}">{label}</text>')
        out.append(f'<rect x="{left + w + 8}" y="{top + 14 * row}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{left + w + 22}" y="{top + 9 + 14 * row}">{name} {o.metric:.4f}</text>')
    out.append("</svg>")
    return "".join(out)


def write(report: dict, svg: str, out: Path) -> Path:
    """The report as JSON at ``out`` and the chart beside it (``<out stem>.svg``, named in the report)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    svg_path = out.with_suffix(".svg")
    svg_path.write_text(svg)
    out.write_text(json.dumps({**report, "chart": str(svg_path)}, indent=1, default=str))
    return svg_path
