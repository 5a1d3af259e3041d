"""The ``source:`` and ``lookups:`` sections of a spec: where a table is, how its files are written,
and how its timestamps are read (importable from ``mlops_assets.specs``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlops_assets.specs.base import StrictModel


class TimestampSpec(StrictModel):
    """How to read the moment an event happened.

    Either ``column`` (a parseable timestamp; ISO strings with ``Z`` are UTC) or ``parts`` (a mapping
    of year/month/day/hour/minute to columns, as many public datasets ship them). A ``column`` that
    holds dates only may take its time of day from ``parts`` with ``hour`` (and ``minute``): hourly
    data read without its hour would put every event of a day at midnight. Naive timestamps
    are read in ``timezone``; daily partitions are cut in that timezone too, so a flight scheduled at
    23:30 in New York belongs to that New York day.

    A ``column`` of numbers is not guessed at: ``unit`` reads it as time since 1970-01-01 UTC in
    seconds, milliseconds, microseconds or nanoseconds, and ``format`` reads dates written another
    way (``%Y%m%d`` for 20130105, ``%d/%m/%Y %H:%M``), as ``datetime.strptime`` does. Without them a
    column of numbers is refused: parsing 1357372800 as a date lands every event in January 1970.
    """

    column: str | None = None
    parts: dict[Literal["year", "month", "day", "hour", "minute"], str] | None = None
    timezone: str = "UTC"
    unit: Literal["s", "ms", "us", "ns"] | None = Field(None, description="epoch times in the column: their unit")
    format: str | None = Field(None, description="strptime format of the column's dates, e.g. '%Y%m%d'")

    @model_validator(mode="after")
    def _one_way(self) -> TimestampSpec:
        if self.column is None and self.parts is None:
            raise ValueError("timestamp needs 'column' or 'parts'")
        if self.column is not None and self.parts is not None:
            extra = sorted(set(self.parts) - {"hour", "minute"})
            if extra or "hour" not in self.parts:
                raise ValueError(
                    "timestamp with a date 'column' takes only the time of day from 'parts' (hour, and minute), "
                    f"not {extra or sorted(self.parts)}"
                )
        elif self.parts is not None and not {"year", "month", "day"} <= set(self.parts):
            raise ValueError("timestamp.parts needs at least year, month and day")
        if (self.unit or self.format) and self.column is None:
            raise ValueError("timestamp 'unit' and 'format' say how to read 'column'; the spec gives 'parts' only")
        if self.unit and self.format:
            raise ValueError("timestamp takes 'unit' (epoch numbers) or 'format' (written dates), not both")
        if self.unit and self.parts:
            raise ValueError("an epoch time carries its time of day: timestamp 'unit' takes no 'parts'")
        return self

    @property
    def source_columns(self) -> list[str]:
        return [*([self.column] if self.column else []), *(self.parts or {}).values()]


class CsvSpec(StrictModel):
    """How a table's CSV files are written, when not comma-separated UTF-8. The landing zone keeps
    the platform's own form: ``mlops land`` and a replay write each day comma-separated UTF-8."""

    sep: str = Field(",", min_length=1, max_length=1, description="the field separator: ';' or '\\t' or '|'")
    na_values: list[str] = Field(
        default_factory=list, description="text that also means a missing value (e.g. '?'), besides '', NA, NaN and null"
    )
    encoding: str = Field("utf-8", description="e.g. latin-1 for files from older tools")
    decimal: Literal[".", ","] = Field(
        ".",
        description="',' for numbers written 3,5: every column whose values all read as such numbers is read "
        "with a decimal point (text and dates are left as written)",
    )
    thousands: Literal["", ".", ",", " ", "'"] = Field(
        "",
        description="the separator of thousands in numbers such as 1.234,5 ('.', with decimal ','), 1,234.5 (',') "
        "or 1 234,5 (' ', which also matches the no-break spaces spreadsheets write); a column is read so only "
        "when all its values are such numbers, groups of three digits each",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {v!r}") from exc
        return v

    @model_validator(mode="after")
    def _separators_differ(self) -> CsvSpec:
        if self.decimal == self.sep:
            raise ValueError(
                f"csv: decimal and sep are both {self.sep!r}; a file with decimal commas separates fields with ';' or a tab"
            )
        if self.thousands and self.thousands == self.decimal:
            raise ValueError(f"csv: thousands and decimal are both {self.thousands!r}; a number could not be read one way")
        return self

    def options(self) -> dict:
        return {
            "sep": self.sep,
            "na_values": self.na_values,
            "encoding": self.encoding,
            "decimal": self.decimal,
            "thousands": self.thousands,
        }


class SourceSpec(StrictModel):
    """The event table: one row per event to predict (a flight, a half-hour of a market...).

    ``path`` is a file path or glob. ``${VAR}`` is expanded from the environment, and
    ``package://<distribution>/<file>`` points inside an installed package without importing it.
    """

    path: str
    format: Literal["csv", "parquet"] | None = None
    csv: CsvSpec = Field(default_factory=CsvSpec)
    timestamp: TimestampSpec


class LookupTableSpec(StrictModel):
    """A side table joined to events by key, point in time when it has a timestamp (e.g. hourly
    weather at the origin airport) or as static attributes when it has none (e.g. plane registry)."""

    path: str
    format: Literal["csv", "parquet"] | None = None
    csv: CsvSpec = Field(default_factory=CsvSpec)
    key: str = Field(description="Column of the table that matches an entity of the spec.")
    entity: str | None = Field(None, description="Entity it joins on; defaults to `key`.")
    timestamp: TimestampSpec | None = None
    ttl_hours: float = Field(24.0, gt=0, description="How old a row may be and still join.")
    columns: list[str]
    rename: dict[str, str] = Field(default_factory=dict)

    @property
    def join_entity(self) -> str:
        return self.entity or self.key

    @property
    def output_columns(self) -> list[str]:
        """Feature names the table provides, after ``rename``."""
        return [self.rename.get(c, c) for c in self.columns]
