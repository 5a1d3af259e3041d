"""Load time of the code location against bare Dagster.

The UI, the daemon and every run process import ``mlops_assets.definitions``; what it costs beyond
``import dagster`` is paid on every one of them. This alternates the two imports in fresh processes
(so both see the same machine load) and reports medians and their ratio. Goal: ratio <= 1.3.

    .venv/bin/python bench/load_time.py [--runs 9]

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


def timed(code: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MLOPS_HOME": home}
        timed(OURS, env), timed(PEER, env)  # warm the OS file cache and .pyc files; not counted
        ours, peer = [], []
        for _ in range(args.runs):
            peer.append(timed(PEER, env))
            ours.append(timed(OURS, env))
    result = {
        "benchmark": "load_time",
        "runs": args.runs,
        "import_dagster_median_s": round(statistics.median(peer), 3),
        "import_definitions_median_s": round(statistics.median(ours), 3),
        "ratio": round(statistics.median(ours) / statistics.median(peer), 3),
        "goal_ratio": 1.3,
    }
    print(f"import dagster:                  median {result['import_dagster_median_s']:.3f} s over {args.runs} runs")
    print(f"import mlops_assets.definitions: median {result['import_definitions_median_s']:.3f} s")
    print(f"ratio {result['ratio']:.2f} (goal <= 1.3)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
