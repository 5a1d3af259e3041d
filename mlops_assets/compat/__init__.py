"""The one place that leans on another library's internals, each with a test.

``register_object_store_with_duckdb`` (ibis, tested in ``test_storage``): Feast's DuckDB offline
store reads a ``FileSource`` with ``ibis.read_parquet``, on ibis's default DuckDB connection. For an
``s3://`` path ibis first installs DuckDB's httpfs extension, a download this platform cannot rely
on (air-gapped clusters, CI without internet), and httpfs would need its own copy of the
credentials. DuckDB can instead read any path through a registered fsspec filesystem: the same
s3fs/gcsfs objects the rest of the platform writes with. So the default connection gets those
filesystems, and ibis's httpfs step is skipped for the protocols they serve.

``process_executor_config`` (Dagster, tested in ``test_k8s_profile``): the ``k8s`` profile's executor
imports dagster-k8s only when a run creates it, and then hands dagster-k8s's executor the config
Dagster itself would have made of the profile's config: env references read, defaults filled in.

``dagster_now`` (Dagster, tested in ``test_serving``): the time of Dagster's clock. It is the wall
clock in production, and the simulated moment in a replay, which freezes Dagster's clock at each
simulated step (run and event timestamps, freshness, cooldowns). Decisions taken inside runs and
sensors (when a canary started, whether it is due) read it, so they live on the same clock as
everything else Dagster records.

``InProcessJobs`` (Dagster, tested in ``test_replay``): ``JobDefinition.execute_in_process`` for a
process that executes the same jobs thousands of times (a replay). Dagster builds a new ephemeral
copy of the job (in-process executor, asset subset) for every call, so its snapshot, config schema
and subset are computed again for every run; this keeps one copy per job and asset selection and
executes runs exactly as ``execute_in_process`` does otherwise.

``frozen_dagster_clock`` (Dagster, tested in ``test_replay_canary``): Dagster's clock frozen at a
simulated moment, for the replay's canary traffic, which ticks the ``canary_<spec>`` sensor at the
hours of simulated traffic it sends.

``evaluate_automation`` (Dagster, tested in ``test_replay``): ``dg.evaluate_automation_conditions``
without the JSON round trip of a cursor that grows with every replayed day.

``held_connection_instance`` (Dagster, in ``compat.instance``, tested in ``test_replay`` and
``test_compat``): the replay's in-memory Dagster instance, built as ``DagsterInstance.ephemeral()`` is
but with storages that hold one SQLite connection (subclasses of Dagster's in-memory run and
event-log storages), an event log that leaves out the step and engine events nothing reads once a
replay ends, and keeps the answers to the queries every run repeats until what they read changes.

``latest_check_failure`` (Dagster, tested in ``test_automation``): when the newest execution of an
asset check failed, read from the event log's check-execution records (the automation conditions of
``mlops_assets.policies`` need one check of an asset, which Dagster's public conditions cannot
single out).

``QUEUED_RUN_COORDINATOR`` (Dagster, tested in ``test_cloud_profiles`` and ``test_compat``): the module
and class the cloud profiles' ``dagster.yaml`` names for the queued run coordinator; Dagster documents
no public module path for it.

``redis_connection`` (Feast, tested in ``test_storage``): the platform counts a project's rows in
Feast's Redis online store with its own client, which must read ``MLOPS_REDIS`` exactly as Feast
does (``password``, ``ssl``, ``ssl_ca_certs`` for Memorystore's CA, ``db``, timeouts), so it uses
Feast's parser of the connection string.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from mlops_assets.compat.instance import held_connection_instance as held_connection_instance

QUEUED_RUN_COORDINATOR = ("dagster._core.run_coordinator", "QueuedRunCoordinator")

# Every private name of another library this module uses: (module, attribute). ``missing_private_apis``
# checks them all at once, so a library upgrade that moves one fails a test that names it, not a
# replay an hour in.
PRIVATE_APIS = (
    ("dagster._config", "process_config"),
    ("dagster._core.errors", "DagsterInvalidConfigError"),
    ("dagster._time", "get_current_datetime"),
    ("dagster._core.definitions.job_base", "InMemoryJob"),
    ("dagster._core.execution.execute_in_process", "core_execute_in_process"),
    ("dagster._core.execution.execute_in_process", "merge_run_tags"),
    ("dagster._core.test_utils", "get_freezable_log_manager"),
    ("dagster._time", "_mockable_get_current_datetime"),
    ("dagster._time", "_mockable_get_current_timestamp"),
    ("dagster._core.log_manager", "DagsterLogManager"),
    ("dagster._core.instance.types", "InstanceType"),
    ("dagster._core.launcher.sync_in_memory_run_launcher", "SyncInMemoryRunLauncher"),
    ("dagster._core.run_coordinator", "DefaultRunCoordinator"),
    QUEUED_RUN_COORDINATOR,
    ("dagster._core.storage.event_log", "InMemoryEventLogStorage"),
    ("dagster._core.storage.noop_compute_log_manager", "NoOpComputeLogManager"),
    ("dagster._core.storage.root", "TemporaryLocalArtifactStorage"),
    ("dagster._core.storage.runs", "InMemoryRunStorage"),
    ("dagster._core.storage.asset_check_execution_record", "AssetCheckExecutionRecordStatus"),
    ("dagster._core.events", "DagsterEventType"),
    # what evaluate_automation calls: evaluate_automation_conditions' own steps
    ("dagster._core.definitions.asset_daemon_cursor", "AssetDaemonCursor"),
    ("dagster._core.definitions.declarative_automation.automation_condition_evaluator", "AutomationConditionEvaluator"),
    ("dagster._core.definitions.declarative_automation.automation_condition_tester", "EvaluateAutomationConditionsResult"),
    ("dagster._core.definitions.partitions.context", "partition_loading_context"),
    # what held_connection_instance overrides (a method gone from Dagster would leave ours unused)
    *(
        ("dagster._core.storage.event_log", f"InMemoryEventLogStorage.{m}")
        for m in (
            "_connect",
            "has_table",
            "has_asset_key_col",
            "_has_asset_key_col_on_connection",
            "fetch_materializations",
            "delete_events",
            "wipe",
            "wipe_asset",
            "wipe_asset_partitions",
            "update_event_log_record",
        )
    ),
    *(
        ("dagster._core.storage.runs", f"InMemoryRunStorage.{m}")
        for m in (
            "connect",
            "has_run_stats_index_cols",
            "has_bulk_actions_selector_cols",
            "has_backfill_id_column",
            "has_bulk_action_job_name_column",
            "has_backfill_tags_table",
        )
    ),
    ("dagster._core.storage.defs_state.base", "set_defs_state_storage"),
    ("ibis.backends.duckdb", "Backend._load_extensions"),
    ("feast.infra.online_stores.redis", "RedisOnlineStore._parse_connection_string"),
)


def missing_private_apis() -> list[str]:
    """The entries of ``PRIVATE_APIS`` the installed libraries no longer have (``module.name``)."""
    missing = []
    for module, path in PRIVATE_APIS:
        try:
            found: Any = importlib.import_module(module)
            for part in path.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{path}")
    return missing


@functools.cache
def register_object_store_with_duckdb(protocol: str) -> bool:
    """Register the fsspec filesystem of ``protocol`` (``s3`` or ``gs``) with ibis's default DuckDB
    connection, once per process. No connection is made here: fsspec filesystems connect on first
    use. Returns False when the default backend is not DuckDB."""
    import ibis

    from mlops_assets import files

    backend = ibis.get_backend()
    if backend.name != "duckdb":
        return False
    backend.register_filesystem(files.filesystem(f"{protocol}://")[0])  # the platform's own object
    if not getattr(backend, "_mlops_fsspec", False):
        load = backend._load_extensions  # private: ibis 12's hook that installs httpfs for s3:// paths

        def load_extensions(extensions, force_install=False):
            wanted = [e for e in extensions if e != "httpfs"]  # registered filesystems serve those paths
            if wanted:
                load(wanted, force_install=force_install)

        backend._load_extensions = load_extensions
        backend._mlops_fsspec = True
    return True


def process_executor_config(executor_def: Any, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked against ``executor_def``'s config schema and processed as Dagster processes
    an executor's run config: ``{"env": VAR}`` values read from the environment now, defaults filled
    in. The same processing as ``executor_def.configured(config)`` gets when a run resolves its config
    (``ConfiguredDefinitionConfigSchema.resolve_config``). Raises ``DagsterInvalidConfigError``
    when the config does not fit the schema (e.g. a referenced variable is unset)."""
    from dagster._config import process_config  # private: Dagster's own config processing
    from dagster._core.errors import DagsterInvalidConfigError

    result = process_config(executor_def.config_schema.config_type, config)
    if not result.success:
        raise DagsterInvalidConfigError(
            f"Invalid configuration provided for executor '{executor_def.name}'", result.errors, config
        )
    return dict(result.value)


