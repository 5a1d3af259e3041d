"""Scoring stage: batch predictions of the champion for each daily partition.

The champion sees at scoring time what it saw when it was fitted: each event's own features computed
from its row by the recipe that filled Feast's per-event view for training, and what is keyed by an
entity (past rates, lookups) from Feast, point in time (``scoring_frame``). Each row records the
model version that scored it and the features it saw. The monitoring checks judge the policy
windows: drift of the newest scored days against the champion's training reference, and the realised
metric of the newest labelled days the champion served. A spec with a deployment gets the same three
checks again on what its endpoint served for those days (``served_*``), read from the prediction
log.
"""

import math
from datetime import timedelta

import dagster as dg

from mlops_assets.common import (
    asset_kwargs,
    asset_with_optional_checks,
    check_result,
    daily_partitions,
    day_of,
    days_before,
    failure,
    key,
    svg_markdown,
    table_metadata,
)
from mlops_assets.core.names import CHAMPION, EVENT_ID, EVENT_TS, LABEL
from mlops_assets.policies import SERVED_PREFIX, monitoring_checks
from mlops_assets.resources import FeastFeatureStore, LakeStorage, MlflowTracking
from mlops_assets.specs import ModelSpec
from mlops_assets.training import entity_frame, reference_dir

FEATURE_PREFIX = "feature."


def scoring_frame(events, spec: ModelSpec, feast: FeastFeatureStore):
    """A day's events with their features before the derived ones.

    An event's own features (calendar parts, columns of its row) are computed from the row by
    ``core.features.row_features``: the function whose output the features asset stores in Feast's
    per-event view for training, and whose recipe the server applies to a request's row. What is
    keyed by an entity (past rates, lookups) comes from Feast, point in time, as in training. Reading
    the day's own rows back through Feast's per-event view returns the same values
    (``test_pipeline_flights`` compares the two on every ingested day); that join was most of a
    scoring run (py-spy, Elec2)."""
    from mlops_assets.core.features import row_feature_columns, row_features

    entities = entity_frame(events, spec)
    frame = entities.reset_index(drop=True)
    own = row_features(events, spec).reset_index(drop=True)
    for column in row_feature_columns(spec):
        frame[column] = own[column]
    if spec.entity_keyed_features:
        joined = feast.historical_features(spec, entities, entity_keyed_only=True)
        for column in spec.entity_keyed_features:
            frame[column] = joined[column].to_numpy()
    return frame


def score_partition(spec: ModelSpec, day: str, lake: LakeStorage, feast: FeastFeatureStore, model, version: str):
    """Scores of one day, and the feature frame the model saw (for drift monitoring)."""
    import pandas as pd

    from mlops_assets.core.features import add_derived
    from mlops_assets.core.training import feature_frame, predict_scores

    events = lake.read(lake.partition_path("dataset", spec.name, day))
    joined = add_derived(scoring_frame(events, spec, feast), spec)
    X = feature_frame(joined, spec)
    scores = predict_scores(model, X, spec)
    out = joined[[EVENT_ID, EVENT_TS, *spec.entities]].copy()
    out["score"] = scores
    if spec.target.task == "classification":
        out["prediction"] = (scores >= 0.5).astype("int8")
    out["model_version"] = int(version)
    out[LABEL] = joined[LABEL]
    # what the model saw, beside what it said: monitoring windows read it back from here
    out = pd.concat([out, X.add_prefix(FEATURE_PREFIX).set_index(out.index)], axis=1)
    return out, X


def _days_back(day: str, n: int, offset: int = 0) -> list[str]:
    """``n`` partition keys ending ``offset`` days before ``day`` (oldest first)."""
    return days_before(day_of(day) + timedelta(days=1 - offset), n)


def drift_window(spec: ModelSpec, day: str, scored, X, lake: LakeStorage):
    """The features and scores of the newest ``policies.drift.window_days`` scored days (this one
    included), as they were when each day was scored, and which days they cover."""
    import pandas as pd

    frames, days = [], []
    for d in _days_back(day, spec.policies.drift.window_days):
        if d == day:
            frames.append(scored)  # score_partition stored the features beside the scores
        elif lake.exists(path := lake.partition_path("predictions", spec.name, d)):
            frames.append(lake.read(path))
        else:
            continue
        days.append(d)
    window = pd.concat(frames, ignore_index=True)
    features = window[[f"{FEATURE_PREFIX}{c}" for c in X.columns]]
    features.columns = list(X.columns)
    return features, window["score"].to_numpy(), days


