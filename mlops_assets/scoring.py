"""Scoring stage: batch predictions of the champion for each daily partition.

Features come from Feast exactly as in training (point in time for the partition's events), so the
champion sees at scoring time what it saw when it was fitted. Each row records the model version
that scored it; where the partition's labels are already known, the realised metric is reported.
"""

import dagster as dg

from mlops_assets.common import asset_kwargs, check_result, daily_partitions, failure, key, md_table, png_markdown
from mlops_assets.core.names import CHAMPION, EVENT_ID, EVENT_TS, LABEL
from mlops_assets.resources import FeastFeatureStore, LakeStorage, MlflowTracking
from mlops_assets.specs import ModelSpec
from mlops_assets.training import entity_frame, reference_dir


def score_partition(spec: ModelSpec, day: str, lake: LakeStorage, feast: FeastFeatureStore, model, version: str):
    """Scores of one day, and the feature frame the model saw (for drift monitoring)."""
    from mlops_assets.core.features import add_derived
    from mlops_assets.core.training import feature_frame, predict_scores

    events = lake.read(lake.partition_path("dataset", spec.name, day))
    joined = add_derived(feast.historical_features(spec, entity_frame(events, spec)), spec)
    X = feature_frame(joined, spec)
    scores = predict_scores(model, X, spec)
    out = joined[[EVENT_ID, EVENT_TS, *spec.entities]].copy()
    out["score"] = scores
    if spec.target.task == "classification":
        out["prediction"] = (scores >= 0.5).astype("int8")
    out["model_version"] = int(version)
    out[LABEL] = joined[LABEL]
    return out, X


def newest_labelled(spec: ModelSpec, day: str, scored, lake: LakeStorage):
    """The served predictions whose labels became known with this day, joined to those labels.

    With ``target.label_delay_days = 0`` that is the day just scored. With a delay of N it is the
    day N days earlier: its predictions were made (and stored) when it arrived, and its labels were
    landed since, so the performance check judges what the model really served, out of sample."""
    from datetime import date, timedelta

    delay = spec.target.label_delay_days
    if delay == 0:
        return day, scored[scored[LABEL].notna()]
    labelled_day = (date.fromisoformat(day) - timedelta(days=delay)).isoformat()
    served_path = lake.partition_path("predictions", spec.name, labelled_day)
    events_path = lake.partition_path("dataset", spec.name, labelled_day)
    if not (served_path.exists() and events_path.exists()):
        return labelled_day, scored.iloc[:0]
    served = lake.read(served_path).drop(columns=[LABEL])
    labels = lake.read(events_path)[[EVENT_ID, LABEL]]
    joined = served.merge(labels, on=EVENT_ID, how="inner")
    return labelled_day, joined[joined[LABEL].notna()]


def load_reference(lake: LakeStorage, mlflow: MlflowTracking, spec: ModelSpec, run_id: str):
    """The champion's monitoring reference: from the lake, or restored from its MLflow run's
    ``reference/`` artifacts when the lake does not have it (a new machine, a cleaned lake)."""
    import json
    import shutil
    import tempfile

    import pandas as pd

    folder = reference_dir(lake, spec, run_id)
    if not (folder / "reference.json").exists():
        from mlflow.artifacts import download_artifacts

        mlflow.client()  # points the MLflow client at this resource's tracking server
        with tempfile.TemporaryDirectory() as tmp:
            local = download_artifacts(run_id=run_id, artifact_path="reference", dst_path=tmp)
            shutil.copytree(local, folder, dirs_exist_ok=True)
    meta = json.loads((folder / "reference.json").read_text())
    return pd.read_parquet(folder / "features.parquet"), pd.read_parquet(folder / "scores.parquet")["score"].to_numpy(), meta


def _drift_plot(table):
    """Bar chart of each feature's drift strength (score over threshold; > 1 is drift)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = table.sort_values("strength")
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(ordered) + 1))
    ax.barh(ordered["column"], ordered["strength"], color=["tab:red" if d else "tab:blue" for d in ordered["drifted"]])
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("drift strength (x threshold)")
    value = png_markdown(fig)
    plt.close(fig)
    return value


MONITORING_CHECKS = {
    "feature_drift": "Drift of the day's features against the champion's training reference (per-feature table and plot).",
    "prediction_drift": "Drift of the day's scores against the champion's holdout scores.",
    "performance": "Realised metric on the day's labels against the champion's holdout metric and the tolerated drop.",
}


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    name = spec.name

    @dg.asset(
        **asset_kwargs(
            "predictions",
            spec,
            f"Batch scores of the '{CHAMPION}' model for the day's events, with the version that scored "
            "them; the realised metric when the day's labels are known.",
            {"mlflow", "parquet"},
        ),
        partitions_def=daily_partitions(spec),
        deps=[key("features", spec), key("champion", spec)],
        check_specs=[
            dg.AssetCheckSpec(name, asset=key("predictions", spec), description=text) for name, text in MONITORING_CHECKS.items()
        ],
    )
    def predictions(
        context: dg.AssetExecutionContext, lake: LakeStorage, feast: FeastFeatureStore, mlflow: MlflowTracking
    ) -> dg.MaterializeResult:
        from mlops_assets.core import monitoring
        from mlops_assets.core.training import evaluate

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
        ref_features, ref_scores, ref_meta = load_reference(lake, mlflow, spec, champion.run_id)
        drift, table = monitoring.feature_drift(ref_features, X, spec)
        metric = spec.promotion.metric
        labelled_day, labelled = newest_labelled(spec, day, out, lake)
        realised = evaluate(labelled[LABEL], labelled["score"].to_numpy(), spec)[metric] if len(labelled) else None
        if realised is not None:
            meta[f"realised_{metric}"] = realised
            meta["realised_on"] = labelled_day
        outcomes = [
            drift,
            monitoring.prediction_drift(ref_scores, out["score"].to_numpy(), spec),
            monitoring.performance(realised, len(labelled), ref_meta["holdout"][metric], spec),
        ]
        drift_meta = {}
        if not table.empty:
            meta["drifted_feature_share"] = drift.metadata["drifted_share"]
            drift_meta = {"per_feature": md_table(table, max_rows=200), "plot": _drift_plot(table)}
        check_results = [
            check_result(o, dg.AssetCheckSeverity.WARN, **(drift_meta if o.name == "feature_drift" else {})) for o in outcomes
        ]
        return dg.MaterializeResult(metadata=meta, check_results=check_results)

    return [predictions]
