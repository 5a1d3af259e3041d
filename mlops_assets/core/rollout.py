"""Rollout decisions, without a web framework or a cloud: what an endpoint serves (``Deployment``),
how a canary is judged from what each side served, and the next deployment to apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Deployment:
    """What an endpoint serves: ``stable`` takes ``100 - canary_percent`` % of the requests."""

    stable: str | None = None
    canary: str | None = None
    canary_percent: float = 0.0
    canary_started: str | None = None  # ISO 8601, UTC

    def __post_init__(self) -> None:
        if self.canary is None and self.canary_percent:
            raise ValueError("a canary share needs a canary version")
        if not 0 <= self.canary_percent < 100:
            raise ValueError(f"canary_percent must be in [0, 100), got {self.canary_percent}")

    @property
    def versions(self) -> list[str]:
        return [v for v in (self.stable, self.canary) if v is not None]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown deployment fields {sorted(unknown)}")
        return cls(
            stable=None if data.get("stable") is None else str(data["stable"]),
            canary=None if data.get("canary") is None else str(data["canary"]),
            canary_percent=float(data.get("canary_percent") or 0.0),
            canary_started=data.get("canary_started"),
        )


# --- canary -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SideStats:
    """What one side of a canary served in the window."""

    version: str
    requests: int
    errors: int
    p99_ms: float
    metric: float | None = None
    labelled: int = 0
    # the labelled predictions behind ``metric`` (labels, scores), for the canary's evidence
    rows: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)
    # the latencies (ms) of the answered requests behind ``p99_ms``, for the latency's evidence
    latencies: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CanaryVerdict:
    decision: str  # "promote" | "rollback" | "wait"
    reasons: list[str]
    table: list[dict[str, Any]]


def judge_canary(
    stable: SideStats,
    canary: SideStats,
    *,
    started: datetime,
    now: datetime,
    policy: Mapping[str, Any],
    metric: str,
    higher_is_better: bool,
    metric_fn: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> CanaryVerdict:
    """Promote, roll back, or wait for more evidence.

    Waits until the window is over and both sides served ``min_requests``. A regression of the error
    rate or the p99 latency rolls back as soon as the window is over; the metric is compared only
    when both sides have ``min_labelled`` labelled predictions (labels may come days later, and a
    rollout is not held hostage by them: without labels it is judged on errors and latency).

    With ``metric_confidence`` (and each side's labelled rows and ``metric_fn``), a metric drop rolls
    back only when the evidence says the canary is worse by more than ``max_metric_drop`` at that
    confidence (``core.evidence.unpaired_bootstrap``): a canary's share is a few hundred labelled
    predictions, whose ROC AUC scatters by about 0.04, so a bare comparison against a 0.02 drop
    rolled back a model as good as the stable one about a third of the time."""
    window = float(policy["window_minutes"])
    elapsed = (now - started).total_seconds() / 60
    rows = []

    def row(criterion: str, s: Any, c: Any, limit: str, ok: bool | None) -> None:
        rows.append({"criterion": criterion, "stable": s, "canary": c, "limit": limit, "passed": ok})

    row("requests", stable.requests, canary.requests, f">= {policy['min_requests']} each", None)
    if elapsed < window or min(stable.requests, canary.requests) < int(policy["min_requests"]):
        why = (
            f"window {elapsed:.0f}/{window:g} min"
            if elapsed < window
            else (f"{min(stable.requests, canary.requests)} of {policy['min_requests']} requests on the smaller side")
        )
        return CanaryVerdict("wait", [f"not yet judged: {why}"], rows)
    reasons = []
    err_limit = stable.error_rate + float(policy["max_error_rate_increase"])
    err_ok = canary.error_rate <= err_limit + 1e-12
    row("error_rate", round(stable.error_rate, 5), round(canary.error_rate, 5), f"<= {err_limit:.4f}", err_ok)
    if not err_ok:
        reasons.append(f"error rate {canary.error_rate:.2%} > {err_limit:.2%} (stable {stable.error_rate:.2%})")
    lat_ok, lat_text, lat_why = _latency_verdict(stable, canary, policy)
    row("p99_latency_ms", round(stable.p99_ms, 3), round(canary.p99_ms, 3), lat_text, lat_ok)
    if not lat_ok:
        reasons.append(lat_why)
    labelled = min(stable.labelled, canary.labelled)
    if labelled >= int(policy["min_labelled"]) and stable.metric is not None and canary.metric is not None:
        drop = stable.metric - canary.metric if higher_is_better else canary.metric - stable.metric
        max_drop = float(policy["max_metric_drop"])
        confidence = policy.get("metric_confidence")
        if confidence and metric_fn is not None and stable.rows is not None and canary.rows is not None:
            from mlops_assets.core.evidence import unpaired_bootstrap

            # the evidence that the stable side is better by more than the drop the canary may have
            ev = unpaired_bootstrap(
                metric_fn, higher_is_better, stable.rows, canary.rows, margin=max_drop, confidence=float(confidence)
            )
            met_ok = not ev.convincing
            limit = (
                f"drop <= {max_drop} unless shown at {float(confidence):.0%}: drop {ev.low:+.4f} .. {ev.high:+.4f}, "
                f"p = {ev.p_value:.3g}"
            )
            row(metric, round(stable.metric, 5), round(canary.metric, 5), limit, met_ok)
            if not met_ok:
                reasons.append(
                    f"{metric} {canary.metric:.4f} vs stable {stable.metric:.4f}: worse by {drop:.4f} "
                    f"({float(confidence):.0%} interval {ev.low:+.4f} .. {ev.high:+.4f}, p = {ev.p_value:.3g} "
                    f"against 'at most {max_drop} worse')"
                )
        else:
            met_ok = drop <= max_drop + 1e-12
            row(metric, round(stable.metric, 5), round(canary.metric, 5), f"drop <= {max_drop}", met_ok)
            if not met_ok:
                reasons.append(f"{metric} {canary.metric:.4f} vs stable {stable.metric:.4f}: worse by {drop:.4f}")
    else:
        row(metric, stable.metric, canary.metric, f"needs {policy['min_labelled']} labelled each (has {labelled})", None)
    if reasons:
        return CanaryVerdict("rollback", reasons, rows)
    return CanaryVerdict("promote", [f"canary v{canary.version} held up against v{stable.version} over {elapsed:.0f} min"], rows)


def _latency_verdict(stable: SideStats, canary: SideStats, policy: Mapping[str, Any]) -> tuple[bool, str, str]:
    """Whether the canary's p99 latency stays within ``max_latency_ratio`` times the stable side's
    plus ``latency_slack_ms``; the limit as the check's table shows it; the reason when it does not.

    The p99 of a canary's few hundred requests is its two or three slowest: one pause of the host
    (a collection, a neighbour's burst, an hourly job) moves it past the limit. With
    ``latency_confidence`` (and each side's latencies) an excess rolls back only when an unpaired
    bootstrap shows it at that confidence; a canary slower across its requests still does. The limit
    is a p99 scaled and shifted, so it is the p99 of the stable latencies scaled and shifted the same
    way, and the bootstrap compares the canary with that."""
    ratio, slack = float(policy["max_latency_ratio"]), float(policy["latency_slack_ms"])
    limit = stable.p99_ms * ratio + slack
    observed = f"p99 latency {canary.p99_ms:.1f} ms > {limit:.1f} ms (stable {stable.p99_ms:.1f} ms)"
    if canary.p99_ms <= limit:
        return True, f"<= {limit:.2f}", ""
    confidence = policy.get("latency_confidence")
    if not confidence or stable.latencies is None or canary.latencies is None or not len(stable.latencies):
        return False, f"<= {limit:.2f}", observed
    from mlops_assets.core.evidence import unpaired_bootstrap

    at_limit = np.asarray(stable.latencies, dtype="float64") * ratio + slack
    ev = unpaired_bootstrap(
        lambda _, lat: p99(lat),
        False,
        (at_limit, at_limit),
        (canary.latencies, canary.latencies),
        margin=0.0,
        confidence=float(confidence),
    )
    shown = f"{float(confidence):.0%} interval of the excess {ev.low:+.1f} .. {ev.high:+.1f} ms, p = {ev.p_value:.3g}"
    return not ev.convincing, f"<= {limit:.2f} unless shown at {float(confidence):.0%}: {shown}", f"{observed}; {shown}"


def p99(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype="float64")
    return float(np.percentile(arr, 99)) if arr.size else 0.0


@dataclass(frozen=True)
class Plan:
    """What the endpoint asset does this time, and why."""

    deployment: Deployment
    action: str  # deploy | unchanged | canary_started | canary_restarted | canary_waiting | promoted | rolled_back
    reason: str


def plan_deployment(
    current: Deployment | None,
    champion: str | None,
    *,
    canary_percent: float,
    now: datetime,
    verdict: CanaryVerdict | None = None,
) -> Plan:
    """The next deployment from what serves now, the registry's champion and, during a canary, the
    canary check's verdict. The first model is deployed outright (there is nothing to compare it
    with); a later champion goes through a canary when the spec asks for one."""
    if champion is None:
        raise ValueError("the model has no champion version to serve")
    if current is None or current.stable is None:
        return Plan(Deployment(stable=champion), "deploy", f"first deployment: v{champion}")
    if current.canary is not None:
        if champion not in (current.canary, current.stable):
            started = Deployment(current.stable, champion, canary_percent, now.isoformat())
            return Plan(started, "canary_restarted", f"champion moved to v{champion} during the canary of v{current.canary}")
        if verdict is None or verdict.decision == "wait":
            reason = "; ".join(verdict.reasons) if verdict else "no canary verdict yet"
            return Plan(current, "canary_waiting", reason)
        if verdict.decision == "promote":
            return Plan(Deployment(stable=current.canary), "promoted", "; ".join(verdict.reasons))
        return Plan(Deployment(stable=current.stable), "rolled_back", "; ".join(verdict.reasons))
    if champion == current.stable:
        return Plan(current, "unchanged", f"v{champion} already serves")
    if canary_percent > 0:
        started = Deployment(current.stable, champion, canary_percent, now.isoformat())
        return Plan(started, "canary_started", f"v{champion} takes {canary_percent:g} % beside v{current.stable}")
    return Plan(Deployment(stable=champion), "deploy", f"v{champion} replaces v{current.stable} (no canary configured)")