def performance_window(spec: ModelSpec, day: str, scored, lake: LakeStorage, champion_version: int):
    """The served predictions whose labels are known, over the newest ``policies.performance.window_days``
    labelled days, that the current champion made; joined to their labels.

    With ``target.label_delay_days = 0`` the newest labelled day is the day just scored. With a delay
    of N it is N days earlier: its predictions were made (and stored) when it arrived, and its labels
    were landed since, so the check judges what the model really served, out of sample. Days served by
    an earlier champion are left out: a new champion is not blamed for its predecessor."""
    import pandas as pd

    delay = spec.target.label_delay_days
    frames, days = [], []
    for d in _days_back(day, spec.policies.performance.window_days, offset=delay):
        if d == day:
            served = scored
        elif lake.exists(path := lake.partition_path("predictions", spec.name, d)):
            served = lake.read(path)
        else:
            continue
        events = lake.partition_path("dataset", spec.name, d)
        if d != day and lake.exists(events):
            labels = lake.read(events)[[EVENT_ID, LABEL]]
            served = served.drop(columns=[LABEL]).merge(labels, on=EVENT_ID, how="inner")
        served = served[(served["model_version"] == champion_version) & served[LABEL].notna()]
        if len(served):
            frames.append(served[[LABEL, "score"]])
            days.append(d)
    if not frames:
        return scored.iloc[:0][[LABEL, "score"]], days
    return pd.concat(frames, ignore_index=True), days


def served_windows(spec: ModelSpec, day: str, lake: LakeStorage, champion_version: int):
    """What the endpoint served, from its prediction log (``prediction_store``, filed by event day), over
    the same windows as the batch checks: (features of every served prediction and the champion's
    scores over the drift window, its days; the champion's served predictions whose events have
    labels by now, joined to them, over the performance window, its days).

    The batch checks judge the champion on every event of a day; these judge what callers really
    sent and got, with the features the online store really returned, so a skew between online and
    offline features, or a traffic mix unlike the day's events, shows here and not there."""
    import numpy as np
    import pandas as pd

    from mlops_assets.core.drift import MAX_MAGNITUDE
    from mlops_assets.prediction_store import SERVED, read_day

    def of_champion(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["model_version"] == champion_version]

    logged: dict[str, pd.DataFrame | None] = {}  # the two windows usually share days: read each once

    def served_on(d: str) -> pd.DataFrame | None:
        if d not in logged:
            logged[d] = read_day(lake.predictions_root(), SERVED, spec.name, d)
        return logged[d]

    frames, drift_days = [], []
    for d in _days_back(day, spec.policies.drift.window_days):
        if (served := served_on(d)) is not None:
            frames.append(served)
            drift_days.append(d)
    columns = [f"{FEATURE_PREFIX}{c}" for c in spec.feature_names]
    window = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*columns, "score", "model_version"])
    features = window[columns].copy()
    features.columns = list(spec.feature_names)
    for c in spec.categorical_features:  # the batch frame's dtype: text as object
        features[c] = features[c].astype(object)
    scores = _numbers(of_champion(window)["score"])  # non-finite ones are counted by prediction_drift

    labelled, labelled_days, unscorable = [], [], 0
    for d in _days_back(day, spec.policies.performance.window_days, offset=spec.target.label_delay_days):
        served = served_on(d)
        events = lake.partition_path("dataset", spec.name, d)
        if served is None or not lake.exists(events):
            continue
        served = of_champion(served).dropna(subset=["event_id"])
        labels = lake.read(events)[[EVENT_ID, LABEL]].astype({EVENT_ID: "string"})
        joined = served.astype({"event_id": "string"}).merge(labels, left_on="event_id", right_on=EVENT_ID, how="inner")
        joined = joined[joined[LABEL].notna()]
        score = _numbers(joined["score"])
        sound = np.isfinite(score) & (np.abs(score) <= MAX_MAGNITUDE)
        unscorable += int((~sound).sum())
        joined = joined.assign(score=score)[sound]
        if len(joined):
            labelled.append(joined[[LABEL, "score"]])
            labelled_days.append(d)
    labelled_frame = pd.concat(labelled, ignore_index=True) if labelled else pd.DataFrame({LABEL: [], "score": []})
    labelled_frame.attrs["excluded_scores"] = unscorable  # a metric cannot take inf, NaN or text
    return features, scores, drift_days, labelled_frame, labelled_days


def _numbers(values):
    """A column of the served log as float64: NA and text become NaN (the log stores what was served,
    whatever it was), so statistics count them instead of failing on them."""
    import numpy as np
    import pandas as pd

    with np.errstate(invalid="ignore", over="ignore"):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _span(days: list[str]) -> str:
    if len(days) < 2:
        return days[0] if days else "none"
    return f"{days[0]}..{days[-1]} ({len(days)} days)"


