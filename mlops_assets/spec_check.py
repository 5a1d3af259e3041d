"""Does a spec fit its data? Every problem found before any data is ingested, naming file and field.

Pydantic validates a spec's shape and its internal cross-references; it cannot know whether the
columns it names exist in the data, whether its estimator can be imported, or whether its timestamp
leaves out a part the data has (hourly data read without its hour puts every event of a day at
midnight). Without this module such a spec passed ``dagster definitions validate`` and failed only
once a file was ingested or a model trained, with a message naming the data file, not the spec.

Three levels, from cheap to thorough:

- ``static_problems``: no data, no heavy import (the estimator's module is located on disk, not
  imported). Runs when the code location loads, so ``dagster definitions validate`` fails on it.
- ``estimator_problems``: imports the estimator class and checks its parameters.
- ``column_problems``: the spec against the columns (and a sample of rows) of its source and lookup
  tables. ``mlops check`` reads samples of the spec's own files; the landing sensor uses the files
  that landed.

Plain Python (pandas only inside functions): no Dagster, so every caller can use it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_assets.specs import ColumnFeature, ModelSpec, SpecError, TimePartFeature, TimestampSpec

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_ROWS = 20_000
# Column names a dataset uses for the hour or minute of an event, when they are not in the timestamp.
HOUR_NAMES = ("hour", "hr", "hours", "hour_of_day", "hh")
MINUTE_NAMES = ("minute", "min", "minutes", "mi")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: the field a person has to edit (``features[3].column``) and why."""

    field: str
    message: str

    def render(self, spec: ModelSpec) -> str:
        return f"{spec.file}: {self.field}: {self.message}"


class SpecCheckError(SpecError):
    """A spec that does not fit its data or environment; the message lists every problem."""

    def __init__(self, spec: ModelSpec, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.render(spec) for p in problems))


def raise_for(spec: ModelSpec, problems: list[Problem]) -> None:
    if problems:
        raise SpecCheckError(spec, problems)


# --- estimator ----------------------------------------------------------------------------------


def _locate_module(name: str):
    """The module spec of a dotted module name, found on disk without importing any package of it
    (``importlib.util.find_spec('sklearn.ensemble')`` would import scikit-learn: ~1 s at load)."""
    parts = name.split(".")
    found = importlib.util.find_spec(parts[0])  # a top-level name: located, not imported
    for i in range(1, len(parts)):
        if found is None or not found.submodule_search_locations:
            return None
        found = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(found.submodule_search_locations))
    return found


