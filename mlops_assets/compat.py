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

``redis_connection`` (Feast, tested in ``test_storage``): the platform counts a project's rows in
Feast's Redis online store with its own client, which must read ``MLOPS_REDIS`` exactly as Feast
does (``password``, ``ssl``, ``ssl_ca_certs`` for Memorystore's CA, ``db``, timeouts), so it uses
Feast's parser of the connection string.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any


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
            self._ephemeral[key] = (
                job,
                job.as_ephemeral_job(resource_defs={}, input_values={}, asset_selection=selection or None),
            )
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


def frozen_dagster_clock(at: datetime):
    """A context in which Dagster's clock reads ``at`` (aware): how a replay evaluates a sensor or
    executes a run at a simulated moment (``dagster._core.test_utils.freeze_time``)."""
    from dagster._core.test_utils import freeze_time

    return freeze_time(at)
