"""The numbers the pipeline exporter publishes (``mlops_assets.exporter``), from plain records.

The exporter reads the Dagster instance (materializations, check results, failed runs) and hands
what it read here as plain values; this module decides what each record means (is this check
judged? was this gate decision a promotion? which spec does this run belong to?) and turns the lot
into metric samples. Counters are accumulated in ``Totals`` record by record, in the event log's
order, so a scrape reads only what is new since the last one.

Metric names start with ``mlops_pipeline_``; every series carries the ``spec`` label (the spec's
name, which is also the model servers' ``model`` label).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.core.names import ROLLED_BACK  # also the endpoint asset's action when a canary regressed

PREFIX = "mlops_pipeline_"
# A check's latest result, one state per series (a Prometheus "state set"): only "passed" counts as
# passed. A check that never ran, whose step failed before it was judged, or that its step left
# unjudged (too few rows, an undefined metric: Dagster resolves it to skipped) is not_judged; one
# planned in a run still going is running.
CHECK_STATES = ("passed", "failed", "not_judged", "running")
GATE_OUTCOMES = ("promoted", "rejected")
DRIFT_SOURCES = {"batch": "feature_drift", "served": "served_feature_drift"}  # source -> check of <spec>/predictions
# Checks whose records written before they were skipped when there was nothing to judge answer
# "passed", and the metadata entry only a verdict has: the endpoint's canary check outside a canary
# carried no comparison table (it now yields no result there, so its record resolves to skipped).
VERDICT_METADATA = {"canary": "comparison"}
PROMOTED = "promoted"  # the promotion gate's decision when the alias moved

Labels = dict[str, str]


def check_state(
    status: str | None, *, passed: bool | None, metadata: Mapping[str, Any], run_finished: bool, check: str = ""
) -> str:
    """The state of a check from its latest execution record.

    ``status`` is Dagster's record status (``PLANNED``, ``SUCCEEDED``, ``FAILED``; None when the
    check never ran); ``metadata`` the evaluation's metadata as plain values; ``run_finished``
    whether the run of a ``PLANNED`` record has ended (then the check was never evaluated: its step
    failed or was skipped; the monitoring checks of ``<spec>/predictions`` yield no result when they
    could not judge, so Dagster resolves them to skipped; so does the canary check outside a canary).
    A canary record of an older version passed without a comparison (``check``): not a pass either."""
    if status is None:
        return "not_judged"
    if status == "PLANNED":
        return "not_judged" if run_finished else "running"
    if status == "FAILED" or passed is False:
        return "failed"
    # records written before not-judged checks were skipped: a pass with ``evaluated: False``
    if metadata.get("evaluated") is False or (check in VERDICT_METADATA and VERDICT_METADATA[check] not in metadata):
        return "not_judged"
    return "passed"


def gate_outcome(decision: str) -> str:
    """The promotion gate's decision (``<spec>/champion`` metadata) as promoted or rejected: "kept
    champion" and "no champion" both mean the challenger did not become the champion."""
    return PROMOTED if decision == PROMOTED else "rejected"


def drift_share(metadata: Mapping[str, Any]) -> float | None:
    """The share of drifted features a feature-drift evaluation measured, or None when it carries
    none (a check that could not judge has no evaluation at all, or, in records written before, one
    with ``evaluated: False``: no share is made up)."""
    if metadata.get("evaluated") is False:
        return None
    share = metadata.get("drifted_share")
    return float(share) if isinstance(share, (int, float)) and not isinstance(share, bool) else None


def spec_of_run(job_name: str, tags: Mapping[str, str], asset_names: Iterable[str], owners: Mapping[str, str]) -> str:
    """The spec a run belongs to: its ``mlops/spec`` tag (the named jobs carry it), else the spec
    whose assets it materialized (runs the automation launches are ``__ASSET_JOB`` runs, tagged with
    nothing of ours), else the spec whose job it is. ``owners`` maps every asset and job name of the
    loaded specs to its spec (built with the names module, never parsed back). "" when none says."""
    if tags.get("mlops/spec") in owners.values():
        return tags["mlops/spec"]
    found = {owners[a] for a in asset_names if a in owners}
    if len(found) == 1:
        return found.pop()
    return owners.get(job_name, "")


@dataclass(frozen=True)
class CheckFacts:
    asset: str
    check: str
    blocking: bool


