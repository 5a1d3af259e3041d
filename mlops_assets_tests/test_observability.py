"""Observability: the Prometheus configuration and rules, the pipeline exporter, the Grafana dashboard.

- promtool (Debian's prometheus package) checks the rules, runs their unit tests, and checks the scrape
  configuration. Debian builds Prometheus without Kubernetes service discovery (its package notes: the
  client library's dependencies), so promtool reads a copy whose ``kubernetes_sd_configs`` are swapped
  for file discovery; the Kubernetes blocks themselves are checked against what the Kubernetes target
  renders, and their relabelling runs in a real Prometheus below.
- The exporter's numbers on a real home: six days of flights landed, ingested, trained twice (promoted,
  then rejected), scored and deployed to a real local model server; one ingest that fails.
- A real Prometheus on 127.0.0.1 scrapes that model server and a real ``mlops exporter`` process, with the
  production scrape jobs' relabelling fed the labels Kubernetes discovery would give the pods the
  Kubernetes target renders, and the production rules loaded. Every PromQL expression of the dashboard
  and every rule (an alert's measured side, before its comparison) returns at least one series, and
  every rule group evaluates without error.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from mlops_assets_tests.conftest import REPO, free_port, platform, stop_process_group
from mlops_assets_tests.infra_tools import promtool, tool

OBS = REPO / "infra" / "observability"
PROMETHEUS_DIR = OBS / "prometheus"
DASHBOARD = OBS / "grafana" / "mlops.json"
SPEC = "flight_delays"
START, DAYS = date(2013, 1, 1), 6
KEYS = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]
MODEL_JOB, EXPORTER_JOB = "mlops-model-servers", "mlops-exporter"


def production_config() -> dict:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())


def rules() -> list[dict]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def with_file_discovery(config: dict, folder: Path) -> dict:
    """``config`` with every Kubernetes discovery replaced by file discovery of ``<folder>/<job>.json``
    (the relabelling is kept as it is)."""
    config = copy.deepcopy(config)
    for job in config["scrape_configs"]:
        job.pop("kubernetes_sd_configs")
        job["file_sd_configs"] = [{"files": [str(folder / f"{job['job_name']}.json")], "refresh_interval": "1s"}]
    for am in config.get("alerting", {}).get("alertmanagers", []):
        am.pop("kubernetes_sd_configs")
        am["file_sd_configs"] = [{"files": [str(folder / "alertmanagers.json")]}]
    return config


# --- promtool -------------------------------------------------------------------------------------


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    checked = promtool("check", "rules", str(PROMETHEUS_DIR / "rules.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(PROMETHEUS_DIR / "rules_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # every alert has a unit test that makes it fire
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c["exp_alerts"]}
    assert fired == {r["alert"] for r in rules() if "alert" in r}


def test_every_alert_has_a_severity_a_summary_a_description_and_a_for_duration():
    for rule in (r for r in rules() if "alert" in r):
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_promtool_checks_the_scrape_configuration(tmp_path):
    config = with_file_discovery(production_config(), tmp_path)
    assert config["rule_files"] == ["rules.yml"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "rules.yml").write_text((PROMETHEUS_DIR / "rules.yml").read_text())
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def rendered_pod(kind: str) -> dict:
    """The model server pod of the flights spec as the Kubernetes target renders it (labels,
    annotations, the server container's name and port)."""
    from mlops_assets.core.rollout import Deployment
    from mlops_assets.rollout.kubernetes import render
    from mlops_assets.specs import DeploymentSpec, KubernetesTargetSpec, find_spec

    spec = find_spec(SPEC).model_copy(
        update={"deployment": DeploymentSpec(target="kubernetes", kubernetes=KubernetesTargetSpec(kind=kind))}
    )
    manifest = render(spec, Deployment(stable="3", canary="4", canary_percent=10), env="local")[0]
    if kind == "deployment":
        meta, pod = manifest["spec"]["template"]["metadata"], manifest["spec"]["template"]["spec"]
    else:
        predictor = manifest["spec"]["predictor"]
        meta, pod = {"labels": predictor["labels"], "annotations": predictor["annotations"]}, predictor
    container = pod["containers"][0]
    return {
        "namespace": manifest["metadata"]["namespace"],
        "labels": meta["labels"],
        "annotations": meta["annotations"],
        "container": container["name"],
        "port_name": container["ports"][0]["name"],
        "port": container["ports"][0]["containerPort"],
    }


def test_kubernetes_discovery_finds_what_the_kubernetes_target_renders():
    """The scrape jobs look in the namespace the pods are rendered in, select them by labels they carry,
    and read the port their annotation names (the relabelling itself runs in the real Prometheus below)."""
    jobs = {j["job_name"]: j for j in production_config()["scrape_configs"]}
    assert set(jobs) == {MODEL_JOB, EXPORTER_JOB}
    servers = jobs[MODEL_JOB]["kubernetes_sd_configs"]
    for kind in ("deployment", "kserve"):
        pod = rendered_pod(kind)
        assert pod["annotations"]["prometheus.io/scrape"] == "true"
        assert int(pod["annotations"]["prometheus.io/port"]) == pod["port"]
        for sd in servers:
            assert sd["role"] == "pod" and sd["namespaces"]["names"] == [pod["namespace"]]
            for selector in sd["selectors"]:
                assert selector["role"] == "pod"
                wanted = dict(term.split("=") for term in selector["label"].split(","))
                assert wanted.items() <= pod["labels"].items(), (kind, wanted)
    exporter = jobs[EXPORTER_JOB]["kubernetes_sd_configs"]
    assert [(sd["role"], sd["namespaces"]["names"]) for sd in exporter] == [("endpoints", ["mlops"])]
    keep = next(r for r in jobs[EXPORTER_JOB]["relabel_configs"] if r.get("action") == "keep")
    assert keep["regex"] == "mlops-exporter;metrics"


# --- the dashboard ------------------------------------------------------------------------------------


def load_dashboard_builder():
    import importlib.util

    path = OBS / "grafana" / "dashboard.py"
    module_spec = importlib.util.spec_from_file_location("mlops_dashboard", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_the_committed_dashboard_is_what_the_builder_writes():
    builder = load_dashboard_builder()
    assert DASHBOARD.read_text() == builder.render(), "run infra/observability/grafana/dashboard.py and commit mlops.json"
    board = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert len(rows) == 2 and rows[0].startswith("Endpoint") and rows[1].startswith("Loop")
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "spec"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


# --- what the exporter's numbers mean (core) ------------------------------------------------------------


def test_a_check_that_was_not_judged_never_reads_as_passed():
    from mlops_assets.core.pipeline_metrics import check_state

    judged = {"run_finished": True}
    assert check_state("SUCCEEDED", passed=True, metadata={"drifted_share": 0.1}, **judged) == "passed"
    assert check_state("FAILED", passed=False, metadata={}, **judged) == "failed"
    assert check_state(None, passed=None, metadata={}, **judged) == "not_judged"  # never ran
    assert check_state("PLANNED", passed=None, metadata={}, run_finished=True) == "not_judged"  # its step failed
    assert check_state("PLANNED", passed=None, metadata={}, run_finished=False) == "running"
    # a monitoring check that could not judge yields no result: its planned record resolves to skipped
    # a record written before that: a pass with evaluated False
    assert check_state("SUCCEEDED", passed=True, metadata={"evaluated": False, "rows": 12}, **judged) == "not_judged"
    # the canary check outside a canary passes without a comparison
    assert check_state("SUCCEEDED", passed=True, metadata={"action": "deploy"}, check="canary", **judged) == "not_judged"
    assert check_state("SUCCEEDED", passed=True, metadata={"comparison": "|...|"}, check="canary", **judged) == "passed"


def test_counters_gate_outcomes_champion_and_run_owners():
    from mlops_assets.core.pipeline_metrics import Totals, drift_share, gate_outcome, spec_of_run

    assert [gate_outcome(d) for d in ("promoted", "kept champion", "no champion")] == ["promoted", "rejected", "rejected"]
    assert (
        drift_share({"drifted_share": 0.25}) == 0.25
        and drift_share({"rows": 3}) is None
        and drift_share({"evaluated": False, "drifted_share": 0.0}) is None
    )
    from mlops_assets.core.names import asset_name, job_name

    names = ["flights", "flights_eu", "elec2"]
    owners = {asset_name(stage, n): n for n in names for stage in ("raw", "dataset", "model", "champion")}
    owners |= {job_name(kind, n): n for n in names for kind in ("ingest", "train")}
    assert spec_of_run("ingest_flights", {"mlops/spec": "flights"}, [], owners) == "flights"
    assert spec_of_run("__ASSET_JOB", {}, ["flights_eu/model", "flights_eu/champion"], owners) == "flights_eu"
    assert spec_of_run("train_flights_eu", {}, [], owners) == "flights_eu"
    assert spec_of_run("__ASSET_JOB", {}, ["flights/model", "elec2/model"], owners) == ""

    totals = Totals()
    totals.model_materialized("flights", 1, 100.0)
    totals.gate_decided("flights", "promoted", 1, 110.0)
    totals.model_materialized("flights", 2, 200.0)
    totals.gate_decided("flights", "promoted", 2, 210.0)
    totals.endpoint_acted("flights", "rolled_back", 1, 300.0)  # the rollback moves the champion back to v1
    assert totals.champion["flights"] == (300.0, 1) and totals.trained_at[("flights", 1)] == 100.0
    assert totals.run_failed("r1", "flights", "train_flights") and not totals.run_failed("r1", "flights", "train_flights")
    assert totals.failed_runs[("flights", "train_flights")] == 1


def test_families_one_state_per_check_and_counters_present_from_zero():
    from mlops_assets.core.pipeline_metrics import CheckFacts, CheckReading, Reading, SpecFacts, Totals, families

    facts = SpecFacts("flights", "abc", "local", "default", 0.5, {"model": 86400.0}, ("train_flights",),
                      (CheckFacts("dataset_flights", "nulls", True),))  # fmt: skip
    reading = Reading(checks=[CheckReading("flights", "dataset_flights", "nulls", "error", "not_judged", None)])
    by_name = {f.name: f for f in families([facts], Totals(), reading, now=1000.0)}
    status = {values[-1]: v for values, v in by_name["mlops_pipeline_check_status"].samples}
    assert status == {"passed": 0, "failed": 0, "not_judged": 1, "running": 0}
    assert by_name["mlops_pipeline_check_passed"].samples == [(("flights", "dataset_flights", "nulls", "error"), 0.0)]
    assert by_name["mlops_pipeline_canary_rollbacks"].samples == [(("flights",), 0.0)]
    assert by_name["mlops_pipeline_failed_runs"].samples == [(("flights", "train_flights"), 0.0)]
    assert by_name["mlops_pipeline_gate_decisions"].samples == [(("flights", "promoted"), 0.0), (("flights", "rejected"), 0.0)]
    assert not by_name["mlops_pipeline_model_age_seconds"].samples  # no champion yet: no age, not 0


# --- the exporter on a real home ----------------------------------------------------------------------


def check_states(collector) -> dict[tuple[str, str], str]:
    """(asset, check) -> state, from the exporter's check_status state set."""
    out = {}
    for metric in collector.collect():
        if metric.name == "mlops_pipeline_check_status":
            for s in metric.samples:
                if s.value == 1:
                    out[(s.labels["asset"], s.labels["check"])] = s.labels["status"]
    return out


def samples(collector, name: str) -> dict[tuple, float]:
    """Samples of one metric as {label values (without spec): value}, for the flights spec."""
    out = {}
    for metric in collector.collect():
        for s in metric.samples:
            if s.name == name and s.labels.get("spec", SPEC) == SPEC:
                out[tuple(v for k, v in sorted(s.labels.items()) if k != "spec")] = s.value
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory, flight_spec):
    """Flights on a real home: six days landed and ingested, trained twice (the second challenger, fitted
    on the same days, does not beat the champion by the margin), the newest day scored, the champion
    deployed to a real local server on a free port, and an ingest of a day that never landed (fails)."""
    from mlops_assets.resources import EndpointDeployer, LakeStorage
    from mlops_assets.rollout.local import LocalTarget

    path = tmp_path_factory.mktemp("observability_home")
    spec = flight_spec.model_copy(update={"deployment": flight_spec.deployment.model_copy(update={"port": free_port()})})
    with platform(path, [spec]) as p:
        p.land(SPEC, START, DAYS)
        assert p.run("register", SPEC).success
        for day in KEYS:
            assert p.run("ingest", SPEC, day).success
        assert p.run("train", SPEC).success
        assert p.run("score", SPEC, KEYS[-1]).success
        assert p.run("train", SPEC).success
        try:
            assert p.run("deploy", SPEC).success
            p.missing_day = (START + timedelta(days=DAYS + 3)).isoformat()
            p.failed = p.run("ingest", SPEC, p.missing_day)
            assert not p.failed.success
            p.spec = spec
            yield p
        finally:
            run_dir = EndpointDeployer(home=str(path)).local_run_dir(SPEC)
            LocalTarget(spec, LakeStorage(root=str(path)), p.resources()["mlflow"].tracking_uri, run_dir).stop()


def test_exporter_reports_the_pipeline_of_a_real_home(home):
    import dagster as dg

    from mlops_assets.exporter import PipelineCollector

    collector = PipelineCollector([home.spec], instance=home.instance, cache_seconds=0)
    assert samples(collector, "mlops_pipeline_up") == {(): 1}
    assert samples(collector, "mlops_pipeline_retrains_total") == {(): 2}
    gate = home.latest(f"{SPEC}/champion")
    assert gate["decision"] == "kept champion" and gate["champion_version"] == 1
    assert samples(collector, "mlops_pipeline_gate_decisions_total") == {("promoted",): 1, ("rejected",): 1}
    assert samples(collector, "mlops_pipeline_champion_version") == {(): 1}
    # the champion's age is measured from when version 1 was trained (the first model materialization)
    first_model = home.instance.fetch_materializations(dg.AssetKey([SPEC, "model"]), limit=1, ascending=True).records[0]
    assert samples(collector, "mlops_pipeline_model_trained_timestamp_seconds") == {(): pytest.approx(first_model.timestamp)}
    age = samples(collector, "mlops_pipeline_model_age_seconds")[()]
    assert 0 <= (time.time() - first_model.timestamp) - age < 5  # measured at the read, a moment ago
    freshness = samples(collector, "mlops_pipeline_freshness_limit_seconds")
    # the spec's policies.freshness, and the weather's 2-hour TTL for the hourly online_lookups
    assert freshness == {
        ("endpoint",): 24 * 3600,
        ("features",): 48 * 3600,
        ("model",): 30 * 86400,
        ("online_lookups",): 2 * 3600,
    }
    ages = samples(collector, "mlops_pipeline_asset_age_seconds")
    assert {("features",), ("model",), ("endpoint",), ("predictions",)} <= set(ages) and max(ages.values()) < 600
    assert samples(collector, "mlops_pipeline_endpoint_actions_total") == {("deploy",): 1}
    assert samples(collector, "mlops_pipeline_canary_rollbacks_total") == {(): 0}

    # drift: the batch check of the newest scored day; the served one did not judge (nothing was served then)
    predictions = home.latest(f"{SPEC}/predictions")
    assert samples(collector, "mlops_pipeline_drift_share") == {("batch",): predictions["drifted_feature_share"]}
    assert samples(collector, "mlops_pipeline_drift_share_limit") == {(): 0.5}

    # checks: the failed ingest planned the dataset checks and never judged them; the served checks had
    # too few rows; the canary check ran outside a canary; none of these reads as passed
    states = check_states(collector)
    dataset = {check: states[(f"{SPEC}/dataset", check)] for check in ("schema", "nulls", "ranges", "row_count", "duplicates")}
    assert set(dataset.values()) == {"not_judged"}
    assert states[(f"{SPEC}/champion", "promotion_gate")] == "passed"
    assert states[(f"{SPEC}/endpoint", "canary")] == "not_judged"
    for check in ("served_feature_drift", "served_prediction_drift", "served_performance"):
        assert states[(f"{SPEC}/predictions", check)] == "not_judged", check
    drift_passed = home.check_results(f"{SPEC}/predictions")["feature_drift"]
    assert states[(f"{SPEC}/predictions", "feature_drift")] == ("passed" if drift_passed else "failed")
    passed = samples(collector, "mlops_pipeline_check_passed")
    assert passed[(f"{SPEC}/dataset", "nulls", "error")] == 0 and passed[(f"{SPEC}/champion", "promotion_gate", "error")] == 1

    # failed runs by job: the ingest that failed, every other job present at 0
    failed = samples(collector, "mlops_pipeline_failed_runs_total")
    assert failed == {
        (f"{kind}_{SPEC}",): (1 if kind == "ingest" else 0)
        for kind in ("register", "ingest", "train", "score", "deploy", "lookups")
    }

    # counters only grow, and a second read fetches only what is new: a rollback recorded by the
    # endpoint asset (its metadata, as endpoints.py writes it) is counted once
    home.instance.report_runless_asset_event(
        dg.AssetMaterialization(dg.AssetKey([SPEC, "endpoint"]), metadata={"action": "rolled_back", "stable_version": 1})
    )
    assert samples(collector, "mlops_pipeline_canary_rollbacks_total") == {(): 1}
    assert samples(collector, "mlops_pipeline_canary_rollbacks_total") == {(): 1}
    assert samples(collector, "mlops_pipeline_failed_runs_total")[(f"ingest_{SPEC}",)] == 1


def test_a_monitoring_check_that_could_not_judge_is_skipped_not_passed(home):
    """The real scoring run of the home: nothing was served yet, so the three ``served_*`` checks had no
    rows to judge. They yield no result: Dagster records them as planned and resolves them to skipped
    once the run succeeded (never "Passed"), the step still succeeds, the batch checks keep their
    verdicts, and the reason each was not judged is on the predictions' materialization."""
    import asyncio

    import dagster as dg
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionResolvedStatus

    asset = dg.AssetKey([SPEC, "predictions"])
    evaluated = home.check_results(asset.to_user_string())
    served = ("served_feature_drift", "served_prediction_drift", "served_performance")
    assert {"feature_drift", "prediction_drift", "performance"} <= set(evaluated)
    assert not set(served) & set(evaluated), "a check that could not judge has no evaluation"

    def resolved(check: str):
        key = dg.AssetCheckKey(asset, check)
        record = home.instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        return asyncio.run(record.resolve_status(LoadingContextForTest(home.instance)))

    for check in served:
        assert resolved(check) == AssetCheckExecutionResolvedStatus.SKIPPED, check
    batch = {check: resolved(check) for check in ("feature_drift", "prediction_drift", "performance")}
    expected = {True: AssetCheckExecutionResolvedStatus.SUCCEEDED, False: AssetCheckExecutionResolvedStatus.FAILED}
    assert batch == {check: expected[evaluated[check]] for check in batch}

    reasons = home.latest(asset.to_user_string())
    minimum = home.spec.policies.drift.min_rows
    assert reasons["not_judged_served_feature_drift"] == f"not judged: 0 rows (policy minimum {minimum})."
    assert reasons["not_judged_served_performance"].startswith("not judged: 0 labelled rows")
    assert not any(k.startswith("not_judged_") for k in reasons if k.removeprefix("not_judged_") in batch)


def test_tables_in_check_and_asset_metadata_are_native_tables(home):
    """The drift check's per-feature table and the training set's null counts, read back from the
    event log of the home's real runs: Dagster tables (typed schema, one record per row), which the UI
    renders in place; the plot stays an image in markdown."""
    import dagster as dg

    key = dg.AssetCheckKey(dg.AssetKey([SPEC, "predictions"]), "feature_drift")
    evaluation = home.instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation
    table = evaluation.metadata["per_feature"]
    assert isinstance(table, dg.TableMetadataValue)
    assert sorted(r.data["column"] for r in table.records) == sorted(home.spec.feature_names)
    types = {c.name: c.type for c in table.schema.columns}
    assert types["column"] == "string" and types["drifted"] == "bool" and types["strength"] == "float"
    assert all(isinstance(r.data["drifted"], bool) for r in table.records)
    assert evaluation.metadata["plot"].value.startswith("![plot](data:image/svg+xml;base64,")
    nulls = home.latest(f"{SPEC}/training_set")["feature_nulls"]
    assert isinstance(nulls, dg.TableMetadataValue) and nulls.records


def test_numbers_are_measurements_never_settings_or_placeholders(home):
    """What Dagster charts over partitions and runs (numeric metadata) is measured; the policy a verdict
    applied is one text entry; what does not exist is absent, not 0 or NaN: the first gate had no
    champion (no champion score, no version before), and the endpoint serves no canary."""
    import dagster as dg

    metric = home.spec.promotion.metric
    first_gate, second_gate = (
        {k: v.value for k, v in r.asset_materialization.metadata.items()}
        for r in home.instance.fetch_materializations(dg.AssetKey([SPEC, "champion"]), limit=2, ascending=True).records
    )
    assert first_gate["decision"] == "promoted" and f"challenger_{metric}" in first_gate
    assert f"champion_{metric}" not in first_gate and "champion_version_before" not in first_gate
    assert second_gate[f"champion_{metric}"] > 0 and second_gate["champion_version_before"] == 1
    assert "margin" not in second_gate and str(home.spec.promotion.margin) in second_gate["policy"]

    # the deploy run's materialization (an earlier test reports a rollback event after it)
    deployed = home.instance.fetch_materializations(dg.AssetKey([SPEC, "endpoint"]), limit=1, ascending=True).records[0]
    endpoint = {k: v.value for k, v in deployed.asset_materialization.metadata.items()}
    assert endpoint["action"] == "deploy" and endpoint["stable_version"] == 1
    assert "canary_version" not in endpoint and "canary_percent" not in endpoint

    for check in ("feature_drift", "prediction_drift", "performance"):
        key = dg.AssetCheckKey(dg.AssetKey([SPEC, "predictions"]), check)
        metadata = home.instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation.metadata
        assert isinstance(metadata["policy"], dg.TextMetadataValue), check
        assert not {"tolerated_drop", "threshold", "drift_share", "min_rows"} & set(metadata), check


def test_exporter_reports_its_own_failure_not_stale_numbers(home):
    """An instance that cannot be read: the scrape says so (up 0, one more error) and carries no
    pipeline numbers from an earlier read."""
    from mlops_assets.exporter import PipelineCollector

    class Broken:
        def __getattr__(self, name):
            raise ConnectionError("database unreachable")

    collector = PipelineCollector([home.spec], instance=home.instance, cache_seconds=0)
    assert samples(collector, "mlops_pipeline_retrains_total") == {(): 2}
    collector._instance = Broken()
    names = {m.name for m in collector.collect()}
    assert samples(collector, "mlops_pipeline_up") == {(): 0}
    assert "mlops_pipeline_retrains" not in names and samples(collector, "mlops_pipeline_read_errors_total")[()] >= 1


# --- a real Prometheus ------------------------------------------------------------------------------


def sd_labels(
    pod: dict,
    *,
    ip: str,
    port: int,
    name: str,
    phase: str = "Running",
    container: str | None = None,
    port_name: str | None = None,
    scrape: str | None = None,
) -> dict[str, str]:
    """The labels Kubernetes pod discovery gives one container port of ``pod`` (a rendered pod)."""

    def clean(key: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", key)

    annotations = dict(pod["annotations"], **({"prometheus.io/scrape": scrape} if scrape else {}))
    annotations["prometheus.io/port"] = str(port)  # the pod's port here is the local server's
    labels = {
        "__address__": f"{ip}:{port}",
        "__meta_kubernetes_namespace": pod["namespace"],
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_container_name": container or pod["container"],
        "__meta_kubernetes_pod_container_port_name": port_name or pod["port_name"],
        "__meta_kubernetes_pod_container_port_number": str(port),
        "__meta_kubernetes_pod_container_port_protocol": "TCP",
    }
    labels |= {f"__meta_kubernetes_pod_label_{clean(k)}": v for k, v in pod["labels"].items()}
    labels |= {f"__meta_kubernetes_pod_labelpresent_{clean(k)}": "true" for k in pod["labels"]}
    labels |= {f"__meta_kubernetes_pod_annotation_{clean(k)}": v for k, v in annotations.items()}
    return labels


def prometheus_api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # a query Prometheus refuses: say which and why
        pytest.fail(f"Prometheus refused {path} {params}: {exc.read().decode()}")
    assert body["status"] == "success", body
    return body["data"]


def wait_for(what: str, predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_until_serving(what: str, url: str, proc: subprocess.Popen, log: Path) -> None:
    """Wait for ``url`` to answer 200; fail with the process's log if it exits first."""

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        return http_ok(url)

    wait_for(what, up, timeout=90)


def measured_sides(expr: str) -> list[str]:
    """The measured side of an alert expression: each operand of a top-level ``and``/``or``/``unless``,
    cut before its first top-level comparison (``>``, ``>=``, ``<``, ``<=``, ``==``, ``!=``)."""
    parts, depth, quote, start, i = [], 0, None, 0, 0
    cut: int | None = None
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            word = re.match(r"\s(and|or|unless)\s", expr[i:])
            if word:
                parts.append(expr[start : cut if cut is not None else i])
                start, cut = i + word.end(), None
                i += word.end()
                continue
            if cut is None and re.match(r"(==|!=|>=|<=|>|<)", expr[i:]) and not re.match(r"=~|!~", expr[i:]):
                cut = i
        i += 1
    parts.append(expr[start : cut if cut is not None else len(expr)])
    return [p.strip() for p in parts]


def test_measured_sides_of_alert_expressions():
    assert measured_sides("a:b:ratio > 0.01") == ["a:b:ratio"]
    assert measured_sides('up{job="x"} == 0') == ['up{job="x"}']
    assert measured_sides('m{a=~"5.."} >= on (s) group_left l and x != 1') == ['m{a=~"5.."}', "x"]


def request_rows(home) -> tuple[list[dict], list[dict]]:
    """Requests of the newest ingested day's flights (known entities), and the same with a plane and a
    route the online store never saw."""
    import pandas as pd

    day = pd.read_parquet(home.home / "lake" / "dataset" / SPEC / f"{KEYS[-1]}.parquet").dropna(subset=["tailnum"])
    rows = []
    for _, flight in day.head(40).iterrows():
        row = {k: str(flight[k]) for k in ("carrier", "origin", "dest", "tailnum")}
        row |= {"distance": float(flight["distance"]), "event_timestamp": f"{KEYS[-1]}T09:00"}
        rows.append(row)
    return rows, [{**r, "tailnum": "N0NE", "dest": "XXX"} for r in rows[:10]]


def post(port: int, body: bytes) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/{SPEC}:predict", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def exporter(home, tmp_path):
    """``mlops exporter`` in its own process group, on the home's Dagster instance."""
    port = free_port()
    log = tmp_path / "exporter.log"
    env = {**os.environ, "MLOPS_HOME": str(home.home), "DAGSTER_HOME": str(home.home / "dagster"), "MLOPS_ENV": "local"}
    cmd = [sys.executable, "-m", "mlops_assets.cli", "exporter", "--port", str(port), "--cache-seconds", "1"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_until_serving("mlops exporter", f"http://127.0.0.1:{port}/metrics", proc, log)
        yield {"port": port, "proc": proc, "log": log}
    finally:
        if proc.poll() is None:
            stop_process_group(proc)


def test_a_real_prometheus_evaluates_every_dashboard_query_and_rule(home, exporter, tmp_path):
    server_port = home.spec.deployment.port
    assert http_ok(f"http://127.0.0.1:{server_port}/readyz")
    sd = tmp_path / "sd"
    sd.mkdir()
    config = with_file_discovery(production_config(), sd)
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config.pop("alerting")
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules.yml")]
    for job in config["scrape_configs"]:
        job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
    deployment_pod, kserve_pod = rendered_pod("deployment"), rendered_pod("kserve")
    dead_port = free_port()
    targets = {
        MODEL_JOB: [
            # the model server (a rendered Deployment's pod) and what relabelling must leave out: the same pod's
            # KServe queue-proxy port, a pending pod, a pod that opted out of scraping
            sd_labels(deployment_pod, ip="127.0.0.1", port=server_port, name="flight-delays-0"),
            sd_labels(
                deployment_pod,
                ip="127.0.0.1",
                port=dead_port,
                name="flight-delays-0",
                container="queue-proxy",
                port_name="queue-port",
            ),
            sd_labels(deployment_pod, ip="127.0.0.1", port=dead_port, name="flight-delays-1", phase="Pending"),
            sd_labels(deployment_pod, ip="127.0.0.1", port=dead_port, name="flight-delays-2", scrape="false"),
            # a KServe predictor pod is kept too (nothing listens: it reads down)
            sd_labels(kserve_pod, ip="127.0.0.2", port=dead_port, name="flight-delays-predictor-0"),
        ],
        EXPORTER_JOB: [
            {
                "__address__": f"127.0.0.1:{exporter['port']}",
                "__meta_kubernetes_namespace": "mlops",
                "__meta_kubernetes_service_name": "mlops-exporter",
                "__meta_kubernetes_endpoint_port_name": "metrics",
                "__meta_kubernetes_pod_name": "mlops-exporter-0",
            },
            {
                "__address__": f"127.0.0.1:{dead_port}",
                "__meta_kubernetes_namespace": "mlops",
                "__meta_kubernetes_service_name": "mlops-exporter",
                "__meta_kubernetes_endpoint_port_name": "http",
                "__meta_kubernetes_pod_name": "mlops-exporter-0",
            },
        ],
    }
    for job, groups in targets.items():
        (sd / f"{job}.json").write_text(json.dumps([{"targets": [g.pop("__address__")], "labels": g} for g in groups]))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    cmd = [
        tool("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_until_serving("Prometheus", f"http://127.0.0.1:{port}/-/ready", proc, log)

        # relabelling: exactly the server pods and the exporter's metrics port are scraped, with their labels
        def active():
            found = prometheus_api(port, "targets", state="active")["activeTargets"]
            return found if len(found) == 3 else None

        found = {(t["labels"]["job"], t["labels"]["instance"]): t["labels"] for t in wait_for("the targets", active)}
        assert set(found) == {
            (MODEL_JOB, f"127.0.0.1:{server_port}"),
            (MODEL_JOB, f"127.0.0.2:{dead_port}"),
            (EXPORTER_JOB, f"127.0.0.1:{exporter['port']}"),
        }
        assert (
            found[(MODEL_JOB, f"127.0.0.1:{server_port}")].items()
            >= {"namespace": "mlops", "pod": "flight-delays-0", "spec": SPEC}.items()
        )
        assert found[(EXPORTER_JOB, f"127.0.0.1:{exporter['port']}")]["pod"] == "mlops-exporter-0"

        # traffic: answered requests, unknown entities, refused ones (422: a field missing; 400: not JSON), in
        # two rounds with a scrape between them: a counter's first sample is where its rate starts
        known, unknown = request_rows(home)

        def traffic_seen(rounds: int) -> bool:
            got = prometheus_api(port, "query", query=f'sum(mlops_requests_total{{model="{SPEC}",code="400"}})')["result"]
            return bool(got) and float(got[0]["value"][1]) >= rounds

        for rounds in (1, 2):
            for i in range(0, len(known), 4):
                assert post(server_port, json.dumps({"instances": known[i : i + 4]}).encode()) == 200
            assert post(server_port, json.dumps({"instances": unknown}).encode()) == 200
            assert post(server_port, json.dumps({"instances": [{"carrier": "UA"}]}).encode()) == 422
            assert post(server_port, b"{not json") == 400
            wait_for(f"round {rounds} of the traffic in Prometheus", lambda rounds=rounds: traffic_seen(rounds))
        time.sleep(4)  # a few more scrapes and rule evaluations: rules read what rules recorded

        empty = []
        substitutions = {"$__rate_interval": "30s", "$__interval": "30s", "$spec": SPEC}
        for title, expr in dashboard_queries():
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            if not prometheus_api(port, "query", query=expr)["result"]:
                empty.append(f"dashboard '{title}': {expr}")
        for rule in rules():
            for expr in [rule["expr"]] if "record" in rule else measured_sides(rule["expr"]):
                if not prometheus_api(port, "query", query=expr)["result"]:
                    empty.append(f"{rule.get('record') or rule['alert']}: {expr}")
        assert not empty, (
            "expressions without a series:\n" + "\n".join(empty) + "\nexporter log:\n" + exporter["log"].read_text()[-3000:]
        )
        # the spec variable's values
        assert prometheus_api(port, "label/spec/values", **{"match[]": "mlops_pipeline_spec_info"}) == [SPEC]

        # the rules as Prometheus evaluates them: every group healthy, every rule without an error
        groups = prometheus_api(port, "rules")["groups"]
        assert {g["name"] for g in groups} == {
            g["name"] for g in yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]
        }
        unhealthy = [(g["name"], r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert not unhealthy, unhealthy
        # and what they measured: every request answered or refused, none failed
        errors = prometheus_api(port, "query", query=f'model:mlops_request_errors:ratio_rate5m{{model="{SPEC}"}}')["result"]
        assert float(errors[0]["value"][1]) == 0
    finally:
        stop_process_group(proc)
    # the exporter stops on SIGTERM and exits 0
    os.killpg(exporter["proc"].pid, signal.SIGTERM)
    assert exporter["proc"].wait(timeout=30) == 0, exporter["log"].read_text()[-3000:]
