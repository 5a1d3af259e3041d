"""Training stage: the point-in-time training set and the challenger model.

``<spec>/training_set`` asks Feast for the features of every labelled event in the trailing window
(as they were at each event's time) and splits off the newest days as the holdout.
``<spec>/model`` fits the spec's estimator, logs it to MLflow with its lineage, registers a version
and points the ``challenger`` alias at it. Whether it serves is the gate's decision, not this one's.
"""

import json
import math
from datetime import date, timedelta
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from mlops_assets import files
from mlops_assets.common import asset_kwargs, failure, key, svg_markdown, table_metadata
from mlops_assets.core.names import CHALLENGER, EVENT_ID, EVENT_TS, LABEL
from mlops_assets.resources import FeastFeatureStore, LakeStorage, MlflowTracking
from mlops_assets.resources.mlflow import log_pipeline
from mlops_assets.specs import ModelSpec

if TYPE_CHECKING:
    import pandas as pd


class TrainingSetConfig(dg.Config):
    as_of: str | None = Field(
        None, description="Last day (YYYY-MM-DD) of the training window; default: newest day with features."
    )


def training_set_paths(lake: LakeStorage, spec: ModelSpec) -> tuple:
    """Where the newest training set lives: train rows, holdout rows, and what window they cover."""
    return tuple(lake.path("training_set", spec.name, n) for n in ("train.parquet", "holdout.parquet", "meta.json"))


def entity_frame(dataset: "pd.DataFrame", spec: ModelSpec) -> "pd.DataFrame":
    """What Feast joins features onto: event id and time, entity keys, and the label passing through."""
    return dataset[[EVENT_ID, EVENT_TS, *spec.entities, LABEL]]


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    name = spec.name
    tr = spec.training

    @dg.asset(
        **asset_kwargs(
            "training_set",
            spec,
            f"Point-in-time training set: Feast get_historical_features over the {tr.window_days} days "
            f"ending at the newest featurised day; the last {tr.holdout_days} days are the holdout that "
            "challenger and champion are compared on.",
            {"feast", "pandas", "parquet"},
        ),
        deps=[key("features", spec), key("feature_registry", spec)],
    )
    def training_set(
        context: dg.AssetExecutionContext, config: TrainingSetConfig, lake: LakeStorage, feast: FeastFeatureStore
    ) -> dg.MaterializeResult:
        import pandas as pd

        from mlops_assets.core.features import add_derived
        from mlops_assets.core.training import split_holdout

        featurised = context.instance.get_materialized_partitions(key("features", spec))
        if config.as_of:
            as_of = date.fromisoformat(config.as_of)
        elif featurised:
            as_of = date.fromisoformat(max(featurised))
        else:
            raise failure(
                f"no partition of {key('features', spec).to_user_string()} is materialized yet; run the ingest job first"
            )
        window = [(as_of - timedelta(days=i)).isoformat() for i in range(tr.window_days - 1, -1, -1)]
        present = set(lake.partitions("dataset", name))
        usable = [d for d in window if d in featurised and d in present]
        events = lake.read_days("dataset", name, usable)
        if events is None:
            raise failure(f"no featurised day in the window {window[0]}..{window[-1]}")
        joined = feast.historical_features(spec, entity_frame(events, spec))
        joined = add_derived(joined, spec)
        joined = joined[joined[LABEL].notna()]  # days whose labels are still to come teach nothing yet
        train, holdout = split_holdout(joined, spec, as_of)
        if len(train) < tr.min_rows or holdout.empty:
            raise failure(
                f"training window {window[0]}..{window[-1]} has {len(train)} training rows (min {tr.min_rows}) and "
                f"{len(holdout)} holdout rows; land and ingest more days",
                days_used=len(usable),
            )
        train_path, holdout_path, meta_path = training_set_paths(lake, spec)
        lake.write(train, train_path)
        lake.write(holdout, holdout_path)
        meta = {"as_of": as_of.isoformat(), "partitions": usable, "rows_train": len(train), "rows_holdout": len(holdout)}
        files.write_text(meta_path, json.dumps(meta))
        nulls = pd.DataFrame(
            {"feature": spec.feature_names, "null_share": [float(joined[f].isna().mean()) for f in spec.feature_names]}
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(joined),
                "rows_train": len(train),
                "rows_holdout": len(holdout),
                "as_of": as_of.isoformat(),
                "window_start": window[0],
                "partitions_used": len(usable),
                "partitions_missing": dg.MetadataValue.json(sorted(set(window) - set(usable))),
                "label_mean_train": float(train[LABEL].mean()),
                "feature_nulls": table_metadata(nulls, max_rows=100),
            }
        )

    @dg.asset(
        **asset_kwargs(
            "model",
            spec,
            f"Challenger: {spec.estimator.cls} fitted on the training set, logged to MLflow (params, "
            "metrics, signature, input example, lineage tags) and registered as a new version under "
            f"the '{CHALLENGER}' alias.",
            {"mlflow", "scikitlearn"},
        ),
        deps=[key("training_set", spec)],
    )
    def model(context: dg.AssetExecutionContext, lake: LakeStorage, mlflow: MlflowTracking) -> dg.MaterializeResult:
        train_path, holdout_path, meta_path = training_set_paths(lake, spec)
        train, holdout = lake.read(train_path), lake.read(holdout_path)
        meta = json.loads(files.read_text(meta_path))
        lineage = {
            "dagster_asset": context.asset_key.to_user_string(),
            "mlops.spec": name,
            "mlops.spec_hash": spec.spec_hash,
            "mlops.code_version": context.assets_def.code_versions_by_key[context.asset_key] or "",
            "mlops.training_as_of": meta["as_of"],
            "mlops.training_partitions": f"{meta['partitions'][0]}..{meta['partitions'][-1]} ({len(meta['partitions'])} days)",
        }
        info = _train_and_log(context, mlflow, lake, spec, train, holdout, lineage)
        metrics = info["metrics"]
        return dg.MaterializeResult(
            metadata={
                **{f"holdout_{k}": v for k, v in metrics.items()},
                f"baseline_{spec.promotion.metric}": info["baseline"][spec.promotion.metric],
                "model_version": int(info["version"]),
                "mlflow_run_id": info["run_id"],
                "mlflow_run": dg.MetadataValue.url(info["run_url"]),
                "mlflow_model_version": dg.MetadataValue.url(info["version_url"]),
                "model_uri": info["model_uri"],
                "rows_train": len(train),
                "training_partitions": lineage["mlops.training_partitions"],
                "holdout_scores": info["plot"],
                **card_metadata(spec, info["card"]),
            }
        )

    return [training_set, model]


