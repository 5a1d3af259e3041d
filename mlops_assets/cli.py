"""``mlops``: land real data into the landing zone and run the demo on the embedded home.

mlops home
mlops instance [--env aws]          the dagster.yaml of a profile's Dagster instance
mlops land --spec flight_delays --date 2013-01-05 [--days 3]
mlops demo [--spec flight_delays] [--start 2013-01-01] [--days 14]
mlops ui [--port 3000] [--mlflow-port 5000]   the Dagster UI and the MLflow UI together; Ctrl-C stops both
mlops replay --spec examples/specs/elec2.yaml --policy default|static|cron:N [--start D] [--days N] --out report.json
mlops serve --spec flight_delays [--host 127.0.0.1] [--port 8787]
mlops check --spec examples/specs/elec2.yaml  [--spec ...]   does the spec fit its data? (exit 1 if not)
mlops exporter [--host 127.0.0.1] [--port 9464]   the pipeline's Prometheus metrics, read from the Dagster instance
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date, timedelta


def land(spec_ref, start: date, days: int = 1, on_day=None) -> list[str]:
    """Copy the source rows of each day into the profile's landing zone as ``<spec>/<day>.csv``
    (original columns). The source is read once; ``on_day()`` is called after each day (progress).

    ``spec_ref`` is a spec name, a spec file path, or a loaded ``ModelSpec``."""
    from mlops_assets.core.sources import extract_day, read_table
    from mlops_assets.environments import runtime
    from mlops_assets.specs import ModelSpec, find_spec

    spec = spec_ref if isinstance(spec_ref, ModelSpec) else find_spec(spec_ref)
    lake = runtime()["lake"]
    source = read_table(spec.source.path, spec.source.format, spec.source.csv.options())
    ts = spec.source.timestamp
    written = []
    for i in range(days):
        day = start + timedelta(days=i)
        rows = extract_day(source, ts, day, spec.source.path)
        if rows.empty:
            print(f"{spec.name}: no source rows on {day}; nothing landed", file=sys.stderr)
        else:
            written.append(str(lake.land(spec.name, day.isoformat(), rows)))
        if on_day is not None:
            on_day()
    return written


def _curl_example(spec, day: str) -> str:
    """A request a person can paste: the spec's request fields filled from an event of ``day``'s
    typed dataset (the first one with every field present)."""
    import json

    from mlops_assets.core.names import EVENT_TS
    from mlops_assets.core.requests import EVENT_TS_FIELD, request_schema
    from mlops_assets.environments import runtime
    from mlops_assets.specs import ColumnFeature

    source = {f.name: f.source for f in spec.row_features if isinstance(f, ColumnFeature)}
    fields = {name: source.get(name, name) for name in request_schema(spec).required}
    lake = runtime()["lake"]
    events = lake.read(lake.partition_path("dataset", spec.name, day))
    event = events.dropna(subset=list(fields.values())).iloc[0]
    row = {name: event[column].item() if hasattr(event[column], "item") else event[column] for name, column in fields.items()}
    local = event[EVENT_TS].tz_convert(spec.source.timestamp.timezone).tz_localize(None)
    row[EVENT_TS_FIELD] = local.isoformat()
    d = spec.deployment
    body = json.dumps({"instances": [row]})
    return f"  try it:   curl -s http://{d.host}:{d.port}/v1/models/{spec.name}:predict -H 'Content-Type: application/json' -d '{body}'"


def show_home() -> int:
    """Create the embedded home if needed and say where everything is (secrets left out)."""
    from mlops_assets.environments import current_env, ensure_dagster_home, mlops_home, runtime

    home = mlops_home()
    env = current_env()
    print(f"MLOPS_ENV={env}\nMLOPS_HOME={home}")
    if env == "local":
        print(f"DAGSTER_HOME={ensure_dagster_home(home)}")
    r = runtime()
    lake, feast, mlflow = r["lake"], r["feast"], r["mlflow"]
    print(f"landing zone: {lake.landing_dir('<spec>')}/<YYYY-MM-DD>.csv")
    print(f"lake: {lake.path('<stage>', '<spec>', '<YYYY-MM-DD>.parquet')}")
    print(f"MLflow tracking URI: {_redacted(mlflow.tracking_uri)}")
    online = feast.online_store_path if feast.online_store_type == "sqlite" else "redis (MLOPS_REDIS)"
    print(f"Feast registry: {_redacted(feast.registry)}; online store: {online}")
    return 0


def _redacted(uri: str) -> str:
    from mlops_assets.endpoint_state import redact_uri

    return redact_uri(uri)


def show_instance(env: str | None) -> int:
    """Print the dagster.yaml of a profile's Dagster instance (PostgreSQL on the clouds)."""
    from mlops_assets.environments import instance_yaml

    print(instance_yaml(env), end="")
    return 0


