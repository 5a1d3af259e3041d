"""The pipeline's metrics for Prometheus, read from the Dagster instance: the loop, not only the endpoint.

The model servers say what they serve and how it goes (``server.metrics``); this exporter says what
the platform decided around them, per spec (label ``spec``): the drifted share of the newest scored
day, the latest result of every asset check, models trained, promotion gate decisions, the
champion's age against the spec's freshness limit, canary rollbacks and failed runs. It reads the
same Dagster instance as the code location (``DagsterInstance.get()``: ``DAGSTER_HOME``'s
dagster.yaml, SQLite locally and PostgreSQL on the clouds) and the specs it loads
(``specs.load_specs``: the bundled ones and ``MLOPS_SPECS``).

``mlops exporter --host 127.0.0.1 --port 9464`` serves ``/metrics`` until SIGTERM or SIGINT. A read
costs a few queries per spec, and at most one read runs every ``cache_seconds`` however many
Prometheus servers scrape. Counters (retrains, gate decisions, endpoint actions, failed runs) are
totals over the instance's whole history: the first read pages through it, later reads fetch only
records after the last one seen. When the instance cannot be read, a scrape answers only the
exporter's own health (``mlops_pipeline_up`` 0), never numbers from an older read posing as current.

What each record means (judged or not, promoted or rejected, whose run) is decided in
``core.pipeline_metrics``; this module only queries and hands the records over.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg

from mlops_assets.common import STAGE_VERSIONS, check_evaluation, key
from mlops_assets.core.names import asset_name
from mlops_assets.core.pipeline_metrics import (
    DRIFT_SOURCES,
    PREFIX,
    CheckFacts,
    CheckReading,
    Reading,
    SpecFacts,
    Totals,
    check_state,
    drift_share,
    families,
    spec_of_run,
)
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("mlops_assets.exporter")

DEFAULT_PORT = 9464
DEFAULT_CACHE_SECONDS = 10.0
PAGE = 500  # records per query while catching up with the event log
DRIFT_LOOKBACK = 30  # newest drift-check results searched for the one of the newest scored partition


def _plain(metadata: dict[str, Any]) -> dict[str, Any]:
    """Dagster metadata values as the plain values they wrap."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def spec_facts(specs: list[ModelSpec]) -> list[SpecFacts]:
    """Checks and jobs of each spec as the code location defines them (the same factory), so an
    asset check that never ran is still reported, as not judged."""
    from mlops_assets.factory import build_definitions

    defs = build_definitions(specs)
    checks: dict[str, list[CheckFacts]] = {s.name: [] for s in specs}
    for assets_def in defs.assets or []:
        for check_spec in assets_def.check_specs:
            asset_spec = next(s for s in assets_def.specs if s.key == check_spec.asset_key)
            spec = asset_spec.tags.get("mlops/spec") or asset_spec.group_name
            checks[spec].append(CheckFacts(check_spec.asset_key.to_user_string(), check_spec.name, check_spec.blocking))
    jobs: dict[str, list[str]] = {s.name: [] for s in specs}
    for job in defs.jobs or []:
        jobs[job.tags["mlops/spec"]].append(job.name)
    return [
        SpecFacts(
            name=s.name,
            spec_hash=s.spec_hash,
            target=s.deployment.target if s.deployment else "none",
            retrain=s.policies.retrain,
            drift_share_limit=s.policies.drift.drift_share,
            freshness_seconds=freshness_seconds(s),
            jobs=tuple(jobs[s.name]),
            checks=tuple(checks[s.name]),
        )
        for s in specs
    ]


def freshness_seconds(spec: ModelSpec) -> dict[str, float]:
    """The fail window of each stage's freshness policy, in seconds (stages without one left out):
    read from ``policies.freshness_policy``, the one place they are decided, so the alert on an
    asset's age follows whatever the UI flags (``online_lookups`` included)."""
    from mlops_assets import policies
    from mlops_assets.common import STAGE_VERSIONS

    limits = {stage: policies.freshness_policy(stage, spec) for stage in STAGE_VERSIONS}
    return {stage: p.fail_window.to_timedelta().total_seconds() for stage, p in limits.items() if p is not None}


