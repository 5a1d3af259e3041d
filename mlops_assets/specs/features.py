"""The label and the features of a spec: what the model learns and what it reads (importable from
``mlops_assets.specs``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from mlops_assets.specs.base import StrictModel


class TargetSpec(StrictModel):
    """The label. For classification, ``positive`` says which rows are the positive class:
    ``greater_than`` a number, or ``equals`` a value. ``missing`` says what a row whose target is
    missing means (``drop`` it, or count it as ``positive`` / ``negative``); the choice is a
    modelling decision and the spec must say why in ``missing_reason``."""

    column: str
    task: Literal["classification", "regression"]
    positive: dict[Literal["greater_than", "equals"], Any] | None = None
    missing: Literal["drop", "positive", "negative"] = "drop"
    missing_reason: str | None = None
    label_delay_days: int = Field(
        0,
        ge=0,
        description="Days after its events that a day's labels are known. A landed file whose target "
        "column is entirely empty carries labels still to come: its rows are kept unlabelled, and the "
        "same day's file is landed again once its labels exist.",
    )
    relative_to: str | None = Field(
        None,
        description="A regression only: the name of a past_rate feature (a recent level of this target, "
        "such as yesterday's mean by station). The model learns the target's deviation from that level and "
        "predicts level + deviation, so it follows a level that moves from day to day without being "
        "retrained for it (core.relative_target).",
    )

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.task == "classification":
            if not self.positive or len(self.positive) != 1:
                raise ValueError("a classification target needs exactly one of positive.greater_than / positive.equals")
        elif self.positive or self.missing in ("positive", "negative"):
            raise ValueError("a regression target takes neither 'positive' nor missing=positive/negative")
        if self.missing != "drop" and not self.missing_reason:
            raise ValueError("target.missing_reason must explain why missing targets are not dropped")
        return self


class ColumnFeature(StrictModel):
    """A column of the event row, used as is."""

    kind: Literal["column"]
    name: str
    column: str | None = None
    type: Literal["numeric", "categorical"] = "numeric"

    @property
    def source(self) -> str:
        return self.column or self.name


class TimePartFeature(StrictModel):
    """A calendar part of the event timestamp, in the spec's timezone."""

    kind: Literal["time_part"]
    name: str
    part: Literal["hour", "weekday", "month", "dayofyear", "minute_of_day"]
    type: Literal["numeric", "categorical"] = "numeric"


class PastRateFeature(StrictModel):
    """Mean of the label per group over the ``window_days`` days *before* the event's day.

    Computed once per day from history only (never the day itself), so it is leak-free by
    construction; smoothed towards the window's overall rate with ``prior_weight`` pseudo-events so a
    group seen twice does not get a rate of 0 or 1. Days without labelled events (a day the checks
    refused, a day the source lacks) do not count: the window reaches back over them, by at most
    ``lookback_days`` in all.
    """

    kind: Literal["past_rate"]
    name: str
    by: list[str]
    window_days: int = Field(28, ge=1)
    prior_weight: float = Field(20.0, ge=0)

    @property
    def lookback_days(self) -> int:
        """How far back the window may reach over days without labels: as many days again as the
        window, and at least a week. A level read from yesterday (``window_days: 1``) then survives a
        refused day or a weekend without data, instead of being missing the day after; an outage
        longer than that leaves the rate missing (the prior) rather than reading a stale one."""
        return self.window_days + max(self.window_days, 7)


class LookupFeature(StrictModel):
    """A column of a lookup table, joined point in time by Feast."""

    kind: Literal["lookup"]
    name: str
    table: str
    column: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


class YearsSinceFeature(StrictModel):
    """Years between a year-valued feature (e.g. the year a plane was built) and the event."""

    kind: Literal["years_since"]
    name: str
    of: str


FeatureSpec = Annotated[
    ColumnFeature | TimePartFeature | PastRateFeature | LookupFeature | YearsSinceFeature,
    Field(discriminator="kind"),
]
