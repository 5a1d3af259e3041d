"""Feature stage: Feast definitions, the daily feature tables (Feast offline sources) and their
materialization into the online store.

``<spec>/feature_registry`` registers the spec's entities, feature views and feature service and
snapshots its lookup tables; ``<spec>/features`` writes each day's rows of every feature view (into
month files, see ``LakeStorage``);
``<spec>/online_features`` loads that day's entity-keyed views into the online store (SQLite locally,
Redis in the cloud profiles).
"""

from datetime import timedelta

import dagster as dg

from mlops_assets.common import asset_kwargs, daily_partitions, day_of, days_before, failure, key, table_metadata
from mlops_assets.core.names import EVENTS_VIEW, FEATURE_SERVICE
from mlops_assets.resources import FeastFeatureStore, LakeStorage
from mlops_assets.specs import ModelSpec


def snapshot_lookup(lake: LakeStorage, spec: ModelSpec, tname: str):
    """Read lookup table ``tname`` from its source and keep it as the snapshot its Feast offline
    source reads (rewritten only when the source changed). Returns the frame and whether the
    snapshot changed. A source that cannot be read fails the run with what broke, in the file's
    terms; the snapshot taken before stays, so nothing already served is lost."""
    from mlops_assets.core.features import lookup_frame
    from mlops_assets.core.sources import DataError

    try:
        frame = lookup_frame(tname, spec.lookups[tname], spec)
    except DataError as exc:
        raise failure(str(exc)) from exc
    path = lake.lookup_snapshot_path(spec.name, tname)
    changed = not lake.exists(path) or not frame.equals(lake.read(path))
    if changed:
        lake.write(frame, path)
    return frame, changed


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    parts = daily_partitions(spec)
    name = spec.name
    history_days = max((f.window_days for f in spec.past_rate_features), default=0)
    lookback_days = spec.past_rate_lookback_days  # the window reaches back over days without labels

    @dg.asset(
        **asset_kwargs(
            "feature_registry",
            spec,
            "Feast registration of the spec: entities, feature views (events, past rates, lookups) and "
            "the feature service the model reads; lookup tables snapshotted as Feast offline sources.",
            {"feast", "parquet"},
        ),
    )
    def feature_registry(lake: LakeStorage, feast: FeastFeatureStore) -> dg.MaterializeResult:
        rows = {tname: len(snapshot_lookup(lake, spec, tname)[0]) for tname in spec.lookups}
        registered = feast.apply(spec, lake.features_root(name))
        return dg.MaterializeResult(
            metadata={
                "feast_project": name,
                "feature_views": registered.get("FeatureView", 0),
                "entities": registered.get("Entity", 0),
                "feature_service": FEATURE_SERVICE,
                "features": dg.MetadataValue.json(spec.feature_names),
                **{f"lookup_rows/{t}": n for t, n in rows.items()},
            }
        )

    @dg.asset(
        **asset_kwargs(
            "features",
            spec,
            "One day of features, written as Feast offline sources: per-event features, and per-group "
            f"past rates computed from the {history_days} days before (never the day itself; a day without labels "
            f"does not count, and the window reaches back over it, at most {lookback_days} days in all).",
            {"feast", "parquet"},
        ),
        partitions_def=parts,
        deps=[key("dataset", spec)],
    )
    def features(context: dg.AssetExecutionContext, lake: LakeStorage) -> dg.MaterializeResult:
        import pandas as pd

        from mlops_assets.core.features import past_rate_table, row_feature_columns, row_features

        day = day_of(context.partition_key)
        tz = spec.source.timestamp.timezone
        today = lake.read(lake.partition_path("dataset", name, context.partition_key))
        written = {}
        if row_feature_columns(spec):
            events = row_features(today, spec)
            lake.write_feature_day(name, EVENTS_VIEW, context.partition_key, events)
            written[EVENTS_VIEW] = len(events)
        history_available = history_read = 0
        if spec.past_rate_features:
            present = set(lake.partitions("dataset", name))
            available = [d for d in days_before(day, lookback_days) if d in present]
            history = lake.read_days("dataset", name, available)
            history_available = sum(1 for d in days_before(day, history_days) if d in present)
            history_read = len(available)
            if history is None:
                history = today.iloc[0:0]
            for f in spec.past_rate_features:
                table = past_rate_table(history, today, f, day, tz)  # with its prior row: unknown groups online
                lake.write_feature_day(name, f.name, context.partition_key, table)
                written[f.name] = len(table)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": written.get(EVENTS_VIEW, len(today)),
                "history_days_available": history_available,
                "history_days_wanted": history_days,
                "history_days_read": history_read,  # up to lookback_days: the window reaches back over gaps
                "rows_per_table": table_metadata(pd.DataFrame({"feature_view": list(written), "rows": list(written.values())})),
            }
        )

    @dg.asset(
        **asset_kwargs(
            "online_features",
            spec,
            "Feast materialization of the day into the online store, so serving reads the same feature values "
            "training used: the views keyed by an entity (past rates, lookups); a request brings its own row. "
            "Past rates are written for the next day too (they read only the days before it, all landed now), "
            "so a request during that day gets the rates its batch scoring and training will use. "
            "Never goes back in time: an older day re-run (relanded, or labels that came late) leaves the newer "
            "values of an entity in place (rows_kept_newer counts them).",
            {"feast", "sqlite"},
        ),
        partitions_def=parts,
        deps=[key("features", spec), key("feature_registry", spec)],
    )
    def online_features(context: dg.AssetExecutionContext, feast: FeastFeatureStore, lake: LakeStorage) -> dg.MaterializeResult:
        import pandas as pd

        from mlops_assets.core.features import past_rate_table
        from mlops_assets.core.sources import day_start_utc

        day = day_of(context.partition_key)
        tz = spec.source.timestamp.timezone
        start = day_start_utc(day, tz).to_pydatetime()
        end = (day_start_utc(day + timedelta(days=1), tz) - pd.Timedelta(microseconds=1)).to_pydatetime()
        # Monotone per entity: re-running an older day (relanded, or labels that came late) keeps
        # the newer values the online store holds; its rows not written are counted here.
        skipped = feast.materialize(spec, start, end)
        if not skipped:
            context.log.info(f"'{name}' has no entity-keyed features: serving needs nothing from the online store")
        # The next day's rates read only days up to this one: written now, a request during that day
        # is served the snapshot its own batch scoring reads (a group first seen then gets the prior,
        # from the prior row, as training gives it). A later day already online is never overwritten.
        following = day + timedelta(days=1)
        registered = [f for f in spec.past_rate_features if f.name in skipped]  # none before feature_registry ran
        if registered:
            # the days the features step just read, and this one (parsed once: files.read_parquet keeps them)
            history = lake.read_partitions("dataset", name, days_before(following, lookback_days))
            if history is not None:
                for f in registered:
                    table = past_rate_table(history, history.iloc[0:0], f, following, tz)
                    skipped[f.name] = skipped.get(f.name, 0) + feast.write_online(spec, f.name, table)
        older = sum(skipped.values())
        if older:
            context.log.info(
                f"{older} online rows of {context.partition_key} kept their newer values (a later day was materialized): "
                + ", ".join(f"{v}: {n}" for v, n in skipped.items() if n)
            )
        return dg.MaterializeResult(
            metadata={
                "feature_views": dg.MetadataValue.json(list(skipped)),
                "rows_kept_newer": older,
                "next_day_rates": following.isoformat() if registered else "none",
                "window_start_utc": start.isoformat(),
                "window_end_utc": end.isoformat(),
                "online_rows_total": feast.online_row_count(spec),
            }
        )

    return [feature_registry, features, online_features]
