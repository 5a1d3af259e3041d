"""Cost of one sensor tick: the landing sensors of 5 specs plus one automation evaluation, over
3 years of daily partitions each, in steady state (history already materialized and checked).

Setup (not timed) registers 5 specs (copies of the Elec2 spec under other names, 3 years of
partitions ending yesterday), reports the materializations and check results of every past day
for each partitioned asset, the model chain once, and lands 3 years of already-seen files plus
one new file per spec. Then each repetition times: every landing sensor's tick (listing and
cursor handling, reading the one new file) and ``evaluate_automation_conditions`` over all 45
assets (5 x 9). Goal: <= 2 s per tick.

``--storage`` picks the Dagster instance's storage: ``sqlite`` (the default; the local profile's
instance, in a temporary folder) or ``postgres`` (the cloud profiles' instance: a throwaway
PostgreSQL from ``mlops_assets_tests.services.postgres_server``, the dagster.yaml of
``environments.instance_yaml("aws")`` with the ``DAGSTER_PG_*`` variables pointing at it). The
landing zone is a local folder either way: only where Dagster keeps its records changes. The setup
reports its ~44,000 events one at a time (as runs would), ~25-35 ms each on either storage here:
expect tens of minutes at 3 years; ``--years 1`` checks the script in a few.

    .venv/bin/python bench/automation_tick.py [--repeats 5] [--years 3] [--storage sqlite|postgres]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPECS = 5


@contextlib.contextmanager
def dagster_instance(storage: str, home: Path):
    """The Dagster instance the tick runs on: SQLite in ``<home>/dagster``, or a PostgreSQL instance
    configured like the aws profile's (its server stopped, by process id, when the block ends)."""
    import dagster as dg

    if storage == "sqlite":
        with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
            yield instance
        return
    from mlops_assets.environments import DAGSTER_PG_VARS, instance_yaml
    from mlops_assets_tests.services import postgres_server

    with postgres_server() as pg:
        pg.create_database("dagster")
        os.environ.update(dict(zip(DAGSTER_PG_VARS, (pg.host, str(pg.port), pg.user, pg.password, "dagster"))))
        (home / "dagster").mkdir(parents=True, exist_ok=True)
        (home / "dagster" / "dagster.yaml").write_text(instance_yaml("aws"))
        instance = dg.DagsterInstance.from_config(str(home / "dagster"))
        try:
            yield instance
        finally:
            instance.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--years", type=int, default=3)
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite", help="the Dagster instance's storage")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mlops_tick_"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # also when the setup fails
    os.environ.update({"MLOPS_ENV": "local", "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")})

    import dagster as dg
    import pandas as pd

    from mlops_assets.common import key
    from mlops_assets.environments import resources
    from mlops_assets.factory import build_definitions
    from mlops_assets.specs import ModelSpec

    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    start = yesterday - timedelta(days=365 * args.years - 1)
    base = yaml.safe_load((REPO / "examples" / "specs" / "elec2.yaml").read_text())
    specs = []
    for i in range(SPECS):
        raw = {**base, "name": f"market_{i}", "partitions": {"start": start.isoformat()}}
        raw["source"] = {**base["source"], "path": str(home / "unused.csv")}
        specs.append(ModelSpec.model_validate(raw))
    defs = build_definitions(specs)
    days = [(start + timedelta(days=d)).isoformat() for d in range((yesterday - start).days + 1)]
    lake = resources()["lake"]
    sample = pd.read_csv(
        Path(os.environ.get("MLOPS_DATA_DIR", REPO.parent / "shared" / "data")) / "elec2" / "elec2_with_timestamp.csv", nrows=48
    )

    t = time.perf_counter()
    with dagster_instance(args.storage, home) as instance:
        cursors = {}
        for spec in specs:
            folder = Path(lake.landing_dir(spec.name))  # a local folder: the landing zone of the local profile
            folder.mkdir(parents=True)
            for day in days[:-1]:
                (folder / f"{day}.csv").write_text("already ingested\n")
            new_day = sample.copy()
            new_day["timestamp"] = [f"{yesterday} {h:02d}:{m:02d}:00" for h in range(24) for m in (0, 30)]
            new_day.to_csv(folder / f"{yesterday}.csv", index=False)
            # the sensor's cursor after it has seen every file but the new one: name -> stamp
            seen = {e.name: e.stamp for e in lake.landed(spec.name) if e.name != f"{yesterday}.csv"}
            cursors[spec.name] = json.dumps(seen, sort_keys=True)
            for stage in ("raw", "dataset", "features", "online_features", "predictions"):
                for day in days[:-1]:
                    instance.report_runless_asset_event(dg.AssetMaterialization(key(stage, spec), partition=day))
            for day in days[:-1]:
                for check in ("feature_drift", "prediction_drift", "performance"):
                    instance.report_runless_asset_event(
                        dg.AssetCheckEvaluation(
                            asset_key=key("predictions", spec),
                            check_name=check,
                            passed=True,
                            metadata={},
                            severity=dg.AssetCheckSeverity.WARN,
                            partition=day,
                        )
                    )
            for stage in ("feature_registry", "training_set", "model", "champion"):
                instance.report_runless_asset_event(dg.AssetMaterialization(key(stage, spec)))
        setup_s = time.perf_counter() - t
        sensors = [defs.resolve_sensor_def(f"landing_{s.name}") for s in specs]
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor  # first evaluation
        landing_s, automation_s, requested = [], [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            for sensor, spec in zip(sensors, specs):
                ctx = dg.build_sensor_context(
                    instance=instance, cursor=cursors[spec.name], resources={"lake": lake}, definitions=defs
                )
                requested += len(sensor.evaluate_tick(ctx).run_requests)
            landing_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            automation_s.append(time.perf_counter() - t)
            cursor = result.cursor
    tick = [a + b for a, b in zip(landing_s, automation_s)]
    figures = {
        "benchmark": "automation_tick",
        "storage": args.storage,
        "specs": SPECS,
        "partitions_per_spec": len(days),
        "assets": len(list(defs.resolve_all_asset_keys())),
        "repeats": args.repeats,
        "setup_s": round(setup_s, 1),
        "landing_sensors_median_s": round(statistics.median(landing_s), 3),
        "automation_median_s": round(statistics.median(automation_s), 3),
        "tick_median_s": round(statistics.median(tick), 3),
        "landing_runs_requested_per_tick": requested // args.repeats,
        "goal_s": 2.0,
    }
    print(
        f"{SPECS} specs x {len(days)} daily partitions, {args.storage} instance: landing sensors {figures['landing_sensors_median_s']} s + "
        f"automation {figures['automation_median_s']} s = {figures['tick_median_s']} s per tick (median of {args.repeats})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
