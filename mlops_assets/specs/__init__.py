"""Model specs: one YAML file describes one model, and the asset factory turns it into assets.

A spec is data, not code. Adding a model to the platform means adding a YAML file to this folder
(bundled specs) or pointing ``MLOPS_SPECS`` at more files or folders (``os.pathsep``-separated).
Everything that varies between models lives here: where the data comes from, what the label is,
which features exist and how they are computed, which estimator to fit, how long the training
window is and what "better" means for the promotion gate.

The target and features, source and lookup tables, serving and compute sections live in
``specs.features``, ``specs.sources``, ``specs.serving`` and ``specs.compute`` (importable from
here). This package imports only pydantic and PyYAML, so the code location stays cheap to load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mlops_assets.specs.base import StrictModel

# the sections of their own modules, importable from here as before
from mlops_assets.specs.compute import ComputeSpec
from mlops_assets.specs.compute import StepResources as StepResources
from mlops_assets.specs.compute import TrainStepResources as TrainStepResources
from mlops_assets.specs.features import ColumnFeature as ColumnFeature
from mlops_assets.specs.features import FeatureSpec, TargetSpec
from mlops_assets.specs.features import LookupFeature as LookupFeature
from mlops_assets.specs.features import PastRateFeature as PastRateFeature
from mlops_assets.specs.features import TimePartFeature as TimePartFeature
from mlops_assets.specs.features import YearsSinceFeature as YearsSinceFeature
from mlops_assets.specs.serving import CanarySpec as CanarySpec
from mlops_assets.specs.serving import DeploymentSpec
from mlops_assets.specs.serving import KubernetesTargetSpec as KubernetesTargetSpec
from mlops_assets.specs.serving import SageMakerTargetSpec as SageMakerTargetSpec
from mlops_assets.specs.serving import UnknownEntitySpec as UnknownEntitySpec
from mlops_assets.specs.sources import CsvSpec as CsvSpec
from mlops_assets.specs.sources import LookupTableSpec, SourceSpec
from mlops_assets.specs.sources import TimestampSpec as TimestampSpec

BUNDLED_SPEC_DIR = Path(__file__).parent
SPEC_PATHS_ENV = "MLOPS_SPECS"
DEFS_DIR = BUNDLED_SPEC_DIR.parent / "defs"  # Dagster components (``dg scaffold defs``), see mlops_assets.components
COMPONENT_TYPE = "mlops_assets.components.ModelSpecComponent"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class EstimatorSpec(StrictModel):
    """A scikit-learn estimator by import path, with its constructor parameters."""

    cls: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)
    categorical_encoding: Literal["ordinal", "onehot"] = "ordinal"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TrainingSpec(StrictModel):
    """Trailing window of daily partitions used to train, and the newest days held out so
    challenger and champion are compared on the same unseen data."""

    window_days: int = Field(28, ge=2)
    holdout_days: int = Field(3, ge=1)
    min_rows: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _fits(self) -> TrainingSpec:
        if self.holdout_days >= self.window_days:
            raise ValueError("training.holdout_days must be smaller than training.window_days")
        return self


class PromotionSpec(StrictModel):
    """The gate: the challenger replaces the champion if it is at least ``margin`` better on the
    same holdout (so with ``margin: 0`` a tie goes to the challenger, trained on newer data).

    With ``confidence`` the point estimate is not enough: a paired test on the holdout
    (``core.evidence``: Diebold-Mariano on per-row losses, DeLong for roc_auc, a block bootstrap
    for f1) must reject "the challenger is at most ``margin`` better" at that confidence, so a
    challenger that wins a short holdout by chance keeps the champion serving, and a tie does too."""

    metric: Literal["roc_auc", "accuracy", "log_loss", "f1", "rmse", "mae", "r2"]
    margin: float = Field(0.0, ge=0)
    confidence: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="How sure a paired test on the holdout must be that the challenger is more than margin better "
        "(e.g. 0.9); unset: the point estimate decides.",
    )


class ChecksSpec(StrictModel):
    """Rules the typed dataset must meet before anything downstream runs (blocking checks)."""

    min_rows: int = Field(1, ge=0)
    max_null_fraction: float = Field(0.5, ge=0, le=1)
    null_fraction: dict[str, float] = Field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    duplicates: Literal["drop", "block"] = Field(
        "drop",
        description="Events repeated within a day (the same event id, or identical rows): 'drop' keeps the first "
        "and reports how many were dropped; 'block' fails the blocking duplicates check.",
    )


RetrainWhen = Literal["newly_failed", "failing", "never"]
RETRAIN_WHEN_HELP = (
    "When this check retrains the model: 'newly_failed' once when it turns from passing to failing; "
    "'failing' whenever its newest result since the last training is a failure (so a challenger the "
    "gate rejected is followed by another once the cooldown is over); 'never' shows the verdict "
    "without acting on it."
)


class DriftPolicy(StrictModel):
    """How drift of a day's features and scores against the champion's training reference is judged.

    ``method`` ``auto`` picks the test per column (see ``mlops_assets.core.drift``); ``drift_share``
    is the share of drifted features that makes the day drifted; windows with fewer than ``min_rows``
    rows are not judged. ``window_days`` > 1 judges the newest days together: a small day's
    sampling noise is not drift. ``reference_rows`` is how many training rows are stored with each model.
    ``retrain_when`` says how a failing drift check (features or scores) retrains the model.
    """

    method: Literal["auto", "wasserstein", "ks", "jensenshannon", "chisquare", "z", "psi"] = "auto"
    drift_share: float = Field(0.5, gt=0, le=1)
    min_rows: int = Field(30, ge=1)
    window_days: int = Field(1, ge=1, description="Scored days (ending with the newest) judged together.")
    reference_rows: int = Field(50_000, ge=100)
    retrain_when: RetrainWhen = Field("newly_failed", description=RETRAIN_WHEN_HELP)


class PerformancePolicy(StrictModel):
    """Concept drift: the realised metric on labelled days may fall at most ``tolerated_drop`` below
    the champion's holdout metric (for error metrics: rise at most that much above it). The realised
    metric pools the newest ``window_days`` labelled days, counting only the events the current
    champion served (a new champion is not blamed for its predecessor's days). With ``relative`` the
    drop is a fraction of the holdout metric (an RMSE of 80 may rise by 20 % rather than by 0.05).

    ``retrain_when: failing`` fits series whose days are strongly autocorrelated (Elec2's half-hours):
    there the check fails in long runs, a *new* failure is rare, and a rejected challenger would
    otherwise leave a failing champion in place until its freshness runs out."""

    tolerated_drop: float = Field(0.05, ge=0)
    relative: bool = Field(False, description="tolerated_drop is a fraction of the holdout metric.")
    min_rows: int = Field(30, ge=1)
    window_days: int = Field(1, ge=1, description="Labelled days (ending with the newest) judged together.")
    retrain_when: RetrainWhen = Field("newly_failed", description=RETRAIN_WHEN_HELP)


class FreshnessSpec(StrictModel):
    """How old data and models may get (Dagster ``FreshnessPolicy.time_window``): features should
    arrive at least every ``features_hours``; a model older than ``model_days`` is retrained; an
    endpoint whose deployment was last applied and verified more than ``endpoint_hours`` ago is stale
    (the UI flags it; the canary sensor re-verifies endpoints with a rollout in progress)."""

    features_hours: float | None = Field(48.0, gt=0)
    model_days: float | None = Field(30.0, gt=0)
    endpoint_hours: float | None = Field(24.0, gt=0)


class PoliciesSpec(StrictModel):
    """When the model retrains by itself: a drift or performance check newly fails (or, per the
    check's ``retrain_when``, keeps failing), the model's freshness fails, or its code version
    changes; never within ``cooldown_days`` of the last training, never beyond the retrain budget
    (``budget_days``: the cooldown bounds how close two retrains come, the budget how many there are
    over months, whatever the monitoring says), never while it is already training, never while an
    upstream blocking check fails.
    ``retrain`` replaces those triggers by ``static`` (never) or ``cron:N`` (every N days)."""

    drift: DriftPolicy = DriftPolicy()
    performance: PerformancePolicy = PerformancePolicy()
    freshness: FreshnessSpec = FreshnessSpec()
    cooldown_days: float = Field(7.0, ge=0)
    budget_days: float | None = Field(
        None,
        gt=0,
        description="Retrain budget: on average at most one retrain per budget_days days, counted from the "
        "model's first training (10: at most 10 % of the retrains of 'cron:1'). A trigger that fires while the "
        "budget is spent waits, as in the cooldown, until enough days have passed. Unset: no budget.",
    )
    retrain: str = Field(
        "default",
        pattern=r"^(default|static|cron:[1-9][0-9]*)$",
        description="'default': retrain on the triggers above; 'static': never retrain after the first "
        "model; 'cron:N': retrain every N days whatever the monitoring says (the peers replays compare to).",
    )

    @property
    def cron_days(self) -> int | None:
        return int(self.retrain.split(":", 1)[1]) if self.retrain.startswith("cron:") else None


class PartitionsSpec(StrictModel):
    start: date
    end: date | None = Field(None, description="Exclusive; open-ended when absent.")


class ModelSpec(StrictModel):
    """One model on the platform. See the bundled ``flight_delays.yaml`` for a commented example."""

    name: str
    description: str
    owners: list[str] = Field(default_factory=list)
    source: SourceSpec
    entities: list[str] = Field(default_factory=list)
    lookups: dict[str, LookupTableSpec] = Field(default_factory=dict)
    target: TargetSpec
    features: list[FeatureSpec]
    estimator: EstimatorSpec
    training: TrainingSpec = TrainingSpec()
    promotion: PromotionSpec
    checks: ChecksSpec = ChecksSpec()
    policies: PoliciesSpec = PoliciesSpec()
    partitions: PartitionsSpec
    deployment: DeploymentSpec | None = Field(None, description="Omitted: batch scoring only, no endpoint asset.")
    compute: ComputeSpec = ComputeSpec()
    # Where the spec was read from, so that a problem found later (a column the data does not have,
    # an estimator that cannot be imported) names the file a person has to edit. A private
    # attribute: not part of the spec's content, its hash or its dumps.
    _file: str | None = PrivateAttr(default=None)

    @property
    def file(self) -> str:
        """The spec's file as it was given to ``load_spec``, or ``<spec NAME>`` for a spec built in code."""
        return self._file or f"<spec {self.name}>"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"spec name {v!r} must be lower_snake_case (it becomes asset and Feast names)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        names = [f.name for f in self.features]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"feature names repeated: {sorted(dupes)}")
        for f in self.features:
            if isinstance(f, PastRateFeature):
                missing = [c for c in f.by if c not in self.entities]
                if missing:
                    raise ValueError(f"feature {f.name!r}: group columns {missing} are not declared entities")
            if isinstance(f, LookupFeature):
                if f.table not in self.lookups:
                    raise ValueError(f"feature {f.name!r}: unknown lookup table {f.table!r}")
                table = self.lookups[f.table]
                if f.source not in table.output_columns:
                    raise ValueError(f"feature {f.name!r}: lookups.{f.table} provides {table.output_columns}, not {f.source!r}")
            if isinstance(f, YearsSinceFeature) and f.of not in names:
                raise ValueError(f"feature {f.name!r}: 'of' names unknown feature {f.of!r}")
        # Entities are keys (Feast joins and groups by them as text), so their column is read as text:
        # a numeric feature or a range of the same column would see strings (the range check crashed).
        text = {*self.entities, *(f.source for f in self.features if isinstance(f, ColumnFeature) and f.type == "categorical")}
        for i, f in enumerate(self.features):
            if isinstance(f, ColumnFeature) and f.type == "numeric" and f.source in self.entities:
                raise ValueError(
                    f"features[{i}] {f.name!r}: column {f.source!r} is an entity, read as text (a key to group and "
                    "join by), so it cannot also be a numeric feature: declare it type: categorical, or for the hour "
                    "of the timestamp use a time_part feature"
                )
        ranged = sorted(c for c in self.checks.ranges if c in text)
        if ranged:
            raise ValueError(
                f"checks.ranges: {ranged} are read as text (entities or categorical features); ranges apply to numbers"
            )
        for tname, table in self.lookups.items():
            if table.join_entity not in self.entities:
                raise ValueError(f"lookups.{tname}: entity {table.join_entity!r} is not a declared entity")
        task_metrics = {"classification": {"roc_auc", "accuracy", "log_loss", "f1"}, "regression": {"rmse", "mae", "r2"}}
        if self.deployment is not None:
            online = set(self.entity_keyed_features)
            stray = sorted(set(self.deployment.unknown_entity.defaults) - online)
            if stray:
                raise ValueError(
                    f"deployment.unknown_entity.defaults: {stray} are not online features (past rates or lookups); "
                    f"online features: {sorted(online)}"
                )
        if self.target.relative_to is not None:
            rates = [f.name for f in self.past_rate_features]
            if self.target.task != "regression":
                raise ValueError("target.relative_to: a level to predict relative to needs a regression target")
            if self.target.relative_to not in rates:
                raise ValueError(
                    f"target.relative_to: {self.target.relative_to!r} is not a past_rate feature of this spec "
                    f"(past_rate features: {rates or 'none'}); the level must be a past rate of the target"
                )
        if self.promotion.metric not in task_metrics[self.target.task]:
            raise ValueError(f"promotion.metric {self.promotion.metric!r} does not fit a {self.target.task} target")
        return self

    # --- derived views the factory and the core use -------------------------------------------

    @property
    def spec_hash(self) -> str:
        """Stable hash of the spec's content: any change to the spec changes code versions, except to
        ``compute`` (how big a step's container is changes no result)."""
        payload = json.dumps(self.model_dump(mode="json", by_alias=True, exclude={"compute"}), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if getattr(f, "type", "numeric") == "categorical"]

    @property
    def row_features(self) -> list[ColumnFeature | TimePartFeature]:
        return [f for f in self.features if isinstance(f, (ColumnFeature, TimePartFeature))]

    @property
    def past_rate_features(self) -> list[PastRateFeature]:
        return [f for f in self.features if isinstance(f, PastRateFeature)]

    @property
    def past_rate_lookback_days(self) -> int:
        """The days before a day its past rates may read (0 without past rates): what the features
        asset reads, what a replay's warm-up ingests and what the backtest keeps before its start."""
        return max((f.lookback_days for f in self.past_rate_features), default=0)

    @property
    def lookup_features(self) -> list[LookupFeature]:
        return [f for f in self.features if isinstance(f, LookupFeature)]

    @property
    def timed_lookups(self) -> list[str]:
        """Lookup tables with a timestamp (hourly weather) that a feature reads: joined point in time,
        so serving them needs the request's event time."""
        used = {f.table for f in self.lookup_features}
        return [name for name, table in self.lookups.items() if table.timestamp and name in used]

    @property
    def served_timed_lookups(self) -> list[str]:
        """The timed lookups an endpoint serves: the online store must follow them through the day,
        not only at each day's ingest (``online_lookups``)."""
        return self.timed_lookups if self.deployment is not None else []

    @property
    def entity_keyed_features(self) -> list[str]:
        """Names of the features keyed by an entity (past rates, lookups): what Feast joins point in
        time for training and scoring, and what the server reads from the online store."""
        return [f.name for f in self.past_rate_features] + [f.name for f in self.lookup_features]

    @property
    def derived_features(self) -> list[YearsSinceFeature]:
        return [f for f in self.features if isinstance(f, YearsSinceFeature)]

    @property
    def required_source_columns(self) -> list[str]:
        """Columns a landed file must have: timestamp, entities, target and row features."""
        cols = [*self.source.timestamp.source_columns, *self.entities, self.target.column]
        cols += [f.source for f in self.row_features if isinstance(f, ColumnFeature)]
        return list(dict.fromkeys(cols))

    @property
    def higher_is_better(self) -> bool:
        return self.promotion.metric not in ("log_loss", "rmse", "mae")


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the file."""


def load_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """A spec file, or a ``defs.yaml`` of a ``ModelSpecComponent`` (its ``attributes`` are the spec)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict) and raw.get("type") == COMPONENT_TYPE:
            raw = raw.get("attributes")
        spec = ModelSpec.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read spec: {exc}") from exc
    except ValueError as exc:
        raise SpecError(f"{path}: invalid spec: {exc}") from exc
    spec._file = str(path)
    return spec


def component_spec_files() -> list[Path]:
    """The ``defs.yaml`` files under ``mlops_assets/defs/`` that declare a ``ModelSpecComponent``
    (a text match on the ``type`` line: reading them is the loader's job)."""
    marker = re.compile(rf"^type:\s*['\"]?{re.escape(COMPONENT_TYPE)}['\"]?\s*$", re.MULTILINE)
    return [p for p in sorted(DEFS_DIR.rglob("defs.yaml")) if marker.search(p.read_text())]


def spec_files(include_components: bool = True) -> list[Path]:
    """The bundled specs, plus any files or folders listed in ``MLOPS_SPECS``, plus (by default)
    the ``ModelSpecComponent``s in ``mlops_assets/defs/``."""
    files = sorted(BUNDLED_SPEC_DIR.glob("*.yaml"))
    for entry in filter(None, os.environ.get(SPEC_PATHS_ENV, "").split(os.pathsep)):
        p = Path(entry)
        files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    return files + (component_spec_files() if include_components else [])


def load_specs(include_components: bool = True) -> list[ModelSpec]:
    """Every spec (``spec_files``). The code location leaves the components out: Dagster's loader
    builds those from ``defs/`` (``mlops_assets.definitions``)."""
    specs: dict[str, ModelSpec] = {}
    for f in spec_files(include_components):
        spec = load_spec(f)
        if spec.name in specs:
            raise SpecError(f"{f}: a spec named {spec.name!r} is already loaded")
        specs[spec.name] = spec
    return list(specs.values())


def find_spec(name_or_path: str) -> ModelSpec:
    """A spec by name (bundled or listed in MLOPS_SPECS) or by file path."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_spec(name_or_path)
    for spec in load_specs():
        if spec.name == name_or_path:
            return spec
    raise SpecError(f"no spec named {name_or_path!r}; known: {[s.name for s in load_specs()]}")