def run_replay(args) -> int:
    import json
    import warnings
    from pathlib import Path

    from mlops_assets.replay import replay
    from mlops_assets.replay_signals import Stopped

    warnings.filterwarnings("ignore", module="dagster")  # beta/preview notices of the evaluator, once per tick
    try:
        report = replay(
            args.spec,
            args.policy,
            start=args.start,
            days=args.days,
            home=Path(args.home) if args.home else None,
            keep_instance=args.keep_instance,
        )
    except Stopped as exc:
        print(f"\nmlops replay: stopped by {exc}; no report written (the model servers it started are stopped)", file=sys.stderr)
        return 130
    Path(args.out).write_text(json.dumps(report, indent=1))
    summary = {k: v for k, v in report.items() if k != "rows"}
    print(json.dumps(summary))
    return 0


def run_backtest(args) -> int:
    """``mlops backtest``: the report and its chart as files; the recommendation on stdout."""
    import json
    import sys
    import warnings
    from pathlib import Path

    from mlops_assets.backtest import run, verify
    from mlops_assets.core.backtest_report import write
    from mlops_assets.specs import find_spec

    warnings.filterwarnings("ignore", module="dagster")
    spec = find_spec(args.spec)
    if not 0 <= args.budget <= 1:
        raise SystemExit(f"mlops backtest: --budget is a share of the scored days, between 0 and 1 (got {args.budget})")
    report, svg = run(spec, args.start, args.days, args.budget, progress=lambda m: print(f"{spec.name}: {m}", file=sys.stderr))
    if args.verify:
        report["verification"] = verify(spec, report, Path(args.home) if args.home else None)
    out = Path(args.out)
    chart = write(report, svg, out)
    rec = report["recommended"]
    print(
        f"{spec.name}: recommended {rec['policy']} ({report['metric_name']} {rec['metric']:.4f}, {rec['retrains']} retrains "
        f"of {report['budget']['max_retrains']} allowed); report {out}, chart {chart}",
        file=sys.stderr,
    )
    print(rec["yaml"], end="", file=sys.stderr)
    for line in report["advice"]:
        print(f"{spec.name}: {line}", file=sys.stderr)
    for variant in report["variants"]:
        print(f"{spec.name}: {variant['change']}:\n{variant['yaml']}", end="", file=sys.stderr)
    summary = {k: report[k] for k in ("spec", "start", "end", "scored_days")}
    summary["recommended"] = {k: rec[k] for k in ("policy", "metric", "retrains", "promotions", "vs_static", "vs_cron1")}
    if report["variants"]:
        summary["variants"] = [
            {"change": v["change"], "recommended": {k: v["recommended"][k] for k in ("policy", "metric", "retrains")}}
            for v in report["variants"]
        ]
    if args.verify:
        summary["verification"] = report["verification"]
    print(json.dumps(summary))
    return 0 if report.get("verification", {}).get("within_tolerance", True) else 1


def run_serve(args) -> int:
    """The model server in the foreground, on the stores of the current profile (``MLOPS_ENV``)."""
    from mlops_assets.environments import current_env, runtime, server_stores
    from mlops_assets.server import serve
    from mlops_assets.specs import find_spec

    spec = find_spec(args.spec)
    resources = runtime()
    if os.environ.get("MLFLOW_TRACKING_URI"):  # MLflow's own variable, set by the local target and containers
        from mlops_assets.resources import MlflowTracking

        resources["mlflow"] = MlflowTracking(
            tracking_uri=os.environ["MLFLOW_TRACKING_URI"], registry_uri=os.environ.get("MLFLOW_REGISTRY_URI")
        )
    if args.stop:
        from mlops_assets.rollout.local import LocalTarget

        deployer = resources["deployer"]
        target = LocalTarget(spec, resources["lake"], resources["mlflow"].tracking_uri, deployer.local_run_dir(spec.name))
        stopped = target.stop()
        print(f"{spec.name}: {'stopped the local endpoint' if stopped else 'no local endpoint was started from this home'}")
        return 0
    deployment = spec.deployment
    host = args.host or (deployment.host if deployment else "127.0.0.1")
    port = args.port or (deployment.port if deployment else 8787)
    where = resources["lake"].root
    print(f"serving {spec.name} on http://{host}:{port}/v1/models/{spec.name}:predict ({current_env()}: {where})", flush=True)
    serve(spec, host, port, server_stores(resources, spec))
    return 0


