"""The replay's in-memory Dagster instance (``held_connection_instance``): part of ``compat``, whose
``PRIVATE_APIS`` lists every Dagster internal used here."""

from __future__ import annotations

from contextlib import contextmanager


def held_connection_instance():
    """``DagsterInstance.ephemeral()``, with an event log that reuses the one SQLite connection it
    holds for the in-memory database's life.

    Dagster's in-memory event log opens a fresh connection (and sets two PRAGMAs) for every read
    and write, about 440 times a simulated day: 8 % of a replay's time (py-spy, 200 Elec2 days).
    Sharing it, 100 replayed Elec2 days took 81 and 74 s of CPU against 95 and 87 s. Its calls are
    already serialised by a lock, so sharing the connection changes nothing else. Built like
    ``dagster._core.instance.factory.create_ephemeral_instance``."""
    import threading

    import dagster as dg
    import sqlalchemy as db
    from dagster._core.events import DagsterEventType as T
    from dagster._core.instance.types import InstanceType
    from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher
    from dagster._core.run_coordinator import DefaultRunCoordinator
    from dagster._core.storage.event_log import InMemoryEventLogStorage
    from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
    from dagster._core.storage.root import TemporaryLocalArtifactStorage
    from dagster._core.storage.runs import InMemoryRunStorage

    # What no decision reads, and nothing can show once the replay ends: the steps' and the engine's
    # bookkeeping, resource and log-capture events, and plain log lines. About half of the 64 events of
    # a quiet replayed day. Kept: every asset, check, planned, failure and run event (what the
    # automation, the gate and the checks read), and a run's result still holds all of its events.
    unread = frozenset(
        (
            T.STEP_START,
            T.STEP_INPUT,
            T.STEP_OUTPUT,
            T.STEP_SUCCESS,
            T.STEP_WORKER_STARTING,
            T.STEP_WORKER_STARTED,
            T.RESOURCE_INIT_STARTED,
            T.RESOURCE_INIT_SUCCESS,
            T.LOADED_INPUT,
            T.HANDLED_OUTPUT,
            T.OBJECT_STORE_OPERATION,
            T.ASSET_STORE_OPERATION,
            T.ENGINE_EVENT,
            T.LOGS_CAPTURED,
        )
    )

    class HeldConnectionEventLog(InMemoryEventLogStorage):
        def __init__(self):
            self._tables: dict[str, bool] = {}
            self._asset_key_cols: dict[str, bool] = {}
            self._latest: dict = {}  # asset key -> partition -> its latest materialization (fetch_materializations)
            self._latest_lock = threading.RLock()
            super().__init__()
            # per connection in SQLite, so set once on the held one (journal_mode is moot in memory)
            self._held_conn.execute(db.text("PRAGMA foreign_keys=ON;")).close()
            self._held_conn.commit()

        @contextmanager
        def _connect(self):
            with self._db_lock, self._held_conn.begin():
                yield self._held_conn

        def store_event(self, event) -> None:
            if event.dagster_event is None or event.dagster_event.event_type in unread:
                return
            with self._latest_lock:  # no answer kept from before this event once it is stored
                if event.dagster_event.event_type == T.ASSET_MATERIALIZATION:
                    self._latest.pop(event.dagster_event.asset_key, None)
                super().store_event(event)

        # Each check result of a partitioned step asks for its asset's latest materialization of that
        # partition (the check's target), as do data versions: the same query, answered by
        # deserialising the whole event again, up to a dozen times a replayed day and 4 % of a full
        # Elec2 replay (py-spy). The answer changes only when that asset is materialized again or
        # events are removed, so it is kept until then.
        def fetch_materializations(self, records_filter, limit, cursor=None, ascending=False):
            f = records_filter
            plain = (
                isinstance(f, dg.AssetRecordsFilter)
                and limit == 1
                and cursor is None
                and not ascending
                and f.asset_partitions is not None
                and len(f.asset_partitions) == 1
                and (f.after_timestamp, f.before_timestamp, f.after_storage_id, f.before_storage_id, f.storage_ids) == (None,) * 5
            )
            if not plain:
                return super().fetch_materializations(records_filter, limit, cursor, ascending)
            with self._latest_lock:
                by_partition = self._latest.setdefault(f.asset_key, {})
                partition = f.asset_partitions[0]
                if partition not in by_partition:
                    by_partition[partition] = super().fetch_materializations(records_filter, limit, cursor, ascending)
                return by_partition[partition]

        @contextmanager
        def _forgetting(self):
            with self._latest_lock:  # no answer read from before the removal is kept after it
                self._latest.clear()
                yield

        def delete_events(self, run_id: str) -> None:
            with self._forgetting():
                super().delete_events(run_id)

        def wipe(self) -> None:
            with self._forgetting():
                super().wipe()

        def wipe_asset(self, asset_key) -> None:
            with self._forgetting():
                super().wipe_asset(asset_key)

        def wipe_asset_partitions(self, asset_key, partition_keys) -> None:
            with self._forgetting():
                super().wipe_asset_partitions(asset_key, partition_keys)

        def update_event_log_record(self, record_id: int, event) -> None:
            with self._forgetting():
                super().update_event_log_record(record_id, event)

        # The schema of the in-memory database is created with it and never changes, but Dagster
        # asks about it (tables, asset-key columns) several times per event written or read, on a
        # new connection each time: 1.7 % of a replay (py-spy, 120 Elec2 days). Each answer once.
        def has_table(self, table_name: str) -> bool:
            if table_name not in self._tables:
                self._tables[table_name] = super().has_table(table_name)
            return self._tables[table_name]

        def has_asset_key_col(self, column_name: str) -> bool:
            if column_name not in self._asset_key_cols:
                self._asset_key_cols[column_name] = super().has_asset_key_col(column_name)
            return self._asset_key_cols[column_name]

        def _has_asset_key_col_on_connection(self, conn, column_name: str) -> bool:
            if column_name not in self._asset_key_cols:
                self._asset_key_cols[column_name] = super()._has_asset_key_col_on_connection(conn, column_name)
            return self._asset_key_cols[column_name]

    class HeldConnectionRunStorage(InMemoryRunStorage):
        """The same for the run storage, which also opened a connection (and set two PRAGMAs) per
        call and read the runs table's columns per run event: 3 % of a full Elec2 replay. Its calls
        nest (a run event asks for the columns inside its transaction), so an inner one joins the
        transaction in progress; a re-entrant lock keeps threads out of each other's."""

        def __init__(self):
            self._lock = threading.RLock()
            self._schema: dict[str, bool] = {}
            super().__init__()
            self._held_conn.execute(db.text("PRAGMA foreign_keys=ON;")).close()
            self._held_conn.commit()

        @contextmanager
        def connect(self):
            with self._lock:
                if self._held_conn.in_transaction():
                    yield self._held_conn
                else:
                    with self._held_conn.begin():
                        yield self._held_conn

        def _schema_answer(self, name: str, ask) -> bool:
            if name not in self._schema:
                self._schema[name] = ask()
            return self._schema[name]

        def has_run_stats_index_cols(self) -> bool:
            return self._schema_answer("run_stats", super().has_run_stats_index_cols)

        def has_bulk_actions_selector_cols(self) -> bool:
            return self._schema_answer("bulk_actions_selector", super().has_bulk_actions_selector_cols)

        def has_backfill_id_column(self) -> bool:
            return self._schema_answer("backfill_id", super().has_backfill_id_column)

        def has_bulk_action_job_name_column(self) -> bool:
            return self._schema_answer("bulk_action_job_name", super().has_bulk_action_job_name_column)

        def has_backfill_tags_table(self) -> bool:
            return self._schema_answer("backfill_tags", super().has_backfill_tags_table)

    return dg.DagsterInstance(
        instance_type=InstanceType.EPHEMERAL,
        local_artifact_storage=TemporaryLocalArtifactStorage(),
        run_storage=HeldConnectionRunStorage(),
        event_storage=HeldConnectionEventLog(),
        compute_log_manager=NoOpComputeLogManager(),
        run_coordinator=DefaultRunCoordinator(),
        run_launcher=SyncInMemoryRunLauncher(),
    )