@dataclass(frozen=True)
class SpecFacts:
    """What the exporter knows of a spec without reading anything: its checks, jobs and limits."""

    name: str
    spec_hash: str
    target: str  # the deployment target, "none" without a deployment
    retrain: str  # policies.retrain
    drift_share_limit: float  # policies.drift.drift_share: the share at which the drift check fails
    freshness_seconds: Mapping[str, float]  # stage -> limit, for the stages with a freshness policy
    jobs: tuple[str, ...]
    checks: tuple[CheckFacts, ...]

    @property
    def deployed(self) -> bool:
        return self.target != "none"


@dataclass
class Totals:
    """Counters over the whole event log, fed each record once, oldest first."""

    retrains: Counter = field(default_factory=Counter)  # spec -> model materializations
    trained_at: dict[tuple[str, int], float] = field(default_factory=dict)  # (spec, model version) -> when
    gate: Counter = field(default_factory=Counter)  # (spec, outcome)
    endpoint_actions: Counter = field(default_factory=Counter)  # (spec, action)
    champion: dict[str, tuple[float, int]] = field(default_factory=dict)  # spec -> (when decided, version)
    failed_runs: Counter = field(default_factory=Counter)  # (spec, job)
    counted_runs: set[str] = field(default_factory=set)

    def model_materialized(self, spec: str, version: int | None, timestamp: float) -> None:
        self.retrains[spec] += 1
        if version:
            self.trained_at[(spec, int(version))] = timestamp

    def gate_decided(self, spec: str, decision: str, champion_version: int | None, timestamp: float) -> None:
        self.gate[(spec, gate_outcome(decision))] += 1
        if champion_version:  # absent (no model serves; older records wrote 0)
            self._champion(spec, int(champion_version), timestamp)

    def endpoint_acted(self, spec: str, action: str, stable_version: int | None, timestamp: float) -> None:
        self.endpoint_actions[(spec, action)] += 1
        if action == ROLLED_BACK and stable_version:
            # the rollback moves the champion alias back to the stable version (endpoints.py)
            self._champion(spec, int(stable_version), timestamp)

    def run_failed(self, run_id: str, spec: str, job: str) -> bool:
        """Count a failed run once, however many reads see it; False when it was counted already."""
        if run_id in self.counted_runs:
            return False
        self.counted_runs.add(run_id)
        self.failed_runs[(spec, job)] += 1
        return True

    def _champion(self, spec: str, version: int, timestamp: float) -> None:
        if spec not in self.champion or self.champion[spec][0] <= timestamp:
            self.champion[spec] = (timestamp, version)


@dataclass(frozen=True)
class CheckReading:
    spec: str
    asset: str
    check: str
    severity: str  # "warn" | "error"
    state: str  # one of CHECK_STATES
    timestamp: float | None  # when the latest result was recorded; None if never


@dataclass
class Reading:
    """What one read of the instance found (not cumulative)."""

    checks: list[CheckReading] = field(default_factory=list)
    drift: dict[tuple[str, str], float] = field(default_factory=dict)  # (spec, source) -> drifted share
    drift_partition: dict[str, str] = field(default_factory=dict)  # spec -> newest scored partition
    materialized_at: dict[tuple[str, str], float] = field(default_factory=dict)  # (spec, stage) -> when


