"""Where files live: the landing zone, the quarantine, the lake, the prediction store, endpoint state
and alerts, under URIs the environment profile chooses (a local folder, ``s3://…`` or ``gs://…``).

Only this class and ``environments`` know the layout; every stage asks it for a location. Files go
through ``mlops_assets.files`` (fsspec), so the same code runs on a laptop and on an object store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from mlops_assets import files

if TYPE_CHECKING:
    import pandas as pd


class LakeStorage(dg.ConfigurableResource):
    """The platform's file storage.

    Layout under ``root`` (the landing zone may live elsewhere: ``landing_root``)::

        landing/<spec>/<YYYY-MM-DD>.<ext>      files as they arrive (one per day)
        quarantine/<spec>/<file>               files refused, with <file>.reason.txt beside them
        lake/<stage>/<spec>/<YYYY-MM-DD>.parquet   one file per stage per daily partition
        lake/dataset_rejected/<spec>/…         partitions that failed a blocking check (kept for triage)
        lake/features/<spec>/<table>/<YYYY-MM>.parquet   Feast offline sources: one folder per
                                               feature view, one file per month of daily partitions
        lake/requests|served/<spec>/<day>/…    the prediction store (``prediction_store``)
        endpoints/<spec>/deployment.json       what an endpoint should serve, and history/ (audit)
        alerts/<time>-<run>.json               one object per failed run

    Partitions are separate files, so rewriting one day (or failing to) never touches another.
    Feature tables are the exception, for the Feast offline store's sake: it reads a view's whole
    folder on every point-in-time join and every materialization, so with a file per day each of
    those reads grew with the days kept (a DuckDB scan of 900 day files took 0.12 s here; on an
    object store every file is a request). A month file is rewritten under a lock, atomically, with
    the other days' rows copied unchanged.
    """

    root: str = Field(description="URI (local folder, s3://bucket/prefix, gs://bucket/prefix) of lake, quarantine, state.")
    landing_root: str | None = Field(
        None, description="URI of the landing zone when it is not <root>/landing (e.g. its own bucket)."
    )

    # --- landing zone and quarantine ---------------------------------------------------------

    def landing_dir(self, spec: str) -> str:
        return files.join(self.landing_root or files.join(self.root, "landing"), spec)

    def landed(self, spec: str) -> list[files.Entry]:
        """The files waiting in a spec's landing folder (hidden work files excluded)."""
        return files.listing(self.landing_dir(spec))

    def landing_file(self, spec: str, day: str) -> str | None:
        """The landed file for a day, whatever its extension (csv, csv.gz, parquet)."""
        matches = [e.uri for e in files.listing(self.landing_dir(spec), prefix=f"{day}.")]
        return matches[0] if matches else None

    def land(self, spec: str, day: str, rows: pd.DataFrame) -> str:
        """Drop one day's rows into ``landing/<spec>/<day>.csv``, atomically: the landing sensor
        must never see half a file."""
        return files.write_bytes(files.join(self.landing_dir(spec), f"{day}.csv"), rows.to_csv(index=False).encode())

    def quarantine(self, spec: str, file: str, reason: str) -> str:
        """Move a refused file out of the landing zone, its reason written beside it."""
        target = files.join(self.root, "quarantine", spec, files.name_of(file))
        files.write_text(target + ".reason.txt", reason + "\n")
        return files.move(file, target)

    def quarantined(self, spec: str) -> list[files.Entry]:
        return files.listing(files.join(self.root, "quarantine", spec))

    # --- lake partitions ---------------------------------------------------------------------

    def path(self, stage: str, spec: str, name: str) -> str:
        return files.join(self.root, "lake", stage, spec, name)

    def partition_path(self, stage: str, spec: str, day: str) -> str:
        return self.path(stage, spec, f"{day}.parquet")

    def partitions(self, stage: str, spec: str) -> list[str]:
        """Days that have a partition file of a stage, oldest first."""
        return [e.name.removesuffix(".parquet") for e in files.listing(files.join(self.root, "lake", stage, spec), ".parquet")]

    def exists(self, uri: str) -> bool:
        return files.exists(uri)

    def delete(self, uri: str) -> None:
        files.delete(uri)

    def write(self, df: pd.DataFrame, uri: str) -> str:
        """Write atomically: a failed write never leaves half a partition."""
        return files.write_parquet(df, uri)

    def read(self, uri: str) -> pd.DataFrame:
        return files.read_parquet(uri)

    def read_partitions(self, stage: str, spec: str, days: list[str]) -> pd.DataFrame | None:
        """Concatenate the partitions that exist among ``days`` (None when none exists)."""
        present = set(self.partitions(stage, spec))
        return self.read_days(stage, spec, [d for d in days if d in present])

    def read_days(self, stage: str, spec: str, days: list[str]) -> pd.DataFrame | None:
        """Concatenate the partitions of ``days``, which the caller knows exist (None for no day)."""
        import pandas as pd

        frames = [self.read(self.partition_path(stage, spec, d)) for d in days]
        return pd.concat(frames, ignore_index=True) if frames else None

    # --- Feast offline sources ---------------------------------------------------------------

    def features_root(self, spec: str) -> str:
        """Folder of a spec's Feast offline sources: one sub-folder of parquet files per feature view."""
        return files.join(self.root, "lake", "features", spec)

    def feature_table_dir(self, spec: str, table: str) -> str:
        return files.join(self.features_root(spec), table)

    def lookup_snapshot_path(self, spec: str, table: str) -> str:
        """The Feast offline source of a lookup table (``lookups.<table>``): its one snapshot file."""
        from mlops_assets.core.names import lookup_view_name

        return files.join(self.feature_table_dir(spec, lookup_view_name(table)), "snapshot.parquet")

    def write_feature_day(self, spec: str, table: str, day: str, df: pd.DataFrame) -> str:
        """Put one day's rows of a feature table into its month file, replacing the rows that day
        had (``_partition`` names each row's day)."""
        import pandas as pd

        folder = self.feature_table_dir(spec, table)
        path = files.join(folder, f"{day[:7]}.parquet")
        with files.lock(files.join(folder, f".{day[:7]}.lock")):  # two runs writing days of one month wait
            rows = df.assign(**{PARTITION_COLUMN: day})
            if files.exists(path):
                kept = files.read_parquet(path)
                rows = pd.concat([kept[kept[PARTITION_COLUMN] != day], rows], ignore_index=True)
            self.write(rows, path)
            files.delete(files.join(folder, f"{day}.parquet"))  # the one-file-per-day layout of earlier versions
        return path

    def read_feature_day(self, spec: str, table: str, day: str) -> pd.DataFrame | None:
        """One day's rows of a feature table (None when the day was never written)."""
        path = files.join(self.feature_table_dir(spec, table), f"{day[:7]}.parquet")
        if not files.exists(path):
            return None
        rows = files.read_parquet(path, filters=[(PARTITION_COLUMN, "==", day)])
        return rows.drop(columns=[PARTITION_COLUMN]) if len(rows) else None

    # --- serving and operations ----------------------------------------------------------------

    def predictions_root(self) -> str:
        """Root of the prediction store (``prediction_store``): requests and served rows per spec and day."""
        return files.join(self.root, "lake")

    def endpoint_dir(self, spec: str) -> str:
        """An endpoint's desired deployment and audit history (``endpoint_state``)."""
        return files.join(self.root, "endpoints", spec)

    def alerts_dir(self) -> str:
        return files.join(self.root, "alerts")


PARTITION_COLUMN = "_partition"  # the day a feature row was written for (a Feast source ignores it)
