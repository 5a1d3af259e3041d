"""Scoring stage: batch predictions of the champion for each daily partition.

Features come from Feast exactly as in training (point in time for the partition's events), so the
champion sees at scoring time what it saw when it was fitted. Each row records the model version
that scored it; where the partition's labels are already known, the realised metric is reported.
"""

from typing import TYPE_CHECKING

import dagster as dg

from mlops_assets.common import asset_kwargs, daily_partitions, failure, key
from mlops_assets.core.names import CHAMPION, EVENT_ID, EVENT_TS, LABEL
from mlops_assets.resources import FeastFeatureStore, LakeStorage, MlflowTracking
from mlops_assets.specs import ModelSpec
from mlops_assets.training import entity_frame

if TYPE_CHECKING:
    import pandas as pd


def score_partition(
    spec: ModelSpec, day: str, lake: LakeStorage, feast: FeastFeatureStore, model, version: str
) -> "pd.DataFrame":
    from mlops_assets.core.features import add_derived
    from mlops_assets.core.training import feature_frame, predict_scores

    events = lake.read(lake.partition_path("dataset", spec.name, day))
    joined = add_derived(feast.historical_features(spec, entity_frame(events, spec)), spec)
    scores = predict_scores(model, feature_frame(joined, spec), spec)
    out = joined[[EVENT_ID, EVENT_TS, *spec.entities]].copy()
    out["score"] = scores
    if spec.target.task == "classification":
        out["prediction"] = (scores >= 0.5).astype("int8")
    out["model_version"] = int(version)
    out[LABEL] = joined[LABEL]
    return out


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
    )
    def predictions(
        context: dg.AssetExecutionContext, lake: LakeStorage, feast: FeastFeatureStore, mlflow: MlflowTracking
    ) -> dg.MaterializeResult:
        from mlops_assets.core.training import evaluate

        champion = mlflow.version_by_alias(name, CHAMPION)
        if champion is None:
            raise failure(f"model '{name}' has no '{CHAMPION}' yet; run the train job (it ends with the promotion gate)")
        day = context.partition_key
        out = score_partition(spec, day, lake, feast, mlflow.load_version(name, champion.version), champion.version)
        path = lake.write(out, lake.partition_path("predictions", name, day))
        meta = {
            "dagster/row_count": len(out),
            "mean_score": float(out["score"].mean()),
            "model_version": int(champion.version),
            "path": dg.MetadataValue.path(str(path)),
        }
        labelled = out[out[LABEL].notna()]
        if len(labelled):
            realised = evaluate(labelled[LABEL], labelled["score"].to_numpy(), spec)
            meta[f"realised_{spec.promotion.metric}"] = realised[spec.promotion.metric]
        if "prediction" in out:
            meta["predicted_positive_rate"] = float(out["prediction"].mean())
        return dg.MaterializeResult(metadata=meta)

    return [predictions]