@dataclass
class Family:
    """One metric and its samples; ``kind`` is gauge or counter (counters named without ``_total``)."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def add(self, values: Iterable[str], value: float) -> None:
        self.samples.append((tuple(values), float(value)))


def families(facts: list[SpecFacts], totals: Totals, reading: Reading, now: float) -> list[Family]:
    """Every pipeline metric from the specs' facts, the accumulated counters and the latest read."""

    def fam(name: str, kind: str, help_: str, *labels: str) -> Family:
        return Family(PREFIX + name, kind, help_, ("spec", *labels))

    info = fam(
        "spec_info",
        "gauge",
        "A loaded spec (1), with its content hash, deployment target and retrain policy.",
        "spec_hash",
        "target",
        "retrain",
    )
    retrains = fam("retrains", "counter", "Models trained (materializations of <spec>/model), whatever triggered them.")
    gate = fam("gate_decisions", "counter", "Promotion gate decisions: promoted (the alias moved) or rejected.", "decision")
    actions = fam(
        "endpoint_actions",
        "counter",
        "Endpoint materializations by the action taken (deploy, canary_started, promoted, rolled_back, unchanged, ...).",
        "action",
    )
    rollbacks = fam("canary_rollbacks", "counter", "Canaries rolled back by the endpoint asset (specs with a deployment).")
    failed = fam(
        "failed_runs", "counter", "Dagster runs that ended FAILURE, by job (the automation's runs are __ASSET_JOB).", "job"
    )
    champion = fam("champion_version", "gauge", "Model version the champion alias points to, as the platform last decided it.")
    model_age = fam(
        "model_age_seconds", "gauge", "Age of the champion: seconds since the model version it points to was trained."
    )
    trained = fam("model_trained_timestamp_seconds", "gauge", "When the champion's model version was trained (Unix time).")
    age = fam("asset_age_seconds", "gauge", "Seconds since the stage's asset was last materialized (any partition).", "stage")
    last = fam(
        "last_materialization_timestamp_seconds", "gauge", "When the stage's asset was last materialized (Unix time).", "stage"
    )
    fresh = fam(
        "freshness_limit_seconds", "gauge", "The spec's freshness limit for the stage (policies.freshness), in seconds.", "stage"
    )
    drift = fam(
        "drift_share",
        "gauge",
        "Share of drifted features in the newest scored partition's feature-drift check "
        "(batch: the day's events; served: what the endpoint served).",
        "source",
    )
    drift_limit = fam(
        "drift_share_limit", "gauge", "Drifted share at which the feature-drift check fails (policies.drift.drift_share)."
    )
    passed = fam(
        "check_passed",
        "gauge",
        "Latest result of an asset check: 1 passed, 0 otherwise (failed, not judged, running).",
        "asset",
        "check",
        "severity",
    )
    status = fam(
        "check_status",
        "gauge",
        "Latest result of an asset check as a state set: 1 for its state, 0 for the others.",
        "asset",
        "check",
        "severity",
        "status",
    )
    checked = fam(
        "check_timestamp_seconds",
        "gauge",
        "When the latest result of an asset check was recorded (Unix time).",
        "asset",
        "check",
        "severity",
    )

    for f in facts:
        info.add((f.name, f.spec_hash, f.target, f.retrain), 1)
        retrains.add((f.name,), totals.retrains[f.name])
        for outcome in GATE_OUTCOMES:
            gate.add((f.name, outcome), totals.gate[(f.name, outcome)])
        if f.deployed:
            rollbacks.add((f.name,), totals.endpoint_actions[(f.name, ROLLED_BACK)])
        for job in f.jobs:  # present from the start, so an increase over a window is 0, not absent
            failed.add((f.name, job), totals.failed_runs[(f.name, job)])
        drift_limit.add((f.name,), f.drift_share_limit)
        for stage, limit in f.freshness_seconds.items():
            fresh.add((f.name, stage), limit)
        if f.name in totals.champion:
            version = totals.champion[f.name][1]
            champion.add((f.name,), version)
            if (when := totals.trained_at.get((f.name, version))) is not None:
                trained.add((f.name,), when)
                model_age.add((f.name,), max(now - when, 0.0))
    for (spec, action), n in sorted(totals.endpoint_actions.items()):
        actions.add((spec, action), n)
    known_jobs = {(f.name, j) for f in facts for j in f.jobs}
    for (spec, job), n in sorted(totals.failed_runs.items()):
        if (spec, job) not in known_jobs:
            failed.add((spec, job), n)
    for (spec, stage), when in sorted(reading.materialized_at.items()):
        last.add((spec, stage), when)
        age.add((spec, stage), max(now - when, 0.0))
    for (spec, source), share in sorted(reading.drift.items()):
        drift.add((spec, source), share)
    for c in reading.checks:
        base = (c.spec, c.asset, c.check, c.severity)
        passed.add(base, 1 if c.state == "passed" else 0)
        for state in CHECK_STATES:
            status.add((*base, state), 1 if c.state == state else 0)
        if c.timestamp is not None:
            checked.add(base, c.timestamp)
    return [
        info,
        retrains,
        gate,
        actions,
        rollbacks,
        failed,
        champion,
        model_age,
        trained,
        age,
        last,
        fresh,
        drift,
        drift_limit,
        passed,
        status,
        checked,
    ]
