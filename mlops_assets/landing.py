"""Landing sensor: every new daily file in ``landing/<spec>/`` becomes an ingest run for its day.

The landing zone is a local folder or an object-store prefix (``s3://…``, ``gs://…``): the sensor
lists it through the platform's filesystem layer, and a file is only listed once it is whole (a
local file is renamed into place; an object appears when its upload completes).

A file is named ``YYYY-MM-DD.<csv|csv.gz|parquet>``. The sensor reads it before requesting a run:
a file that is misnamed, outside the spec's partitions, unreadable or missing a column the spec
needs is moved to ``quarantine/<spec>/`` with a ``.reason.txt`` beside it, and the sensor goes on
with the other files. A file landed again is ingested again only if its content changed: a day
whose latest ``<spec>/raw`` materialization came from identical bytes (same SHA-256) is skipped.

Before its first file is ingested, the spec itself is checked against what landed
(``mlops_assets.spec_check``): a column the spec names that none of the new files has, an estimator
that cannot be imported, a lookup table without the spec's columns or a timestamp that leaves out the
hour the data has is the spec's fault, not the files'. The sensor then skips, naming the spec file and
field, and quarantines nothing; once the spec fits (the cursor remembers the spec's hash), a file
missing a column is the file's fault and goes to quarantine as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container
from datetime import date

import dagster as dg

from mlops_assets.common import daily_partitions, key
from mlops_assets.core.names import job_name, sensor_name
from mlops_assets.resources import LakeStorage
from mlops_assets.specs import ModelSpec


def check_landed_file(spec: ModelSpec, uri: str, content: bytes, partition_keys: Container[str]) -> str | None:
    """Why a landed file cannot be ingested, or None when it can."""
    from mlops_assets.core.sources import DataError, infer_format, parse_file, require_columns

    name = uri.rstrip("/").rsplit("/", 1)[-1]
    day = name.split(".", 1)[0]
    try:
        date.fromisoformat(day)
    except ValueError:
        return f"{name}: file name must start with the day it holds (YYYY-MM-DD)"
    if day not in partition_keys:
        return f"{name}: {day} is outside the partitions of spec '{spec.name}'"
    try:
        df = parse_file(content, infer_format(uri, None), uri)
        require_columns(df, spec.required_source_columns, uri, spec.name)
    except DataError as exc:
        return str(exc)
    if df.empty:
        return f"{uri}: no rows"
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
        name=sensor_name("landing", name),
        job_name=job_name("ingest", spec),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New files in landing/{name}/ become ingest runs for their day; bad files go to quarantine/{name}/.",
    )
    def landing(context: dg.SensorEvaluationContext, lake: LakeStorage) -> dg.SensorResult:
        from mlops_assets import files

        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        spec_ok = seen.pop(SPEC_CHECKED, None) == spec.spec_hash
        landed = lake.landed(name)
        if not landed:
            return dg.SensorResult(skip_reason=f"nothing in {lake.landing_dir(name)} yet", cursor=context.cursor)
        pending = []
        for entry in landed:
            if seen.get(entry.name) == entry.stamp:
                continue
            day = entry.name.split(".", 1)[0]
            content = files.read_bytes(entry.uri)
            if already_ingested(context.instance, spec, day, hashlib.sha256(content).hexdigest()):
                seen[entry.name] = entry.stamp  # same bytes as the day's latest raw: nothing to do
                continue
            pending.append((entry, content))
        if pending and not spec_ok:
            problems, spec_ok = spec_problems(spec, [(e.uri, c) for e, c in pending])
            if problems:
                message = "; ".join(p.render(spec) for p in problems)
                context.log.error(f"spec {spec.file} does not fit its landed files; nothing ingested: {message}")
                return dg.SensorResult(
                    skip_reason=f"spec does not fit the {len(pending)} landed file(s), nothing ingested or quarantined "
                    f"(fix the spec): {message}",
                    cursor=_cursor(seen, spec, False),
                )
        keys = _PartitionKeys(daily_partitions(spec))
        requests = []
        for entry, content in pending:
            stamp = entry.stamp
            day = entry.name.split(".", 1)[0]
            reason = check_landed_file(spec, entry.uri, content, keys)
            if reason:
                target = lake.quarantine(name, entry.uri, reason)
                context.log.warning(f"quarantined {entry.name} -> {target}: {reason}")
                seen.pop(entry.name, None)
                continue
            seen[entry.name] = stamp
            requests.append(
                dg.RunRequest(
                    run_key=f"{entry.name}:{stamp}",
                    partition_key=day,
                    tags={"mlops/landed_file": entry.name},
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=_cursor(seen, spec, spec_ok))

    return landing


class _PartitionKeys(Container[str]):
    """The spec's partition keys now, asked one key at a time: listing them all (a key per day since
    the spec's start) cost more than the rest of a tick that lands one file."""

    def __init__(self, partitions: dg.PartitionsDefinition):
        self.partitions = partitions

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.partitions.has_partition_key(key)


SPEC_CHECKED = "<spec checked>"  # cursor entry: the hash of the spec last found to fit its files (never a file name)


def _cursor(seen: dict[str, str], spec: ModelSpec, spec_ok: bool) -> str:
    return json.dumps({**seen, **({SPEC_CHECKED: spec.spec_hash} if spec_ok else {})}, sort_keys=True)


def spec_problems(spec: ModelSpec, landed: list[tuple[str, bytes]]) -> tuple[list, bool]:
    """The spec against the files that landed: its problems, and whether it was judged on at least
    one readable file (only then is it remembered as fitting). Unreadable files are left to
    ``check_landed_file``, which quarantines them."""
    from mlops_assets.core.sources import DataError, infer_format, parse_file
    from mlops_assets.spec_check import landing_problems

    frames = []
    for uri, content in landed:
        try:
            frames.append(parse_file(content, infer_format(uri, None), uri))
        except DataError:
            continue
    problems = landing_problems(spec, frames)
    return problems, bool(frames) and not problems