def reference_dir(lake: LakeStorage, spec: ModelSpec, run_id: str):
    """The monitoring reference stored with a model (also logged as the run's ``reference/`` artifacts)."""
    return lake.path("reference", spec.name, run_id)


def _write_reference(folder: str, spec: ModelSpec, X_train, holdout_scores, holdout_labels, metrics: dict) -> None:
    """What drift and performance checks compare a scored day against: a sample of the training
    features, the holdout's scores, and the holdout metric the model was promoted on. Written to a
    local folder first (MLflow logs artifacts from one), then copied to the lake's ``folder``."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pandas as pd

    from mlops_assets import files

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        n = min(len(X_train), spec.policies.drift.reference_rows)
        X_train.sample(n=n, random_state=0).to_parquet(local / "features.parquet", index=False)
        pd.DataFrame({"score": holdout_scores, "label": holdout_labels}).to_parquet(local / "scores.parquet", index=False)
        (local / "reference.json").write_text(json.dumps({"metric": spec.promotion.metric, "holdout": metrics}))
        for path in sorted(local.iterdir()):
            files.write_bytes(files.join(folder, path.name), path.read_bytes())
        mlflow.log_artifacts(tmp, artifact_path="reference")


def _train_and_log(
    context, mlflow_res: MlflowTracking, lake: LakeStorage, spec: ModelSpec, train, holdout, lineage: dict
) -> dict:
    """Fit, evaluate and log inside one MLflow run, then register the version as challenger.

    The run opens before fitting, so a fit that fails leaves a FAILED run carrying its parameters
    and lineage, not silence. MLflow is imported here, never when the code location loads.
    """
    import mlflow
    from mlflow.models import infer_signature

    from mlops_assets.core.training import baseline_scores, evaluate, feature_frame, fit, predict_scores

    tags = {**lineage, "dagster_run_id": context.run.run_id}
    with mlflow_res.run(context, experiment=spec.name, run_name=f"train-{spec.name}", tags=tags) as run:
        mlflow.log_params({f"estimator.{k}": v for k, v in spec.estimator.params.items()})
        mlflow.log_params(
            {
                "estimator": spec.estimator.cls,
                "window_days": spec.training.window_days,
                "holdout_days": spec.training.holdout_days,
            }
        )
        mlflow.log_dict(json.loads(spec.model_dump_json(by_alias=True)), "spec.json")
        mlflow.log_input(mlflow.data.from_pandas(train, name=f"{spec.name}_train"), context="training")
        mlflow.log_input(mlflow.data.from_pandas(holdout, name=f"{spec.name}_holdout"), context="holdout")

        fitted = fit(spec, train)
        X_train, X_hold = feature_frame(train, spec), feature_frame(holdout, spec)
        scores = predict_scores(fitted, X_hold, spec)
        metrics = evaluate(holdout[LABEL], scores, spec)
        base = evaluate(holdout[LABEL], baseline_scores(train[LABEL], X_hold, spec), spec)
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
        mlflow.log_metrics({f"baseline_{k}": v for k, v in base.items()})
        mlflow.log_metric("rows_train", len(train))

        signature = infer_signature(X_train.head(200), predict_scores(fitted, X_train.head(200), spec))
        run_id, exp_id = run.info.run_id, run.info.experiment_id
        info = log_pipeline(fitted, spec.name, X_train.head(5), signature, tags={**tags, "mlflow_run_id": run_id})
        plot = _score_plot(spec, holdout[LABEL], scores, metrics)
        _write_reference(reference_dir(lake, spec, run_id), spec, X_train, scores, holdout[LABEL].to_numpy(), metrics)
        card = _model_card(spec, fitted, train, holdout, X_hold, scores)
    version = str(info.registered_model_version)
    mlflow_res.remember(spec.name, version, run_id, fitted)
    client = mlflow_res.client()
    client.set_registered_model_alias(spec.name, CHALLENGER, version)
    client.update_model_version(spec.name, version, description=card.markdown(f"{spec.name} version {version}"))
    return {
        "version": version,
        "run_id": run_id,
        "metrics": metrics,
        "baseline": base,
        "model_uri": f"models:/{spec.name}/{version}",
        "run_url": mlflow_res.run_url(exp_id, run_id),
        "version_url": mlflow_res.model_version_url(spec.name, version),
        "plot": plot,
        "card": card,
    }


def _model_card(spec: ModelSpec, fitted, train, holdout, X_hold, scores):
    """The model card (``core.model_card``) of a fitted model, logged to the open MLflow run under
    ``model_card/`` with its interval bounds as metrics."""
    import mlflow
    import numpy as np
    import pandas as pd

    from mlops_assets.core.model_card import build_card
    from mlops_assets.core.sources import local_dates
    from mlops_assets.core.training import predict_scores

    def days(frame) -> str:
        d = local_dates(frame[EVENT_TS], spec.source.timestamp.timezone)
        return f"{d.min()}..{d.max()} ({d.nunique()} days)" if len(d) else "none"

    card = build_card(
        metric=spec.promotion.metric,
        higher_is_better=spec.higher_is_better,
        task=spec.target.task,
        predict=lambda X: predict_scores(fitted, X, spec),
        X_holdout=X_hold,
        holdout=holdout,
        y=holdout[LABEL].to_numpy(),
        scores=scores,
        entities=spec.entities,
        training={
            "train_days": days(train),
            "holdout_days": days(holdout),
            "rows_train": len(train),
            "rows_holdout": len(holdout),
        },
        order=np.argsort(holdout[EVENT_TS].to_numpy(), kind="stable"),
    )
    mlflow.log_text(card.markdown(f"{spec.name}: model card"), "model_card/model_card.md")
    mlflow.log_text(card.importance_svg(), "model_card/feature_importance.svg")
    mlflow.log_text(pd.DataFrame(card.importance).to_csv(index=False), "model_card/feature_importance.csv")
    mlflow.log_text(pd.DataFrame(card.slices).to_csv(index=False), "model_card/slices.csv")
    bounds = {f"holdout_{i['metric']}_{b}": i[b] for i in card.intervals for b in ("low", "high") if np.isfinite(i[b])}
    mlflow.log_metrics(bounds)
    return card


def card_metadata(spec: ModelSpec, card) -> dict:
    """The card as the model asset's metadata: native tables, the importance chart, and the
    promotion metric's interval bounds as numbers (charted over materializations)."""
    m = spec.promotion.metric
    interval = card.interval(m) or {}
    meta = {
        f"holdout_{m}_low": interval.get("low"),
        f"holdout_{m}_high": interval.get("high"),
        "holdout_days": card.training["holdout_days"],
        "rows_holdout": card.training["rows_holdout"],
        "metric_intervals": table_metadata(card.intervals),
        "feature_importance": table_metadata(card.importance),
        "feature_importance_chart": svg_markdown(card.importance_svg()),
        "worst_slices": table_metadata(card.slices) if card.slices else None,
        "model_card": dg.MetadataValue.md(card.markdown(f"{spec.name}: model card")),
    }
    return {k: v for k, v in meta.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def _score_plot(spec: ModelSpec, y, scores, metrics) -> dg.MetadataValue:
    """Holdout picture: score density per class (classification) or predicted against actual
    (regression, at most 400 points), as inline SVG markdown.

    Written as SVG text rather than drawn with matplotlib: every retrain draws one, and matplotlib's
    import, figure and PNG encoding cost 2 % of a replay (py-spy, 200 Elec2 days)."""
    import numpy as np

    y, scores = np.asarray(y, dtype="float64"), np.asarray(scores, dtype="float64")
    left, top, w, h = 46, 24, 320, 170
    bottom = top + h
    metric = spec.promotion.metric
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + w + 20}" height="{bottom + 40}" font-family="sans-serif" font-size="11">',
        f'<text x="{left + w / 2}" y="14" text-anchor="middle" font-weight="bold">holdout {metric} = {metrics[metric]:.3f}</text>',
    ]
    if spec.target.task == "classification":
        (x_lo, x_hi), x_label, y_label = (0.0, 1.0), "predicted probability", "density"
        edges = np.linspace(0.0, 1.0, 31)
        series = [(scores[y == 0], "#1f77b4", "negative"), (scores[y == 1], "#ff7f0e", "positive")]
        densities = [np.histogram(s, bins=edges, density=True)[0] if len(s) else np.zeros(30) for s, _, _ in series]
        y_lo, y_hi = 0.0, max(1e-9, *(float(d.max()) for d in densities))
    else:
        x_label, y_label = "actual", "predicted"
        both = np.concatenate([y, scores])
        x_lo = y_lo = float(both.min()) if len(both) else 0.0
        x_hi = y_hi = float(both.max()) if len(both) else 1.0

    def px(v: float) -> float:
        return left + w * (v - x_lo) / ((x_hi - x_lo) or 1)

    def py(v: float) -> float:
        return bottom - h * (v - y_lo) / ((y_hi - y_lo) or 1)

    if spec.target.task == "classification":
        for row, ((_, colour, label), density) in enumerate(zip(series, densities, strict=True)):
            for i, d in enumerate(density):
                parts.append(
                    f'<rect x="{px(edges[i]):.1f}" y="{py(d):.1f}" width="{w / 30:.1f}" height="{bottom - py(d):.1f}" '
                    f'fill="{colour}" fill-opacity="0.55"/>'
                )
            parts.append(f'<rect x="{left + w - 80}" y="{top + 4 + 16 * row}" width="10" height="10" fill="{colour}"/>')
            parts.append(f'<text x="{left + w - 66}" y="{top + 13 + 16 * row}">{label}</text>')
    else:
        parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + w}" y2="{top}" stroke="#888" stroke-dasharray="4 3"/>')
        for i in np.linspace(0, len(y) - 1, min(len(y), 400)).astype(int):
            parts.append(f'<circle cx="{px(y[i]):.1f}" cy="{py(scores[i]):.1f}" r="1.8" fill="#1f77b4" fill-opacity="0.5"/>')
    for t in np.linspace(x_lo, x_hi, 5):
        parts.append(f'<text x="{px(t):.1f}" y="{bottom + 14}" text-anchor="middle">{t:.3g}</text>')
    for t in np.linspace(y_lo, y_hi, 5):
        parts.append(f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#333"/>')
    parts.append(f'<text x="{left + w / 2}" y="{bottom + 30}" text-anchor="middle">{x_label}</text>')
    parts.append(f'<text x="12" y="{top + h / 2}" text-anchor="middle" transform="rotate(-90 12 {top + h / 2})">{y_label}</text>')
    parts.append("</svg>")
    return svg_markdown("".join(parts))
