"""Promotion stage: the gate between the newest model and the one that serves.

Challenger and champion are scored on the same holdout (the newest days of the training window,
which neither was fitted on when the champion is older). The ``champion`` alias moves only when the
challenger is at least the spec's margin better (a tie goes to the fresher challenger), or, when the
spec sets ``promotion.confidence``, when a paired test on the holdout is that sure of it
(``core.evidence``; its test, interval and p-value go with the decision). Both scores
and the decision go to the asset's metadata, to the challenger's MLflow run, and to the
``promotion_gate`` check, which also verifies that whatever serves after the decision beats the
no-skill baseline. A version that an endpoint canary rolled back is never promoted again: live
traffic outranks the holdout.
"""

import math

import dagster as dg

from mlops_assets.common import asset_kwargs, failure, key
from mlops_assets.core.names import CANARY_REASON_TAG, CHALLENGER, CHAMPION, EVENT_TS, LABEL, ROLLED_BACK, ROLLED_BACK_TAG
from mlops_assets.resources import LakeStorage, MlflowTracking
from mlops_assets.specs import ModelSpec
from mlops_assets.training import training_set_paths


def build(spec: ModelSpec) -> list[dg.AssetsDefinition]:
    name = spec.name
    metric = spec.promotion.metric

    @dg.asset(
        **asset_kwargs(
            "champion",
            spec,
            f"Promotion gate: the '{CHAMPION}' alias moves to the challenger only if its holdout {metric} "
            f"beats the champion's by at least {spec.promotion.margin}"
            + (f", with {spec.promotion.confidence:.0%} confidence from a paired test." if spec.promotion.confidence else "."),
            {"mlflow"},
        ),
        deps=[key("model", spec)],
        check_specs=[
            dg.AssetCheckSpec(
                "promotion_gate",
                asset=key("champion", spec),
                description="Challenger and champion scores on the same holdout, the decision, and whether "
                "the model serving after it beats the no-skill baseline.",
            )
        ],
    )
    def champion(context: dg.AssetExecutionContext, lake: LakeStorage, mlflow: MlflowTracking) -> dg.MaterializeResult:
        from mlops_assets.core.promotion import decide
        from mlops_assets.core.training import baseline_scores, feature_frame, predict_scores
        from mlops_assets.core.training import metric as metric_of

        challenger = mlflow.version_by_alias(name, CHALLENGER)
        if challenger is None:
            raise failure(
                f"model '{name}' has no '{CHALLENGER}' version; materialize {key('model', spec).to_user_string()} first"
            )
        current = mlflow.version_by_alias(name, CHAMPION)
        train_path, holdout_path, _ = training_set_paths(lake, spec)
        holdout, y_train = lake.read(holdout_path), lake.read(train_path)[LABEL]
        if EVENT_TS in holdout:  # time order: the paired tests' variance and blocks follow it
            holdout = holdout.sort_values(EVENT_TS, kind="stable", ignore_index=True)
        X = feature_frame(holdout, spec)
        y = holdout[LABEL]

        def row_scores(version):
            return predict_scores(mlflow.load_version(name, version.version, version.run_id), X, spec)

        challenger_rows = row_scores(challenger)
        challenger_score = metric_of(y, challenger_rows, spec, metric)
        same = current is not None and current.version == challenger.version
        champion_rows = None if current is None or same else row_scores(current)
        champion_score = None if current is None else challenger_score if same else metric_of(y, champion_rows, spec, metric)
        rolled_back = (challenger.tags or {}).get(ROLLED_BACK_TAG) == ROLLED_BACK
        evidence = None
        if same:
            promote, reason = False, f"version {challenger.version} is already the champion"
        elif rolled_back:
            # live traffic outranks the holdout: a version its canary rolled back never returns by itself
            why = (challenger.tags or {}).get(CANARY_REASON_TAG, "")
            promote, reason = False, f"version {challenger.version} was rolled back by its canary ({why})"
        elif champion_rows is not None and spec.promotion.confidence is not None and not math.isnan(challenger_score):
            from mlops_assets.core.evidence import compare

            evidence = compare(
                metric, y.to_numpy(), challenger_rows, champion_rows,
                margin=spec.promotion.margin, confidence=spec.promotion.confidence,
            )  # fmt: skip
            promote = evidence.convincing
            verdict = "convincing" if promote else f"not convincing at {evidence.confidence:.0%}"
            reason = f"{verdict}: {evidence.text(metric)}"
        else:
            d = decide(challenger_score, champion_score, margin=spec.promotion.margin, higher_is_better=spec.higher_is_better)
            promote, reason = d.promote, d.reason
        client = mlflow.client()
        if promote:
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
        serving = challenger if promote else current
        serving_score = challenger_score if promote else champion_score
        baseline = metric_of(y, baseline_scores(y_train, X, spec), spec, metric)
        beats_baseline = serving is not None and (serving_score > baseline if spec.higher_is_better else serving_score < baseline)

        run_id = challenger.run_id
        if run_id:
            client.log_metric(run_id, f"gate_challenger_{metric}", challenger_score)
            if champion_score is not None:
                client.log_metric(run_id, f"gate_champion_{metric}", champion_score)
            client.set_tag(run_id, "mlops.promotion", "promoted" if promote else "rejected")
            client.set_tag(run_id, "mlops.promotion_reason", reason)
        decision = "promoted" if promote else "kept champion" if current else "no champion"
        serving_text = f"v{serving.version} ({metric} {serving_score:.4f})" if serving else "no model"
        # Numbers only where there is one: without a champion there is no champion score (the decision
        # says "no champion"), and no version 0 stands in for a missing one.
        scores = {f"challenger_{metric}": challenger_score, f"baseline_{metric}": baseline}
        if champion_score is not None:
            scores[f"champion_{metric}"] = champion_score
        tested = {}
        if evidence is not None:
            tested = {
                "test": evidence.test,
                f"improvement_{metric}": evidence.improvement,
                "improvement_low": evidence.low,
                "improvement_high": evidence.high,
                "p_value": evidence.p_value,
            }
        # the gate's settings, as text: constant per spec, nothing to chart over time
        policy = f"promote when {metric} is at least {spec.promotion.margin:g} better than the champion's"
        if evidence is not None:
            policy += f", with {evidence.confidence:.0%} confidence ({evidence.test})"
        meta = {
            **scores,
            **tested,
            "decision": decision,
            "reason": reason,
            "policy": policy,
            "challenger_version": int(challenger.version),
            "mlflow_model_version": dg.MetadataValue.url(mlflow.model_version_url(name, (serving or challenger).version)),
        }
        if current is not None:
            meta["champion_version_before"] = int(current.version)
        if serving is not None:
            meta["champion_version"] = int(serving.version)
        context.log.info(f"{name}: {decision} (challenger v{challenger.version}): {reason}")
        return dg.MaterializeResult(
            metadata=meta,
            check_results=[
                dg.AssetCheckResult(
                    check_name="promotion_gate",
                    passed=bool(beats_baseline),
                    severity=dg.AssetCheckSeverity.ERROR,
                    description=f"{decision}: {reason}. Serving {serving_text} vs no-skill baseline {baseline:.4f}.",
                    metadata={
                        **scores,
                        **tested,
                        "decision": decision,
                        "policy": policy,
                        **({"serving_version": int(serving.version)} if serving is not None else {}),
                    },
                )
            ],
        )

    return [champion]
