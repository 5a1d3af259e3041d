"""Retrain-trigger study: a spec's retrain policies replayed offline, in minutes instead of hours.

A full ``mlops replay`` of Elec2 under ``cron:1`` takes about two hours on this machine: each of
its 913 retrains goes through Dagster, Feast and MLflow. Choosing a policy's thresholds needs
dozens of such replays. This study keeps the parts that decide the numbers and drops the platform:

1. for every day *t*, the model the platform would train at *t* (the spec's estimator, fitted on
   the ``window_days`` ending at *t* minus the ``holdout_days``, with ``mlops_assets.core``), and
   its per-row outcome on its holdout and on each of the next ``--horizon`` days (cached);
2. policies played over those models as the replay plays them: day *j* is served by the champion;
   a retrain at *j* trains model *j* and the gate promotes it when it beats the champion on model
   *j*'s holdout by at least the spec's margin; the performance check pools the newest
   ``performance.window_days`` days the champion served and compares the metric with the
   champion's own holdout metric and the spec's tolerated drop; the cooldown and the model's
   freshness count days since the last retrain.

It reproduces the real replay (Elec2 ``cron:1``: accuracy 0.7773, 913 retrains, 402 promotions by
the study against 0.7773, 913 and 403 by ``mlops replay``). Drift checks are not modelled: the
study is for the performance trigger, the peers and their thresholds; labels are taken as known
the day they land (``target.label_delay_days`` = 0, as for Elec2 and bike sharing). Prints the peers, the spec's
own policy and (``--grid``) its neighbours, then a JSON line last, with a block-bootstrap 95 %
interval for the daily difference between the spec's policy and ``cron:1``.

    MLOPS_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/policy_study.py --grid
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlops_assets.core.promotion import decide

ROOT = Path(__file__).resolve().parents[1]


class BeyondHorizon(Exception):
    """A champion served longer than the models were scored ahead (``--horizon``)."""


def outcomes(spec, horizon: int, cache: Path) -> tuple[list, dict]:
    """Per model (trained at day index i) and day j: (sum, count) of the metric's row statistic:
    correct predictions for accuracy, squared errors for RMSE."""
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    import pandas as pd

    from mlops_assets.core.names import LABEL
    from mlops_assets.core.sources import read_table, split_days
    from mlops_assets.core.training import feature_frame, fit, predict_scores
    from mlops_assets.core.validation import clean_events

    ts = spec.source.timestamp
    source = read_table(spec.source.path, spec.source.format)
    by_day = split_days(source, ts.column, ts.parts, ts.timezone, spec.source.path)
    days = [d for d in sorted(by_day) if d >= spec.partitions.start]
    events = {d: clean_events(by_day[d].reset_index(drop=True), spec, d, f"{spec.source.path} {d}") for d in days}
    X = {d: feature_frame(events[d], spec) for d in days}
    y = {d: events[d][LABEL].to_numpy() for d in days}
    W, H = spec.training.window_days, spec.training.holdout_days
    stats: dict[int, dict[int, np.ndarray]] = {}
    t0 = time.perf_counter()
    for i in range(W - 1, len(days)):
        model = fit(spec, pd.concat([events[d] for d in days[i - W + 1 : i - H + 1]], ignore_index=True))
        stats[i] = {}
        for j in range(i - H + 1, min(len(days), i + horizon + 1)):
            scores = predict_scores(model, X[days[j]], spec)
            row = (scores >= 0.5) == y[days[j]] if spec.target.task == "classification" else (scores - y[days[j]]) ** 2
            stats[i][j] = np.array([row.sum(), len(row)], dtype="float64")
        if i % 100 == 0:
            print(f"  trained {i - W + 2} of {len(days) - W + 1} models ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    result = ([d.isoformat() for d in days], stats)
    cache.write_bytes(pickle.dumps(result))
    return result


@dataclass
class Outcome:
    metric: float
    retrains: int
    promotions: int
    causes: dict
    daily: np.ndarray  # the metric's row statistic per scored day (for paired comparisons)
    retrain_days: list  # to hold against a replay report's rows


class Study:
    def __init__(self, spec, days: list[str], stats: dict):
        self.spec, self.days, self.stats = spec, days, stats
        self.first = spec.training.window_days + spec.training.holdout_days - 1  # the bootstrap model
        self.accuracy = spec.promotion.metric == "accuracy"
        if spec.promotion.metric not in ("accuracy", "rmse"):
            raise SystemExit(f"the study computes accuracy and RMSE, not {spec.promotion.metric}")

    def metric(self, total: np.ndarray) -> float:
        return total[0] / total[1] if self.accuracy else float(np.sqrt(total[0] / total[1]))

    def holdout(self, model: int, of: int) -> float:
        H = self.spec.training.holdout_days
        return self.metric(sum(self.stats[model][k] for k in range(of - H + 1, of + 1)))

    def play(
        self,
        cron: int | None = None,
        window: int = 1,
        drop: float = 0.0,
        relative: bool = False,
        cooldown: int = 7,
        fresh: int | None = 30,
    ) -> Outcome:
        champion = last = since = self.first
        margin = self.spec.promotion.margin
        total, retrains, promotions, failing_before = np.zeros(2), 0, 0, False
        causes = {"cron": 0, "performance": 0, "freshness": 0}
        retrain_days = []
        n = len(self.days)
        daily = np.zeros((n - self.first - 1, 2))
        for j in range(self.first + 1, n):
            if j not in self.stats[champion]:
                raise BeyondHorizon(f"the champion of day {self.days[j]} is older than --horizon days: raise it")
            served = self.stats[champion][j]
            total += served
            daily[j - self.first - 1] = served
            age = j - last
            if cron:
                cause = "cron" if age >= cron else None
            else:
                pooled = sum(self.stats[champion][k] for k in range(max(since + 1, j - window + 1), j + 1))
                reference = self.holdout(champion, champion)
                tolerated = drop * abs(reference) if relative else drop
                realised = self.metric(pooled)
                failing_today = (reference - realised if self.accuracy else realised - reference) > tolerated
                # the first tick of a day still sees yesterday's verdict (if it came after the last
                # retrain): the day the cooldown ends, either one retrains
                failing, failing_before = failing_today or failing_before, failing_today
                # "older than N days" holds from the tick after the Nth (the model was trained minutes
                # after its day's tick), as Dagster's freshness window sees it
                cause = "performance" if failing else "freshness" if fresh and age > fresh else None
                if age < cooldown:
                    cause = None
            if cause:
                retrains, last, failing_before = retrains + 1, j, False
                causes[cause] += 1
                retrain_days.append(self.days[j])
                if decide(self.holdout(j, j), self.holdout(champion, j), margin=margin, higher_is_better=self.accuracy).promote:
                    champion, since, promotions = j, j, promotions + 1
        return Outcome(self.metric(total), retrains, promotions, {k: v for k, v in causes.items() if v}, daily, retrain_days)

    def difference_interval(self, a: Outcome, b: Outcome, block: int = 14, draws: int = 2000) -> tuple[float, float]:
        """95 % block-bootstrap interval of the pooled metric of ``a`` minus ``b`` (blocks of days keep
        the series' autocorrelation)."""
        rng = np.random.default_rng(0)
        blocks = len(a.daily) // block
        out = []
        for _ in range(draws):
            pick = np.concatenate([np.arange(k * block, (k + 1) * block) for k in rng.integers(0, blocks, blocks)])
            out.append(self.metric(a.daily[pick].sum(0)) - self.metric(b.daily[pick].sum(0)))
        return float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "examples" / "specs" / "elec2.yaml"))
    parser.add_argument("--horizon", type=int, default=150, help="days after its training each model is scored on")
    parser.add_argument("--cache", help="where the trained models' outcomes are kept between runs")
    parser.add_argument("--grid", action="store_true", help="also print the spec policy's neighbours")
    args = parser.parse_args()
    os.environ.setdefault("MLOPS_DATA_DIR", str(ROOT.parent / "shared" / "data"))

    from mlops_assets.specs import find_spec

    spec = find_spec(args.spec)
    if spec.target.label_delay_days:
        raise SystemExit(f"{spec.name}: labels {spec.target.label_delay_days} days late are not modelled by this study")
    # the cache holds fitted outcomes: it is keyed by everything that decides them
    decides = spec.model_dump_json(include={"source", "target", "features", "estimator", "training", "partitions"})
    digest = hashlib.sha256(decides.encode()).hexdigest()[:12]
    cache = Path(args.cache or Path(tempfile.gettempdir()) / f"mlops-policy-study-{spec.name}-{digest}-{args.horizon}.pkl")
    t0 = time.perf_counter()
    days, stats = outcomes(spec, args.horizon, cache)
    study = Study(spec, days, stats)
    p = spec.policies
    own = {
        "window": p.performance.window_days,
        "drop": p.performance.tolerated_drop,
        "relative": p.performance.relative,
        "cooldown": int(p.cooldown_days),
        "fresh": int(p.freshness.model_days) if p.freshness.model_days else None,
    }
    name = spec.promotion.metric
    print(f"{spec.name}: {len(days) - study.first - 1} scored days ({days[study.first + 1]}..{days[-1]}), {name}")
    peers = {f"cron:{n}": study.play(cron=n) for n in (1, 3, 7, 10, 30)}
    for label, o in peers.items():
        print(f"  {label:>9}  {name} {o.metric:.4f}  retrains {o.retrains:4d}  promotions {o.promotions}")
    default = study.play(**own)
    lo, hi = study.difference_interval(default, peers["cron:1"])
    print(
        f"  {'default':>9}  {name} {default.metric:.4f}  retrains {default.retrains:4d}  promotions {default.promotions}  {default.causes}"
    )
    print(f"  default - cron:1 = {default.metric - peers['cron:1'].metric:+.4f}, 95 % interval [{lo:+.4f}, {hi:+.4f}]")
    if args.grid:
        drops = sorted({round(own["drop"] * f, 4) for f in (0.5, 0.75, 1, 1.25, 1.5, 1.875)})
        print(f"  neighbours (rows: window, cooldown; columns: tolerated drop {drops}):")
        for window in sorted({1, 2, 3, own["window"]}):
            for cooldown in sorted({own["cooldown"] - 2, own["cooldown"], own["cooldown"] + 1}):
                cells = []
                for d in drops:
                    try:
                        c = study.play(**{**own, "window": window, "cooldown": cooldown, "drop": d})
                        cells.append(f"{c.metric:.4f}/{c.retrains:3d}")
                    except BeyondHorizon:
                        cells.append("  (horizon)  ")
                print(f"    w={window} cd={cooldown:2d}  " + "  ".join(cells))
    cron1 = peers["cron:1"]
    higher = name == "accuracy"
    print(
        json.dumps(
            {
                "bench": "policy_study",
                "spec": spec.name,
                "metric_name": name,
                "cron1_metric": round(cron1.metric, 4),
                "cron1_retrains": cron1.retrains,
                "default_metric": round(default.metric, 4),
                "default_retrains": default.retrains,
                "retrain_share": round(default.retrains / cron1.retrains, 3),
                "default_at_least_cron1": bool(default.metric >= cron1.metric if higher else default.metric <= cron1.metric),
                "difference_95": [round(lo, 4), round(hi, 4)],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
