"""Ingest stage: the landed file becomes ``<spec>/raw``, then the typed ``<spec>/dataset``.

Raw keeps the file as it arrived (every column, as text) so any later change to typing or cleaning
can be replayed from it. The dataset is typed and labelled, and five blocking checks (schema, nulls,
ranges, row count, duplicates) stop everything downstream of a bad partition in the same run.

A file the ingest refuses (unreadable, truncated, missing a column, a value that is not a number or a
time, rows of another day) is moved to ``quarantine/<spec>/`` with its reason, like the files the
landing sensor refuses, and nothing of it enters the lake: the raw step types the whole file before
writing anything, so the refusal names the file's own rows, and a day ingested earlier keeps its
partitions. A partition that parses but breaks a rule of the spec is different: it is kept under
``lake/dataset_rejected/`` for triage, and blocks downstream through its checks.
"""

import hashlib

import dagster as dg

from mlops_assets.common import asset_kwargs, check_result, daily_partitions, day_of, failure, key, table_metadata
from mlops_assets.core.names import LABEL
from mlops_assets.resources import LakeStorage
from mlops_assets.specs import ModelSpec

CHECKS = {
    "schema": "Typed columns the spec expects are present, numeric where declared numeric.",
    "nulls": "Share of missing values per column within the spec's limits.",
    "ranges": "Numeric columns within the spec's declared ranges.",
    "row_count": "Enough labelled rows in the partition.",
    "duplicates": "No event twice in the day (same event id, or identical rows): dropped or blocking, as the spec's "
    "checks.duplicates says.",
}


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    parts = daily_partitions(spec)
    name = spec.name

    def spec_does_not_fit(df, file: str, lake: LakeStorage) -> None:
        """Fail the run, naming the spec file and field, when the spec itself cannot read the file.

        Data hourly within a day read by date only is always the spec's fault. A column the spec
        names and the file lacks is the spec's fault while nothing was ever ingested for it (the
        landing sensor decides the same way on its first look): the file is left where it is, not
        quarantined. Once a day was ingested, a missing column is the file's fault (quarantined)."""
        from mlops_assets.spec_check import SpecCheckError, source_column_problems, time_of_day_problems

        problems = time_of_day_problems(spec, df)
        # the lake is listed only for a missing column: its raw folder grows by a file a day
        if not problems and (missing := source_column_problems(spec, list(df.columns))):
            problems = [] if lake.partitions("raw", name) else missing
        if problems:
            error = SpecCheckError(spec, problems)
            raise failure(f"spec {spec.file} does not fit {file}:\n{error}", spec_file=spec.file, landed_file=file)

    @dg.asset(
        **asset_kwargs(
            "raw",
            spec,
            "The day's landed file, as it arrived (every column kept as text). Fails, naming the file "
            "and column, when the file is malformed or lacks a column the spec needs.",
            {"csv", "parquet"},
        ),
        partitions_def=parts,
    )
    def raw(context: dg.AssetExecutionContext, lake: LakeStorage) -> dg.MaterializeResult:
        from mlops_assets import files
        from mlops_assets.core.sources import DataError, infer_format, parse_file, require_columns
        from mlops_assets.core.validation import clean_events

        day = context.partition_key
        file = lake.landing_file(name, day)
        if file is None:
            raise failure(
                f"no file landed for {day} in {lake.landing_dir(name)}; land one with `mlops land --spec {name} --date {day}`",
                landing_dir=lake.landing_dir(name),
            )
        content = files.read_bytes(file)
        try:
            df = parse_file(content, infer_format(file, None), file)
            spec_does_not_fit(df, file, lake)
            require_columns(df, spec.required_source_columns, file, name)
            # Typed here once before anything is written (the dataset step types it again): a file
            # refused for a value names the file's own row and column, and never enters the lake.
            clean_events(df, spec, day_of(day), where=file)
        except DataError as exc:
            raise refuse(context, lake, file, str(exc)) from exc
        out = lake.write(df, lake.partition_path("raw", name, day))
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(df),
                "source_file": dg.MetadataValue.path(file),
                "sha256": hashlib.sha256(content).hexdigest(),
                "columns": len(df.columns),
                "path": dg.MetadataValue.path(out),
            }
        )

    check_specs = [
        dg.AssetCheckSpec(check, asset=key("dataset", spec), blocking=True, description=desc) for check, desc in CHECKS.items()
    ]

    @dg.asset(
        **asset_kwargs(
            "dataset",
            spec,
            f"Typed and labelled events of one day. Label: {spec.target.column} "
            f"({spec.target.task}); rows with a missing target: {spec.target.missing}. "
            "Blocking checks stop downstream steps when the partition breaks a rule of the spec; such a "
            "partition is kept under lake/dataset_rejected/ and never feeds features or training.",
            {"pandas", "parquet"},
        ),
        partitions_def=parts,
        deps=[key("raw", spec)],
        check_specs=check_specs,
    )
    def dataset(context: dg.AssetExecutionContext, lake: LakeStorage) -> dg.MaterializeResult:
        from mlops_assets.core.sources import DataError
        from mlops_assets.core.validation import (
            clean_events,
            dataset_checks,
            duplicates_check,
            find_duplicates,
            without_duplicates,
        )

        day = context.partition_key
        raw_path = lake.partition_path("raw", name, day)
        raw_rows = lake.read(raw_path)
        duplicates = find_duplicates(raw_rows)
        if duplicates.count and spec.checks.duplicates == "drop":
            raw_rows = without_duplicates(raw_rows, duplicates)  # each event once; the check reports the drop
        try:
            df = clean_events(raw_rows, spec, day_of(day), where=f"{raw_path} (landed {day})")
        except DataError as exc:
            # The raw step typed this file already, so only a change of the rules since gets here: the raw
            # partition (always the day's latest landed file) goes, and the file if still landed.
            lake.delete(raw_path)
            file = lake.landing_file(name, day)
            if file is None:
                raise failure(f"{exc}; the raw partition {raw_path} was removed from the lake", raw=raw_path) from exc
            raise refuse(context, lake, file, str(exc)) from exc
        outcomes = [*dataset_checks(df, spec), duplicates_check(duplicates, spec, f"the file landed for {day}")]
        accepted = all(o.passed for o in outcomes)
        # Only validated partitions enter the lake that features and training read; a rejected one
        # is kept aside for triage and never replaces a partition validated earlier.
        valid_path, rejected_path = lake.partition_path("dataset", name, day), lake.partition_path("dataset_rejected", name, day)
        if accepted:
            out = lake.write(df, valid_path)
            lake.delete(rejected_path)
        else:
            out = lake.write(df, rejected_path)
        label_stat = "positive_rate" if spec.target.task == "classification" else "label_mean"
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(df),
                label_stat: float(df[LABEL].mean()) if len(df) else float("nan"),
                "accepted": accepted,
                "path": dg.MetadataValue.path(out),
                "preview": table_metadata(df.head(10)),
            },
            check_results=[
                check_result(
                    o, dg.AssetCheckSeverity.WARN if o.name == "duplicates" and o.passed else dg.AssetCheckSeverity.ERROR
                )
                for o in outcomes
            ],
        )

    def refuse(context: dg.AssetExecutionContext, lake: LakeStorage, file: str, reason: str) -> dg.Failure:
        """Quarantine a landed file the ingest refuses, with its reason beside it (as the landing
        sensor does), and the run failure that says so. A partition the day had before is kept:
        nothing already ingested is lost."""
        target = lake.quarantine(name, file, reason)
        context.log.warning(f"quarantined {file} -> {target}: {reason}")
        return failure(
            f"{reason}\nThe file was moved to {target} (reason in {target}.reason.txt); nothing of it entered the lake.",
            file=file,
            quarantined=target,
        )

    return [raw, dataset]
