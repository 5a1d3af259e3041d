"""Backtest: play candidate retrain policies over a spec's history, from one fitted model per day.

A replay runs a policy through the real platform and costs minutes to hours; choosing a policy
needs hundreds of them. The backtest keeps what decides the numbers and drops the platform:

* **models**: the model the platform would train on day *d* (the spec's estimator on the
  ``window_days`` ending at *d*, its newest ``holdout_days`` held out, ``core.training``), fitted
  once when a policy first needs it and shared by every candidate with the same training window
  and holdout; its per-row scores on each day are kept (``Models``), and can be kept on disk;
* **policies**, played day by day as the automation plays them (``mlops_assets.policies``): each
  day is scored by the model then serving (prequential); a retrain trains day *d*'s model and the
  gate promotes it when it beats the champion on its holdout (by the spec's margin, or, with a
  confidence, by a paired test: ``core.evidence``); the performance check pools the newest
  ``window_days`` labelled days the champion served against its own holdout metric; ``failing``
  retrains while the newest verdict since the last training fails (the day's first tick still sees
  the day before's), ``newly_failed`` once per new failure, both at most once per cooldown; the
  model's freshness retrains it once it is older than ``model_days``; a retrain beyond the budget
  (one per ``budget_days`` on average since the first model) waits.

Drift checks are not played: a candidate shows drift and does not retrain on it
(``retrain_when: never``), which is what the recommended block says. ``mlops backtest`` checks the
recommendation against a real replay when asked (``--verify``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd

from mlops_assets.core.backtest_data import History
from mlops_assets.specs import ModelSpec

METRICS_ADDITIVE = ("accuracy", "log_loss", "mae", "rmse")


@dataclass(frozen=True)
class Candidate:
    """One policy: how and when to retrain, what to train on, and how the gate decides."""

    retrain: str  # "static" | "cron:N" | "triggers"
    window_days: int  # training window, holdout included
    holdout_days: int
    confidence: float | None = None  # the gate's paired test; None: the point estimate and the margin
    performance_window: int = 1
    tolerated_drop: float = 0.05
    relative: bool = True  # tolerated_drop is a fraction of the champion's holdout metric
    retrain_when: str = "failing"  # "failing" | "newly_failed" | "never" (the performance check's)
    cooldown_days: int = 7
    model_days: int | None = 30
    budget_days: float | None = None  # at most one retrain per budget_days on average (policies.budget_days)

    @property
    def label(self) -> str:
        base = self.retrain
        if self.retrain == "triggers":
            base = (
                f"perf {self.retrain_when} w{self.performance_window} drop {self.tolerated_drop:g} "
                f"cd {self.cooldown_days} fresh {self.model_days or '-'}"
            )
        gate = f"conf {self.confidence:g}" if self.confidence else "point"
        if self.budget_days:
            base += f" budget {self.budget_days:g}"
        return f"{base} | train {self.window_days}/{self.holdout_days} | {gate}"

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Candidate:
        """The spec's own policy, as far as the backtest plays it (its drift checks are not played)."""
        p = spec.policies
        retrain = "triggers" if p.retrain == "default" else p.retrain
        return cls(
            retrain=retrain,
            window_days=spec.training.window_days,
            holdout_days=spec.training.holdout_days,
            confidence=spec.promotion.confidence,
            performance_window=p.performance.window_days,
            tolerated_drop=p.performance.tolerated_drop,
            relative=p.performance.relative,
            retrain_when=p.performance.retrain_when,
            cooldown_days=math.ceil(p.cooldown_days - 1 / 24) if p.cooldown_days else 0,
            model_days=math.floor(p.freshness.model_days) if p.freshness.model_days else None,
            budget_days=p.budget_days if retrain != "static" else None,
        )

    def spec_blocks(self, spec: ModelSpec) -> dict:
        """The spec's ``policies:`` block for this candidate, and ``training:``/``promotion:`` when
        they differ from the spec's (ready to paste)."""
        if self.retrain == "triggers":
            policies = {
                "retrain": "default",
                "drift": {"window_days": spec.policies.drift.window_days, "retrain_when": "never"},
                "performance": {
                    "window_days": self.performance_window,
                    "tolerated_drop": self.tolerated_drop,
                    "relative": self.relative,
                    "retrain_when": self.retrain_when,
                },
                "freshness": {"model_days": self.model_days},
                "cooldown_days": self.cooldown_days,
            }
        else:
            policies = {"retrain": self.retrain}
        if self.budget_days and self.retrain != "static":
            policies["budget_days"] = self.budget_days
        out = {"policies": policies}
        if (self.window_days, self.holdout_days) != (spec.training.window_days, spec.training.holdout_days):
            out["training"] = {"window_days": self.window_days, "holdout_days": self.holdout_days}
        if self.confidence != spec.promotion.confidence:
            out["promotion"] = {"confidence": self.confidence}
        return out

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """The spec with this candidate's settings (what ``mlops replay`` plays to verify it)."""
        blocks = self.spec_blocks(spec)
        data = spec.model_dump(by_alias=True)
        for section, values in blocks.items():
            merged = data.get(section) or {}
            for k, v in values.items():
                merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
            data[section] = merged
        out = type(spec).model_validate(data)
        out._file = spec._file
        return out


