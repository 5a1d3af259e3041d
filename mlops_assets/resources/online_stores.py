"""Feast online stores that never go back in time: SQLite and Redis, monotone per entity.

Why: materializing an older partition (a relanded file, or a day re-run because its labels arrived
late) would otherwise overwrite newer online values: Feast's SQLite store writes whatever it is
given, so the live server would serve the older day's rates and weather. Feast's Redis store skips
older rows but also rows of the *same* instant, so a re-run of the newest day with corrected values
(its past rates change when an earlier day's labels land) never reached Redis.

The rule, the same on both stores: a row is written for an entity only when its event time is at
least the one stored for that entity and view (``>=``: a re-run of the newest day replaces that day's
values; an older day changes nothing that is newer). It is applied where Feast writes, in
``online_write_batch``, so every path that writes (``FeatureStore.materialize``, the compute
engine, ``write_to_online_store``) obeys it, and per entity: an entity that an older day knows and
the newest day does not still gets the newest values the store has seen for it.

The read-compare-write runs under a lock per feature view (a file lock beside the SQLite database,
a Redis lock in Redis), so two runs materializing different days at once cannot interleave their
reads and writes and let the older one win.

Feast loads these classes by their path (``online_store.type``; see ``FeastFeatureStore.online_config``),
and they are the one place that relies on the parent stores' connection helpers (``_get_conn``,
``_get_client``), covered by ``mlops_assets_tests/test_online_store_order.py``. This module imports
Feast at the top: only Feast imports it, once a feature store is configured.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig

log = logging.getLogger(__name__)

SQLITE_TYPE = "mlops_assets.resources.online_stores.MonotoneSqliteOnlineStore"
REDIS_TYPE = "mlops_assets.resources.online_stores.MonotoneRedisOnlineStore"

# Rows refused because the store already held a newer value, per (project, feature view), in this
# process: ``FeastFeatureStore.materialize`` reports the difference around its call as metadata.
SKIPPED_OLDER: Counter[tuple[str, str]] = Counter()

Row = tuple[Any, dict, datetime, datetime | None]


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def newest_rows(data: list[Row]) -> list[Row]:
    """One row per entity key: the one with the latest event time (the later one on a tie), so a
    batch holding an entity twice cannot end with its older row written last."""
    latest: dict[bytes, Row] = {}
    for row in data:
        k = row[0].SerializeToString(deterministic=True)
        if k not in latest or _utc(row[2]) >= _utc(latest[k][2]):
            latest[k] = row
    return list(latest.values())


def not_older(rows: list[Row], stored: list[tuple[datetime | None, Any]]) -> list[Row]:
    """The rows whose event time is at least what the store holds for their entity (``stored`` is
    the store's ``online_read`` answer for the same entities, in order; no value means nothing held)."""
    kept = []
    for row, (prev_ts, prev_values) in zip(rows, stored, strict=True):
        prev = _utc(prev_ts) if prev_values else None
        if prev is None or _utc(row[2]) >= prev:
            kept.append(row)
    return kept


class _Monotone:
    """The rule, shared by both stores: filter the batch against the stored event times, under a lock."""

    def _lock(self, config: Any, table: Any):  # pragma: no cover - each store defines it
        raise NotImplementedError

    def online_write_batch(self, config: Any, table: Any, data: list[Row], progress: Any) -> None:
        if not data:
            return
        with self._lock(config, table):
            rows = newest_rows(list(data))
            stored = self.online_read(config, table, [r[0] for r in rows])  # type: ignore[attr-defined]
            kept = not_older(rows, stored)
            skipped = len(data) - len(kept)
            if skipped:
                SKIPPED_OLDER[(config.project, table.name)] += skipped
                log.info(
                    "online store %s/%s: %d rows older than the stored values not written", config.project, table.name, skipped
                )
            if kept:
                super().online_write_batch(config, table, kept, progress)  # type: ignore[misc]
            elif progress:
                progress(len(data))


class MonotoneSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's SQLite online store settings, selecting the monotone store."""

    type: Literal["mlops_assets.resources.online_stores.MonotoneSqliteOnlineStore"] = SQLITE_TYPE  # type: ignore[assignment]


class MonotoneSqliteOnlineStore(_Monotone, SqliteOnlineStore):
    """Feast's SQLite online store, writing a row only when it is not older than the stored one."""

    def _lock(self, config: Any, table: Any):
        from mlops_assets import files

        return files.lock(f"{self._get_db_path(config)}.{config.project}.{table.name}.lock")


class MonotoneRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis online store settings, selecting the monotone store. ``skip_dedup`` is on because
    the rows reaching Redis were already compared here (with ``>=``, where Feast's own check is ``>``)."""

    type: Literal["mlops_assets.resources.online_stores.MonotoneRedisOnlineStore"] = REDIS_TYPE  # type: ignore[assignment]
    skip_dedup: bool = True


class MonotoneRedisOnlineStore(_Monotone, RedisOnlineStore):
    """Feast's Redis online store, writing a row only when it is not older than the stored one."""

    def _lock(self, config: Any, table: Any):
        client = self._get_client(config.online_store)
        return client.lock(f"mlops:online_write:{config.project}:{table.name}", timeout=600, blocking_timeout=600)
