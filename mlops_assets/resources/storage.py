"""Where files live: the landing zone, the quarantine and the lake of per-partition parquet files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import pandas as pd


class LakeStorage(dg.ConfigurableResource):
    """The platform's file storage.

    Layout under ``root``::

        landing/<spec>/<YYYY-MM-DD>.<ext>      files as they arrive (one per day)
        quarantine/<spec>/<file>               files refused, with <file>.reason.txt beside them
        lake/<stage>/<spec>/<YYYY-MM-DD>.parquet   one file per stage per daily partition
        lake/dataset_rejected/<spec>/…         partitions that failed a blocking check (kept for triage)
        lake/features/<spec>/<table>/<YYYY-MM>.parquet   Feast offline sources: one folder per
                                               feature view, one file per month of daily partitions

    Partitions are separate files, so rewriting one day (or failing to) never touches another.
    Feature tables are the exception, for the Feast offline store's sake: it reads a view's whole
    folder on every point-in-time join and every materialization, so with a file per day each of
    those reads grew with the days kept (a DuckDB scan of 900 day files took 0.12 s here). A month
    file is rewritten under a lock, atomically, with the other days' rows copied unchanged.
    """

    root: str = Field(description="Folder (local path) that holds landing zone, quarantine and lake.")

    def landing_dir(self, spec: str) -> Path:
        return Path(self.root) / "landing" / spec

    def landing_file(self, spec: str, day: str) -> Path | None:
        """The landed file for a day, whatever its extension (csv, csv.gz, parquet)."""
        matches = sorted(self.landing_dir(spec).glob(f"{day}.*"))
        return matches[0] if matches else None

    def land(self, spec: str, day: str, rows: pd.DataFrame) -> Path:
        """Drop one day's rows into ``landing/<spec>/<day>.csv``, atomically: the landing sensor
        must never see half a file."""
        folder = self.landing_dir(spec)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{day}.csv"
        tmp = folder / f".{path.name}.tmp"
        rows.to_csv(tmp, index=False)
        os.replace(tmp, path)
        return path

    def quarantine(self, spec: str, file: Path, reason: str) -> Path:
        target_dir = Path(self.root) / "quarantine" / spec
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / file.name
        shutil.move(str(file), target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        return target

    def path(self, stage: str, spec: str, name: str) -> Path:
        return Path(self.root) / "lake" / stage / spec / name

    def partition_path(self, stage: str, spec: str, day: str) -> Path:
        return self.path(stage, spec, f"{day}.parquet")

    def write(self, df: pd.DataFrame, path: Path) -> Path:
        """Write atomically (temp file + rename): a failed write never leaves half a partition."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def read(self, path: Path) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(path)

    def read_partitions(self, stage: str, spec: str, days: list[str]) -> pd.DataFrame | None:
        """Concatenate the partitions that exist among ``days`` (None when none exists)."""
        import pandas as pd

        frames = [pd.read_parquet(p) for d in days if (p := self.partition_path(stage, spec, d)).exists()]
        return pd.concat(frames, ignore_index=True) if frames else None

    def features_root(self, spec: str) -> Path:
        """Folder of a spec's Feast offline sources: one sub-folder of parquet files per feature view."""
        return Path(self.root) / "lake" / "features" / spec

    def feature_table_dir(self, spec: str, table: str) -> Path:
        return self.features_root(spec) / table

    def write_feature_day(self, spec: str, table: str, day: str, df: pd.DataFrame) -> Path:
        """Put one day's rows of a feature table into its month file, replacing the rows that day
        had (``_partition`` names each row's day)."""
        import fcntl

        import pandas as pd

        folder = self.feature_table_dir(spec, table)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{day[:7]}.parquet"
        with (folder / f".{day[:7]}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs writing days of one month wait for each other
            rows = df.assign(**{PARTITION_COLUMN: day})
            if path.exists():
                kept = pd.read_parquet(path)
                rows = pd.concat([kept[kept[PARTITION_COLUMN] != day], rows], ignore_index=True)
            self.write(rows, path)
            (folder / f"{day}.parquet").unlink(missing_ok=True)  # the one-file-per-day layout of earlier versions
        return path

    def read_feature_day(self, spec: str, table: str, day: str) -> pd.DataFrame | None:
        """One day's rows of a feature table (None when the day was never written)."""
        import pandas as pd

        path = self.feature_table_dir(spec, table) / f"{day[:7]}.parquet"
        if not path.exists():
            return None
        rows = pd.read_parquet(path, filters=[(PARTITION_COLUMN, "==", day)])
        return rows.drop(columns=[PARTITION_COLUMN]) if len(rows) else None


PARTITION_COLUMN = "_partition"  # the day a feature row was written for (a Feast source ignores it)