class PipelineCollector:
    """A prometheus_client collector of the pipeline metrics (``core.pipeline_metrics.families``)
    plus its own health: ``mlops_pipeline_up``, read duration, last success, read errors."""

    def __init__(
        self,
        specs: list[ModelSpec] | None = None,
        *,
        instance: dg.DagsterInstance | None = None,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        from mlops_assets.specs import load_specs

        self.specs = load_specs() if specs is None else specs
        self.facts = spec_facts(self.specs)
        # asset and job name -> spec, for runs that carry no spec tag
        self._owners = {asset_name(stage, s): s.name for s in self.specs for stage in STAGE_VERSIONS}
        self._owners |= {job: f.name for f in self.facts for job in f.jobs}
        self._instance = instance
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._totals = Totals()
        self._cursors: dict[dg.AssetKey, int | None] = {}
        self._failed_since = None  # update time of the newest failed run seen
        self._metrics: list[Metric] | None = None
        self._read_at = float("-inf")
        self._up = 0
        self._duration = 0.0
        self._last_success: float | None = None
        self._errors = 0

    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.get()
        return self._instance

    def describe(self) -> list:
        return []  # registering the collector must not read the instance

    def collect(self) -> list[Metric]:
        with self._lock:  # one read at a time, however many scrapes arrive together
            if self._metrics is None or self._clock() - self._read_at >= self.cache_seconds:
                self._refresh()
            return list(self._metrics or [])

    def refresh(self) -> None:
        """Read the instance now, whatever the cache says (``serve`` does before it opens its port)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        started, now = time.perf_counter(), self._clock()
        pipeline: list[Metric] = []
        try:
            reading = self._read()
            for f in families(self.facts, self._totals, reading, now):
                cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
                metric = cls(f.name, f.help, labels=list(f.labels))
                for values, value in f.samples:
                    metric.add_metric(list(values), value)
                pipeline.append(metric)
            self._up, self._last_success = 1, now
        except Exception:  # whatever failed (database down, a changed schema), the scrape reports it and the log says why
            log.exception("reading the Dagster instance failed")
            self._up, self._errors = 0, self._errors + 1
        self._duration = time.perf_counter() - started
        self._read_at = now
        self._metrics = [*self._health(), *pipeline]

    def _health(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(f"{PREFIX}up", "1 when the last read of the Dagster instance succeeded.", value=self._up)
        yield GaugeMetricFamily(
            f"{PREFIX}read_duration_seconds", "Time the last read of the Dagster instance took.", value=self._duration
        )
        if self._last_success is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}last_success_timestamp_seconds",
                "When the Dagster instance was last read successfully (Unix time).",
                value=self._last_success,
            )
        yield CounterMetricFamily(f"{PREFIX}read_errors", "Reads of the Dagster instance that failed.", value=self._errors)

    # --- reading the instance ---------------------------------------------------------------

    def _read(self) -> Reading:
        reading = Reading()
        instance = self.instance
        for spec in self.specs:
            self._count_materializations(spec)
            self._read_drift(spec, reading)
        stage_keys = {key(stage, s): (s.name, stage) for s in self.specs for stage in STAGE_VERSIONS}
        for asset_key, entry in instance.get_latest_materialization_events(list(stage_keys)).items():
            if entry is not None:
                reading.materialized_at[stage_keys[asset_key]] = entry.timestamp
        reading.checks = self._read_checks()
        self._count_failed_runs()
        return reading

    def _new_materializations(self, asset_key: dg.AssetKey) -> Iterator[tuple[float, dict[str, Any]]]:
        """Materializations of ``asset_key`` not seen before, oldest first: (timestamp, metadata)."""
        while True:
            result = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=asset_key, after_storage_id=self._cursors.get(asset_key)),
                limit=PAGE,
                ascending=True,
            )
            for record in result.records:
                materialization = record.asset_materialization
                yield record.timestamp, _plain(dict(materialization.metadata) if materialization else {})
                self._cursors[asset_key] = record.storage_id
            if not result.has_more or not result.records:
                return

    def _count_materializations(self, spec: ModelSpec) -> None:
        totals, name = self._totals, spec.name
        for when, meta in self._new_materializations(key("model", spec)):
            totals.model_materialized(name, meta.get("model_version"), when)
        for when, meta in self._new_materializations(key("champion", spec)):
            totals.gate_decided(name, str(meta.get("decision", "")), meta.get("champion_version"), when)
        if spec.deployment is not None:
            for when, meta in self._new_materializations(key("endpoint", spec)):
                totals.endpoint_acted(name, str(meta.get("action", "")), meta.get("stable_version"), when)

    def _read_drift(self, spec: ModelSpec, reading: Reading) -> None:
        """The drifted share measured on the newest scored partition, per source (the day's events;
        what the endpoint served, for specs with a deployment). A check result names the
        materialization it judged (not its partition): the newest partition's latest one."""
        predictions = key("predictions", spec)
        partitions = self.instance.get_materialized_partitions(predictions)
        if not partitions:
            return
        newest = max(partitions)  # daily keys (YYYY-MM-DD) sort as dates
        reading.drift_partition[spec.name] = newest
        latest = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=predictions, asset_partitions=[newest]), limit=1
        ).records
        if not latest:
            return
        scored = latest[0]
        for source, check in DRIFT_SOURCES.items():
            if source == "served" and spec.deployment is None:
                continue
            history = self.instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(predictions, check), limit=DRIFT_LOOKBACK
            )
            for record in history:
                evaluation = check_evaluation(record)
                if evaluation is None:
                    continue
                target = evaluation.target_materialization_data
                if (target.storage_id == scored.storage_id) if target is not None else (record.run_id == scored.run_id):
                    share = drift_share(_plain(dict(evaluation.metadata)))
                    if share is not None:
                        reading.drift[(spec.name, source)] = share
                    break

    def _read_checks(self) -> list[CheckReading]:
        check_keys = {
            dg.AssetCheckKey(dg.AssetKey.from_user_string(c.asset), c.check): (f.name, c) for f in self.facts for c in f.checks
        }
        latest = self.instance.event_log_storage.get_latest_asset_check_execution_by_key(list(check_keys))
        out = []
        for check_key, (spec, facts) in check_keys.items():
            record = latest.get(check_key)
            evaluation = check_evaluation(record)
            status = record.status.value if record is not None else None
            run_finished = True
            if status == "PLANNED":
                run = self.instance.get_run_by_id(record.run_id)
                run_finished = run is None or run.is_finished
            if evaluation is not None:
                severity = evaluation.severity.value.lower()
                metadata = _plain(dict(evaluation.metadata))
                state = check_state(
                    status, passed=evaluation.passed, metadata=metadata, run_finished=run_finished, check=facts.check
                )
            else:
                severity = "error" if facts.blocking else "warn"
                state = check_state(status, passed=None, metadata={}, run_finished=run_finished)
            when = (record.event.timestamp if record.event is not None else record.create_timestamp) if record else None
            out.append(CheckReading(spec, facts.asset, facts.check, severity, state, when))
        return out

    def _count_failed_runs(self) -> None:
        """Failed runs not counted yet. Runs fail after they start, so they are found by the time
        they last changed (a second of overlap between reads; each run is counted once)."""
        since = self._failed_since - timedelta(seconds=1) if self._failed_since is not None else None
        records = self.instance.get_run_records(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], updated_after=since),
            order_by="update_timestamp",
            ascending=True,
        )
        for record in records:
            run = record.dagster_run
            assets = [k.to_user_string() for k in run.asset_selection or ()]
            assets += [k.asset_key.to_user_string() for k in run.asset_check_selection or ()]
            spec = spec_of_run(run.job_name, run.tags, assets, self._owners)
            self._totals.run_failed(run.run_id, spec, run.job_name)
            if self._failed_since is None or record.update_timestamp > self._failed_since:
                self._failed_since = record.update_timestamp


def serve(host: str, port: int, *, specs: list[ModelSpec] | None = None, cache_seconds: float = DEFAULT_CACHE_SECONDS) -> None:
    """Serve ``/metrics`` on ``host:port`` until SIGTERM or SIGINT, then return (the process exits 0).

    The instance is read once before the port opens: the first read of a long history pages
    through it, and a scrape should not wait for that."""
    from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server

    collector = PipelineCollector(specs, cache_seconds=cache_seconds)
    collector.refresh()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(collector)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server, thread = start_http_server(port, addr=host, registry=registry)
    print(f"mlops exporter: {len(collector.specs)} spec(s) on http://{host}:{port}/metrics", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    print("mlops exporter: stopped", flush=True)
