"""Landing sensor: every new daily file in ``landing/<spec>/`` becomes an ingest run for its day.

A file is named ``YYYY-MM-DD.<csv|csv.gz|parquet>``. The sensor reads it before requesting a run:
a file that is misnamed, outside the spec's partitions, unreadable or missing a column the spec
needs is moved to ``quarantine/<spec>/`` with a ``.reason.txt`` beside it, and the sensor goes on
with the other files. A file landed again is ingested again only if its content changed: a day
whose latest ``raw_<spec>`` materialization came from identical bytes (same SHA-256) is skipped.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date

import dagster as dg

from mlops_assets.common import daily_partitions, key
from mlops_assets.jobs import job_name
from mlops_assets.resources import LakeStorage
from mlops_assets.specs import ModelSpec


def check_landed_file(spec: ModelSpec, path, partition_keys: set[str]) -> str | None:
    """Why a landed file cannot be ingested, or None when it can."""
    from mlops_assets.core.sources import DataError, infer_format, read_file, require_columns

    day = path.name.split(".", 1)[0]
    try:
        date.fromisoformat(day)
    except ValueError:
        return f"{path.name}: file name must start with the day it holds (YYYY-MM-DD)"
    if day not in partition_keys:
        return f"{path.name}: {day} is outside the partitions of spec '{spec.name}'"
    try:
        df = read_file(str(path), infer_format(str(path), None))
        require_columns(df, spec.required_source_columns, str(path), spec.name)
    except DataError as exc:
        return str(exc)
    if df.empty:
        return f"{path}: no rows"
    return None


def already_ingested(instance: dg.DagsterInstance, spec: ModelSpec, day: str, digest: str) -> bool:
    """Whether the day's latest raw materialization was made from a file with this SHA-256."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key("raw", spec), asset_partitions=[day]), limit=1
    ).records
    if not records:
        return False
    sha = records[0].asset_materialization.metadata.get("sha256")
    return sha is not None and sha.value == digest


def build(spec: ModelSpec) -> dg.SensorDefinition:
    name = spec.name

    @dg.sensor(
        name=f"landing_{name}",
        job_name=job_name("ingest", spec),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New files in landing/{name}/ become ingest runs for their day; bad files go to quarantine/{name}/.",
    )
    def landing(context: dg.SensorEvaluationContext, lake: LakeStorage) -> dg.SensorResult:
        seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        folder = lake.landing_dir(name)
        if not folder.exists():
            return dg.SensorResult(skip_reason=f"no landing folder {folder} yet")
        keys = None
        requests = []
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            stamp = path.stat().st_mtime_ns
            if seen.get(path.name) == stamp:
                continue
            day = path.name.split(".", 1)[0]
            if already_ingested(context.instance, spec, day, hashlib.sha256(path.read_bytes()).hexdigest()):
                seen[path.name] = stamp  # same bytes as the day's latest raw: nothing to do
                continue
            if keys is None:
                keys = set(daily_partitions(spec).get_partition_keys())
            reason = check_landed_file(spec, path, keys)
            if reason:
                target = lake.quarantine(name, path, reason)
                context.log.warning(f"quarantined {path.name} -> {target}: {reason}")
                seen.pop(path.name, None)
                continue
            seen[path.name] = stamp
            requests.append(
                dg.RunRequest(
                    run_key=f"{path.name}:{stamp}",
                    partition_key=day,
                    tags={"mlops/landed_file": path.name},
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))

    return landing
