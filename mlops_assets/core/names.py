"""Every name the platform builds: assets, jobs, sensors, columns and tables.

The one place they are made (kept free of imports so the code location loads fast): the asset
factory, the jobs, the sensors, the replay, the CLI and the exporter all read them from here, so a
name changes in one line. ``mlops_assets.common.key`` wraps ``asset_name`` in a Dagster asset key.
"""

AUTOMATION_SENSOR = "mlops_automation"  # the one automation sensor of the code location


def _spec_name(spec) -> str:
    return spec if isinstance(spec, str) else spec.name


def asset_path(stage: str, spec) -> list[str]:
    """A spec's asset key of one stage, as its path: the spec, then the stage (``["flight_delays",
    "model"]``). The spec comes first so the lineage shows each spec's stages under it and every
    node's label is the stage alone, in full."""
    return [_spec_name(spec), stage]


def asset_name(stage: str, spec) -> str:
    """The same key as Dagster writes it (``flight_delays/model``): what ``--select`` and the UI take."""
    return "/".join(asset_path(stage, spec))


def job_name(kind: str, spec) -> str:
    """A spec's job (``train_flight_delays``): register, ingest, train, score, deploy."""
    return f"{kind}_{_spec_name(spec)}"


def schedule_name(kind: str, spec) -> str:
    """A spec's schedule (``lookups_flight_delays_schedule``): its job's name, as Dagster names them."""
    return f"{job_name(kind, spec)}_schedule"


def sensor_name(kind: str, spec) -> str:
    """A spec's sensor (``landing_flight_delays``, ``canary_flight_delays``)."""
    return f"{kind}_{_spec_name(spec)}"


EVENT_ID = "event_id"
EVENT_TS = "event_timestamp"
LABEL = "label"
EVENTS_VIEW = "events"
FEATURE_SERVICE = "model_inputs"
CHALLENGER = "challenger"
CHAMPION = "champion"

ROLLED_BACK_TAG = "mlops.canary"  # model-version tag: started | promoted | rolled_back
ROLLED_BACK = "rolled_back"
CANARY_REASON_TAG = "mlops.canary_reason"


def lookup_view_name(table: str) -> str:
    return f"lookup_{table}"


def level_feature_name(target_column: str, entity: str) -> str:
    """The past_rate feature the backtest adds when it tries a target relative to its level by an
    entity (``core.backtest_advice.level_variants``)."""
    return f"{target_column}_level_by_{entity}"
