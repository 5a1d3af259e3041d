"""Load time of the code location against bare Dagster, per environment profile.

The UI, the daemon and every run process import ``mlops_assets.definitions``; what it costs beyond
``import dagster`` is paid on every one of them. This alternates the two imports in fresh processes
(so both see the same machine load) and reports medians and their ratio. Goal: ratio <= 1.3.

``--env`` sets ``MLOPS_ENV`` for both imports: ``local`` (the default), ``aws``, ``gcp``, ``k8s``, or
``all`` (every profile, interleaved round by round; one ratio per profile). No cloud variable is set
and no service runs: loading must not need one (profiles read their settings when a run starts), so
an import that tried to reach a store would fail or hang here. Before timing, one import per profile
checks that the definitions load and that the profile is the one asked for.

    .venv/bin/python bench/load_time.py [--runs 9] [--env local|aws|gcp|k8s|all]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER = "import dagster"
OURS = "import mlops_assets.definitions"
ENVS = ("local", "aws", "gcp", "k8s")
GOAL = 1.3
# what the definitions of a profile must show once loaded: its profile and the executor it chose
PROBE = (
    "import json, mlops_assets.definitions as d; from mlops_assets.environments import current_env; "
    "job = d.defs.resolve_all_job_defs()[0]; "
    "print(json.dumps({'env': current_env(), 'executor': job.executor_def.name, 'jobs': len(d.defs.resolve_all_job_defs())}))"
)


def timed(code: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def profile_env(name: str, home: str) -> dict[str, str]:
    """This process's environment with ``MLOPS_ENV=name`` and none of the variables a cloud
    deployment sets (``environments.CLOUD_VARS``, ``DAGSTER_PG_VARS``), should this shell have them."""
    sys.path.insert(0, str(REPO))
    from dataclasses import astuple

    from mlops_assets.environments import CLOUD_VARS, DAGSTER_PG_VARS, K8S_CLOUD_VAR

    deployment = {*astuple(CLOUD_VARS), *DAGSTER_PG_VARS, K8S_CLOUD_VAR}
    keep = {k: v for k, v in os.environ.items() if k not in deployment}
    return {**keep, "MLOPS_HOME": home, "MLOPS_ENV": name}


def probe(name: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"MLOPS_ENV={name}: the definitions do not load without services:\n{out.stderr[-3000:]}")
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    if loaded["env"] != name:
        raise SystemExit(f"MLOPS_ENV={name}: the definitions loaded profile {loaded['env']!r}")
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--env", choices=(*ENVS, "all"), default="local", help="MLOPS_ENV of both imports (all: every profile)")
    args = parser.parse_args()
    envs = list(ENVS) if args.env == "all" else [args.env]
    with tempfile.TemporaryDirectory() as home:
        environ = {name: profile_env(name, home) for name in envs}
        loaded = {name: probe(name, environ[name]) for name in envs}  # also warms the file cache and .pyc files
        for name in envs:
            timed(OURS, environ[name]), timed(PEER, environ[name])  # warm-up; not counted
        ours: dict[str, list[float]] = {n: [] for n in envs}
        peer: dict[str, list[float]] = {n: [] for n in envs}
        for _ in range(args.runs):
            for name in envs:
                peer[name].append(timed(PEER, environ[name]))
                ours[name].append(timed(OURS, environ[name]))
    per_env = {}
    for name in envs:
        p, o = statistics.median(peer[name]), statistics.median(ours[name])
        per_env[name] = {
            "import_dagster_median_s": round(p, 3),
            "import_definitions_median_s": round(o, 3),
            "ratio": round(o / p, 3),
            "executor": loaded[name]["executor"],
        }
    for name in envs:
        f = per_env[name]
        print(
            f"MLOPS_ENV={name:<5} import dagster: median {f['import_dagster_median_s']:.3f} s, "
            f"import mlops_assets.definitions: median {f['import_definitions_median_s']:.3f} s over {args.runs} runs; "
            f"ratio {f['ratio']:.2f} (goal <= {GOAL}; executor {f['executor']})"
        )
    result = {"benchmark": "load_time", "env": args.env, "runs": args.runs}
    if len(envs) == 1:
        result.update({k: v for k, v in per_env[envs[0]].items() if k != "executor"})
    else:
        result.update({f"ratio_{name}": per_env[name]["ratio"] for name in envs})
        result["ratio"] = max(per_env[name]["ratio"] for name in envs)  # the worst profile
        result["envs"] = per_env
    result["goal_ratio"] = GOAL
    print(json.dumps(result))


if __name__ == "__main__":
    main()