def run_exporter(args) -> int:
    """The pipeline metrics exporter in the foreground (``mlops_assets.exporter``) until SIGTERM or
    SIGINT. Locally it reads the home's Dagster instance; on a cloud profile, the one DAGSTER_HOME's
    dagster.yaml names (``mlops instance --env ...`` writes it), as the daemon and webserver do."""
    from mlops_assets.environments import current_env, ensure_dagster_home, mlops_home

    if current_env() == "local":
        os.environ.setdefault("DAGSTER_HOME", str(ensure_dagster_home(mlops_home())))
    elif not os.environ.get("DAGSTER_HOME"):
        raise SystemExit(
            f"mlops exporter: MLOPS_ENV={current_env()} reads the Dagster instance of DAGSTER_HOME's dagster.yaml; "
            f"set DAGSTER_HOME to its folder (write it with `mlops instance --env {current_env()}`)"
        )
    from mlops_assets.exporter import serve

    serve(args.host, args.port, cache_seconds=args.cache_seconds)
    return 0


def run_check(spec_refs: list[str]) -> int:
    """Check specs against samples of their own data before anything is ingested: every problem is
    printed as ``<spec file>: <field>: <why>``, and the exit code is 1 when there is any."""
    from mlops_assets.core.sources import DataError
    from mlops_assets.spec_check import check_spec
    from mlops_assets.specs import SpecError, find_spec, load_specs

    failed = 0
    specs = []
    try:
        specs = [find_spec(ref) for ref in spec_refs] if spec_refs else load_specs()
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    for spec in specs:
        try:
            problems = check_spec(spec)
        except DataError as exc:  # a sample that cannot be read at all
            print(f"{spec.file}: source.path: {exc}", file=sys.stderr)
            failed += 1
            continue
        for problem in problems:
            print(problem.render(spec), file=sys.stderr)
        if problems:
            failed += 1
            continue
        lookups = f", {len(spec.lookups)} lookup table(s)" if spec.lookups else ""
        print(
            f"{spec.file}: ok: {spec.name}: {len(spec.required_source_columns)} source columns{lookups}, "
            f"{len(spec.features)} features, estimator {spec.estimator.cls}"
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_land = sub.add_parser("land", help="drop real days of a spec's source into its landing zone")
    p_land.add_argument("--spec", required=True, help="spec name or path to a spec YAML")
    p_land.add_argument("--date", required=True, type=date.fromisoformat, help="first day (YYYY-MM-DD)")
    p_land.add_argument("--days", type=int, default=1)
    sub.add_parser("home", help="create the embedded home (if needed) and print where everything is")
    p_instance = sub.add_parser("instance", help="print the dagster.yaml of a profile's Dagster instance")
    p_instance.add_argument("--env", help="local | aws | gcp | k8s (default: $MLOPS_ENV)")
    p_demo = sub.add_parser("demo", help="land, ingest, train, gate and score a window on the embedded home")
    p_demo.add_argument("--spec", default="flight_delays")
    p_demo.add_argument("--start", type=date.fromisoformat, default=date(2013, 1, 1))
    p_demo.add_argument("--days", type=int, default=14)
    p_replay = sub.add_parser("replay", help="replay a dataset day by day through the sensors and automation; score the policy")
    p_replay.add_argument("--spec", required=True, help="spec name or path to a spec YAML")
    p_replay.add_argument("--policy", default="default", help="default | static | cron:N (retrain every N days)")
    p_replay.add_argument("--start", type=date.fromisoformat, help="first scored day (default: after the warm-up)")
    p_replay.add_argument("--days", type=int, help="number of scored days (default: to the end of the source)")
    p_replay.add_argument("--out", default="report.json", help="where the JSON report goes")
    p_replay.add_argument("--home", help="replay home (default: $MLOPS_HOME/replays/<spec>-<policy>; wiped first)")
    p_replay.add_argument(
        "--keep-instance",
        action="store_true",
        help="keep Dagster's records in the home's SQLite instance (for the UI; ~2x slower)",
    )
    p_bt = sub.add_parser("backtest", help="play candidate retrain policies over a spec's history and recommend one")
    p_bt.add_argument("--spec", required=True, help="spec name or path to a spec YAML")
    p_bt.add_argument("--start", type=date.fromisoformat, help="first scored day (default: where a replay starts)")
    p_bt.add_argument("--days", type=int, help="number of scored days (default: to the end of the source)")
    p_bt.add_argument("--budget", type=float, default=0.1, help="most retrains, as a share of the scored days (default 0.1)")
    p_bt.add_argument("--out", default="backtest.json", help="where the JSON report goes (the SVG chart goes beside it)")
    p_bt.add_argument("--verify", action="store_true", help="also replay the recommendation through the platform and compare")
    p_bt.add_argument("--home", help="home of the --verify replay (default: $MLOPS_HOME/replays/<spec>-<policy>)")
    p_serve = sub.add_parser("serve", help="run the model server of a spec (what its endpoint serves) in the foreground")
    p_serve.add_argument(
        "--spec", default=os.environ.get("MLOPS_SPEC"), help="spec name or path to a spec YAML (default: $MLOPS_SPEC)"
    )
    p_serve.add_argument("--host", help="interface (default: the spec's deployment.host, else 127.0.0.1)")
    p_serve.add_argument("--port", type=int, help="port (default: the spec's deployment.port, else 8787)")
    p_serve.add_argument("--stop", action="store_true", help="stop the local endpoint the deploy job started, and exit")
    p_check = sub.add_parser(
        "check", help="check specs against their source and lookup tables and their estimator; exit 1 on problems"
    )
    p_check.add_argument("--spec", action="append", default=[], help="spec name or path (repeatable; default: every loaded spec)")
    p_exporter = sub.add_parser(
        "exporter", help="serve the pipeline's Prometheus metrics (drift, checks, retrains, model age, failed runs) on /metrics"
    )
    p_exporter.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0 in a container)")
    p_exporter.add_argument("--port", type=int, default=9464)
    p_exporter.add_argument(
        "--cache-seconds", type=float, default=10.0, help="how long a read of the Dagster instance answers scrapes (default 10)"
    )
    p_ui = sub.add_parser("ui", help="start the Dagster UI and the MLflow UI of the home together; Ctrl-C stops both")
    p_ui.add_argument("--host", default="127.0.0.1")
    p_ui.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    p_ui.add_argument(
        "--mlflow-port",
        type=int,
        help="MLflow UI port (default: where the UI's MLflow links point, $MLOPS_MLFLOW_UI_URL, else 5000)",
    )
    args = parser.parse_args(argv)
    from mlops_assets.environments import ProfileError

    try:
        return _run(parser, args)
    except ProfileError as exc:
        raise SystemExit(f"mlops {args.command}: {exc}") from None


def _run(parser: argparse.ArgumentParser, args) -> int:
    if args.command == "serve":
        if not args.spec:
            parser.error("serve needs --spec (or MLOPS_SPEC)")
        return run_serve(args)
    if args.command == "check":
        return run_check(args.spec)
    if args.command == "exporter":
        return run_exporter(args)
    if args.command == "replay":
        return run_replay(args)
    if args.command == "backtest":
        return run_backtest(args)
    if args.command == "home":
        return show_home()
    if args.command == "ui":
        from mlops_assets.ui import run_ui

        return run_ui(args.host, args.port, args.mlflow_port)
    if args.command == "instance":
        return show_instance(args.env)
    if args.command == "land":
        for path in land(args.spec, args.date, args.days):
            print(path)
        return 0
    from mlops_assets.demo import run_demo

    return run_demo(args.spec, args.start, args.days)


if __name__ == "__main__":
    sys.exit(main())