def _defines_name(module_file: str, name: str) -> bool | None:
    """Whether a module's source mentions ``name`` as a word; None when it cannot tell (no source,
    or names made at run time through ``__getattr__`` or star imports)."""
    try:
        text = Path(module_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if "__getattr__" in text or "import *" in text or "lazy" in text:
        return None
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def static_problems(spec: ModelSpec) -> list[Problem]:
    """Problems found without data and without importing the estimator's library: its module must
    exist, and its module's source must define the class. Cheap enough for every code-location load."""
    path = spec.estimator.cls
    module, _, cls = path.rpartition(".")
    if not module or not cls:
        return [Problem("estimator.class", f"{path!r} is not an import path (module.Class)")]
    try:
        found = _locate_module(module)
    except (ImportError, ValueError) as exc:
        found, why = None, f" ({exc})"
    else:
        why = ""
    if found is None:
        return [Problem("estimator.class", f"module {module!r} of {path!r} cannot be found{why}; is it installed?")]
    if found.origin and found.origin.endswith(".py") and _defines_name(found.origin, cls) is False:
        return [Problem("estimator.class", f"module {module!r} has no class {cls!r}")]
    return []


def estimator_problems(spec: ModelSpec) -> list[Problem]:
    """Import the estimator class and check it is one and takes the spec's parameters (at check
    time, never at load: it imports the estimator's library)."""
    problems = static_problems(spec)
    if problems:
        return problems
    path = spec.estimator.cls
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        return [Problem("estimator.class", f"cannot import module {module!r}: {exc}")]
    except AttributeError:
        return [Problem("estimator.class", f"module {module!r} has no class {name!r}")]
    if not (inspect.isclass(cls) and hasattr(cls, "fit")):
        return [Problem("estimator.class", f"{path!r} is not an estimator class (a class with a fit method)")]
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    return [
        Problem(f"estimator.params.{k}", f"{name} takes no parameter {k!r} (it takes: {', '.join(params)})")
        for k in spec.estimator.params
        if k not in params
    ]


# --- columns ------------------------------------------------------------------------------------


def _missing(field: str, column: str, columns: list[str], what: str = "the source") -> Problem:
    shown = ", ".join(map(str, columns[:40])) + (", ..." if len(columns) > 40 else "")
    return Problem(field, f"{column!r} is not a column of {what} (columns: {shown})")


def _timestamp_columns(field: str, ts: TimestampSpec, columns: list[str], what: str) -> list[Problem]:
    problems = []
    if ts.column is not None and ts.column not in columns:
        problems.append(_missing(f"{field}.column", ts.column, columns, what))
    for part, col in (ts.parts or {}).items():
        if col not in columns:
            problems.append(_missing(f"{field}.parts.{part}", col, columns, what))
    return problems


def source_column_problems(spec: ModelSpec, columns: list[str]) -> list[Problem]:
    """Every column the spec reads from its event table that ``columns`` lacks, by field."""
    columns = [str(c) for c in columns]
    problems = _timestamp_columns("source.timestamp", spec.source.timestamp, columns, "the source")
    problems += [_missing(f"entities[{i}]", e, columns) for i, e in enumerate(spec.entities) if e not in columns]
    if spec.target.column not in columns:
        problems.append(_missing("target.column", spec.target.column, columns))
    for i, f in enumerate(spec.features):
        if isinstance(f, ColumnFeature) and f.source not in columns:
            field = f"features[{i}].column" if f.column else f"features[{i}].name"
            problems.append(_missing(field, f.source, columns))
    for kind in ("ranges", "null_fraction"):
        problems += [_missing(f"checks.{kind}.{c}", c, columns) for c in getattr(spec.checks, kind) if c not in columns]
    return problems


def lookup_column_problems(spec: ModelSpec, table: str, columns: list[str]) -> list[Problem]:
    """Every column a lookup table of the spec should have and ``columns`` lacks, by field."""
    t = spec.lookups[table]
    columns = [str(c) for c in columns]
    what = f"lookup table {table!r}"
    problems = [] if t.key in columns else [_missing(f"lookups.{table}.key", t.key, columns, what)]
    problems += [_missing(f"lookups.{table}.columns[{i}]", c, columns, what) for i, c in enumerate(t.columns) if c not in columns]
    if t.timestamp is not None:
        problems += _timestamp_columns(f"lookups.{table}.timestamp", t.timestamp, columns, what)
    return problems


def _whole_numbers(values: pd.Series, top: int) -> pd.Series | None:
    import pandas as pd

    v = pd.to_numeric(values, errors="coerce")
    if v.isna().all() or v.isna().mean() > 0.5:
        return None
    v = v.dropna()
    if not ((v == v.round()) & (v >= 0) & (v <= top)).all() or v.nunique() < 2:
        return None
    return v


def time_of_day_problems(spec: ModelSpec, sample: pd.DataFrame) -> list[Problem]:
    """The timestamp leaves out a part the data has: a column named like an hour (or minute) whose
    whole values vary within one day of the timestamp, while the timestamp holds dates only (or its
    parts leave that part out). Also a ``time_part`` feature of the hour read from dates only."""
    import pandas as pd

    ts = spec.source.timestamp
    if sample.empty or any(c not in sample.columns for c in ts.source_columns):
        return []
    parts = ts.parts or {}
    if ts.unit is not None:
        return []  # an epoch time carries its time of day
    if ts.column is not None:
        stamps = _sample_stamps(ts, sample)
        if stamps is None or stamps.isna().all():
            return []
        stamps = stamps.dropna()
        has_time = bool(((stamps - stamps.dt.normalize()) != pd.Timedelta(0)).any()) or "hour" in parts
        day_key = sample[ts.column].where(stamps.reindex(sample.index).notna()).map(lambda v: str(v)[:10])
    else:
        has_time = "hour" in parts
        day_key = sample[[parts["year"], parts["month"], parts["day"]]].astype(str).agg("-".join, axis=1)
    problems = []
    lower = {str(c).lower(): c for c in sample.columns}
    used = set(ts.source_columns)
    if not has_time:
        for name in HOUR_NAMES:
            col = lower.get(name)
            if col is None or col in used:
                continue
            hours = _whole_numbers(sample[col], 23)
            if hours is not None and bool((hours.groupby(day_key.loc[hours.index]).nunique() > 1).any()):
                fix = f"add parts: {{hour: {col}}}" if ts.column else "map it in parts.hour"
                problems.append(
                    Problem(
                        "source.timestamp",
                        f"the data is finer than a day (column {col!r} holds hours 0..23 within a day) but the "
                        f"timestamp reads {'dates only' if ts.column else 'year, month and day only'}: every event "
                        f"of a day would be read as midnight; {fix}",
                    )
                )
                break
    elif "hour" in parts and "minute" not in parts:
        hour_col = parts["hour"]
        for name in MINUTE_NAMES:
            col = lower.get(name)
            if col is None or col in used:
                continue
            minutes = _whole_numbers(sample[col], 59)
            if minutes is not None and bool(
                (minutes.groupby([day_key.loc[minutes.index], sample.loc[minutes.index, hour_col]]).nunique() > 1).any()
            ):
                problems.append(
                    Problem(
                        "source.timestamp.parts",
                        f"column {col!r} holds the minutes of events but the timestamp leaves them out: map it in parts.minute",
                    )
                )
                break
    if not has_time and not problems:
        for i, f in enumerate(spec.features):
            if isinstance(f, TimePartFeature) and f.part in ("hour", "minute_of_day"):
                problems.append(Problem(f"features[{i}].part", f"{f.part!r} of a timestamp that holds dates only is always 0"))
    return problems


def _sample_stamps(ts: TimestampSpec, sample: pd.DataFrame) -> pd.Series | None:
    """The sample's timestamps read as the spec reads them (NaT where a value does not parse), or
    None when the spec cannot read the column at all (``timestamp_problems`` says why)."""
    import pandas as pd

    from mlops_assets.core.sources import as_text, numbers_not_dates, parse_times

    raw = sample[ts.column]
    if ts.format is not None:
        return pd.to_datetime(as_text(raw), format=ts.format, errors="coerce")
    if numbers_not_dates(raw):
        return None
    stamps = parse_times(raw, ts.timezone)
    return stamps if stamps.dt.tz is None else stamps.dt.tz_convert(ts.timezone).dt.tz_localize(None)  # local wall times


def timestamp_problems(spec: ModelSpec, sample: pd.DataFrame) -> list[Problem]:
    """A timestamp column the spec cannot read: numbers without ``unit`` or ``format`` (1357372800
    read as a date is in January 1970), or a ``unit``/``format`` that reads none of the sample."""
    import pandas as pd

    ts = spec.source.timestamp
    if ts.column is None or ts.column not in sample.columns or sample[ts.column].notna().sum() == 0:
        return []
    raw = sample[ts.column]
    first = str(raw.dropna().iloc[0])
    if ts.unit is not None:
        read = pd.to_numeric(raw, errors="coerce")
        if read.notna().any():
            return []
        return [
            Problem(
                "source.timestamp.unit",
                f"column {ts.column!r} holds no numbers to read as epoch {ts.unit} (first value {first!r})",
            )
        ]
    stamps = _sample_stamps(ts, sample)
    if stamps is None:
        from mlops_assets.core.sources import NUMBERS_NOT_DATES

        return [Problem("source.timestamp.column", f"column {ts.column!r} {NUMBERS_NOT_DATES} (first value {first!r})")]
    if ts.format is not None and stamps.isna().all():
        return [Problem("source.timestamp.format", f"{ts.format!r} reads none of column {ts.column!r} (first value {first!r})")]
    return []


def frame_problems(spec: ModelSpec, frame: pd.DataFrame) -> list[Problem]:
    """The spec against one frame of its event table (a landed file or a sample of the source)."""
    problems = source_column_problems(spec, list(frame.columns))
    return problems + timestamp_problems(spec, frame) + time_of_day_problems(spec, frame) + number_problems(spec, frame)


def number_problems(spec: ModelSpec, frame: pd.DataFrame) -> list[Problem]:
    """Columns the spec reads as numbers (numeric features, a numeric target, ranges) whose sampled
    values are not numbers: found here, not by the first ingest run. Numbers written with a decimal
    comma or thousands separators are named as such, with the settings that read them."""
    import pandas as pd

    from mlops_assets.core.sources import separators_hint
    from mlops_assets.core.validation import numeric_columns

    fields = {f.source: f"features[{i}]" for i, f in enumerate(spec.features) if isinstance(f, ColumnFeature)}
    fields[spec.target.column] = "target.column"
    problems = []
    for column in numeric_columns(spec):
        if column not in frame.columns:
            continue
        values = frame[column].dropna()
        bad = values[pd.to_numeric(values, errors="coerce").isna()]
        if bad.empty:
            continue
        written = separators_hint(values)
        hint = f"; they are numbers written with {written[0]}: set {written[1]}" if written else ""
        problems.append(
            Problem(
                fields.get(column, f"checks.ranges.{column}"),
                f"column {column!r} is read as numbers, but {len(bad)} of {len(values)} sampled values are not (first {bad.iloc[0]!r}){hint}",
            )
        )
    return problems


def read_sample(path: str, fmt: str | None, rows: int = SAMPLE_ROWS, csv: dict | None = None) -> pd.DataFrame:
    """The first ``rows`` rows of a table (its first file when ``path`` is a glob), all as text like
    the landing zone reads them. Raises ``DataError`` naming the file."""
    import glob

    import pandas as pd

    from mlops_assets.core.sources import DataError, infer_format, read_csv_text, resolve_path

    resolved = resolve_path(path)
    files = sorted(glob.glob(resolved)) if glob.has_magic(resolved) else [resolved]
    if not files or not Path(files[0]).exists():
        raise DataError(f"{path}: no file matches" if glob.has_magic(resolved) else f"{resolved}: file not found")
    first = files[0]
    try:
        if infer_format(first, fmt) == "parquet":
            return pd.read_parquet(first).head(rows)
        return read_csv_text(first, csv, nrows=rows)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{first}: cannot read a sample: {exc} (csv.encoding says how the file is written, e.g. latin-1)"
        ) from exc
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{first}: cannot read a sample: {exc}") from exc


