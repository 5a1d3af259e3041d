"""Evidently 0.7.23 ``DataDriftPreset`` as the reference implementation (tests and benchmarks only)."""

from __future__ import annotations

import os
import warnings

import pandas as pd

os.environ.setdefault("DO_NOT_TRACK", "1")


def evidently_decisions(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, tuple[str, float, bool]]:
    """column -> (method, score, drifted) as Evidently's DataDriftPreset reports them."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset()], include_tests=True).run(current_data=current, reference_data=reference)
    result = snapshot.dict()
    scores = {
        m["config"]["column"]: (m["config"]["method"], float(m["value"]))
        for m in result["metrics"]
        if m["config"]["type"].endswith("ValueDrift")
    }
    out = {}
    for test in result["tests"]:
        params = test["metric_config"]["params"]
        if params["type"].endswith("ValueDrift"):
            method, score = scores[params["column"]]
            out[params["column"]] = (method, score, test["status"] == "FAIL")
    return out


EVIDENTLY_METHOD_NAMES = {
    "Wasserstein distance (normed)": "wasserstein",
    "K-S p_value": "ks",
    "Jensen-Shannon distance": "jensenshannon",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
}
