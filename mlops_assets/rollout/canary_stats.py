"""What each version of a running canary served, read from the prediction store (``prediction_store``):
the evidence the ``canary_<spec>`` check judges (``core.rollout.judge_canary``)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from mlops_assets.prediction_store import REQUESTS, SERVED, read_since


def canary_sides(
    root: str,
    spec,
    deployment,
    labels: Callable[[list[str]], pd.DataFrame | None],
):
    """What each version of a running canary served since it started, from the prediction store:
    requests, server errors (5xx), p99 latency and, for predictions whose event has a label by now
    (``labels(days)`` returns ``event_id``/``label`` of those days), the spec's metric."""
    from mlops_assets.core.names import EVENT_ID, LABEL
    from mlops_assets.core.rollout import SideStats, p99
    from mlops_assets.core.training import evaluate

    since = pd.Timestamp(deployment.canary_started)
    since = since.tz_localize("UTC") if since.tzinfo is None else since
    requests = read_since(root, REQUESTS, spec.name, since)
    served = read_since(root, SERVED, spec.name, since)
    label_frame = None
    if served is not None and served["event_id"].notna().any():
        days = sorted(set(served["event_timestamp"].dt.tz_convert(spec.source.timestamp.timezone).dt.strftime("%Y-%m-%d")))
        label_frame = labels(days)
    sides = []
    # by model version, not by the server's variant label: under KServe or SageMaker each version
    # runs in its own server, which calls itself "stable"
    for version in (deployment.stable, deployment.canary):
        req = requests[requests["model_version"] == int(version)] if requests is not None else None
        n = 0 if req is None else len(req)
        errors = 0 if req is None else int((req["status"] >= 500).sum())
        latencies = req.loc[req["status"] < 500, "latency_ms"].to_numpy(dtype="float64") if n else None
        latency = p99(latencies) if n else 0.0
        metric, labelled, rows = None, 0, None
        if label_frame is not None and served is not None:
            mine = served[(served["model_version"] == int(version)) & served["event_id"].notna()]
            joined = mine.merge(label_frame[[EVENT_ID, LABEL]], on=EVENT_ID, how="inner")
            joined = joined[joined[LABEL].notna()]
            labelled = len(joined)
            if labelled:
                rows = (joined[LABEL].to_numpy(dtype="float64"), joined["score"].to_numpy(dtype="float64"))
                metric = evaluate(rows[0], rows[1], spec)[spec.promotion.metric]
        sides.append(SideStats(str(version), n, errors, latency, metric, labelled, rows, latencies))
    return sides[0], sides[1]
