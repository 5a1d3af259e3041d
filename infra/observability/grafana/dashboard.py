"""The platform's Grafana dashboard, built with grafana-foundation-sdk; writes mlops.json beside this file.

    .venv/bin/python infra/observability/grafana/dashboard.py          # rewrite mlops.json
    .venv/bin/python infra/observability/grafana/dashboard.py --check  # exit 1 if mlops.json is out of date

Two rows, filtered by the ``spec`` variable (a spec's name is the model servers' ``model`` label and the
exporter's ``spec`` label):

* Endpoint: what the model servers answer (mlops_assets/server/metrics.py): requests by variant and
  status, server-error ratio, p50/p99 latency, served versions (beside the champion), canary share,
  unknown entities, predictions by class.
* Loop: what the platform decided around them (mlops_assets/exporter.py): drift share against the spec's
  limit, every check's latest outcome, the champion's age against the freshness limit, retrains and gate
  decisions, endpoint actions and canary rollbacks, failed runs, the exporter's own health.

Every query is plain PromQL on the raw metrics (no recording rule needed), written so that "nothing went
wrong" reads 0, not "no data". mlops_assets_tests/test_observability.py runs each of them against a real
Prometheus scraping a real model server and exporter, and checks that mlops.json is what this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).with_name("mlops.json")
UID = "mlops-assets"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
MODEL = 'model=~"$spec"'  # the model servers' label
SPEC = 'spec=~"$spec"'  # the exporter's label
RATE = "$__rate_interval"


def query(expr: str, legend: str, ref: str = "A", *, instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
    return q.instant().format(PromQueryFormat.TABLE) if instant else q.range()


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=v, color=c) for v, c in steps])


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 8) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )
    for q in queries:
        panel = panel.with_target(q)
    return panel


def bars(title: str, description: str, *queries: prometheus.Dataquery, width: int = 12) -> timeseries.Panel:
    """Events per interval (retrains, decisions, rollbacks, failures): stacked bars of counter increases."""
    return (
        series(title, description, "short", *queries, width=width)
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
        .decimals(0)
        .min(0)
    )


def steps(panel: timeseries.Panel) -> timeseries.Panel:
    """A level that changes now and then (a version, a share): drawn as steps, not slopes."""
    return panel.line_interpolation(common.LineInterpolation.STEP_AFTER).line_width(2).fill_opacity(0)


# --- endpoint -----------------------------------------------------------------------------------------

ROWS_SCORED = (
    f"(sum by (model) (rate(mlops_predictions_total{{{MODEL}}}[{RATE}]))"
    f" or on (model) sum by (model) (rate(mlops_prediction_value_count{{{MODEL}}}[{RATE}])))"
)


def endpoint_panels() -> list:
    requests = series(
        "Requests by variant and status",
        "Prediction requests per second by serving side (stable, canary; refused requests are 'none') and HTTP status.",
        "reqps",
        query(f"sum by (model, variant, code) (rate(mlops_requests_total{{{MODEL}}}[{RATE}]))", "{{model}} {{variant}} {{code}}"),
    )
    errors = (
        series(
            "Server-error ratio",
            "Share of requests answered 5xx (the server failed; 4xx are the callers' errors), per model and serving side. "
            "0 when nothing failed. Alerts at 1 % (10 min) and 5 % (5 min).",
            "percentunit",
            query(
                f'(sum by (model, variant) (rate(mlops_requests_total{{{MODEL}, variant!="none", code=~"5.."}}[{RATE}]))'
                f' or on (model, variant) (sum by (model, variant) (rate(mlops_requests_total{{{MODEL}, variant!="none"}}[{RATE}])) * 0))'
                f' / on (model, variant) sum by (model, variant) (rate(mlops_requests_total{{{MODEL}, variant!="none"}}[{RATE}]))',
                "{{model}} {{variant}}",
            ),
        )
        .thresholds(thresholds((None, "green"), (0.01, "orange"), (0.05, "red")))
        .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE))
    )
    latency = series(
        "Latency p50 / p99",
        "Time to answer a prediction request (parse, online features, predict), per serving side. The p99 alert is at 500 ms.",
        "s",
        query(
            f"histogram_quantile(0.5, sum by (model, variant, le) (rate(mlops_request_latency_seconds_bucket{{{MODEL}}}[{RATE}])))",
            "{{model}} {{variant}} p50",
        ),
        query(
            f"histogram_quantile(0.99, sum by (model, variant, le) (rate(mlops_request_latency_seconds_bucket{{{MODEL}}}[{RATE}])))",
            "{{model}} {{variant}} p99",
            "B",
        ),
    )
    versions = steps(
        series(
            "Served version per variant",
            "The model version each serving side answers with (max over the pods), and the version the champion alias points "
            "to. During a canary the champion is the canary's version; after a rollback it is the stable one again.",
            "none",
            query(f"max by (model, variant) (mlops_served_model_version{{{MODEL}}})", "{{model}} {{variant}}"),
            query(f"max by (spec) (mlops_pipeline_champion_version{{{SPEC}}})", "{{spec}} champion", "B"),
        )
    ).decimals(0)
    canary = (
        steps(
            series(
                "Canary share",
                "Share of requests the canary answers (0 without a canary).",
                "percent",
                query(f"max by (model) (mlops_canary_traffic_percent{{{MODEL}}})", "{{model}}"),
            )
        )
        .min(0)
        .max(100)
    )
    unknown = series(
        "Unknown entities",
        "Share of scored rows whose entity the online store did not know (answered with the rate's prior or the training "
        "median), per entity. 0 when every entity was known. Alert at 20 % for 15 min.",
        "percentunit",
        query(
            f"(sum by (model, entity) (rate(mlops_unknown_entities_total{{{MODEL}}}[{RATE}])) / on (model) group_left () {ROWS_SCORED})"
            f" or on (model) ({ROWS_SCORED} * 0)",
            "{{model}} {{entity}}",
        ),
    )
    classes = (
        series(
            "Predictions by class",
            "Rows scored per second by predicted class and served version (classification specs).",
            "short",
            query(
                f"sum by (model, version, predicted_class) (rate(mlops_predictions_total{{{MODEL}}}[{RATE}]))",
                "{{model}} v{{version}} class {{predicted_class}}",
            ),
        )
        .stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(40)
    )
    return [requests, errors, latency, versions, canary, unknown, classes]


# --- loop -------------------------------------------------------------------------------------------------

CHECK_COLOURS = {"passed": "green", "failed": "red", "not_judged": "orange", "running": "blue"}


def loop_panels() -> list:
    drift = (
        steps(
            series(
                "Drift share",
                "Share of drifted features in the newest scored partition (batch: the day's events; served: what the endpoint "
                "served), and the spec's limit (policies.drift.drift_share) at which the drift check fails.",
                "percentunit",
                query(f"mlops_pipeline_drift_share{{{SPEC}}}", "{{spec}} {{source}}"),
                query(f"max by (spec) (mlops_pipeline_drift_share_limit{{{SPEC}}})", "{{spec}} limit", "B"),
            )
        )
        .min(0)
        .max(1)
    )
    checks = (
        table.Panel()
        .title("Check outcomes")
        .description(
            "The latest result of every asset check: passed, failed, not_judged (never ran, its step failed, or too few rows "
            "to judge) or running. Severity error: the check stops the pipeline (blocking dataset checks, the gate)."
        )
        .datasource(DATASOURCE)
        .span(16)
        .height(10)
        .with_target(
            query(f"max by (spec, asset, check, severity, status) (mlops_pipeline_check_status{{{SPEC}}}) == 1", "", instant=True)
        )
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True, "Value": True},
                    "indexByName": {"spec": 0, "asset": 1, "check": 2, "severity": 3, "status": 4},
                },
            )
        )
        .override_by_name(
            "status",
            [
                DynamicConfigValue(
                    id_val="mappings",
                    value=[
                        {
                            "type": "value",
                            "options": {
                                s: {"text": s.replace("_", " "), "color": c, "index": i}
                                for i, (s, c) in enumerate(CHECK_COLOURS.items())
                            },
                        }
                    ],
                ),
                DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
            ],
        )
    )
    age = series(
        "Model age vs freshness",
        "Age of the champion (since its version was trained), time since the last training (model asset), and the spec's "
        "limit (policies.freshness.model_days). Alerts when the champion or the last training is older than the limit.",
        "s",
        query(f"mlops_pipeline_model_age_seconds{{{SPEC}}}", "{{spec}} champion age"),
        query(f'mlops_pipeline_asset_age_seconds{{{SPEC}, stage="model"}}', "{{spec}} since last training", "B"),
        query(f'mlops_pipeline_freshness_limit_seconds{{{SPEC}, stage="model"}}', "{{spec}} limit", "C"),
    ).min(0)
    retrains = bars(
        "Retrains and gate decisions",
        "Models trained, and what the promotion gate decided about each challenger (promoted: the champion alias moved).",
        query(f"sum by (spec) (increase(mlops_pipeline_retrains_total{{{SPEC}}}[{RATE}]))", "{{spec}} retrains"),
        query(
            f"sum by (spec, decision) (increase(mlops_pipeline_gate_decisions_total{{{SPEC}}}[{RATE}]))",
            "{{spec}} {{decision}}",
            "B",
        ),
    )
    rollouts = bars(
        "Endpoint actions and canary rollbacks",
        "What each endpoint materialization did (deploy, canary_started, promoted, rolled_back, unchanged, ...), and canaries "
        "rolled back (the reason is in the endpoint's audit history).",
        query(
            f"sum by (spec, action) (increase(mlops_pipeline_endpoint_actions_total{{{SPEC}}}[{RATE}]))", "{{spec}} {{action}}"
        ),
        query(f"sum by (spec) (increase(mlops_pipeline_canary_rollbacks_total{{{SPEC}}}[{RATE}]))", "{{spec}} rollbacks", "B"),
    )
    failed = bars(
        "Failed runs",
        "Dagster runs that failed, by job (the automation's runs are __ASSET_JOB). The error of each is an alert file in the "
        "platform's storage and on the run's page in the Dagster UI.",
        query(f"sum by (spec, job) (increase(mlops_pipeline_failed_runs_total{{{SPEC}}}[{RATE}]))", "{{spec}} {{job}}"),
        width=8,
    ).height(10)
    health = (
        stat.Panel()
        .title("Exporter")
        .description("Whether the exporter's last read of the Dagster instance succeeded, and how long ago it last did.")
        .datasource(DATASOURCE)
        .span(8)
        .height(8)
        .with_target(query("min(mlops_pipeline_up)", "instance readable"))
        .with_target(query("time() - max(mlops_pipeline_last_success_timestamp_seconds)", "since last read", "B"))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .override_by_query(
            "A",
            [
                DynamicConfigValue(
                    id_val="mappings",
                    value=[
                        {
                            "type": "value",
                            "options": {"0": {"text": "failing", "color": "red"}, "1": {"text": "ok", "color": "green"}},
                        }
                    ],
                )
            ],
        )
        .override_by_query("B", [DynamicConfigValue(id_val="unit", value="s")])
    )
    return [drift, age, health, checks, failed, retrains, rollouts]


def build() -> dict:
    """The dashboard as Grafana's JSON model."""
    spec_var = (
        dash.QueryVariable("spec")
        .label("spec")
        .description("The specs (models) to show: the exporter's spec label, also the model servers' model label.")
        .datasource(DATASOURCE)
        .query({"query": "label_values(mlops_pipeline_spec_info, spec)", "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    board = (
        dash.Dashboard("mlops_assets: endpoints and the loop")
        .uid(UID)
        .description("Model servers and the platform around them: what is served and how, and what the pipeline decided.")
        .tags(["mlops", "mlops-assets"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-24h", "now")
        .timezone("browser")
        .with_variable(dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(spec_var)
        .with_row(dash.Row("Endpoint: what the model servers answer"))
    )
    for panel in endpoint_panels():
        board = board.with_panel(panel)
    board = board.with_row(dash.Row("Loop: what the platform decided"))
    for panel in loop_panels():
        board = board.with_panel(panel)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run {Path(__file__).name} to rewrite it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
