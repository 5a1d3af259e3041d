"""Replay: play a dataset day by day through the real platform, and score the retrain policy.

A replay is how a policy is judged before it runs in production. On a fresh home (its own Dagster
instance, lake, Feast store and MLflow registry) it does, for every day of the source, what the
world and the daemon would do:

1. **lands** the day's file in ``landing/<spec>/`` once the day is over (with the target column
   empty when ``target.label_delay_days`` > 0) and lands the file of the day whose labels are now
   known again, complete;
2. **ticks the landing sensor** with its cursor at the simulated time and executes the ingest runs
   it requests;
3. **ticks the automation** (the same evaluator as the ``mlops_automation`` sensor, with its
   cursor) until it requests nothing more, and executes the runs it asks for: scoring runs first,
   then retraining runs, so each day is scored by the model then serving before any model can learn
   from it (prequential evaluation).

Dagster's clock is frozen at each simulated moment, so run and event timestamps, freshness, the
cooldown and cron ages all live in simulated time. The replay keeps the truth aside: the metric of a
day is computed from the predictions served for it when it arrived and the day's real labels.

The ``window_days + holdout_days`` days before the first scored day, and before them the days the
past rates may read (``past_rate_lookback_days``), are the warm-up: ingested the same way, then the
first model is trained with the ``train_<spec>`` job (as CI would); prequential scoring starts after
it.

A spec with a ``local`` deployment gets its endpoint too: the automation materializes it after each
gate, and the local target starts a model server of the replay's home on the spec's port. A replay
stops the servers it started when it ends, also when it fails, and stops a server a killed earlier
replay of the same home left running before it wipes that home: a server left on the port would
answer the next replay's deploys with this home's identity (the same folders) while serving a
registry that no longer exists.

With a canary (``deployment.canary.traffic_percent``), the replay also plays the endpoint's clients
and the ``canary_<spec>`` sensor (``replay_traffic``): while a canary is in progress, each day's
events are sent to the server over HTTP at their own simulated times, the server stamps them on the
replay's clock (a file the replay moves; ``server.clock``), and the sensor ticks at simulated hours,
so a canary is started, judged and promoted or rolled back on the replay's clock. The report lists
the canaries; the metric stays the batch predictions'.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from mlops_assets.policies import (
    CHECK_POLICY,
    TRIGGER_CHECK,
    TRIGGER_CODE_VERSION,
    TRIGGER_CRON,
    TRIGGER_FAILING,
    TRIGGER_FRESHNESS,
)
from mlops_assets.replay_signals import stop_signals

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
CAUSES = {  # the retrain triggers' labels (mlops_assets.policies) -> cause in the report
    TRIGGER_CHECK: "monitoring",
    TRIGGER_FRESHNESS: "freshness",
    TRIGGER_CODE_VERSION: "code_version",
    TRIGGER_CRON: "cron",
}
MAX_TICKS_PER_DAY = 6


@dataclass
class DayRow:
    day: str
    rows: int
    metric: float | None
    model_version: int | None
    retrained: bool = False
    causes: list[str] = field(default_factory=list)
    promoted: bool | None = None
    failed_checks: list[str] = field(default_factory=list)
    canary: list[str] = field(default_factory=list)  # canary decisions this day, simulated time (replay_traffic)


def _why_failed(result, partition: str | None, chatter: str) -> str:
    """A failed run in one line when a blocking check refused its partition (a day of bad data is
    the data's business: the replay goes on, as the platform does); otherwise the first failure and
    the end of what the run printed."""
    refused = [e for e in result.get_asset_check_evaluations() if not e.passed and e.severity.value == "ERROR"]
    if refused:
        why = "; ".join(
            f"{e.check_name} ({', '.join(f'{k}: {v.value}' for k, v in e.metadata.items() if k != 'policy' and v.value != 'none')})"
            for e in refused
        )
        return f"{partition or 'run'} refused by blocking checks: {why}"
    failed = [e.message for e in result.all_events if e.is_failure][:1]
    return f"run {result.run_id} failed: {failed}\n{chatter[-2000:]}"


def apply_policy(spec, policy: str):
    """The spec with its retrain policy replaced (``default`` keeps the spec's own triggers)."""
    policies = spec.policies.model_copy(update={"retrain": policy})
    type(policies).model_validate(policies.model_dump())  # the same validation as a spec file
    return spec.model_copy(update={"policies": policies})


class Replay:
    def __init__(
        self,
        spec,
        home: Path,
        start: date | None = None,
        days: int | None = None,
        progress: bool = True,
        keep_instance: bool = False,
    ):
        import pandas as pd

        from mlops_assets.core.sources import read_table, split_days

        self.spec, self.home, self.progress, self.keep_instance = spec, home, progress, keep_instance
        tr, ts = spec.training, spec.source.timestamp
        source = read_table(spec.source.path, spec.source.format, spec.source.csv.options())
        self.source_days: dict[date, pd.DataFrame] = split_days(source, ts, spec.source.path)
        first = max(min(self.source_days), spec.partitions.start)
        self.start = start or first + timedelta(days=tr.window_days + tr.holdout_days)
        last = (
            max(self.source_days)
            if spec.partitions.end is None
            else min(max(self.source_days), spec.partitions.end - timedelta(days=1))
        )
        self.end = min(last, self.start + timedelta(days=days - 1)) if days else last
        # The warm-up is the first model's training window (+ holdout) before the first scored day,
        # and before it the days the past rates of that window read: a platform running since the
        # first partition has them, and a first model trained on rates from a shorter history learns
        # from values it is never served (the backtest reads them too: core.backtest_data).
        lookback = spec.past_rate_lookback_days
        warm_from = max(first, self.start - timedelta(days=tr.window_days + tr.holdout_days + lookback))
        self.warmup = [warm_from + timedelta(days=i) for i in range((self.start - warm_from).days)]
        if (self.start - first).days < tr.window_days:
            raise ValueError(
                f"replay of '{spec.name}' starts {self.start}: it needs {tr.window_days} days of warm-up from {first}"
            )
        self.timezone = ts.timezone
        self.rows: list[DayRow] = []
        self.truth: list[pd.DataFrame] = []
        self.automation_cursor = None
        self.landing_cursor: str | None = None
        self.pending_causes: set[str] = set()
        self.failing_causes: set[str] = set()
        self._check_signals = lambda: None  # while ``run`` plays: stop on SIGINT/SIGTERM (replay_signals)
        self._setup_platform()
        from mlops_assets.replay_traffic import for_replay

        self.traffic = for_replay(self)  # endpoint traffic and canary ticks, for a spec with a local canary

    # -- the platform -------------------------------------------------------------------------
    def _setup_platform(self) -> None:
        os.environ["MLOPS_HOME"] = str(self.home)
        os.environ["MLOPS_ENV"] = "local"  # a replay is a simulation on this machine, whatever the deployment
        if self.home.exists():
            self.stop_endpoints()  # a server an earlier replay of this home left running (killed replay)
            shutil.rmtree(self.home)  # a replay always starts from nothing
        self.home.mkdir(parents=True)
        from mlops_assets.environments import ensure_dagster_home, resources

        dagster_home = ensure_dagster_home(self.home)
        os.environ["DAGSTER_HOME"] = str(dagster_home)

        import dagster as dg

        from mlops_assets.common import key
        from mlops_assets.compat import InProcessJobs, definitions_state_of, held_connection_instance
        from mlops_assets.core.names import job_name, sensor_name
        from mlops_assets.factory import build_definitions
        from mlops_assets.resources.feast import cached_feature_store

        cached_feature_store.cache_clear()  # this home's Feast registry is new, even at a path seen before
        self.dg = dg
        self.defs = build_definitions([self.spec])
        # In memory by default: the Dagster bookkeeping of a thousand simulated days costs half the
        # replay's time in SQLite. ``keep_instance`` writes it to the home so the UI can open it.
        self.instance = dg.DagsterInstance.from_config(str(dagster_home)) if self.keep_instance else held_connection_instance()
        with definitions_state_of(self.instance):  # loaded once, under this replay's instance
            self.repository = self.defs.get_repository_def()
        self.lake = resources()["lake"]
        self.landing = self.defs.get_sensor_def(sensor_name("landing", self.spec))
        # as the daemon does, a tick builds only the resources the sensor asks for (the lake), not all
        self.landing_resources = {k: self.defs.resources[k] for k in self.landing.required_resource_keys}
        self.ingest_job = self.defs.resolve_job_def(job_name("ingest", self.spec))
        self.train_job = self.defs.resolve_job_def(job_name("train", self.spec))
        self.assets_job = self.defs.resolve_implicit_global_asset_job_def()
        self.key = lambda stage: key(stage, self.spec)
        self.in_process = InProcessJobs()

    def _arrival(self, day: date) -> datetime:
        """When a day's file lands: half an hour after the day ends, in the spec's timezone."""
        from zoneinfo import ZoneInfo

        return datetime.combine(day + timedelta(days=1), datetime.min.time(), ZoneInfo(self.timezone)) + timedelta(minutes=30)

    def _land(self, day: date, labelled: bool) -> None:
        rows = self.source_days[day]
        if not labelled:
            rows = rows.assign(**{self.spec.target.column: ""})  # labels still to come
        self.lake.land(self.spec.name, day.isoformat(), rows)

    def _execute(self, job, at: datetime, **kwargs):
        from mlops_assets.compat import frozen_dagster_clock

        if self.traffic is not None:
            self.traffic.set_clock(at)  # the replay's model server records this run's moment too
        chatter = io.StringIO()  # MLflow prints registry notices to stderr; keep the progress line clean
        with frozen_dagster_clock(at), contextlib.redirect_stderr(chatter):
            run_config = {**QUIET, **kwargs.pop("run_config", {})}
            result = self.in_process.execute(job, instance=self.instance, raise_on_error=False, run_config=run_config, **kwargs)
        self._check_signals()  # a signal during the run: the run ended as Dagster let it; stop here
        if not result.success:
            print(f"\n{self.spec.name}: {_why_failed(result, kwargs.get('partition_key'), chatter.getvalue())}", file=sys.stderr)
        return result

    def _sensor_tick(self, at: datetime) -> None:
        from mlops_assets.compat import frozen_dagster_clock

        dg = self.dg
        with frozen_dagster_clock(at):
            context = dg.build_sensor_context(
                instance=self.instance,
                cursor=self.landing_cursor,
                resources=self.landing_resources,
                sensor_name=self.landing.name,
                repository_def=self.repository,
            )
            data = self.landing.evaluate_tick(context)
        self.landing_cursor = data.cursor
        for i, request in enumerate(data.run_requests or []):
            tags = {**request.tags, "dagster/sensor_name": self.landing.name, "dagster/run_key": request.run_key or ""}
            self._execute(self.ingest_job, at + timedelta(seconds=10 * (i + 1)), partition_key=request.partition_key, tags=tags)

    def _automation_tick(self, at: datetime) -> list[tuple[str | None, list]]:
        """One evaluation of every automation condition; returns the runs it requests, grouped the
        way the daemon groups them (one run per partition key), scoring runs first."""
        from mlops_assets.compat import evaluate_automation, frozen_dagster_clock

        dg = self.dg
        with frozen_dagster_clock(at):
            result = evaluate_automation(self.defs, self.instance, self.automation_cursor, at)
        self._check_signals()
        self.automation_cursor = result.cursor
        for r in result.results:
            if r.key == self.key("training_set"):
                fired = _fired(r)
                # an edge trigger stays pending until the retrain; a level trigger ("… failing")
                # counts only if it holds at the tick that requests the retrain
                self.failing_causes = {label for label in fired if label.endswith(TRIGGER_FAILING)}
                self.pending_causes |= fired - self.failing_causes
        runs: dict[str | None, list] = {}
        for r in result.results:
            if not isinstance(r.key, dg.AssetKey):
                continue
            for partition in result.get_requested_partitions(r.key):
                runs.setdefault(partition, []).append(r.key)
        return sorted(runs.items(), key=lambda item: item[0] is None)  # partitioned (scoring) first

    def close(self) -> list[str]:
        """Give back the traffic and replay clock, the servers it started (returns their specs) and the
        instance's connections (``run`` calls it, also on failure): left to the garbage collector, an
        in-memory SQLite connection can close before its pool rolls it back ("closed database")."""
        if self.traffic is not None:
            self.traffic.close()
        stopped = self.stop_endpoints()  # never leave a server for the next replay to deploy into
        self.instance.dispose()
        return stopped

    def stop_endpoints(self) -> list[str]:
        """Stop the local model servers of this replay's home (started by its endpoint assets);
        the specs whose server was stopped. Only a process that is still such a server is signalled
        (``LocalTarget.stop``)."""
        d = self.spec.deployment
        if d is None or d.target != "local":
            return []
        from mlops_assets.environments import resources

        res = resources()  # the replay's home (MLOPS_HOME)
        target = res["deployer"].target(self.spec, res["mlflow"], res["lake"])
        return [self.spec.name] if target.stop() else []

    # -- one day --------------------------------------------------------------------------------
    def day(self, day: date, scored: bool) -> DayRow | None:
        if self.traffic is not None:
            self.traffic.play(day)  # the day's requests to the endpoint, while a canary is in progress
        delay = self.spec.target.label_delay_days
        at = self._arrival(day)
        self._land(day, labelled=delay == 0)
        released = day - timedelta(days=delay)
        if delay and released in self.source_days and released >= self.warmup[0]:
            self._land(released, labelled=True)
        self._sensor_tick(at)
        row = DayRow(day.isoformat(), len(self.source_days[day]), None, None) if scored else None
        tick_at = at + timedelta(minutes=5)
        for _ in range(MAX_TICKS_PER_DAY):
            runs = self._automation_tick(tick_at)
            if not runs:
                break
            # The daemon ticks again half a minute later. That tick can only act on what these runs
            # changed: a retrain (its gate follows) or a failed check that some condition reads (a
            # monitoring check whose policy retrains on it). Otherwise it would request nothing, and
            # the next tick that matters is tomorrow's.
            follow_up = any(partition is None for partition, _ in runs)
            for n, (partition, keys) in enumerate(runs):
                run_at = tick_at + timedelta(minutes=1 + n)
                tags = {"dagster/from_automation_condition": "true", "mlops/replay": "true"}
                result = self._execute(self.assets_job, run_at, asset_selection=keys, partition_key=partition, tags=tags)
                follow_up = follow_up or any(
                    not e.passed and self._read_by_automation(e.check_name) for e in result.get_asset_check_evaluations()
                )
                if row is not None:
                    self._record(row, day, partition, keys, result)
            if not follow_up:
                break
            tick_at += timedelta(minutes=10)
        if row is not None and self.traffic is not None:
            row.canary = self.traffic.new_decisions()
        return row

    def _read_by_automation(self, check: str) -> bool:
        """Whether an automation condition reads this check: every check but a monitoring check whose
        policy never retrains on it (``retrain_when: never`` builds no trigger from it)."""
        policy = CHECK_POLICY.get(check)
        return policy is None or getattr(self.spec.policies, policy).retrain_when != "never"

    def _record(self, row: DayRow, day: date, partition: str | None, keys: list, result) -> None:
        if partition == day.isoformat() and self.key("predictions") in keys:
            failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
            row.failed_checks = failed
            if row.model_version is None and result.success:  # the first scoring is the one served
                self._score_served(row, day)
        if self.key("model") in keys and result.success:
            row.retrained = True
            row.causes = self._causes()
            self.pending_causes = set()
            gate = self.instance.get_latest_materialization_event(self.key("champion"))
            if gate is not None:
                decision = gate.asset_materialization.metadata.get("decision")
                row.promoted = decision is not None and decision.value == "promoted"

    def _causes(self) -> list[str]:
        causes = set()
        for label in self.pending_causes | self.failing_causes:
            cause = next((c for prefix, c in CAUSES.items() if label.startswith(prefix)), None)
            if cause == "monitoring":  # "check <name> newly failed" / "check <name> failing"
                causes.add(CHECK_POLICY.get(label[len(TRIGGER_CHECK) :].split()[0], "monitoring"))
            elif cause:
                causes.add(cause)
        return sorted(causes)

    def _score_served(self, row: DayRow, day: date) -> None:
        from mlops_assets.core.names import EVENT_ID, LABEL
        from mlops_assets.core.training import metric
        from mlops_assets.core.validation import clean_events

        served = self.lake.read(self.lake.partition_path("predictions", self.spec.name, day.isoformat()))
        truth = clean_events(self.source_days[day].reset_index(drop=True), self.spec, day, f"source {day}")
        joined = served.drop(columns=[LABEL]).merge(truth[[EVENT_ID, LABEL]], on=EVENT_ID)
        row.model_version = int(served["model_version"].iloc[0])
        row.rows = len(joined)
        if len(joined):
            row.metric = metric(joined[LABEL], joined["score"].to_numpy(), self.spec)
            self.truth.append(joined[[LABEL, "score"]])

    # -- the whole replay -----------------------------------------------------------------------
    def run(self, policy: str) -> dict:
        import pandas as pd

        from mlops_assets.core.names import LABEL
        from mlops_assets.core.training import evaluate

        t0 = time.perf_counter()
        try:
            with stop_signals() as self._check_signals:
                self._play(t0)
        finally:
            stopped = self.close()
        if self.progress:
            print(file=sys.stderr)
        pooled = pd.concat(self.truth, ignore_index=True) if self.truth else None
        metric_name = self.spec.promotion.metric
        metric = evaluate(pooled[LABEL], pooled["score"].to_numpy(), self.spec)[metric_name] if pooled is not None else None
        retrains = [r for r in self.rows if r.retrained]
        return {
            "spec": self.spec.name,
            "policy": policy,
            "metric_name": metric_name,
            "metric": metric,
            "retrains": len(retrains),
            "retrain_causes": dict(Counter(c for r in retrains for c in r.causes)),
            "promotions": sum(1 for r in retrains if r.promoted),
            "retrain_days": [r.day for r in retrains],
            "promotion_days": [r.day for r in retrains if r.promoted],
            "days": len(self.rows),
            "scored_rows": len(pooled) if pooled is not None else 0,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "warmup_days": len(self.warmup),
            "label_delay_days": self.spec.target.label_delay_days,
            "seconds": round(time.perf_counter() - t0, 1),
            "home": str(self.home),
            "endpoints_stopped": stopped,
            "canaries": self.traffic.outcomes() if self.traffic is not None else [],
            "traffic": self.traffic.summary() if self.traffic is not None else None,
            "rows": [asdict(r) for r in self.rows],
        }

    def _play(self, t0: float) -> None:
        """The warm-up, the first model, then every replayed day."""
        # What is alive after the first day (the libraries its runs imported: Feast, DuckDB, pandas;
        # the definitions, the instance), and again after the first model (MLflow, scikit-learn),
        # lives for the whole replay: frozen, Python's full collections stop re-scanning it. They
        # took 6 % of 200 replayed Elec2 days (28 collections of 0.35 s; frozen, 58 ms each), and
        # before the first freeze ~8 s of the warm-up (20 collections over the growing heap).
        # A full collection after every ten of the middle generation re-scanned what the days since
        # the last freeze left alive (~70 ms each, 6 % of 60 Elec2 days); after every hundred, it
        # finds the same cycles a little later.
        thresholds = gc.get_threshold()
        gc.set_threshold(thresholds[0], thresholds[1], max(thresholds[2], 100))
        try:
            for n, day in enumerate(self.warmup):
                self.day(day, scored=False)
                if n == 0:
                    gc.collect()
                    gc.freeze()
            bootstrap = self._execute(self.train_job, self._arrival(self.warmup[-1]) + timedelta(minutes=2))
            if not bootstrap.success:
                raise RuntimeError(f"the first model of '{self.spec.name}' could not be trained (run {bootstrap.run_id})")
            days = [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]
            days = [d for d in days if d in self.source_days]
            gc.collect()
            gc.freeze()
            for i, day in enumerate(days, 1):
                row = self.day(day, scored=True)
                self.rows.append(row)
                if self.progress:
                    self._progress(i, len(days), time.perf_counter() - t0)
        finally:
            gc.unfreeze()  # a replay inside a longer-lived process (tests, notebooks) leaves no trace
            gc.set_threshold(*thresholds)

    def _progress(self, i: int, n: int, elapsed: float) -> None:
        done = [r.metric for r in self.rows if r.metric is not None]
        width = 30
        bar = "#" * (width * i // n) + "." * (width - width * i // n)
        retrains = sum(r.retrained for r in self.rows)
        last = f"{done[-1]:.3f}" if done else "-"
        print(
            f"\r{self.spec.name} [{bar}] {i}/{n} days  {self.spec.promotion.metric} today {last}  "
            f"retrains {retrains}  {elapsed / max(i, 1):.2f} s/day",
            end="",
            file=sys.stderr,
            flush=True,
        )


def _fired(result) -> set[str]:
    """Labels of the retrain triggers that are true in this evaluation (the tree the UI shows)."""
    labels = set()
    stack = [result]
    while stack:
        r = stack.pop()
        label = r.condition.get_label()
        if label and any(label.startswith(p) for p in CAUSES) and not r.true_subset.is_empty:
            labels.add(label)
        stack.extend(r.child_results)
    return labels


def replay(
    spec_ref,
    policy: str = "default",
    start: date | None = None,
    days: int | None = None,
    home: Path | None = None,
    progress: bool = True,
    keep_instance: bool = False,
) -> dict:
    """Replay a spec under a policy and return the report (see the module docstring)."""
    from mlops_assets.environments import replay_home
    from mlops_assets.specs import ModelSpec, find_spec

    spec = spec_ref if isinstance(spec_ref, ModelSpec) else find_spec(spec_ref)
    spec = apply_policy(spec, policy)
    home = home or replay_home(spec.name, policy)
    return Replay(spec, Path(home), start, days, progress, keep_instance).run(policy)