@dataclass
class Outcome:
    candidate: Candidate
    metric: float
    retrains: int
    promotions: int
    causes: dict
    retrain_days: list[str]
    daily_metric: list[float | None]  # per scored day
    failed_fits: int = 0
    promotion_days: list[str] = field(default_factory=list)  # the retrain days whose challenger the gate promoted
    robust: float | None = None  # the metric its grid neighbourhood reaches (recommend)
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        out = {
            "policy": self.candidate.label,
            "candidate": asdict(self.candidate),
            "metric": self.metric,
            "retrains": self.retrains,
            "promotions": self.promotions,
            "causes": self.causes,
            "retrain_days": self.retrain_days,
            "promotion_days": self.promotion_days,
        }
        if self.robust is not None:
            out["neighbourhood_metric"] = self.robust
        if self.failed_fits:
            out["failed_fits"] = self.failed_fits
        return {**out, **self.extra}


# --- metrics from per-row scores ------------------------------------------------------------------


def metric_value(name: str, y: np.ndarray, s: np.ndarray) -> float:
    """The spec's metric, as ``core.training.evaluate`` computes it, without its other metrics."""
    if len(y) == 0:
        return float("nan")
    if name == "accuracy":
        return float(np.mean((s >= 0.5) == (y == 1)))
    if name == "log_loss":
        p = np.clip(s, 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    if name == "rmse":
        return float(np.sqrt(np.mean((s - y) ** 2)))
    if name == "mae":
        return float(np.mean(np.abs(s - y)))
    if name == "r2":
        ss = float(np.sum((y - y.mean()) ** 2))
        return float(1 - np.sum((y - s) ** 2) / ss) if ss > 0 else float("nan")
    if name == "f1":
        pred = s >= 0.5
        tp = float(np.sum(pred & (y == 1)))
        denom = float(np.sum(pred) + np.sum(y == 1))
        return 2 * tp / denom if denom else 0.0
    if name == "roc_auc":  # the Mann-Whitney form, ties at their mean rank: scikit-learn's value, 17x faster
        positive = y == 1
        n1 = int(positive.sum())
        n0 = len(y) - n1
        if n1 == 0 or n0 == 0:
            return float("nan")
        from scipy.stats import rankdata

        return float((rankdata(s)[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    raise ValueError(f"the backtest has no metric {name!r}")


# --- models, fitted once ----------------------------------------------------------------------------


class Models:
    """Per-row scores of day *d*'s model (for a training window and holdout) on any day, fitted
    lazily and kept: ``scores`` memoises every (model, day) it computed, and ``store`` /``load``
    keep them across runs of the same spec (fitted models depend on nothing else)."""

    def __init__(self, spec: ModelSpec, history: History, keep_models: int = 64, horizon: int = 45):
        self.spec, self.history, self.horizon = spec, history, horizon
        self.memo: dict[tuple, np.ndarray | None] = {}
        self._models: OrderedDict = OrderedDict()
        self._keep = keep_models
        self.fits = 0
        self.fit_seconds = 0.0

    def _window(self, window: int, holdout: int, as_of: date) -> tuple[list[date], list[date]]:
        delay = self.spec.target.label_delay_days
        days = [as_of - timedelta(days=k) for k in range(window - 1, -1, -1)]
        labelled = [d for d in days if d in self.history.days and d <= as_of - timedelta(days=delay)]
        cut = as_of - timedelta(days=holdout - 1)
        return [d for d in labelled if d < cut], [d for d in labelled if d >= cut]

    def trainable(self, window: int, holdout: int, as_of: date) -> bool:
        """Whether day ``as_of``'s training set has ``min_rows`` rows and a holdout (without fitting)."""
        train_days, holdout_days = self._window(window, holdout, as_of)
        return bool(holdout_days) and sum(len(self.history.days[d].y) for d in train_days) >= self.spec.training.min_rows

    def model(self, window: int, holdout: int, as_of: date):
        """Day ``as_of``'s model, or None when its window is too thin to train (the platform's
        training set refuses it the same way: fewer than ``min_rows`` rows, or no holdout)."""
        key = (window, holdout, as_of)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        import time

        from mlops_assets.core.training import build_pipeline

        train_days, _ = self._window(window, holdout, as_of)
        model = None
        if self.trainable(window, holdout, as_of):
            t0 = time.perf_counter()
            X = pd.concat([self.history.days[d].X for d in train_days], ignore_index=True)
            y = np.concatenate([self.history.days[d].y for d in train_days])
            model = build_pipeline(self.spec).fit(X, y)
            self.fits += 1
            self.fit_seconds += time.perf_counter() - t0
        self._models[key] = model
        if len(self._models) > self._keep:
            self._models.popitem(last=False)
        return model

    def scores(self, window: int, holdout: int, as_of: date, day: date) -> np.ndarray | None:
        """The model's scores on ``day``. A model's first scoring also scores its holdout and the
        ``horizon`` days after it in one call: a champion serves those next, and a model evicted
        from memory would otherwise be fitted again for them."""
        key = (window, holdout, as_of, day)
        if key not in self.memo:
            from mlops_assets.core.training import predict_scores

            model = self.model(window, holdout, as_of)
            if model is None:
                self.memo[key] = None
                return None
            span = [as_of + timedelta(days=k) for k in range(1 - holdout, 1)]
            span += [day + timedelta(days=k) for k in range(self.horizon + 1)]
            batch = [
                d for d in dict.fromkeys([day, *span]) if d in self.history.days and (window, holdout, as_of, d) not in self.memo
            ]
            X = pd.concat([self.history.days[d].X for d in batch], ignore_index=True)
            out = predict_scores(model, X, self.spec).astype("float32")
            at = 0
            for d in batch:
                n = len(self.history.days[d].y)
                self.memo[(window, holdout, as_of, d)] = out[at : at + n]
                at += n
        found = self.memo[key]
        return None if found is None else found.astype("float64")

    def holdout(self, window: int, holdout: int, as_of: date) -> list[date]:
        return self._window(window, holdout, as_of)[1]

    # persistence: the memo is the expensive part; models are refitted only for new days
    def store(self, path) -> None:
        import pickle

        with open(path, "wb") as f:
            pickle.dump({k: v for k, v in self.memo.items()}, f, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, path) -> None:
        import pickle

        with open(path, "rb") as f:
            self.memo.update(pickle.load(f))


# --- playing one candidate ----------------------------------------------------------------------------


@dataclass
class Scored:
    """What the champion served over the scored days, kept per day for pooled metrics."""

    ys: list[np.ndarray]
    scores: list[np.ndarray]


def play(spec: ModelSpec, models: Models, candidate: Candidate, days: list[date]) -> tuple[Outcome, Scored]:
    """Play ``candidate`` over ``days`` (the scored days; the day before the first is the warm-up's
    last, where the first model is trained, as ``mlops replay`` trains it with the train job)."""
    metric = spec.promotion.metric
    c = candidate
    W, H = c.window_days, c.holdout_days
    delay = spec.target.label_delay_days
    hist = models.history.days
    bootstrap = days[0] - timedelta(days=1)
    champion = bootstrap if models.trainable(W, H, bootstrap) else None
    if champion is None:
        raise ValueError(f"{spec.name}: the first model (trained {bootstrap}) has too few rows in its window")
    promoted_at = bootstrap
    clock = _Clock(spec.source.timestamp.timezone, bootstrap)
    reference = _holdout_metric(spec, models, W, H, champion, champion)
    served: dict[date, date] = {}  # scored day -> the model that served it
    ys, ss, daily = [], [], []
    retrains = promotions = failed = 0
    causes: dict[str, int] = {}
    retrain_days: list[str] = []
    promotion_days: list[str] = []
    pending: str | None = None  # an edge trigger (newly failed, freshness) waiting for the cooldown
    verdict_before = False  # the last verdict (since the last training): the next day's first tick sees it
    previous_failing = False  # for newly_failed: the check's previous result
    fresh_flagged = False
    cron = int(c.retrain.split(":")[1]) if c.retrain.startswith("cron:") else None
    for day in days:
        s = models.scores(W, H, champion, day)
        served[day] = champion
        y = hist[day].y
        ys.append(y)
        ss.append(s)
        daily.append(metric_value(metric, y, s))
        age = clock.age(day)  # days since the model was trained, on the replay's clock
        cause = None
        if cron:
            cause = "cron" if age >= cron - SLACK else None
        elif c.retrain == "triggers":
            judged = _performance(spec, models, c, served, champion, promoted_at, day - timedelta(days=delay), reference)
            failing_now = judged is True
            if c.retrain_when == "never":
                trigger = None
            elif c.retrain_when == "failing":
                failing = failing_now or verdict_before
                verdict_before = failing_now
                trigger = "performance" if failing else None
            else:
                if failing_now and not previous_failing:
                    pending = pending or "performance"
                trigger = None
            previous_failing = failing_now  # a verdict not judged is not failing (Dagster skips the check)
            if c.model_days and age >= c.model_days and not fresh_flagged:
                pending, fresh_flagged = pending or "freshness", True
            trigger = trigger or pending
            cause = trigger if trigger and age >= c.cooldown_days - SLACK else None
        if cause is not None and c.budget_days and retrains + 1 > math.floor((day - bootstrap).days / c.budget_days):
            cause = None  # the budget is spent: the trigger waits, as in the cooldown
        if cause is None:
            continue
        challenger = day if models.trainable(W, H, day) else None
        if challenger is None:  # the training set refused its window: nothing trained, the trigger stays
            failed += 1
            continue
        retrains += 1
        causes[cause] = causes.get(cause, 0) + 1
        retrain_days.append(day.isoformat())
        pending, verdict_before, fresh_flagged = None, False, False
        clock.trained(day)
        if _gate(spec, models, c, challenger, champion):
            champion, promoted_at, promotions = challenger, day, promotions + 1
            promotion_days.append(day.isoformat())
            reference = _holdout_metric(spec, models, W, H, champion, champion)
    y_all, s_all = np.concatenate(ys), np.concatenate(ss)
    pooled = metric_value(metric, y_all, s_all)
    return (
        Outcome(c, pooled, retrains, promotions, causes, retrain_days, daily, failed_fits=failed, promotion_days=promotion_days),
        Scored(ys, ss),
    )


SLACK = 1 / 24  # the cooldown's and cron's hour of slack (policies.retrain_condition)


class _Clock:
    """How old the model is at a day's first automation tick, as the replay's clock measures it:
    files land at 00:30 local after their day, the tick runs 5 minutes later, the first model is
    trained 2 minutes after its day's file lands and a retrain 7 minutes after (after the tick and
    the day's scoring run). In real time, so a change of daylight saving time between two days makes
    them 23 or 25 hours apart, as it does for the platform's freshness and cooldown."""

    TICK, FIRST_MODEL, RETRAIN = 5, 2, 7  # minutes after the file lands (mlops_assets.replay)

    def __init__(self, timezone: str, bootstrap: date):
        from zoneinfo import ZoneInfo

        self._tz = ZoneInfo(timezone)
        self._at = self._landed(bootstrap) + timedelta(minutes=self.FIRST_MODEL)

    def _landed(self, day: date):
        from datetime import UTC, datetime, time

        return datetime.combine(day + timedelta(days=1), time(0, 30), self._tz).astimezone(UTC)

    def trained(self, day: date) -> None:
        self._at = self._landed(day) + timedelta(minutes=self.RETRAIN)

    def age(self, day: date) -> float:
        return ((self._landed(day) + timedelta(minutes=self.TICK)) - self._at).total_seconds() / 86400


def _holdout_rows(models: Models, W: int, H: int, as_of: date) -> tuple[np.ndarray, list[date]]:
    days = models.holdout(W, H, as_of)
    return np.concatenate([models.history.days[d].y for d in days]), days


def _holdout_metric(spec: ModelSpec, models: Models, W: int, H: int, model: date, as_of: date) -> float:
    y, days = _holdout_rows(models, W, H, as_of)
    s = np.concatenate([models.scores(W, H, model, d) for d in days])
    return metric_value(spec.promotion.metric, y, s)


def _gate(spec: ModelSpec, models: Models, c: Candidate, challenger: date, champion: date) -> bool:
    """``promotion_<spec>``'s decision, on the challenger's holdout (rows in time order)."""
    from mlops_assets.core.promotion import decide

    W, H = c.window_days, c.holdout_days
    y, days = _holdout_rows(models, W, H, challenger)
    new = np.concatenate([models.scores(W, H, challenger, d) for d in days])
    old = np.concatenate([models.scores(W, H, champion, d) for d in days])
    metric = spec.promotion.metric
    new_score = metric_value(metric, y, new)
    if c.confidence is not None and not math.isnan(new_score):
        from mlops_assets.core.evidence import compare

        return compare(metric, y, new, old, margin=spec.promotion.margin, confidence=c.confidence).convincing
    old_score = metric_value(metric, y, old)
    return decide(new_score, old_score, margin=spec.promotion.margin, higher_is_better=spec.higher_is_better).promote


def _performance(
    spec: ModelSpec,
    models: Models,
    c: Candidate,
    served: dict[date, date],
    champion: date,
    promoted_at: date,
    newest: date,
    reference: float,
) -> bool | None:
    """The performance check's verdict on the newest labelled day: True failing, False passing, None
    not judged (too few rows the champion served, or an undefined metric)."""
    days = [newest - timedelta(days=k) for k in range(c.performance_window - 1, -1, -1)]
    mine = [d for d in days if d > promoted_at and served.get(d) == champion]
    if not mine:
        return None
    y = np.concatenate([models.history.days[d].y for d in mine])
    if len(y) < spec.policies.performance.min_rows:
        return None
    s = np.concatenate([models.scores(c.window_days, c.holdout_days, champion, d) for d in mine])
    realised = metric_value(spec.promotion.metric, y, s)
    if math.isnan(realised):
        return None
    drop = (reference - realised) if spec.higher_is_better else (realised - reference)
    return bool(drop > (c.tolerated_drop * abs(reference) if c.relative else c.tolerated_drop))


def neighbours(candidate: Candidate, grid: dict[str, list]) -> list[Candidate]:
    """The candidates one grid step away in one setting (same kind of policy)."""
    out = []
    for name, values in grid.items():
        current = getattr(candidate, name)
        if current not in values:
            continue
        i = values.index(current)
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                out.append(replace(candidate, **{name: values[j]}))
    return out
