"""A replay's endpoint traffic: canaries started, judged and promoted or rolled back on the replay's clock.

A replay of a spec with a local endpoint and a canary (``deployment.canary.traffic_percent`` > 0)
does, besides landing files and ticking the automation, what the endpoint's clients and the daemon's
``canary_<spec>`` sensor would do:

1. **Sends the day's events to the endpoint** before the day lands, the way its clients would: one
   real HTTP request per event (``core.traffic``: the documented request format), at the event's own
   time, over 8 keep-alive connections to the replay's server on 127.0.0.1, an hour of simulated time
   at a time. Only **while a canary is in progress**: a canary is what the traffic decides here, and
   sending every day's events costs more than the replay's own work (flights, measured 2026-11-27 on
   2 shared cores: ~900 requests, 2.2-3 s a day against ~3.5 s for the rest of the day). So the
   endpoint's ``served_*`` checks judge the days of a canary only (the canary's side, which the
   ``champion`` alias names), and pass unjudged on the others, as before.
2. **Keeps the server on the replay's clock.** The server is started by the replay's own automation
   with ``MLOPS_REPLAY_CLOCK`` naming a file in the endpoint's run folder; this module writes the
   simulated now there before every run the replay executes and around every hour of traffic, and
   the server stamps what it logs and records with it (``server.clock`` says why a file, and why
   production is unaffected).
3. **Ticks the lookups schedule** (``lookups_<spec>_schedule``, a spec whose endpoint serves a
   timestamped lookup) at the start of each hour it sends, and executes its run as of that tick, so
   the endpoint serves the hour's weather as production's hourly schedule has it online
   (``online_lookups``). Only hours with traffic: nothing else reads the online store in a replay.
4. **Ticks the canary sensor** at the end of each simulated hour once the canary could be judged
   (``core.traffic.could_be_due``: the window is over and each side may have ``min_requests``), after
   flushing the server's prediction log (its replay-only flush route), and executes the endpoint run
   it requests at that moment: the canary check judges the prediction store since the canary started,
   all on simulated time, and promotes or rolls back.

The report's ``canaries`` (version, stable, started, judged at, decision, reasons) and each day row's
``canary`` come from the endpoint's audit history, the same record production keeps. Traffic never
enters the replay's ``metric``: that stays the batch predictions' (``<spec>/predictions``), scored by
the champion of the day; a rollback changes it as it would in production, by moving ``champion``
back. ``traffic`` in the report says what the traffic cost (days with traffic, requests, wall seconds).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mlops_assets.core.rollout import Deployment

WORKERS = 8  # connections: the server scores concurrent requests together (server.batching.Batcher)
CANARY_ACTIONS = ("canary_started", "canary_restarted", "promoted", "rolled_back")


class ReplayTraffic:
    """The endpoint traffic and canary ticks of one ``replay.Replay`` (see the module docstring)."""

    def __init__(self, replay):
        from mlops_assets.core.names import job_name, sensor_name
        from mlops_assets.endpoint_state import EndpointState
        from mlops_assets.environments import resources
        from mlops_assets.server.clock import REPLAY_CLOCK_ENV

        self.replay, self.spec = replay, replay.spec
        res = resources()  # the replay's home (MLOPS_HOME)
        self.target = res["deployer"].target(self.spec, res["mlflow"], res["lake"])
        self.state = EndpointState(res["lake"].endpoint_dir(self.spec.name))
        self.clock_file = self.target.run_dir / "replay_clock"
        self.target.run_dir.mkdir(parents=True, exist_ok=True)
        self.now: datetime | None = None
        self.tz = ZoneInfo(self.spec.source.timestamp.timezone)  # of the moments it ticks and runs at, like the replay's
        self._previous_env = os.environ.get(REPLAY_CLOCK_ENV)
        os.environ[REPLAY_CLOCK_ENV] = str(self.clock_file)  # inherited by the server the automation starts
        self.sensor = replay.defs.get_sensor_def(sensor_name("canary", self.spec))
        # as the daemon does, a tick builds only the resources the sensor asks for (the lake)
        self.resources = {k: replay.defs.resources[k] for k in self.sensor.required_resource_keys}
        self.deploy_job = replay.defs.resolve_job_def(job_name("deploy", self.spec))
        from mlops_assets.core.names import schedule_name

        self.lookups = (
            replay.defs.get_schedule_def(schedule_name("lookups", self.spec)) if self.spec.served_timed_lookups else None
        )
        self.lookups_job = replay.defs.resolve_job_def(job_name("lookups", self.spec)) if self.lookups else None
        self.lookups_at: datetime | None = None  # the last hour the lookups schedule ticked
        self.lookups_runs = 0
        self.policy = self.spec.deployment.canary.model_dump()
        self.cursor: str | None = None
        self.run_keys: set[str] = set()
        self.counts = None  # core.traffic.SideCounts of the canary in progress
        self.reported: set[str] = set()  # audit entries already given to a day row
        self._canary: str | None = None  # the version of the latest canary started (a rollback names it)
        self.requests, self.seconds, self.days = 0, 0.0, 0
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._pool: ThreadPoolExecutor | None = None
        self._path = f"/v1/models/{self.spec.name}:predict"

    # -- the clock ------------------------------------------------------------------------------
    def set_clock(self, at: datetime) -> None:
        """Move the replay's server clock to ``at`` (never back)."""
        from mlops_assets.server.clock import set_file_clock

        if self.now is None or at > self.now:
            self.now = at
            set_file_clock(self.clock_file, at)

    # -- one day's traffic ----------------------------------------------------------------------
    def play(self, day: date) -> None:
        """Send ``day``'s events hour by hour while a canary is in progress, ticking the canary sensor
        when it could be due; then flush the log, so the day's scoring judges all it served."""
        current = self.state.load()
        if current is None or current.canary is None or not self.target.is_up():
            return
        import numpy as np

        from mlops_assets.core.traffic import event_requests
        from mlops_assets.core.validation import clean_events

        t0 = time.perf_counter()
        events = clean_events(self.replay.source_days[day].reset_index(drop=True), self.spec, day, f"source {day}")
        times, rows = event_requests(events, self.spec)
        # the local day's hours, stepped in UTC (a day of a DST change has 23 or 25 of them)
        start = datetime.combine(day, datetime.min.time(), self.tz).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), self.tz).astimezone(UTC)
        step = timedelta(minutes=min(60.0, float(self.policy["window_minutes"])))
        a = start
        while a < end and current is not None and current.canary is not None:
            b = min(a + step, end)
            lo, hi = np.searchsorted(times, [_ns(a), _ns(b)])
            if hi > lo:
                self._tick_lookups(a)
                self.set_clock(a)  # the hour's events at their own times; one already past is sent now, late
                self._send(current, rows[lo:hi])
            self.set_clock(b)
            current = self._tick_if_due(current)
            a = b
        self._flush()
        self.seconds += time.perf_counter() - t0
        self.days += 1

    def _tick_lookups(self, at: datetime) -> None:
        """The lookups schedule's tick at the start of ``at``'s local hour, once, and its run."""
        if self.lookups is None:
            return
        import dagster as dg

        from mlops_assets.compat import frozen_dagster_clock

        hour = at.astimezone(self.tz).replace(minute=0, second=0, microsecond=0)
        if self.lookups_at is not None and hour <= self.lookups_at:
            return
        self.lookups_at = hour
        with frozen_dagster_clock(hour):
            context = dg.build_schedule_context(
                instance=self.replay.instance, scheduled_execution_time=hour, repository_def=self.replay.repository
            )
            data = self.lookups.evaluate_tick(context)
        for request in data.run_requests or []:
            tags = {**request.tags, "dagster/schedule_name": self.lookups.name}
            self.replay._execute(self.lookups_job, hour, tags=tags, run_config=request.run_config)
            self.lookups_runs += 1

    def _send(self, current: Deployment, rows: list[dict[str, Any]]) -> None:
        from mlops_assets.core.traffic import SideCounts

        if self.counts is None or (self.counts.canary, self.counts.started) != (current.canary, current.canary_started):
            self.counts = SideCounts(current.canary, current.canary_started)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="replay-traffic")
        bodies = [json.dumps({"instances": [r]}).encode() for r in rows]
        for version in self._pool.map(self._post, bodies):
            self.counts.answered(version)
        self.requests += len(bodies)

    def _post(self, body: bytes) -> str | None:
        """One prediction request on this thread's keep-alive connection; the model version that
        answered it (None when the answer names none)."""
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(
                    self.spec.deployment.host, self.spec.deployment.port, timeout=60
                )
                self._conns.append(conn)
            try:
                conn.request("POST", self._path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                answer = json.loads(resp.read() or b"{}")
                return answer.get("model_version") if isinstance(answer, dict) else None
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                self._local.conn = None
                if attempt:
                    return None
        return None

    def _flush(self) -> None:
        """Every request sent so far into the prediction store (the replay's server's flush route)."""
        conn = http.client.HTTPConnection(self.spec.deployment.host, self.spec.deployment.port, timeout=120)
        try:
            conn.request(
                "POST",
                f"/v1/models/{self.spec.name}/flush",
                headers={"Authorization": f"Bearer {self.target.admin_token()}"},
            )
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{self.spec.name}: the replay's server did not flush its log: {resp.status} {body[:300]!r}")
        finally:
            conn.close()

    # -- the canary sensor ----------------------------------------------------------------------
    def _tick_if_due(self, current: Deployment) -> Deployment | None:
        """At the end of an hour of traffic: tick ``canary_<spec>`` when it could request a run, and
        execute the endpoint run it requests at that simulated moment; the deployment after it."""
        from mlops_assets.core.traffic import could_be_due

        started = datetime.fromisoformat(current.canary_started)
        if self.counts is None or not could_be_due(
            self.counts, current.stable, started=started, now=self.now, policy=self.policy
        ):
            return current
        self._flush()
        self.tick(self.now)
        return self.state.load()

    def tick(self, at: datetime) -> list[str]:
        """One evaluation of the canary sensor at ``at``; executes the runs it requests (each run key
        once, as the daemon does). Returns the run keys it executed."""
        import dagster as dg

        from mlops_assets.compat import frozen_dagster_clock

        at = at.astimezone(self.tz)
        self.set_clock(at)
        with frozen_dagster_clock(at):
            context = dg.build_sensor_context(
                instance=self.replay.instance,
                cursor=self.cursor,
                resources=self.resources,
                sensor_name=self.sensor.name,
                repository_def=self.replay.repository,
            )
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        executed = []
        for request in data.run_requests or []:
            if request.run_key in self.run_keys:
                continue
            self.run_keys.add(request.run_key)
            tags = {**request.tags, "dagster/sensor_name": self.sensor.name, "dagster/run_key": request.run_key or ""}
            self.replay._execute(self.deploy_job, at + timedelta(seconds=30), tags=tags)
            executed.append(request.run_key)
        return executed

    # -- what the report says -------------------------------------------------------------------
    def new_decisions(self) -> list[str]:
        """The canary decisions recorded since the last call, as ``"<action> v<canary> at <time>"``
        (simulated time): what a day row shows. Reads only the audit entries it has not seen (one
        file each, named by when it was written: ``EndpointState.record``)."""
        from mlops_assets import files

        fresh = [e for e in files.listing(self.state.history_dir, ".json") if e.uri not in self.reported]
        self.reported.update(e.uri for e in fresh)
        out = []
        for entry in fresh:
            e = json.loads(files.read_text(entry.uri))
            action = e.get("action")
            if action in ("canary_started", "canary_restarted"):
                self._canary = e.get("canary")
            if action in CANARY_ACTIONS:  # the canary concerned (after a rollback the entry holds the stable)
                out.append(f"{action} v{self._canary} at {e['time'][:19]}")
        return out

    def outcomes(self) -> list[dict[str, Any]]:
        """Each canary of the replay, from the endpoint's audit history: version, the stable version
        beside it, when it started, when it was judged, the decision (``promoted``, ``rolled_back``,
        ``replaced`` by a newer champion, or ``in_progress`` at the end) and the reasons."""
        canaries: list[dict[str, Any]] = []
        for e in self.state.history(decisions_only=True):
            action = e.get("action")
            open_ = canaries[-1] if canaries and canaries[-1]["decision"] == "in_progress" else None
            if action in ("canary_started", "canary_restarted"):
                if open_ is not None:
                    open_.update(decision="replaced", judged_at=e["time"], reasons=[e.get("reason", "")])
                canaries.append(
                    {
                        "version": e.get("canary"),
                        "stable": e.get("stable"),
                        "started": e.get("canary_started") or e["time"],
                        "judged_at": None,
                        "decision": "in_progress",
                        "reasons": [],
                    }
                )
            elif action in ("promoted", "rolled_back") and open_ is not None:
                open_.update(decision=action, judged_at=e["time"], reasons=str(e.get("reason", "")).split("; "))
        return canaries

    def summary(self) -> dict[str, Any]:
        """What the traffic cost: days with traffic, requests sent, wall seconds (sending, flushing,
        ticking the sensor and the schedule, and the runs they requested), lookups runs."""
        return {
            "days": self.days,
            "requests": self.requests,
            "seconds": round(self.seconds, 1),
            "lookups_runs": self.lookups_runs,
        }

    def close(self) -> None:
        """Close the connections and give the process its environment back."""
        from mlops_assets.server.clock import REPLAY_CLOCK_ENV

        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for conn in self._conns:
            conn.close()
        self._conns = []
        if self._previous_env is None:
            os.environ.pop(REPLAY_CLOCK_ENV, None)
        else:
            os.environ[REPLAY_CLOCK_ENV] = self._previous_env


def for_replay(replay) -> ReplayTraffic | None:
    """The traffic of a replay whose spec has a local endpoint with a canary; None otherwise."""
    d = replay.spec.deployment
    if d is None or d.target != "local" or not d.canary.traffic_percent:
        return None
    return ReplayTraffic(replay)


def _ns(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000) * 1000
