"""Feast: the spec's entities, feature views and feature service, and the calls the assets make.

One Feast project per spec, sharing one registry (a file, an object, or Feast's SQL registry on
PostgreSQL) and one online store (SQLite locally, Redis in the cloud profiles). Offline sources are
folders of month parquet files, local or on an object store, read by Feast's DuckDB offline store
(its Dask store fails on rows whose entity has no feature row; DuckDB keeps them with missing
values), which reads object stores through the platform's own fsspec filesystems (``compat``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field

from mlops_assets.core.names import EVENT_ID, EVENT_TS, EVENTS_VIEW, FEATURE_SERVICE, lookup_view_name
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore


# Feast's online stores, made monotone per entity (``online_stores``; a path, so Feast imports the
# module only when a store is built, not when the code location loads).
MONOTONE_STORES = {
    "sqlite": "mlops_assets.resources.online_stores.MonotoneSqliteOnlineStore",
    "redis": "mlops_assets.resources.online_stores.MonotoneRedisOnlineStore",
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Feast prints coloured progress to stdout and its DuckDB layer warns about an ibis deprecation
    on every query; neither helps in a Dagster run log, where the asset metadata says what happened."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fetch_arrow_table.*", category=DeprecationWarning)
        yield


class FeastFeatureStore(dg.ConfigurableResource):
    """A Feast feature store configured in code (no feature_store.yaml, no repo folder to import)."""

    registry: str = Field(
        description="Feast registry: a file path, an s3:// or gs:// object, or a SQLAlchemy URL "
        "(postgresql+psycopg://…) for Feast's SQL registry."
    )
    online_store_type: Literal["sqlite", "redis"] = Field("sqlite", description="Feast online store.")
    online_store_path: str | None = Field(None, description="SQLite database of the online store (sqlite).")
    redis_connection: str | None = Field(
        None, description="Redis connection string, host:port[,password=…][,ssl=true] (redis; a secret: use dg.EnvVar)."
    )
    offline_store: str = Field("duckdb", description="Feast offline store type.")
    object_store: str | None = Field(
        None, description="Protocol (s3, gs) of the offline sources when they live on an object store (read through fsspec)."
    )

    def online_config(self) -> tuple[tuple[str, str], ...]:
        """Feast's ``online_store`` settings, hashable (one cached store per distinct location).

        The store types are Feast's SQLite and Redis stores made monotone per entity
        (``resources.online_stores``): materializing an older day never overwrites newer values."""
        if self.online_store_type == "redis":
            if not self.redis_connection:
                raise ValueError("the redis online store needs redis_connection (host:port[,password=…])")
            return (("type", MONOTONE_STORES["redis"]), ("connection_string", self.redis_connection))
        if not self.online_store_path:
            raise ValueError("the sqlite online store needs online_store_path")
        return (("type", MONOTONE_STORES["sqlite"]), ("path", self.online_store_path))

    def store(self, spec: ModelSpec) -> FeatureStore:
        """The spec's Feast project. One ``FeatureStore`` per project and location per process:
        building one parses the config and opens the registry (~0.2 s), and a process that runs
        several steps (in-process runs, replays) would pay it on every step."""
        return cached_feature_store(spec.name, self.registry, self.online_config(), self.offline_store, self.object_store)

    # --- definitions ---------------------------------------------------------------------------

    def definitions(self, spec: ModelSpec, features_root: str) -> list[Any]:
        """Feast objects for a spec; each feature view reads ``<features_root>/<view>/*.parquet``
        (``features_root`` a local folder or an object-store URI)."""
        from feast import Entity, FeatureService, FeatureView, FileSource, ValueType
        from feast import Field as FeastField
        from feast.data_format import ParquetFormat
        from feast.types import Float64, String

        from mlops_assets.core.features import row_feature_columns

        def source(table: str) -> FileSource:
            return FileSource(
                name=f"{spec.name}_{table}",
                path=f"{features_root.rstrip('/')}/{table}/*.parquet",
                file_format=ParquetFormat(),
                timestamp_field=EVENT_TS,
            )

        entities = {name: Entity(name=name, join_keys=[name], value_type=ValueType.STRING) for name in spec.entities}
        event = Entity(
            name=EVENT_ID, join_keys=[EVENT_ID], value_type=ValueType.STRING, description="One event (row) of the source."
        )
        cats = set(spec.categorical_features)
        views = []
        row_cols = row_feature_columns(spec)
        if row_cols:
            views.append(
                FeatureView(
                    name=EVENTS_VIEW,
                    entities=[event],
                    ttl=timedelta(days=1),
                    schema=[FeastField(name=c, dtype=String if c in cats else Float64) for c in row_cols],
                    source=source(EVENTS_VIEW),
                    description="Per-event features (calendar parts and columns of the event row).",
                )
            )
        for f in spec.past_rate_features:
            views.append(
                FeatureView(
                    name=f.name,
                    entities=[entities[c] for c in f.by],
                    ttl=timedelta(days=2),
                    schema=[FeastField(name=f.name, dtype=Float64), FeastField(name=f"{f.name}_count", dtype=Float64)],
                    source=source(f.name),
                    description=f"Smoothed mean label per {'+'.join(f.by)} over the {f.window_days} labelled days before the event's day.",
                )
            )
        for tname, table in spec.lookups.items():
            views.append(
                FeatureView(
                    name=lookup_view_name(tname),
                    entities=[entities[table.join_entity]],
                    ttl=timedelta(hours=table.ttl_hours) if table.timestamp else timedelta(0),
                    schema=[FeastField(name=c, dtype=Float64) for c in table.output_columns],
                    source=source(lookup_view_name(tname)),
                    description=f"Lookup table '{tname}' ({table.path}).",
                )
            )
        by_name = {v.name: v for v in views}
        projections = []
        if row_cols:
            projections.append(by_name[EVENTS_VIEW])
        projections += [by_name[f.name][[f.name]] for f in spec.past_rate_features]
        for tname in spec.lookups:
            wanted = [f.source for f in spec.lookup_features if f.table == tname]
            if wanted:
                projections.append(by_name[lookup_view_name(tname)][list(dict.fromkeys(wanted))])
        service = FeatureService(name=FEATURE_SERVICE, features=projections, description=spec.description.strip())
        return [*entities.values(), event, *views, service]

    def apply(self, spec: ModelSpec, features_root: str) -> dict[str, int]:
        objects = self.definitions(spec, features_root)
        self.store(spec).apply(objects)
        kinds: dict[str, int] = {}
        for o in objects:
            kinds[type(o).__name__] = kinds.get(type(o).__name__, 0) + 1
        return kinds

    # --- reads and writes --------------------------------------------------------------------

    def historical_features(self, spec: ModelSpec, entity_df: pd.DataFrame, entity_keyed_only: bool = False) -> pd.DataFrame:
        """Point-in-time join of the feature service onto ``entity_df`` (which must carry
        ``event_id``, ``event_timestamp`` and the entity columns). Rows come back in the input's
        order; lookup features named differently from their column are renamed to the spec's name.

        ``entity_keyed_only``: only the service's views keyed by an entity (past rates, lookups),
        not the per-event view, for a caller that has the events' own rows (batch scoring)."""
        store = self.store(spec)
        service = store.get_feature_service(FEATURE_SERVICE)
        features: Any = service
        if entity_keyed_only:
            features = [
                f"{p.name_to_use()}:{f.name}"
                for p in service.feature_view_projections
                if p.name != EVENTS_VIEW
                for f in p.features
            ]
        with _quiet():
            joined = store.get_historical_features(entity_df=entity_df, features=features).to_df()
        joined = joined.drop_duplicates(EVENT_ID).set_index(EVENT_ID).reindex(entity_df[EVENT_ID]).reset_index()
        renames = {f.source: f.name for f in spec.lookup_features if f.source != f.name}
        return joined.rename(columns=renames)

    def materialize(self, spec: ModelSpec, start: datetime, end: datetime) -> dict[str, int]:
        """Load one window of the feature views serving reads into the online store: those keyed
        by an entity (past rates, lookups). The per-event view is keyed by event id, which no
        request ever looks up (a request brings its own row), so it stays offline: online it would
        only grow by a row per event, forever. Static lookup tables (no timestamp) are loaded from
        the epoch, so every partition carries them.

        The online store is monotone per entity (``online_stores``): a window older than what an
        entity already holds (a relanded day, a day re-run for late labels) leaves it unchanged.
        Returns, per view loaded, how many rows were not written for that reason."""
        from mlops_assets.resources.online_stores import SKIPPED_OLDER

        store = self.store(spec)
        views = [v for v in store.list_feature_views() if v.name != EVENTS_VIEW]
        if not views:
            return {}
        timed = [v.name for v in views if v.ttl != timedelta(0)]
        static = [v.name for v in views if v.ttl == timedelta(0)]
        before = {v: SKIPPED_OLDER[(spec.name, v)] for v in timed + static}
        with _quiet():
            if timed:
                store.materialize(start, end, feature_views=timed)
            if static:
                store.materialize(datetime(1970, 1, 1, tzinfo=start.tzinfo), end, feature_views=static)
        return {v: SKIPPED_OLDER[(spec.name, v)] - n for v, n in before.items()}

    def write_online(self, spec: ModelSpec, view: str, rows: pd.DataFrame) -> int:
        """Write rows of one view straight into the online store (entity keys, the view's values
        and ``event_timestamp``), monotone per entity as ``materialize`` is; the rows not written
        because the store holds newer ones."""
        from mlops_assets.resources.online_stores import SKIPPED_OLDER

        before = SKIPPED_OLDER[(spec.name, view)]
        with _quiet():
            self.store(spec).write_to_online_store(feature_view_name=view, df=rows)
        return SKIPPED_OLDER[(spec.name, view)] - before

    def registered_views(self, spec: ModelSpec) -> set[str]:
        """The feature views the registry holds for the spec (none before ``feature_registry`` ran)."""
        return {v.name for v in self.store(spec).list_feature_views()}

    def online_row_count(self, spec: ModelSpec) -> int:
        """Entity rows in the online store for this spec's project, over all views (an entity
        known to two views counts twice)."""
        if self.online_store_type == "redis":
            return redis_row_count(self.redis_connection, spec.name)
        import sqlite3

        with sqlite3.connect(self.online_store_path) as conn:
            tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
            return sum(
                conn.execute(f'select count(distinct entity_key) from "{t}"').fetchone()[0]
                for t in tables
                if t.startswith(f"{spec.name}_")
            )


def redis_row_count(connection_string: str, project: str) -> int:
    """Entity rows of a project in Feast's Redis online store: each key is an entity key followed by
    the project's name, a hash with one ``_ts:<view>`` field per view that wrote it."""
    import redis

    from mlops_assets.compat import redis_connection

    host, port, options = redis_connection(connection_string)  # read as Feast reads it
    conn = redis.Redis(host=host, port=port, **options)
    suffix = project.encode()
    total = 0
    for key in conn.scan_iter(count=1000):
        if key.endswith(suffix):
            total += sum(1 for f in conn.hkeys(key) if f.startswith(b"_ts:"))
    return total


def registry_config(registry: str) -> Any:
    """Feast's ``registry`` setting: a SQL registry for a database URL, else a registry file/object."""
    if registry.startswith(("postgresql", "mysql", "sqlite:")):
        return {
            "registry_type": "sql",
            "path": registry,
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"pool_pre_ping": True},
        }
    return registry


@functools.lru_cache(maxsize=16)
def cached_feature_store(
    project: str, registry: str, online: tuple[tuple[str, str], ...], offline: str, object_store: str | None = None
) -> FeatureStore:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    if object_store and offline == "duckdb":
        from mlops_assets.compat import register_object_store_with_duckdb

        register_object_store_with_duckdb(object_store)
    config = RepoConfig(
        project=project,
        provider="local",
        registry=registry_config(registry),
        online_store=dict(online),
        offline_store={"type": offline},
        entity_key_serialization_version=3,
    )
    return FeatureStore(config=config)