def load_reference(lake: LakeStorage, mlflow: MlflowTracking, spec: ModelSpec, run_id: str):
    """The champion's monitoring reference: from the lake, or restored from its MLflow run's
    ``reference/`` artifacts when the lake does not have it (a new machine, a cleaned lake)."""
    import json
    import tempfile
    from pathlib import Path

    from mlops_assets import files

    folder = reference_dir(lake, spec, run_id)
    if not files.exists(files.join(folder, "reference.json")):
        from mlflow.artifacts import download_artifacts

        mlflow.client()  # points the MLflow client at this resource's tracking server
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(download_artifacts(run_id=run_id, artifact_path="reference", dst_path=tmp))
            for name in ("features.parquet", "scores.parquet", "reference.json"):  # the marker file last
                files.write_bytes(files.join(folder, name), (local / name).read_bytes())
    meta = json.loads(files.read_text(files.join(folder, "reference.json")))
    features = files.read_parquet(files.join(folder, "features.parquet"))
    return features, files.read_parquet(files.join(folder, "scores.parquet"))["score"].to_numpy(), meta


def _drift_plot(table) -> dg.MetadataValue:
    """Bar chart of each feature's drift strength (score over threshold; > 1 is drift), as inline SVG
    markdown the Dagster UI shows on the check.

    Drawn as SVG text rather than with matplotlib: every scored day of every spec gets one, and
    matplotlib's figure and PNG encoding cost ~75 ms a chart (a tenth of a replayed day), this well
    under 1 ms. The scale is linear up to 1 (the threshold) and logarithmic above, so a strength of
    300 and one of 1.2 both stay readable."""
    from html import escape

    rows = table.sort_values("strength", ascending=False)
    strengths = [max(float(v), 0.0) for v in rows["strength"]]

    def x_of(v: float) -> float:  # symmetric-log position, in units of the threshold
        return v if v <= 1 else 1 + math.log10(v)

    top = max([2.0, *(x_of(v) for v in strengths)])
    label_w, plot_w, bar_h, gap, pad = 150, 360, 14, 4, 24
    height = pad + len(strengths) * (bar_h + gap) + 30

    def px(v: float) -> float:
        return label_w + plot_w * x_of(v) / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 45}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{label_w}" y="14" font-weight="bold">drift strength (x threshold); red: drifted</text>',
    ]
    for i, (name, value, drifted) in enumerate(zip(rows["column"], strengths, rows["drifted"], strict=True)):
        y = pad + i * (bar_h + gap)
        colour = "#d62728" if drifted else "#1f77b4"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h - 3}" text-anchor="end">{escape(str(name))}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{px(value) - label_w:.1f}" height="{bar_h}" fill="{colour}"/>')
        parts.append(f'<text x="{px(value) + 3:.1f}" y="{y + bar_h - 3}" fill="#555">{value:.3g}</text>')
    axis_y = pad + len(strengths) * (bar_h + gap)
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#333"/>')
    ticks = [0.0, 1.0] + [10.0**k for k in range(1, int(top))]
    for t in ticks:
        parts.append(f'<text x="{px(t):.1f}" y="{axis_y + 14}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<line x1="{px(1):.1f}" y1="{pad - 4}" x2="{px(1):.1f}" y2="{axis_y}" stroke="#000" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return svg_markdown("".join(parts))


MONITORING_CHECKS = {
    "feature_drift": "Drift of the day's features against the champion's training reference (per-feature table and plot).",
    "prediction_drift": "Drift of the day's scores against the champion's holdout scores.",
    "performance": "Realised metric on the day's labels against the champion's holdout metric and the tolerated drop.",
    "served_feature_drift": "Drift of the features the endpoint served for the window's events (its prediction log) "
    "against the champion's training reference (per-feature table and plot).",
    "served_prediction_drift": "Drift of the champion's scores the endpoint served against its holdout scores.",
    "served_performance": "Realised metric of the endpoint's predictions whose events have labels, against the "
    "champion's holdout metric and the tolerated drop.",
}


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    name = spec.name
    kwargs = asset_kwargs(
        "predictions",
        spec,
        f"Batch scores of the '{CHAMPION}' model for the day's events, with the version that scored "
        "them and the features it saw; monitoring checks over the policy windows; the realised "
        "metric once labels are known.",
        {"mlflow", "parquet"},
    )
    asset_key = key("predictions", spec)

    # A monitoring check that could not be judged (too few rows, an undefined metric) yields no result:
    # Dagster shows it skipped, never passed. The UI may also materialize the predictions without checks.
    @asset_with_optional_checks(
        kwargs,
        deps=[key("features", spec), key("champion", spec)],
        partitions_def=daily_partitions(spec),
        check_specs=[
            dg.AssetCheckSpec(check, asset=asset_key, description=MONITORING_CHECKS[check]) for check in monitoring_checks(spec)
        ],
    )
    def predictions(context: dg.AssetExecutionContext, lake: LakeStorage, feast: FeastFeatureStore, mlflow: MlflowTracking):
        if asset_key not in context.selected_asset_keys:
            raise failure(
                f"the monitoring checks of {asset_key.to_user_string()} are judged when a day is scored: "
                "materialize the predictions (with their checks)"
            )
        champion = mlflow.version_by_alias(name, CHAMPION)
        if champion is None:
            raise failure(f"model '{name}' has no '{CHAMPION}' yet; run the train job (it ends with the promotion gate)")
        day = context.partition_key
        out, X = score_partition(
            spec, day, lake, feast, mlflow.load_version(name, champion.version, champion.run_id), champion.version
        )
        path = lake.write(out, lake.partition_path("predictions", name, day))
        meta = {
            "dagster/row_count": len(out),
            "mean_score": float(out["score"].mean()),
            "model_version": int(champion.version),
            "path": dg.MetadataValue.path(str(path)),
        }
        if "prediction" in out:
            meta["predicted_positive_rate"] = float(out["prediction"].mean())
        reference = load_reference(lake, mlflow, spec, champion.run_id)
        window_X, window_scores, drift_days = drift_window(spec, day, out, X, lake)
        labelled, labelled_days = performance_window(spec, day, out, lake, int(champion.version))
        outcomes, realised, drift_meta = _judge(spec, reference, window_X, window_scores, labelled)
        if realised is not None:
            meta[f"realised_{spec.promotion.metric}"] = realised
            meta["realised_on"] = _span(labelled_days)
        meta["drift_window"] = _span(drift_days)
        if drift_meta:
            meta["drifted_feature_share"] = outcomes[0].metadata["drifted_share"]
        extra = {"feature_drift": drift_meta}
        if spec.deployment is not None:
            served_outcomes, extra[f"{SERVED_PREFIX}feature_drift"] = _served_monitoring(
                spec, day, lake, reference, int(champion.version), meta
            )
            outcomes += served_outcomes
        selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == asset_key}
        check_results = []
        for o in outcomes:
            if o.name not in selected:
                continue
            if o.judged:
                check_results.append(check_result(o, dg.AssetCheckSeverity.WARN, **extra.get(o.name, {})))
            else:  # no result: Dagster shows the check as skipped; the reason stays on the materialization
                meta[f"not_judged_{o.name}"] = dg.MetadataValue.text(o.description)
                context.log.info(f"{o.name} {o.description}")
        yield dg.MaterializeResult(asset_key=asset_key, metadata=meta, check_results=check_results)

    return [predictions]


