"""Feast: the spec's entities, feature views and feature service, and the calls the assets make.

One Feast project per spec, sharing one registry file and one SQLite online store. Offline sources
are folders of per-partition parquet files read by Feast's DuckDB offline store (its Dask store
fails on rows whose entity has no feature row; DuckDB keeps them with missing values).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from mlops_assets.core.names import EVENT_ID, EVENT_TS, EVENTS_VIEW, FEATURE_SERVICE, lookup_view_name
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Feast prints coloured progress to stdout and its DuckDB layer warns about an ibis deprecation
    on every query; neither helps in a Dagster run log, where the asset metadata says what happened."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fetch_arrow_table.*", category=DeprecationWarning)
        yield


class FeastFeatureStore(dg.ConfigurableResource):
    """A Feast feature store configured in code (no feature_store.yaml, no repo folder to import)."""

    registry_path: str = Field(description="Feast registry file (or gs:// / s3:// URI).")
    online_store_path: str = Field(description="SQLite database of the online store.")
    offline_store: str = Field("duckdb", description="Feast offline store type.")

    def store(self, spec: ModelSpec) -> FeatureStore:
        """The spec's Feast project. One ``FeatureStore`` per project and location per process:
        building one parses the config and opens the registry (~0.2 s), and a process that runs
        several steps (in-process runs, replays) would pay it on every step."""
        return cached_feature_store(spec.name, self.registry_path, self.online_store_path, self.offline_store)

    # --- definitions ---------------------------------------------------------------------------

    def definitions(self, spec: ModelSpec, features_root: Path) -> list[Any]:
        """Feast objects for a spec; each feature view reads ``features_root/<view>/*.parquet``."""
        from feast import Entity, FeatureService, FeatureView, FileSource, ValueType
        from feast import Field as FeastField
        from feast.data_format import ParquetFormat
        from feast.types import Float64, String

        from mlops_assets.core.features import row_feature_columns

        def source(table: str) -> FileSource:
            return FileSource(
                name=f"{spec.name}_{table}",
                path=str(features_root / table / "*.parquet"),
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
                    description=f"Smoothed mean label per {'+'.join(f.by)} over the {f.window_days} days before the event's day.",
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

    def apply(self, spec: ModelSpec, features_root: Path) -> dict[str, int]:
        objects = self.definitions(spec, features_root)
        self.store(spec).apply(objects)
        kinds: dict[str, int] = {}
        for o in objects:
            kinds[type(o).__name__] = kinds.get(type(o).__name__, 0) + 1
        return kinds

    # --- reads and writes --------------------------------------------------------------------

    def historical_features(self, spec: ModelSpec, entity_df: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time join of the feature service onto ``entity_df`` (which must carry
        ``event_id``, ``event_timestamp`` and the entity columns). Rows come back in the input's
        order; lookup features named differently from their column are renamed to the spec's name."""
        store = self.store(spec)
        service = store.get_feature_service(FEATURE_SERVICE)
        with _quiet():
            joined = store.get_historical_features(entity_df=entity_df, features=service).to_df()
        joined = joined.drop_duplicates(EVENT_ID).set_index(EVENT_ID).reindex(entity_df[EVENT_ID]).reset_index()
        renames = {f.source: f.name for f in spec.lookup_features if f.source != f.name}
        return joined.rename(columns=renames)

    def materialize(self, spec: ModelSpec, start: datetime, end: datetime) -> list[str]:
        """Load one window of the feature views serving reads into the online store: those keyed
        by an entity (past rates, lookups). The per-event view is keyed by event id, which no
        request ever looks up (a request brings its own row), so it stays offline: online it would
        only grow by a row per event, forever. Static lookup tables (no timestamp) are loaded from
        the epoch, so every partition carries them."""
        store = self.store(spec)
        views = [v for v in store.list_feature_views() if v.name != EVENTS_VIEW]
        if not views:
            return []
        timed = [v.name for v in views if v.ttl != timedelta(0)]
        static = [v.name for v in views if v.ttl == timedelta(0)]
        with _quiet():
            if timed:
                store.materialize(start, end, feature_views=timed)
            if static:
                store.materialize(datetime(1970, 1, 1, tzinfo=start.tzinfo), end, feature_views=static)
        return timed + static

    def online_row_count(self, spec: ModelSpec) -> int:
        """Rows in the online store for this spec's project (all views)."""
        import sqlite3

        with sqlite3.connect(self.online_store_path) as conn:
            tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
            return sum(conn.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables if t.startswith(f"{spec.name}_"))


@functools.lru_cache(maxsize=16)
def cached_feature_store(project: str, registry: str, online_path: str, offline: str) -> FeatureStore:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    config = RepoConfig(
        project=project,
        provider="local",
        registry=registry,
        online_store={"type": "sqlite", "path": online_path},
        offline_store={"type": offline},
        entity_key_serialization_version=3,
    )
    return FeatureStore(config=config)
