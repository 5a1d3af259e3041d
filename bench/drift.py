"""Drift detection speed and agreement: ours vs Evidently 0.7.23 DataDriftPreset, same data, same run.

Reference and current frames of ``--rows`` rows each (default 1,000,000), 20 numeric and 2
categorical columns; 5 columns shifted in the current frame (4 numeric, 1 categorical). Each
repetition times both implementations on the same frames and checks that every per-column drift
decision is identical. Goal: ours >= 50x faster, identical decisions.

    .venv/bin/python bench/drift.py [--rows 1000000] [--repeats 3]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlops_assets.core.drift import dataset_drift
from mlops_assets_tests.evidently_reference import evidently_decisions

NUMERIC, SHIFTED_NUMERIC = 20, (0, 5, 10, 15)
CATEGORIES = {"cat_a": ["a", "b", "c", "d", "e"], "cat_b": ["x", "y", "z"]}


def make_frames(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def frame(current: bool) -> pd.DataFrame:
        data = {}
        for i in range(NUMERIC):
            scale = 1 + i % 4
            shift = 0.3 * scale if current and i in SHIFTED_NUMERIC else 0.0
            data[f"num_{i:02d}"] = rng.normal(10 * i + shift, scale, rows)
        probs_a = [0.2] * 5 if not current else [0.3, 0.25, 0.2, 0.15, 0.1]  # the shifted categorical
        data["cat_a"] = rng.choice(CATEGORIES["cat_a"], rows, p=probs_a)
        data["cat_b"] = rng.choice(CATEGORIES["cat_b"], rows, p=[0.5, 0.3, 0.2])
        return pd.DataFrame(data)

    return frame(False), frame(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reference, current = make_frames(args.rows, seed=42)
    ours_s, theirs_s, mismatches = [], [], []
    for r in range(args.repeats):
        t = time.perf_counter()
        ours = dataset_drift(reference, current, categorical=list(CATEGORIES))
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = evidently_decisions(reference, current)
        theirs_s.append(time.perf_counter() - t)
        mine = {c.column: c.drifted for c in ours.columns}
        mismatches += [c for c in mine if mine[c] != theirs[c][2]]
        print(
            f"run {r + 1}: ours {ours_s[-1]:.2f} s, evidently {theirs_s[-1]:.2f} s, drifted {sorted(c for c in mine if mine[c])}"
        )
    result = {
        "benchmark": "drift",
        "rows_per_frame": args.rows,
        "columns": NUMERIC + len(CATEGORIES),
        "repeats": args.repeats,
        "ours_median_s": round(statistics.median(ours_s), 3),
        "evidently_median_s": round(statistics.median(theirs_s), 3),
        "speedup": round(statistics.median(theirs_s) / statistics.median(ours_s), 1),
        "drifted_columns": sum(c.drifted for c in ours.columns),
        "identical_decisions": not mismatches,
        "mismatched_columns": sorted(set(mismatches)),
        "goal_speedup": 50,
    }
    print(
        f"ours {result['ours_median_s']} s vs Evidently {result['evidently_median_s']} s: {result['speedup']}x; identical decisions: {result['identical_decisions']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
