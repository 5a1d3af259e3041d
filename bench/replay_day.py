"""Cost of one simulated replay day on the aws-shaped profile against the local profile.

A replay day is what ``mlops replay`` runs for each day: the day's file lands, the landing sensor
ticks and its ingest run (raw -> dataset -> features -> online store) executes, then the day is
scored (the ``score`` job: predictions and their monitoring checks). Here the day is built from the
same pieces directly: ``LakeStorage.land`` (what ``mlops land`` writes), one tick of the spec's
landing sensor with its cursor, and the ``ingest`` and ``score`` jobs executed in process on the
profile's Dagster instance. The automation's evaluation (which ``mlops replay`` uses to decide that
the day is to be scored, and whether to retrain) is not part of it: bench/automation_tick.py times it.

Profiles (each run in its own process, on the bundled flight_delays spec):

* ``local``: a temporary ``MLOPS_HOME``; the Dagster instance is the profile's SQLite instance
  (``instance_yaml("local")``), MLflow on SQLite, Feast registry file and SQLite online store.
* ``aws``: every variable of the aws profile (``mlops_assets_tests.test_cloud_profiles.cloud_env``)
  pointing at throwaway servers from ``mlops_assets_tests.services``: S3 (moto) for landing zone,
  lake, Dagster IO and MLflow artifacts; PostgreSQL for the Dagster instance (``instance_yaml("aws")``),
  MLflow's backend store and Feast's SQL registry; Redis for Feast's online store. Fresh servers
  for every run, stopped (by process id) when it ends.

Per run (not timed): land ``--warmup-days`` days from 2013-01-01 (``mlops_assets.cli.land``), register,
ingest them (one landing-sensor tick), train once (the champion). Timed: each of the next ``--days``
days, land + sensor tick + ingest + score. The profiles alternate from one repeat to the next; per
profile the figure is the median over repeats of each run's median seconds per day, and the ratio is
aws / local. ``OMP_NUM_THREADS=1`` in both.

    .venv/bin/python bench/replay_day.py [--days 5] [--warmup-days 10] [--repeats 3]

Prints per-run lines (stderr), then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = "flight_delays"
START = date(2013, 1, 1)
PROFILES = ("local", "aws")
PHASES = ("land", "sensor", "ingest", "score")
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
WORKER_TIMEOUT_S = 3600


# --- one profile, one run (a process of its own) ---------------------------------------------------


def worker(profile: str, warmup_days: int, days: int) -> dict:
    """Warm up the platform on the current profile (``MLOPS_ENV`` and its variables are set), then
    time ``days`` replay days. Returns per-day seconds, per phase."""
    import warnings

    warnings.filterwarnings("ignore")
    import dagster as dg

    from mlops_assets.cli import land
    from mlops_assets.core.names import job_name, sensor_name
    from mlops_assets.core.sources import read_table, split_days
    from mlops_assets.environments import current_env, instance_yaml, runtime
    from mlops_assets.factory import build_definitions
    from mlops_assets.specs import find_spec

    if current_env() != profile:
        raise SystemExit(f"worker for {profile} runs with MLOPS_ENV={current_env()}")
    spec = find_spec(SPEC)
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(instance_yaml(profile))
    instance = dg.DagsterInstance.get()
    defs = build_definitions([spec])
    resources = runtime()
    lake = resources["lake"]
    sensor = defs.get_sensor_def(sensor_name("landing", spec))
    jobs = {kind: defs.resolve_job_def(job_name(kind, spec)) for kind in ("register", "ingest", "train", "score")}

    def run(kind: str, partition: str | None = None) -> None:
        result = jobs[kind].execute_in_process(instance=instance, partition_key=partition, raise_on_error=False, run_config=QUIET)
        if not result.success:
            failed = [e.message for e in result.all_events if e.is_failure][:3]
            raise SystemExit(f"{profile}: {kind} {partition or ''} failed: {failed}")

    cursor = None

    def tick() -> list[str]:
        nonlocal cursor
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake}, definitions=defs)
        data = sensor.evaluate_tick(ctx)
        cursor = data.cursor
        return [r.partition_key for r in data.run_requests or []]

    try:
        t0 = time.perf_counter()
        landed = land(spec, START, warmup_days)
        run("register")
        for partition in tick():
            run("ingest", partition)
        run("train")
        ts = spec.source.timestamp
        source_days = split_days(
            read_table(spec.source.path, spec.source.format, spec.source.csv.options()), ts, spec.source.path
        )
        setup_s = time.perf_counter() - t0

        per_day: list[dict[str, float]] = []
        for i in range(days):
            day = START + timedelta(days=warmup_days + i)
            key = day.isoformat()
            phases = {}
            t = time.perf_counter()
            lake.land(spec.name, key, source_days[day])
            phases["land"] = time.perf_counter() - t
            t = time.perf_counter()
            requested = tick()
            phases["sensor"] = time.perf_counter() - t
            if requested != [key]:
                raise SystemExit(f"{profile}: the landing sensor requested {requested} for {key}")
            t = time.perf_counter()
            run("ingest", key)
            phases["ingest"] = time.perf_counter() - t
            t = time.perf_counter()
            run("score", key)
            phases["score"] = time.perf_counter() - t
            phases["day"] = sum(phases.values())
            per_day.append(phases)
            print(
                f"  {profile} {key}: {phases['day']:.2f} s " + " ".join(f"{p} {phases[p]:.2f}" for p in PHASES), file=sys.stderr
            )
        return {
            "profile": profile,
            "landed_on": landed[0].rsplit("/", 2)[0],
            "instance": type(instance.run_storage).__name__,
            "setup_s": setup_s,
            "days": per_day,
        }
    finally:
        instance.dispose()


# --- the comparison --------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """This process's environment without any variable of a deployment (so ``local`` is purely local)."""
    from dataclasses import astuple

    from mlops_assets.environments import CLOUD_VARS, DAGSTER_PG_VARS, K8S_CLOUD_VAR
    from mlops_assets_tests.services import S3_ENV_KEYS

    drop = {*astuple(CLOUD_VARS), *DAGSTER_PG_VARS, K8S_CLOUD_VAR, *S3_ENV_KEYS, "STORAGE_EMULATOR_HOST"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", DO_NOT_TRACK="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(ROOT))
    env.setdefault("MLOPS_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    return env


@contextlib.contextmanager
def profile_env(profile: str, tmp: Path):
    """The environment of a profile's run; for aws, with its servers running until the block ends."""
    if profile == "local":
        yield {"MLOPS_ENV": "local", "MLOPS_HOME": str(tmp / "home"), "DAGSTER_HOME": str(tmp / "home" / "dagster")}
        return
    from mlops_assets_tests.services import postgres_server, redis_server, s3_server
    from mlops_assets_tests.test_cloud_profiles import cloud_env

    with postgres_server() as pg, redis_server() as redis, s3_server() as s3:
        yield cloud_env(profile, tmp, pg, redis, s3)


def run_profile(profile: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-replay-day-{profile}-") as tmp, profile_env(profile, Path(tmp)) as env:
        cmd = [sys.executable, __file__, "--worker", profile, "--days", str(args.days), "--warmup-days", str(args.warmup_days)]
        log = Path(tmp) / "worker.log"
        with log.open("w") as err:
            proc = subprocess.run(
                cmd,
                cwd=tmp,
                env={**base_env(), **env},
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=WORKER_TIMEOUT_S,
                check=False,
            )
        text = log.read_text(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"{profile} run failed (exit {proc.returncode}):\n{text[-4000:]}")
        print("\n".join(line for line in text.splitlines() if line.startswith(f"  {profile} ")), file=sys.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=5, help="timed days per run (after the warm-up)")
    parser.add_argument("--warmup-days", type=int, default=10, help="days landed, ingested and trained on before timing")
    parser.add_argument("--repeats", type=int, default=3, help="runs per profile; medians are reported")
    parser.add_argument("--worker", choices=PROFILES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.days < 1 or args.warmup_days < 3:
        parser.error("needs --days >= 1 and --warmup-days >= 3 (the first model trains on the warm-up)")
    sys.path.insert(0, str(ROOT))
    if args.worker:
        print(json.dumps(worker(args.worker, args.warmup_days, args.days)))
        return 0

    t_start = time.perf_counter()
    runs: dict[str, list[dict]] = {p: [] for p in PROFILES}
    for r in range(args.repeats):
        order = PROFILES if r % 2 == 0 else PROFILES[::-1]
        for profile in order:
            t = time.perf_counter()
            out = run_profile(profile, args)
            runs[profile].append(out)
            day_s = statistics.median(d["day"] for d in out["days"])
            print(
                f"repeat {r + 1} {profile}: {day_s:.2f} s/day (median of {args.days} days; setup {out['setup_s']:.0f} s, "
                f"run {time.perf_counter() - t:.0f} s with process and servers; {out['instance']}, landed on {out['landed_on']})",
                file=sys.stderr,
            )

    def med(profile: str, phase: str) -> float:
        return statistics.median(statistics.median(d[phase] for d in out["days"]) for out in runs[profile])

    result: dict = {
        "bench": "replay_day",
        "spec": SPEC,
        "days": args.days,
        "warmup_days": args.warmup_days,
        "first_timed_day": (START + timedelta(days=args.warmup_days)).isoformat(),
        "repeats": args.repeats,
        "omp_num_threads": 1,
    }
    for profile in PROFILES:
        result[f"{profile}_day_s"] = round(med(profile, "day"), 3)
        result[f"{profile}_phases_s"] = {p: round(med(profile, p), 3) for p in PHASES}
        result[f"{profile}_setup_s"] = round(statistics.median(out["setup_s"] for out in runs[profile]), 1)
        result[f"{profile}_instance"] = runs[profile][0]["instance"]
    result["ratio"] = round(result["aws_day_s"] / result["local_day_s"], 2)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(
        f"\nflight_delays, one replay day (land + landing sensor + ingest + score), median of {args.repeats} runs x {args.days} days:"
        f"\n  local {result['local_day_s']:.2f} s/day {result['local_phases_s']}"
        f"\n  aws   {result['aws_day_s']:.2f} s/day {result['aws_phases_s']}"
        f"\n  ratio aws/local {result['ratio']:.2f}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
