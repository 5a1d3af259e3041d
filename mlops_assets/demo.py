"""``mlops demo``: a window of real days through the whole platform on the embedded home, quietly.

It checks the spec against its data, lands the days, registers the Feast definitions, ingests each
day, trains and gates the first model, scores the last days and, with a deployment, starts the
endpoint: the same jobs CI runs (``dagster job execute``), executed in this process.

What a person sees is the platform's own progress (a bar per phase) and a summary that says what to
open and what the checks found. What the libraries print along the way is held back: MLflow's
database creation and registry notices, SQLAlchemy's deprecation warnings, Dagster's beta warnings.
A run that fails prints what was held back for it, with its run id, and the demo stops there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings
from datetime import date, timedelta

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
LIBRARY_LOGGERS = ("mlflow", "alembic", "feast", "py.warnings")


@contextlib.contextmanager
def _library_chatter_held():
    """Warnings off and third-party loggers at ERROR while the demo runs (restored after)."""
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def run_demo(spec_name: str, start: date, days: int) -> int:
    from mlops_assets.environments import ensure_dagster_home, mlops_home

    home = mlops_home()
    if not os.environ.get("DAGSTER_HOME"):  # unset or empty: the home's own instance
        os.environ["DAGSTER_HOME"] = str(ensure_dagster_home(home))
    with _library_chatter_held():
        return _demo(spec_name, start, days, home)


def _demo(spec_name: str, start: date, days: int, home) -> int:
    import dagster as dg
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mlops_assets.cli import land, run_check
    from mlops_assets.common import key
    from mlops_assets.core.names import job_name
    from mlops_assets.definitions import defs
    from mlops_assets.specs import find_spec

    t0 = time.perf_counter()
    if run_check([spec_name]):  # a spec that does not fit its data stops here, before anything is landed
        raise SystemExit(f"mlops demo: spec {spec_name!r} does not fit its data (problems above); nothing was landed")
    spec = find_spec(spec_name)
    keys = [(start + timedelta(days=i)).isoformat() for i in range(days)]
    scored = keys[-3:]
    console = Console()
    print(f"home: {home}", flush=True)
    instance = dg.DagsterInstance.get()

    def run(kind: str, partition: str | None = None) -> None:
        held = io.StringIO()
        with contextlib.redirect_stderr(held), contextlib.redirect_stdout(held):
            result = defs.resolve_job_def(job_name(kind, spec_name)).execute_in_process(
                instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET
            )
        if not result.success:
            progress.stop()
            sys.stderr.write(held.getvalue()[-4000:])
            label = f"{kind}{' ' + partition if partition else ''}"
            raise SystemExit(f"mlops demo: {label}: run {result.run_id} failed; its event log is in the Dagster UI (make ui)")

    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("landing", total=days)
        land(spec, start, days, on_day=lambda: progress.advance(task))
        task = progress.add_task("ingesting", total=days + 1)
        run("register")
        progress.advance(task)
        for k in keys:
            run("ingest", k)
            progress.advance(task)
        task = progress.add_task("training", total=1)
        run("train")
        progress.advance(task)
        task = progress.add_task("scoring", total=len(scored))
        for k in scored:
            run("score", k)
            progress.advance(task)
        if spec.deployment is not None:
            task = progress.add_task("deploying", total=1)
            run("deploy")  # the endpoint asset: starts (or hot-swaps) the local server and verifies it
            progress.advance(task)
    check_keys = [k for k in defs.resolve_asset_graph().asset_check_keys if k.asset_key.path[0] == spec.name]
    print(summary(spec, instance, key, check_keys, scored, time.perf_counter() - t0))  # plain: pasteable, never re-wrapped
    return 0


def _meta(instance, asset_key) -> dict:
    event = instance.get_latest_materialization_event(asset_key)
    return {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}


def check_evaluations(instance, check_keys: list) -> dict:
    """The newest evaluation of each check that was judged (a skipped or planned check has none)."""
    from mlops_assets.common import check_evaluation

    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    return {k: e for k, record in records.items() if (e := check_evaluation(record)) is not None}


def summary(spec, instance, key, check_keys: list, scored: list[str], seconds: float) -> str:
    """What the demo made, where to look, and what its red checks mean (from the checks' own results)."""
    model, gate = _meta(instance, key("model", spec)), _meta(instance, key("champion", spec))
    serving = f"version {gate['champion_version']}" if "champion_version" in gate else "no version"
    lines = [f"\n{spec.name}: champion {serving} ({gate.get('decision')}: {gate.get('reason')})"]
    metric = spec.promotion.metric
    for k in (f"holdout_{metric}", f"baseline_{metric}"):
        if isinstance(model.get(k), float):
            low, high = model.get(f"{k}_low"), model.get(f"{k}_high")  # the model card's 95 % interval
            interval = f"  (95 % interval {low:.4f}..{high:.4f})" if isinstance(low, float) and isinstance(high, float) else ""
            lines.append(f"  {k:<24} {model[k]:.4f}{interval}")
    lines.append(f"  trained on               {model.get('training_partitions')}, {model.get('rows_train')} rows")
    if spec.deployment is not None:
        from mlops_assets.cli import _curl_example

        endpoint = _meta(instance, key("endpoint", spec))
        lines.append(f"\nendpoint: {endpoint.get('action')} v{endpoint.get('stable_version')} at {endpoint.get('url', '')}")
        lines.append(_curl_example(spec, scored[-1]))
        lines.append(f"  stop it:  .venv/bin/mlops serve --spec {spec.name} --stop")

    checks = check_evaluations(instance, check_keys)
    red = sorted(((k, e) for k, e in checks.items() if not e.passed), key=lambda item: item[0].to_user_string())
    unjudged = len(check_keys) - len(checks)
    lines.append(f"\nchecks: {len(checks) - len(red)} passed, {len(red)} failed, {unjudged} not judged (nothing to judge yet)")
    for check_key, evaluation in red:
        lines.append(f"  ✗ {check_key.asset_key.to_user_string()} {check_key.name}: {evaluation.description}")
    if any(k.asset_key == key("predictions", spec) for k, _ in red):
        lines.append(_why_monitoring_fails(spec, scored))
    from mlops_assets.environments import runtime

    lines.append(
        f"\nOpen it:  make ui   (Dagster UI http://127.0.0.1:3000 and MLflow UI {runtime()['mlflow'].ui_base_url()}; Ctrl-C stops both)\n"
        f"  Lineage:  Assets → group {spec.name} (keys {spec.name}/<stage>)\n"
        f"  Model:    {key('model', spec).to_user_string()}: model card (intervals, importance, worst slices), MLflow link\n"
        f"  Checks:   {key('predictions', spec).to_user_string()} → Checks: the drift table and plot of each scored day"
    )
    lines.append(f"\ndemo finished in {seconds:.0f} s")
    return "\n".join(lines)


def _why_monitoring_fails(spec, scored: list[str]) -> str:
    """Why monitoring checks fail on the demo window, and what the automation would do about them."""
    from mlops_assets.policies import CHECK_POLICY

    acts = sorted({f"policies.{p}.retrain_when: {getattr(spec.policies, p).retrain_when}" for p in set(CHECK_POLICY.values())})
    return (
        f"  Why red on the demo: it scores {', '.join(scored)}, the last days of the window the model was just\n"
        f"  trained on. Each is a single day's events judged against the reference of the whole window (a\n"
        f"  day has one weekday, one day's conditions, a few hundred rows), so the drift checks see a narrow\n"
        f"  sample and a day's realised {spec.promotion.metric} is noisy. The checks report what they see; nothing is\n"
        f"  broken. With the daemon running (make ui), the mlops_automation sensor acts on them as the spec's\n"
        f"  policies say ({'; '.join(acts)})."
    )
