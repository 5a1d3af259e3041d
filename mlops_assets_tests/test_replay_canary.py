"""Canaries in simulated time: a short flight_delays replay sends each day's flights to the real local
endpoint (uvicorn on 127.0.0.1) while a canary is in progress, ticks the ``canary_flight_delays``
sensor at simulated hours, and the canary is started, judged and decided on the replay's clock: the
audit history, the prediction log and the report all say 2013, and the decision comes only after
``window_minutes`` of simulated time with ``min_requests`` answered by each side."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

MIN_REQUESTS = 40  # the bundled 200 a side needs two simulated days of flights; 40 is a morning's


@pytest.fixture
def replay_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))  # replay points both at its own home;
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))  # restored after the test
    return tmp_path


def test_a_replay_starts_judges_and_decides_a_canary_on_its_clock(flight_spec, replay_env):
    """Four-day training windows, one retrain a day: the retrain of 2013-01-07 is promoted, so a
    canary starts at 01-08 00:37 (simulated); that day's flights are sent to the endpoint and the
    canary is judged at the first simulated hour where both sides have ``MIN_REQUESTS``."""
    from mlops_assets.endpoint_state import SERVER_ACTIONS, EndpointState
    from mlops_assets.prediction_store import REQUESTS, read_since
    from mlops_assets.replay import replay
    from mlops_assets.resources import LakeStorage
    from mlops_assets.server.clock import REPLAY_CLOCK_ENV
    from mlops_assets_tests.conftest import free_port

    d = flight_spec.deployment
    canary_policy = d.canary.model_copy(update={"min_requests": MIN_REQUESTS})
    spec = flight_spec.model_copy(
        update={
            "training": flight_spec.training.model_copy(update={"window_days": 4, "holdout_days": 1}),
            "deployment": d.model_copy(update={"port": free_port(), "canary": canary_policy}),
        }
    )
    home = replay_env / "home"
    report = replay(spec, "cron:1", start=date(2013, 1, 6), days=3, home=home, progress=False)

    judged = [c for c in report["canaries"] if c["decision"] in ("promoted", "rolled_back")]
    assert judged, report["canaries"]
    c = judged[0]
    started, at = datetime.fromisoformat(c["started"]), datetime.fromisoformat(c["judged_at"])
    # on the replay's clock: January 2013, after the window, at the end of a simulated hour of traffic
    assert datetime(2013, 1, 6, tzinfo=UTC) < started < at < datetime(2013, 1, 10, tzinfo=UTC), c
    assert at - started >= timedelta(minutes=canary_policy.window_minutes)
    assert (at.minute, at.second) == (0, 30), c  # ticked at the hour, its endpoint run 30 s later
    assert c["reasons"] and c["version"] != c["stable"]

    # each side answered MIN_REQUESTS between the start and the judgement, in the prediction log,
    # all received on the simulated clock (the server's clock file), none before the canary
    lake = LakeStorage(root=str(home))
    requests = read_since(lake.predictions_root(), REQUESTS, spec.name, pd.Timestamp(started))
    assert requests is not None and requests["received_at"].max() < pd.Timestamp("2013-01-10", tz="UTC")
    window = requests[requests["received_at"] <= pd.Timestamp(at)]
    counts = window["model_version"].astype(str).value_counts()
    assert counts.get(c["stable"], 0) >= MIN_REQUESTS and counts.get(c["version"], 0) >= MIN_REQUESTS, counts
    assert (window["status"] == 200).all()
    every = read_since(lake.predictions_root(), REQUESTS, spec.name, pd.Timestamp("1970-01-01", tz="UTC"))
    assert every["received_at"].min() >= pd.Timestamp(started)  # traffic only while a canary runs

    # the audit history, the endpoint's decisions and the server's own entries alike, is simulated
    state = EndpointState(lake.endpoint_dir(spec.name))
    history = state.history()
    assert {e["action"] for e in history} >= {"server_start", "server_swap", "canary_started", c["decision"]}
    for e in history:
        assert datetime.fromisoformat(e["time"]).year == 2013, e
    decisions = [e for e in history if e["action"] not in SERVER_ACTIONS and e["action"] != "deploy"]
    swaps = {datetime.fromisoformat(e["time"]) for e in history if e["action"] == "server_swap"}
    for e in decisions:  # the server swapped at the moment the endpoint run decided
        assert datetime.fromisoformat(e["time"]) in swaps, (e, swaps)
    decided = next(e for e in history if e["action"] == c["decision"])
    assert datetime.fromisoformat(decided["time"]) == at
    assert decided["canary"] is None  # what the decision left serving: the canary, or the stable it had beside it
    assert decided["stable"] == (c["version"] if c["decision"] == "promoted" else c["stable"])

    # the day rows carry the decisions; the report says what the traffic cost
    day_events = [e for r in report["rows"] for e in r["canary"]]
    assert f"canary_started v{c['version']} at {c['started'][:19]}" in day_events
    assert f"{c['decision']} v{c['version']} at {at.isoformat()[:19]}" in day_events, day_events
    assert report["traffic"]["requests"] >= 2 * MIN_REQUESTS and report["traffic"]["days"] >= 1
    # the lookups schedule ticked once at the start of every local hour the endpoint was sent (the
    # hour's weather online, as production's hourly run has it)
    hours = every["received_at"].dt.tz_convert(spec.source.timestamp.timezone).dt.floor("h").nunique()
    assert report["traffic"]["lookups_runs"] == hours, (report["traffic"], hours)
    assert report["metric"] is not None and all(r["metric"] is not None for r in report["rows"])
    # the server and the clock variable are gone with the replay
    assert report["endpoints_stopped"] == [spec.name] and REPLAY_CLOCK_ENV not in os.environ


def test_the_requests_a_replay_sends_are_what_the_server_accepts(flight_spec):
    """One request per flight with the documented fields, event time with its offset, parsed by the
    server's own parser without an error and giving back the events' times."""
    from mlops_assets.core.requests import parse_request, request_schema
    from mlops_assets.core.sources import read_table, split_days
    from mlops_assets.core.traffic import event_requests
    from mlops_assets.core.validation import clean_events

    ts = flight_spec.source.timestamp
    days = split_days(read_table(flight_spec.source.path, flight_spec.source.format), ts, "x")
    day = date(2013, 3, 10)  # the spring DST change in New York
    events = clean_events(days[day].reset_index(drop=True), flight_spec, day, "flights")
    times, rows = event_requests(events, flight_spec)
    assert len(rows) == len(events) and (pd.Series(times).diff().dropna() >= 0).all()
    assert set(rows[0]) == {"carrier", "origin", "dest", "tailnum", "distance", "event_timestamp", "event_id"}
    schema = request_schema(flight_spec)
    parsed = parse_request({"instances": rows}, schema, flight_spec, now=datetime(2013, 3, 11, tzinfo=UTC))
    assert parsed.rows == len(rows) and list(parsed.event_ids) == events["event_id"].tolist()
    assert (parsed.timestamps.as_unit("ns").asi8 == times).all()
    assert any(r["tailnum"] is None for r in rows) or events["tailnum"].ne("").all()


def test_a_tick_waits_until_the_canary_could_be_judged():
    """``could_be_due`` is conservative: no before the window or while a side may lack requests
    (counting answers that named no version for both sides), yes once the judge could decide."""
    from mlops_assets.core.traffic import SideCounts, could_be_due

    policy = {"window_minutes": 60, "min_requests": 3}
    started = datetime(2013, 1, 8, 5, 37, tzinfo=UTC)
    counts = SideCounts("3", started.isoformat())
    for v in ["1", "1", "1", "3", "3"]:
        counts.answered(v)
    hour = started + timedelta(minutes=60)
    assert not could_be_due(counts, "1", started=started, now=hour - timedelta(seconds=1), policy=policy)
    assert not could_be_due(counts, "1", started=started, now=hour, policy=policy)  # v3 has 2
    counts.answered(None)  # an answer without a version might be v3's
    assert could_be_due(counts, "1", started=started, now=hour, policy=policy)


def test_dagsters_clock_frozen_for_a_tick():
    from mlops_assets.compat import dagster_now, frozen_dagster_clock

    moment = datetime(2013, 1, 8, 17, 0, tzinfo=UTC)
    with frozen_dagster_clock(moment):
        assert dagster_now() == moment
    assert dagster_now().year > 2013
