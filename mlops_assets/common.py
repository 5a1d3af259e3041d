"""Small pieces every stage module shares: names, partitions, code versions and metadata helpers."""

from __future__ import annotations

import base64
from datetime import date, timedelta
from functools import cache
from typing import TYPE_CHECKING

import dagster as dg

from mlops_assets import k8s
from mlops_assets.core.names import asset_path
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:
    import pandas as pd

# Bump when a stage's logic changes in a way that should make its assets stale in the UI.
STAGE_VERSIONS = {
    "raw": "1",
    "dataset": "1",
    "feature_registry": "1",
    "features": "1",
    "online_features": "1",
    "online_lookups": "1",
    "training_set": "1",
    "model": "1",
    "champion": "1",
    "predictions": "1",
    "endpoint": "1",
    "backtest": "1",
}


def key(stage: str, spec: ModelSpec | str) -> dg.AssetKey:
    """A spec's asset key of one stage (its name from ``core.names``)."""
    return dg.AssetKey(asset_path(stage, spec))


def code_version(stage: str, spec: ModelSpec) -> str:
    """Stage logic version + spec content hash: editing the spec marks its assets changed."""
    return f"{STAGE_VERSIONS[stage]}-{spec.spec_hash}"


@cache
def _daily(start: date, end: date | None, timezone: str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(
        start_date=start.isoformat(),
        end_date=end.isoformat() if end else None,
        timezone=timezone,
    )


def daily_partitions(spec: ModelSpec) -> dg.DailyPartitionsDefinition:
    """Daily partitions in the spec's timezone: partition '2013-01-05' is that local day."""
    return _daily(spec.partitions.start, spec.partitions.end, spec.source.timestamp.timezone)


def asset_with_optional_checks(kwargs: dict, *, deps: list, check_specs: list, partitions_def=None):
    """``@dg.asset(**kwargs, deps=…, check_specs=…)`` whose checks may yield no result: a one-asset
    ``multi_asset`` with ``can_subset=True``, the only way Dagster makes check outputs optional (an
    ``@asset`` fails its step when a declared check yields nothing). A check left without a result is
    resolved to SKIPPED once the run succeeds: how a check that could not be judged stays off "Passed".
    The function yields its ``MaterializeResult`` with ``asset_key`` set, and results only for the
    checks in ``context.selected_asset_check_keys``."""
    kwargs = dict(kwargs)
    asset_key, op_tags = kwargs.pop("key"), kwargs.pop("op_tags")
    spec = dg.AssetSpec(asset_key, deps=deps, partitions_def=partitions_def, **kwargs)
    return dg.multi_asset(
        name=asset_key.to_python_identifier(), op_tags=op_tags, specs=[spec], check_specs=check_specs, can_subset=True
    )


def day_of(partition_key: str) -> date:
    return date.fromisoformat(partition_key)


def days_before(day: date, n: int) -> list[str]:
    """The ``n`` days before ``day`` (oldest first), as partition keys."""
    return [(day - timedelta(days=i)).isoformat() for i in range(n, 0, -1)]


def asset_kwargs(stage: str, spec: ModelSpec, description: str, kinds: set[str]) -> dict:
    """Arguments every asset of a spec shares, so the UI explains each one the same way."""
    from mlops_assets import policies

    return {
        "automation_condition": policies.automation_condition(stage, spec),
        "freshness_policy": policies.freshness_policy(stage, spec),
        "key": key(stage, spec),
        "group_name": spec.name,
        "owners": spec.owners,
        "kinds": kinds,
        "code_version": code_version(stage, spec),
        "description": description,
        "tags": {"mlops/spec": spec.name, "mlops/stage": stage},
        # the step's container on the k8s profile (read by dagster-k8s only; inert elsewhere)
        "op_tags": k8s.op_tags(stage, spec),
    }


def table_metadata(rows: pd.DataFrame | list[dict], max_rows: int = 30) -> dg.MetadataValue:
    """Rows as Dagster's native table (``MetadataValue.table``): the UI renders it in place, sortable,
    where a markdown table sits behind "Show Markdown". Each column gets the type all its values
    share (bool, int, float, else string); a missing value (None, NaN) is a null cell, never a
    made-up 0 or an empty string."""
    import math

    import numpy as np

    frame = hasattr(rows, "to_dict")  # pandas is imported where frames are made, not here (cheap to load)
    records = rows.head(max_rows).to_dict("records") if frame else list(rows)[:max_rows]
    columns = list(rows.columns) if frame else list(dict.fromkeys(k for r in records for k in r))

    def plain(v):
        if isinstance(v, np.generic):
            v = v.item()
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    cells = [{c: plain(r.get(c)) for c in columns} for r in records]
    types = {}
    for c in columns:
        values = [r[c] for r in cells if r[c] is not None]
        if values and all(isinstance(v, bool) for v in values):
            types[c] = "bool"
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            types[c] = "int"
        elif values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            types[c] = "float"
        else:
            types[c] = "string"
    for r in cells:
        for c in columns:
            if r[c] is not None and types[c] == "string":
                r[c] = str(r[c])
            elif r[c] is not None and types[c] == "float":
                r[c] = float(r[c])
    return dg.MetadataValue.table(
        records=[dg.TableRecord({str(c): v for c, v in r.items()}) for r in cells],
        schema=dg.TableSchema(columns=[dg.TableColumn(str(c), types[c]) for c in columns]),
    )


def svg_markdown(svg: str) -> dg.MetadataValue:
    """An SVG drawing as inline image markdown (the Dagster UI allows ``data:`` image sources)."""
    data = base64.b64encode(svg.encode()).decode()
    return dg.MetadataValue.md(f"![plot](data:image/svg+xml;base64,{data})")


def check_evaluation(record) -> dg.AssetCheckEvaluation | None:
    """The evaluation of a check execution record; None while it is only planned (its event is then the
    plan, which carries no verdict) and for a check Dagster skipped."""
    if record is None or record.status.value not in ("SUCCEEDED", "FAILED"):
        return None
    return record.evaluation


def check_result(outcome, severity: dg.AssetCheckSeverity, **extra_metadata) -> dg.AssetCheckResult:
    """A core ``CheckOutcome`` (name, verdict, description, metadata) as a Dagster check result. An
    outcome that was not judged has no verdict to report: callers leave it out, and Dagster skips the check."""
    if not outcome.judged:
        raise ValueError(f"check {outcome.name} was not judged ({outcome.description}): it has no result to report")
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        severity=severity,
        description=outcome.description,
        metadata={**outcome.metadata, **extra_metadata},
    )


def failure(message: str, **metadata) -> dg.Failure:
    """A run failure whose description is the whole story (file, row, column), shown in the UI."""
    return dg.Failure(description=message, metadata={k: str(v) for k, v in metadata.items()}, allow_retries=False)
