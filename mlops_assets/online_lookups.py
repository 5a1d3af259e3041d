"""Timestamped lookups (hourly weather) kept current in the online store through the day.

A model trained on a timestamped lookup learns from the observation its event's time joins, point
in time: a departure at 14:30 gets the 14:00 weather. ``online_features`` loads a lookup online only
when a day is ingested, so for a whole day an endpoint served the weather of the previous midnight
while training and batch scoring read the event's hour: a training/serving skew that made canaries
of good models fail on the endpoint's AUC.

``<spec>/online_lookups`` (built when the spec has an endpoint and a timestamped lookup a feature
reads) writes, as of a moment, each key's row the point-in-time join gives an event at that moment
(``core.features.lookup_rows_as_of``: the newest observation no older than the table's
``ttl_hours``, else missing, as training has it). It re-reads the table's source first and refreshes
its snapshot when the source changed, so new observations reach the offline store training reads
too. The ``lookups_<spec>_schedule`` runs it at the start of every hour of the spec's timezone, as
of its tick; a replay runs the same schedule on its clock before each hour of endpoint traffic.
Monotone like the rest of the online store: a row older than what a key holds is not written.
"""

import dagster as dg
from pydantic import Field

from mlops_assets.common import asset_kwargs, key
from mlops_assets.core.names import lookup_view_name, schedule_name
from mlops_assets.features import snapshot_lookup
from mlops_assets.resources import FeastFeatureStore, LakeStorage
from mlops_assets.specs import ModelSpec

HOURLY = "0 * * * *"


class LookupsConfig(dg.Config):
    as_of: str = Field(
        default="",
        description="ISO 8601 moment the lookups are served as of (its schedule passes its tick; empty: now).",
    )


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    """The ``online_lookups`` asset of a spec that serves timestamped lookups; none otherwise."""
    tables = spec.served_timed_lookups
    if not tables:
        return []

    @dg.asset(
        **asset_kwargs(
            "online_lookups",
            spec,
            f"The timestamped lookups an endpoint serves ({', '.join(tables)}), written into the online store "
            "as of the start of every hour: each key's newest observation no older than its ttl_hours, else "
            "missing, as the point-in-time join gives training. The source is re-read and its snapshot "
            "refreshed when it changed.",
            {"feast", "sqlite"},
        ),
        deps=[key("feature_registry", spec)],
    )
    def online_lookups(
        context: dg.AssetExecutionContext, config: LookupsConfig, feast: FeastFeatureStore, lake: LakeStorage
    ) -> dg.MaterializeResult:
        import pandas as pd

        from mlops_assets.core.features import lookup_rows_as_of
        from mlops_assets.core.names import EVENT_TS

        as_of = pd.Timestamp(config.as_of) if config.as_of else pd.Timestamp.now(tz="UTC")
        if as_of.tzinfo is None:
            as_of = as_of.tz_localize(spec.source.timestamp.timezone)
        registered = feast.registered_views(spec)
        metadata: dict = {"as_of": as_of.isoformat()}
        for tname in tables:
            view = lookup_view_name(tname)
            if view not in registered:
                context.log.info(f"'{view}' is not registered yet (feature_registry has not run): nothing to serve")
                metadata[f"{tname}/rows_written"] = 0
                continue
            fresh, changed = snapshot_lookup(lake, spec, tname)
            rows = lookup_rows_as_of(fresh, spec.lookups[tname], as_of)
            kept = feast.write_online(spec, view, rows)
            values = rows.columns.difference([spec.lookups[tname].join_entity, EVENT_TS])
            observed = rows[EVENT_TS][rows[values].notna().any(axis=1)]
            metadata.update(
                {
                    f"{tname}/rows_written": len(rows) - kept,
                    f"{tname}/rows_kept_newer": kept,
                    f"{tname}/keys_without_recent_observation": int(len(rows) - len(observed)),
                    f"{tname}/oldest_observation_served": observed.min().isoformat() if len(observed) else "none",
                    f"{tname}/snapshot_refreshed": changed,
                }
            )
        return dg.MaterializeResult(metadata=metadata)

    return [online_lookups]


def schedule(spec: ModelSpec, job) -> dg.ScheduleDefinition | None:
    """Runs ``online_lookups`` at the start of every hour of the spec's timezone, as of its tick."""
    if job is None:
        return None
    op_name = "__".join(key("online_lookups", spec).path)

    @dg.schedule(
        name=schedule_name("lookups", spec),
        cron_schedule=HOURLY,
        job=job,
        execution_timezone=spec.source.timestamp.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Keeps {spec.name}'s timestamped lookups current in the online store, hour by hour.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        at = context.scheduled_execution_time
        return dg.RunRequest(
            run_key=None,
            run_config={"ops": {op_name: {"config": {"as_of": at.isoformat()}}}},
            tags={"mlops/lookups_as_of": at.isoformat()},
        )

    return _schedule
