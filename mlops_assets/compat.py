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

``redis_connection`` (Feast, tested in ``test_storage``): the platform counts a project's rows in
Feast's Redis online store with its own client, which must read ``MLOPS_REDIS`` exactly as Feast
does (``password``, ``ssl``, ``ssl_ca_certs`` for Memorystore's CA, ``db``, timeouts), so it uses
Feast's parser of the connection string.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
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