def redis_connection(connection_string: str) -> tuple[str, int, dict[str, Any]]:
    """Host, port and the redis-py keyword arguments Feast's Redis online store makes of a
    ``host:port[,key=value...]`` connection string (values JSON-decoded, as Feast does)."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, options = RedisOnlineStore._parse_connection_string(connection_string)
    return nodes[0]["host"], int(nodes[0]["port"]), dict(options)


def dagster_now() -> datetime:
    """Dagster's current time (timezone-aware UTC): the wall clock, or a replay's simulated moment."""
    from dagster._time import get_current_datetime

    return get_current_datetime()


class InProcessJobs:
    """``execute_in_process`` with each job's ephemeral in-process copy built once per asset selection.

    Building it (``as_ephemeral_job``: the asset subset, then its snapshot id and run config schema
    when the run is created) cost ~3 % of a replay of 120 Elec2 days, where a few distinct jobs and
    selections run ~7 times a day."""

    def __init__(self) -> None:
        self._ephemeral: dict[tuple[int, frozenset], tuple[Any, Any]] = {}

    def execute(
        self,
        job: Any,
        *,
        instance: Any,
        run_config: Mapping[str, Any],
        partition_key: str | None = None,
        asset_selection: Sequence[Any] | None = None,
        tags: Mapping[str, str] | None = None,
        raise_on_error: bool = True,
    ) -> Any:
        """What ``job.execute_in_process(instance=…, run_config=…, partition_key=…, asset_selection=…,
        tags=…, raise_on_error=…)`` does, on the kept ephemeral copy."""
        from dagster._core.definitions.job_base import InMemoryJob  # private: execute_in_process's own steps
        from dagster._core.execution.execute_in_process import core_execute_in_process, merge_run_tags

        selection = list(asset_selection or [])
        key = (id(job), frozenset(selection))
        if key not in self._ephemeral:  # the job is kept beside its copy, so its id is not reused
            ephemeral = job.as_ephemeral_job(resource_defs={}, input_values={}, asset_selection=selection or None)
            if selection:
                _subset_once(ephemeral, frozenset(selection))
            self._ephemeral[key] = (job, ephemeral)
        ephemeral = self._ephemeral[key][1]
        return core_execute_in_process(
            job=InMemoryJob(job_def=ephemeral),
            run_config=run_config,
            instance=instance,
            output_capturing_enabled=True,
            raise_on_error=raise_on_error,
            run_tags=merge_run_tags(  # validates the partition key too
                job_def=job,
                partition_key=partition_key,
                tags=tags,
                asset_selection=selection,
                instance=instance,
                run_config=run_config,
            ),
            run_id=None,
            asset_selection=frozenset(selection),
        )


def _subset_once(ephemeral: Any, selection: frozenset) -> None:
    """Make the ephemeral copy answer ``get_subset`` of its own selection with one subset, built once.

    Creating a run subsets the job it is given by the run's asset selection again
    (``create_run_for_job``), to snapshot it: a new job each run, whose snapshot and snapshot id were
    computed anew every time (1.7 % of a replay of the 944 Elec2 days, py-spy). The subset is the
    same job each time, so it is kept; any other selection is built as before."""
    build = ephemeral.get_subset
    kept: dict[type, Any] = {}  # by the selection's type: a set and a frozenset snapshot apart

    def get_subset(*, op_selection=None, asset_selection=None, asset_check_selection=None):
        if op_selection or asset_check_selection is not None or frozenset(asset_selection or ()) != selection:
            return build(op_selection=op_selection, asset_selection=asset_selection, asset_check_selection=asset_check_selection)
        kind = type(asset_selection)
        if kind not in kept:
            kept[kind] = build(asset_selection=asset_selection)
        return kept[kind]

    ephemeral.get_subset = get_subset


def evaluate_automation(defs: Any, instance: Any, cursor: Any, evaluation_time: datetime) -> Any:
    """What ``dg.evaluate_automation_conditions(defs=…, instance=…, cursor=…, evaluation_time=…)``
    does, without its JSON round trip of the cursor.

    The round trip stands for the daemon storing the cursor between ticks and reading it back. A
    replay keeps the cursor object from one tick to the next instead (it is immutable), and the
    round trip of a cursor that grows with every evaluated partition took 2.6 % of a replay of 181
    Elec2 days (py-spy), more as the days add up. The evaluation itself is the daemon's evaluator,
    over the same entities (every asset and check with a condition, and conditioned jobs)."""
    import logging
    import warnings

    import dagster as dg
    from dagster._core.definitions.asset_daemon_cursor import AssetDaemonCursor
    from dagster._core.definitions.declarative_automation.automation_condition_evaluator import (
        AutomationConditionEvaluator,
    )
    from dagster._core.definitions.declarative_automation.automation_condition_tester import (
        EvaluateAutomationConditionsResult,
    )
    from dagster._core.definitions.partitions.context import partition_loading_context

    graph = defs.resolve_asset_graph()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # the evaluator selects source assets too (beta)
        selection = dg.AssetSelection.all(include_sources=True) | dg.AssetSelection.all_asset_checks()
    entities = {
        key
        for key in selection.resolve(graph) | selection.resolve_checks(graph)
        if graph.get(key).automation_condition is not None
    } | graph.automatable_asset_job_keys
    cursor = cursor or AssetDaemonCursor.empty()
    evaluator = AutomationConditionEvaluator(
        asset_graph=graph,
        instance=instance,
        entity_keys=entities,
        evaluation_time=evaluation_time,
        emit_backfills=False,
        logger=logging.getLogger("dagster.automation_condition_tester"),
        cursor=cursor,
        evaluation_id=cursor.evaluation_id,
    )
    results, requested = evaluator.evaluate()
    with partition_loading_context(effective_dt=evaluation_time, dynamic_partitions_store=instance) as ctx:
        new_cursor = cursor.with_updates(
            evaluation_timestamp=evaluation_time.timestamp(),
            newly_observe_requested_asset_keys=[],
            evaluation_id=cursor.evaluation_id + 1,
            condition_cursors=[result.get_new_cursor() for result in results],
            asset_graph=graph,
        )
        return EvaluateAutomationConditionsResult(
            cursor=new_cursor, requested_subsets=requested, results=results, partition_loading_context=ctx
        )


def latest_check_failure(instance: Any, check_key: Any) -> float | None:
    """When the newest execution of ``check_key`` failed: its evaluation event's own time (simulated
    in a replay), else the record's; None when it passed, is still running or never ran."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key]).get(check_key)
    if record is None or record.status != AssetCheckExecutionRecordStatus.FAILED:
        return None
    return record.event.timestamp if record.event is not None else record.create_timestamp