def _judge(spec: ModelSpec, reference, features, scores, labelled):
    """The three monitoring verdicts on one window, against the champion's reference (features,
    holdout scores, holdout metrics): feature drift, score drift and the realised metric. Returns
    them, the realised metric, and the feature-drift table and plot (empty when not judged)."""
    from mlops_assets.core import monitoring
    from mlops_assets.core.training import metric as metric_of

    ref_features, ref_scores, ref_meta = reference
    metric = spec.promotion.metric
    realised = metric_of(labelled[LABEL], labelled["score"].to_numpy(), spec, metric) if len(labelled) else None
    drift, table = monitoring.feature_drift(ref_features, features, spec)
    outcomes = [
        drift,
        monitoring.prediction_drift(ref_scores, scores, spec),
        monitoring.performance(realised, len(labelled), ref_meta["holdout"][metric], spec),
    ]
    plot = {"per_feature": table_metadata(table, max_rows=200), "plot": _drift_plot(table)} if not table.empty else {}
    return outcomes, realised, plot


def _served_monitoring(spec: ModelSpec, day: str, lake: LakeStorage, reference, version: int, meta: dict):
    """The three monitoring checks again, on what the endpoint served (``served_windows``), named
    ``served_<check>``."""
    from dataclasses import replace

    features, scores, drift_days, labelled, labelled_days = served_windows(spec, day, lake, version)
    outcomes, realised, plot = _judge(spec, reference, features, scores, labelled)
    windows = (drift_days, drift_days, labelled_days)
    outcomes = [
        replace(
            o, name=f"{SERVED_PREFIX}{o.name}", metadata={**o.metadata, "window": _span(w), "source": "endpoint prediction log"}
        )
        for o, w in zip(outcomes, windows, strict=True)
    ]
    meta["served_predictions"] = len(features)
    meta["served_labelled_scores_excluded"] = int(labelled.attrs.get("excluded_scores", 0))
    if realised is not None:
        meta[f"served_realised_{spec.promotion.metric}"] = realised
    return outcomes, plot
