"""Print the promotion gate's last decision of a spec as GitHub Actions outputs, and a summary.

    python .github/scripts/gate_result.py flight_delays >> "$GITHUB_OUTPUT"

Reads the Dagster instance of the current environment (``DAGSTER_HOME``), the same one the train job
just wrote, so the promote job acts on what the gate decided, not on a guess. Writes the decision
as a Markdown table to ``$GITHUB_STEP_SUMMARY`` when that is set. Exits 1 when the spec has no gate
decision yet (the train job did not reach the gate).
"""

from __future__ import annotations

import os
import sys

import dagster as dg

from mlops_assets.common import key


def main(spec: str) -> int:
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(key("champion", spec))
    if event is None or event.asset_materialization is None:
        print(f"{spec}: the promotion gate has not run in this instance", file=sys.stderr)
        return 1
    meta = {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    outputs = {
        "decision": meta.get("decision", ""),
        "challenger_version": meta.get("challenger_version", ""),
        "champion_version": meta.get("champion_version", ""),
        "reason": str(meta.get("reason", "")).replace("\n", " "),
    }
    for name, value in outputs.items():
        print(f"{name}={value}")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(f"### Promotion gate: {spec}\n\n| | |\n|---|---|\n")
            f.writelines(f"| {name} | {value} |\n" for name, value in outputs.items())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