@contextmanager
def frozen_dagster_clock(at: datetime) -> Iterator[None]:
    """A context in which Dagster's clock reads ``at`` (aware): how a replay evaluates a sensor or
    executes a run at a simulated moment.

    The same three patches as ``dagster._core.test_utils.freeze_time`` (the datetime, the timestamp
    and the log manager that stamps records with them), with plain functions where it installs
    MagicMocks: Dagster reads its clock thousands of times a replayed day, and a mock's call
    bookkeeping was 1 % of a replay (py-spy, 181 Elec2 days)."""
    from unittest import mock

    timestamp = at.timestamp()
    with (
        mock.patch("dagster._time._mockable_get_current_datetime", new=lambda: at),
        mock.patch("dagster._time._mockable_get_current_timestamp", new=lambda: timestamp),
        mock.patch("dagster._core.log_manager.DagsterLogManager", new=_freezable_log_manager()),
    ):
        yield


@functools.cache
def _freezable_log_manager() -> Any:
    from dagster._core.test_utils import get_freezable_log_manager

    return get_freezable_log_manager()


@contextmanager
def definitions_state_of(instance: Any) -> Iterator[None]:
    """Load definitions with ``instance``'s definitions-state storage as the current one.

    Loading a ``Definitions`` (its repository, on first use) asks for the *current* state storage,
    which entering a ``DagsterInstance`` (``with instance:``) sets in a context variable and leaving it
    restores. In a process that has entered and left other instances (a test session, a notebook
    that replays), that variable can still name the storage of an instance that is gone, and the load
    fails with "Attempted to resolve undefined DagsterInstance weakref" (seen in the suite). A replay
    and the test platform load their definitions once, under the instance they run on."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(instance.defs_state_storage):
        yield
