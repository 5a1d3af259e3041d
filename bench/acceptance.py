"""Out-of-sample acceptance of the backtest's recommendation, through full replays of the platform.

For one spec: ``mlops backtest`` sees only the first third of the history and recommends a policy;
then ``mlops replay`` plays ``static``, ``cron:1`` and the recommendation over the remaining two
thirds (each from a fresh home, its first model trained at the end of the first third), and the
backtest plays the same three over the same days, to hold it against the replays. The bar: the
recommendation's metric is at least the better of ``static`` and ``cron:1`` or within 1 % of it
(relative), with at most 10 % of ``cron:1``'s retrains.

    MLOPS_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/acceptance.py \\
        --spec examples/specs/elec2.yaml --out elec2-acceptance.json

Writes the JSON as it goes (the backtest's recommendation first, then each replay), and prints one
JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--skip-replays", action="store_true", help="only the backtests (in and out of sample)")
    parser.add_argument("--replays", default="static,cron:1,recommended", help="which to replay (comma-separated)")
    args = parser.parse_args()
    os.environ.setdefault("MLOPS_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    warnings.filterwarnings("ignore", module="dagster")

    from mlops_assets.backtest import compare, run
    from mlops_assets.core.backtest import Candidate, play
    from mlops_assets.core.backtest_data import load_history
    from mlops_assets.core.backtest_report import cached_models
    from mlops_assets.environments import backtest_dir, replay_home
    from mlops_assets.replay import replay
    from mlops_assets.specs import find_spec

    spec = find_spec(args.spec)
    out = Path(args.out)
    result: dict = {"spec": spec.name, "metric_name": spec.promotion.metric, "budget_share": args.budget}
    # a replay already in the file (an earlier, interrupted run over the same days) is kept
    earlier = json.loads(out.read_text()).get("out_of_sample", {}) if out.exists() else {}

    def save() -> None:
        out.write_text(json.dumps(result, indent=1, default=str))

    history = load_history(spec)
    dates = history.dates
    cut = dates[0] + timedelta(days=(dates[-1] - dates[0]).days // 3 + 1)  # first day of the last two thirds
    in_days = (cut - spec.partitions.start).days - spec.training.window_days - spec.training.holdout_days
    t0 = time.perf_counter()
    report, _ = run(spec, None, in_days, args.budget, progress=lambda m: print(f"{spec.name}: {m}", file=sys.stderr))
    rec = report["recommended"]
    result["in_sample"] = {
        "start": report["start"],
        "end": report["end"],
        "scored_days": report["scored_days"],
        "peers": {r["candidate"]["retrain"]: {k: r[k] for k in ("metric", "retrains", "promotions")} for r in report["peers"]},
        "spec_policy": {k: report["spec_policy"][k] for k in ("policy", "metric", "retrains", "promotions")},
        "recommended": {k: rec[k] for k in ("policy", "metric", "retrains", "promotions", "vs_static", "vs_cron1", "yaml")},
        "seconds": report["seconds"],
    }
    save()
    print(f"{spec.name}: recommended from {report['start']}..{report['end']}: {rec['policy']}", file=sys.stderr)

    chosen = Candidate(**rec["candidate"])
    W, H = spec.training.window_days, spec.training.holdout_days
    peers = {"static": Candidate("static", W, H), "cron:1": Candidate("cron:1", W, H), "recommended": chosen}
    scored = [d for d in dates if d >= cut]
    # every replay's home, fixed now: a replay points MLOPS_HOME at its own home, so a home resolved
    # after one would be nested in it (and wiped with it by the next run of that replay)
    homes = {name: replay_home(spec.name, f"acceptance-{name}") for name in peers}
    models, cache = cached_models(spec, history, backtest_dir(spec.name))  # the history read once
    result["out_of_sample"] = {"start": scored[0].isoformat(), "end": scored[-1].isoformat(), "scored_days": len(scored)}
    offline = {}
    for name, c in peers.items():
        o, _ = play(spec, models, c, scored)
        offline[name] = o
        result["out_of_sample"][name] = {"backtest": {"metric": o.metric, "retrains": o.retrains, "promotions": o.promotions}}
        save()
    models.store(cache)
    if not args.skip_replays:
        for name, c in peers.items():
            before = earlier.get(name, {})
            same_days = earlier.get("start") == scored[0].isoformat() and earlier.get("end") == scored[-1].isoformat()
            if "replay" in before and same_days and (name != "recommended" or before.get("policy") == c.label):
                result["out_of_sample"][name] = {
                    **compare(before["replay"], offline[name]),
                    "policy": c.label,
                }
                continue
            if name not in args.replays.split(","):
                continue
            policy = "default" if c.retrain == "triggers" else c.retrain
            real = replay(
                c.apply(spec),
                policy,
                start=scored[0],
                days=(scored[-1] - scored[0]).days + 1,  # calendar days: a day the source lacks is no day scored
                home=homes[name],
                progress=False,
            )
            o = offline[name]
            result["out_of_sample"][name] = {**compare(real, o), "policy": c.label}
            save()
            print(
                f"{spec.name}: {name} replayed: {real['metric']:.4f}, {real['retrains']} retrains ({real['seconds']} s)",
                file=sys.stderr,
            )
    oos = result["out_of_sample"]
    source = "replay" if not args.skip_replays else "backtest"
    if any(source not in oos[n] for n in peers):
        save()
        print(json.dumps({"bench": "acceptance", "spec": spec.name, "incomplete": [n for n in peers if source not in oos[n]]}))
        return 0
    figure = {n: oos[n][source] for n in peers}
    higher = spec.higher_is_better
    best_peer = max if higher else min
    bar = best_peer(figure["static"]["metric"], figure["cron:1"]["metric"])
    gap = (bar - figure["recommended"]["metric"]) / abs(bar) if higher else (figure["recommended"]["metric"] - bar) / abs(bar)
    result["verdict"] = {
        "figures_from": source,
        "better_peer_metric": bar,
        "recommended_metric": figure["recommended"]["metric"],
        "relative_shortfall": gap,
        "retrain_share_of_cron1": figure["recommended"]["retrains"] / max(1, figure["cron:1"]["retrains"]),
        "met": bool(gap <= 0.01 and figure["recommended"]["retrains"] <= 0.1 * figure["cron:1"]["retrains"]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save()
    print(json.dumps({"bench": "acceptance", "spec": spec.name, **result["verdict"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
