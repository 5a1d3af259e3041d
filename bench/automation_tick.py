"""Cost of one sensor tick: the landing sensors of 5 specs plus one automation evaluation, over
3 years of daily partitions each, in steady state (history already materialized and checked).

Setup (not timed) registers 5 specs (copies of the Elec2 spec under other names, 3 years of
partitions ending yesterday), reports the materializations and check results of every past day
for each partitioned asset, the model chain once, and lands 3 years of already-seen files plus
one new file per spec. Then each repetition times: every landing sensor's tick (listing and
cursor handling, reading the one new file) and ``evaluate_automation_conditions`` over all 45
assets (5 x 9). Goal: <= 2 s per tick.

    .venv/bin/python bench/automation_tick.py [--repeats 5] [--years 3]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPECS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--years", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mlops_tick_"))
    os.environ.update({"MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")})

    import dagster as dg
    import pandas as pd

    from mlops_assets.environments import resources
    from mlops_assets.factory import build_definitions
    from mlops_assets.specs import ModelSpec

    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
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
    sample = pd.read_csv(Path(os.environ.get("MLOPS_DATA_DIR", REPO.parent / "shared" / "data")) / "elec2" / "elec2_with_timestamp.csv", nrows=48)

    t = time.perf_counter()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        cursors = {}
        for spec in specs:
            folder = lake.landing_dir(spec.name)
            folder.mkdir(parents=True)
            seen = {}
            for day in days[:-1]:
                (folder / f"{day}.csv").write_text("already ingested\n")
                seen[f"{day}.csv"] = (folder / f"{day}.csv").stat().st_mtime_ns
            new_day = sample.copy()
            new_day["timestamp"] = [f"{yesterday} {h:02d}:{m:02d}:00" for h in range(24) for m in (0, 30)]
            new_day.to_csv(folder / f"{yesterday}.csv", index=False)
            cursors[spec.name] = json.dumps(seen)
            for stage in ("raw", "dataset", "features", "online_features", "predictions"):
                for day in days[:-1]:
                    instance.report_runless_asset_event(dg.AssetMaterialization(f"{stage}_{spec.name}", partition=day))
            for day in days[:-1]:
                for check in ("feature_drift", "prediction_drift", "performance"):
                    instance.report_runless_asset_event(
                        dg.AssetCheckEvaluation(
                            asset_key=dg.AssetKey(f"predictions_{spec.name}"),
                            check_name=check,
                            passed=True,
                            metadata={},
                            severity=dg.AssetCheckSeverity.WARN,
                            partition=day,
                        )
                    )
            for stage in ("feature_store", "training_set", "model", "champion"):
                instance.report_runless_asset_event(dg.AssetMaterialization(f"{stage}_{spec.name}"))
        setup_s = time.perf_counter() - t
        sensors = [defs.resolve_sensor_def(f"landing_{s.name}") for s in specs]
        cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor  # first evaluation
        landing_s, automation_s, requested = [], [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            for sensor, spec in zip(sensors, specs):
                ctx = dg.build_sensor_context(instance=instance, cursor=cursors[spec.name], resources={"lake": lake}, definitions=defs)
                requested += len(sensor.evaluate_tick(ctx).run_requests)
            landing_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            automation_s.append(time.perf_counter() - t)
            cursor = result.cursor
    tick = [a + b for a, b in zip(landing_s, automation_s)]
    figures = {
        "benchmark": "automation_tick",
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
        f"{SPECS} specs x {len(days)} daily partitions: landing sensors {figures['landing_sensors_median_s']} s + "
        f"automation {figures['automation_median_s']} s = {figures['tick_median_s']} s per tick (median of {args.repeats})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