# Per process and spec content: the landing sensor ticks every 30 s and need not re-read the lookup
# tables nor re-import the estimator each time (the answers change only with the spec or the install).
_CACHE: dict[tuple[str, str, str], tuple[Problem, ...]] = {}


def _cached(kind: str, spec: ModelSpec, compute) -> list[Problem]:
    key = (kind, spec.file, spec.spec_hash)
    if key not in _CACHE:
        _CACHE[key] = tuple(compute(spec))
    return list(_CACHE[key])


def _read_lookups(spec: ModelSpec) -> list[Problem]:
    from mlops_assets.core.sources import DataError

    problems: list[Problem] = []
    for name, table in spec.lookups.items():
        try:
            sample = read_sample(table.path, table.format, rows=200, csv=table.csv.options())
        except DataError as exc:
            problems.append(Problem(f"lookups.{name}.path", str(exc)))
            continue
        problems += lookup_column_problems(spec, name, list(sample.columns))
    return problems


def lookup_problems(spec: ModelSpec) -> list[Problem]:
    """The spec's lookup tables against a sample of each (read once per process and spec)."""
    return _cached("lookups", spec, _read_lookups)


def landing_problems(spec: ModelSpec, frames: list[pd.DataFrame]) -> list[Problem]:
    """The spec against the files that landed for it (the landing sensor's first look): a column
    that none of them has is the spec's fault, not a file's; plus the estimator and lookup tables."""
    import pandas as pd

    problems = _cached("estimator", spec, estimator_problems) + lookup_problems(spec)
    if not frames:
        return problems
    columns = list(dict.fromkeys(str(c) for f in frames for c in f.columns))
    problems += source_column_problems(spec, columns)
    whole = [f for f in frames if set(spec.source.timestamp.source_columns) <= set(f.columns)]
    if whole:
        sample = pd.concat(whole, ignore_index=True).head(SAMPLE_ROWS)
        problems += timestamp_problems(spec, sample) + time_of_day_problems(spec, sample)
    return problems


def check_spec(spec: ModelSpec) -> list[Problem]:
    """Everything ``mlops check`` verifies: the estimator, and the spec against samples of its
    source and lookup tables."""
    from mlops_assets.core.sources import DataError

    problems = estimator_problems(spec)
    try:
        sample = read_sample(spec.source.path, spec.source.format, csv=spec.source.csv.options())
    except DataError as exc:
        problems.append(Problem("source.path", str(exc)))
    else:
        problems += frame_problems(spec, sample)
    return problems + lookup_problems(spec)
