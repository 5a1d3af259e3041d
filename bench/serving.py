"""Our model server (``mlops serve``) against ``mlflow models serve``: same model, same rows, same machine, same run.

Why: the platform ships its own server instead of MLflow's scoring server. That is only worth its
code if it is clearly faster on the model the platform actually produces. The goals (issue text):
>= 2x MLflow's predictions/s, single-row p99 <= 10 ms, >= 100,000 predictions/s at batch 1000.

What it does, in a temporary home:

1. fits the Elec2 spec's pipeline (``core.training.fit``) on the first 28 days of rows and logs it the
   way ``training._train_and_log`` does (``resources.mlflow.log_pipeline``: skops, pinned requirements),
   registered as ``elec2`` version 1 in a SQLite MLflow store, with the ``champion`` alias on it;
2. starts both servers on free loopback ports, one worker process each, each in its own session
   (stopped by process group at the end, also on error):
   ``mlops serve --spec examples/specs/elec2.yaml`` (serves the champion) and
   ``mlflow models serve -m models:/elec2/1 --env-manager local -w 1``;
3. checks that both answer every prepared request with the same predictions (ours: ``predictions``;
   MLflow's sklearn pyfunc: class labels) and that our scores are the pipeline's own; it stops if not;
4. load: a closed-loop asyncio HTTP/1.1 keep-alive client on raw sockets, in this process (the servers
   are subprocesses), with pre-serialised requests: ``--concurrency`` connections each send requests
   back to back for ``--warmup`` + ``--duration`` seconds; responses completed inside the measured
   window count; any non-200 answer or broken connection is an error and is reported.
   Both servers get the same real Elec2 rows (the rows after the training window): ours as columns
   (``{"inputs": {field: [...]}}``), MLflow as ``{"dataframe_split": ...}``;
5. cells: every batch size x both servers, ``--repeats`` rounds, the server order alternating from one
   round to the next; per cell the median over rounds of requests/s, predictions/s, p50/p99 latency,
   errors, and the CPU (in cores) the server's processes, the load generator and everything else on
   the machine used in the window (the last should be ~0: a warning says when it was not).

6. a spec with entities, online store SQLite against Redis: the bundled flight_delays spec, whose
   requests carry the flight (carrier, origin, dest, tailnum, distance, event_timestamp) and whose
   delay rates, weather and plane come from the Feast online store on every request. A separate
   process runs the real pipeline on ``--flights-days`` days of January 2013 in the same home (local
   profile: land, register, ingest with Feast's SQLite online store, train: the champion), then
   materializes the same days, with the same Feast registry, into Feast's Redis online store on a
   throwaway ``redis-server`` (``mlops_assets_tests.services.redis_server``). Two servers serve that
   champion: ``mlops serve --spec flight_delays`` (the local profile, SQLite) and the same ``serve()``
   with the profile's resources but Feast's online store on Redis. Requests are real flights of the
   last ingested days, the same rows to both (``{"inputs": {field: [...]}}``); before any load both
   must answer every request with the same scores (the rows each flags with an unknown entity are
   counted per store: Feast's Redis store answers a key it has no row for, e.g. a plane missing from
   the planes table, as present with null values, where SQLite says NOT_FOUND). Cells: each of
   ``--flights-batches`` x both stores, in the same rounds as the Elec2 cells, order alternating;
   reported per store as pred/s, p50/p99, and the ratio Redis/SQLite of pred/s (fields
   ``flights_batch_<n>``). The Redis cells' server CPU includes the redis-server process.

    MLOPS_DATA_DIR=../shared/data .venv/bin/python bench/serving.py [--duration 10] [--warmup 2]
        [--concurrency 8] [--repeats 3] [--batches 1,100,1000] [--omp-threads N] [--keep-home]
        [--flights-batches 1,100] [--flights-days 6]

Prints per-cell lines (stderr), a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILE = ROOT / "examples" / "specs" / "elec2.yaml"
BIN = Path(sys.executable).parent  # the venv's bin: mlops, mlflow, and the uvicorn that mlflow runs
HOST = "127.0.0.1"
TRAIN_DAYS = 28
POOL_ROWS = 1000  # evaluation rows every batch size draws its requests from
OURS, MLFLOW = "ours", "mlflow"
FLIGHTS = "flight_delays"  # the spec with entities: every request looks its features up online
SQLITE, REDIS = "sqlite", "redis"  # the two online stores of the flight_delays cells
FLIGHTS_START = "2013-01-01"
READY_TIMEOUT_S = 180.0
CHECK_TIMEOUT_S = 300.0  # per server and batch size; the checks take ~10 s on an idle machine
CELL_GRACE_S = 60.0  # a cell may run this much past its window (the answers in flight) before it is an error


# --- data and model --------------------------------------------------------------------------------


def load_rows(spec: Any) -> tuple[Any, Any]:
    """(training rows, evaluation rows): the first ``TRAIN_DAYS`` days of Elec2, then the rows after."""
    import pandas as pd

    from mlops_assets.core.names import LABEL
    from mlops_assets.core.sources import resolve_path
    from mlops_assets.core.validation import derive_label

    frame = pd.read_csv(resolve_path(spec.source.path), dtype={"day": str})
    ts = pd.to_datetime(frame[spec.source.timestamp.column])
    train_mask = (ts < ts.min().normalize() + pd.Timedelta(days=TRAIN_DAYS)).to_numpy()
    frame[LABEL] = derive_label(frame[spec.target.column], spec)
    train = frame.loc[train_mask].reset_index(drop=True)
    rest = frame.loc[~train_mask].reset_index(drop=True)
    return train, rest


def register_model(home: Path, spec: Any, train: Any) -> Any:
    """Fit and log the pipeline as ``training._train_and_log`` does (``log_pipeline``: skops, pinned requirements,
    signature, input example); register it as version 1; alias it champion."""
    import logging
    import warnings

    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from mlops_assets.core.names import CHAMPION
    from mlops_assets.core.training import feature_frame, fit, predict_scores
    from mlops_assets.resources.mlflow import log_pipeline

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    uri = tracking_uri(home)
    (home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment(spec.name, artifact_location=(home / "mlflow" / "artifacts").as_uri())
    fitted = fit(spec, train)
    X_train = feature_frame(train, spec)
    with mlflow.start_run(experiment_id=experiment, run_name=f"train-{spec.name}"):
        signature = infer_signature(X_train.head(200), predict_scores(fitted, X_train.head(200), spec))
        info = log_pipeline(fitted, spec.name, X_train.head(5), signature)  # what training._train_and_log calls
    version = str(info.registered_model_version)
    if version != "1":
        raise SystemExit(f"expected a fresh registry (version 1), got version {version}")
    MlflowClient(uri, uri).set_registered_model_alias(spec.name, CHAMPION, version)
    return fitted


def tracking_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"


def prepare_flights(home: Path, redis_connection: str, days: int) -> dict[str, Any]:
    """The flight_delays pipeline on ``days`` days in ``home`` (local profile: SQLite instance, MLflow,
    Feast registry file and SQLite online store), then the same days materialized into Feast's Redis
    online store through the same registry. Run in a process of its own (``--prepare-flights``), so
    the load generator does not carry Dagster, Feast and the pipeline. Returns the champion, the
    online row counts and the request pool (real flights of the last days, JSON-ready columns)."""
    import logging
    import warnings
    from datetime import date, timedelta

    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    import dagster as dg
    import pandas as pd

    from mlops_assets.cli import land
    from mlops_assets.common import key
    from mlops_assets.core.names import job_name
    from mlops_assets.core.sources import day_start_utc
    from mlops_assets.environments import ensure_dagster_home, runtime
    from mlops_assets.factory import build_definitions
    from mlops_assets.resources import FeastFeatureStore
    from mlops_assets.specs import find_spec

    spec = find_spec(FLIGHTS)
    start = date.fromisoformat(FLIGHTS_START)
    keys = [(start + timedelta(days=i)).isoformat() for i in range(days)]
    instance = dg.DagsterInstance.from_config(str(ensure_dagster_home(home)))
    defs = build_definitions([spec])
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

    def run(kind: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
        result = defs.resolve_job_def(job_name(kind, spec)).execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False, run_config=quiet
        )
        if not result.success:
            raise SystemExit(
                f"{FLIGHTS}: {kind} {partition or ''} failed: {[e.message for e in result.all_events if e.is_failure][:3]}"
            )
        return result

    land(spec, start, days)
    run("register")
    for k in keys:
        run("ingest", k)
    run("train")
    champion = instance.get_latest_materialization_event(key("champion", FLIGHTS))
    version = str(champion.asset_materialization.metadata["champion_version"].value)
    instance.dispose()

    resources = runtime()
    sqlite_store = resources["feast"]
    redis_store = FeastFeatureStore(
        registry=sqlite_store.registry, online_store_type="redis", redis_connection=redis_connection
    ).process_config_and_initialize()
    tz = spec.source.timestamp.timezone
    for k in keys:  # day by day, oldest first, the windows of the online_features asset
        day = date.fromisoformat(k)
        end = day_start_utc(day + timedelta(days=1), tz) - pd.Timedelta(microseconds=1)
        redis_store.materialize(spec, day_start_utc(day, tz).to_pydatetime(), end.to_pydatetime())
    counts = {SQLITE: sqlite_store.online_row_count(spec), REDIS: redis_store.online_row_count(spec)}
    if counts[SQLITE] != counts[REDIS] or not counts[SQLITE]:
        raise SystemExit(f"the online stores differ after materializing the same days: {counts}")

    lake = resources["lake"]
    frames = []
    for k in reversed(keys):  # the latest days first
        frames.append(lake.read(lake.partition_path("dataset", FLIGHTS, k)))
        if sum(len(f) for f in frames) >= POOL_ROWS:
            break
    rows = pd.concat(frames[::-1], ignore_index=True).dropna(subset=list(spec.entities)).tail(POOL_ROWS)
    pool = {e: rows[e].astype(str).tolist() for e in spec.entities}
    pool["distance"] = rows["distance"].astype("float64").tolist()
    pool["event_timestamp"] = [t.isoformat() for t in rows["event_timestamp"]]
    return {"version": version, "online_rows": counts, "days": keys, "pool": pool}


# The Redis-backed flights server: the same ``serve()`` as ``mlops serve`` on the profile's resources,
# except Feast's online store (the same registry, Redis). argv: spec host port redis-connection.
SERVE_ON_REDIS = """
import sys
from mlops_assets.environments import runtime, server_stores
from mlops_assets.resources import FeastFeatureStore
from mlops_assets.server import serve
from mlops_assets.specs import find_spec

spec, host, port, redis = find_spec(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
resources = runtime()
resources["feast"] = FeastFeatureStore(
    registry=resources["feast"].registry, online_store_type="redis", redis_connection=redis
).process_config_and_initialize()
print(f"serving {spec.name} on http://{host}:{port} with Feast's online store on redis {redis}", flush=True)
serve(spec, host, port, server_stores(resources, spec))
"""


# --- requests --------------------------------------------------------------------------------------


def http_request(method: str, port: int, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def columns_of(rows: Any, spec: Any) -> dict[str, list]:
    """JSON-ready columns in spec order: text for categorical fields (``day`` is "1".."7"), floats otherwise."""
    cats = set(spec.categorical_features)
    return {c: rows[c].astype(str).tolist() if c in cats else rows[c].astype("float64").tolist() for c in spec.feature_names}


def bodies(rows: Any, spec: Any, batch: int) -> tuple[list[bytes], list[bytes]]:
    """(ours, mlflow) request bodies: the evaluation rows cut into batches, the same rows for both."""
    ours, theirs = [], []
    for start in range(0, len(rows) - batch + 1, batch):
        cols = columns_of(rows.iloc[start : start + batch], spec)
        names = list(cols)
        ours.append(json.dumps({"inputs": cols}, separators=(",", ":")).encode())
        data = [list(r) for r in zip(*(cols[c] for c in names))]
        theirs.append(json.dumps({"dataframe_split": {"columns": names, "data": data}}, separators=(",", ":")).encode())
    return ours, theirs


def flights_bodies(pool: dict[str, list], batch: int) -> list[bytes]:
    """flight_delays request bodies (columns), the pool cut into batches; the same for both stores."""
    n = len(pool["event_timestamp"])
    return [
        json.dumps({"inputs": {c: v[start : start + batch] for c, v in pool.items()}}, separators=(",", ":")).encode()
        for start in range(0, n - batch + 1, batch)
    ]


# --- a minimal HTTP/1.1 keep-alive client -----------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one ``Content-Length`` response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise ValueError(f"unsupported Transfer-Encoding: {value.strip()!r}")
    if length is None:
        raise ValueError("response without Content-Length")
    return status, await reader.readexactly(length), close


async def fetch_all(port: int, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Send requests one after the other on one connection (reconnecting when the server closes)."""
    out: list[tuple[int, bytes]] = []
    writer = None
    try:
        for req in requests:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(req)
            status, body, close = await read_response(reader)
            out.append((status, body))
            if close:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()
    return out


@dataclass
class Tally:
    latencies: array = field(default_factory=lambda: array("d"))  # seconds, 200 answers in the window
    errors: dict[str, int] = field(default_factory=dict)  # status or exception -> count (whole cell)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def drive(port: int, requests: list[bytes], first: int, t_measure: float, t_end: float, tally: Tally) -> None:
    """One connection sending requests back to back until ``t_end``; answers completed in the window count."""
    perf = time.perf_counter
    n, i = len(requests), first
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while perf() < t_end:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError as exc:
                tally.error(type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
        t0 = perf()
        writer.write(requests[i % n])
        i += 1
        try:
            status, _, close = await read_response(reader)  # type: ignore[arg-type]
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            tally.error(type(exc).__name__)
            writer.close()
            writer = None
            continue
        t1 = perf()
        if status != 200:
            tally.error(str(status))
        elif t_measure <= t1 <= t_end:
            tally.latencies.append(t1 - t0)
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def group_pids(pgid: int) -> list[int]:
    """Processes of a process group (the server and, for MLflow, the uvicorn it execs)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (every thread); 0 for those that are gone."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cell:
    server: str
    batch: int
    seconds: float
    latencies: np.ndarray  # seconds
    errors: dict[str, int]
    server_cpu: float  # cores used by the server's processes in the window
    client_cpu: float  # cores used by this process (the load generator) in the window
    other_cpu: float  # cores used by everything else on the machine in the window (should be ~0)

    @property
    def req_s(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def pred_s(self) -> float:
        return self.req_s * self.batch

    def ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if len(self.latencies) else float("nan")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


async def run_cell(
    server: str, port: int, pids: list[int], requests: list[bytes], batch: int, concurrency: int, warmup: float, duration: float
) -> Cell:
    tally = Tally()
    start = time.perf_counter()
    t_measure, t_end = start + warmup, start + warmup + duration

    async def window() -> tuple[float, float, float]:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        c0, s0, m0, w0 = time.process_time(), cpu_seconds(pids), machine_busy_seconds(), time.perf_counter()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        c1, s1, m1, w1 = time.process_time(), cpu_seconds(pids), machine_busy_seconds(), time.perf_counter()
        client, server = (c1 - c0) / (w1 - w0), (s1 - s0) / (w1 - w0)
        return client, server, max(0.0, (m1 - m0) / (w1 - w0) - client - server)

    spread = max(1, len(requests) // concurrency)  # connections start at different rows
    work = asyncio.gather(*(drive(port, requests, k * spread, t_measure, t_end, tally) for k in range(concurrency)), window())
    try:
        *_, (client_cpu, server_cpu, other_cpu) = await asyncio.wait_for(work, warmup + duration + CELL_GRACE_S)
    except TimeoutError:
        raise SystemExit(f"{server} batch {batch}: answers still missing {CELL_GRACE_S:.0f} s after the window closed")
    return Cell(
        server, batch, duration, np.frombuffer(tally.latencies, dtype="float64"), tally.errors, server_cpu, client_cpu, other_cpu
    )


# --- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    path: str  # the prediction route
    ready: str  # the readiness route
    proc: subprocess.Popen
    log: Path
    pids: list[int] = field(default_factory=list)


def start(name: str, cmd: list[str], env: dict[str, str], port: int, path: str, ready: str, logs: Path) -> Server:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=logs.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, port, path, ready, proc, log)


def wait_ready(servers: list[Server], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for s in list(pending):
            if s.proc.poll() is not None:
                raise SystemExit(f"{s.name} server exited with {s.proc.returncode}:\n{tail(s.log)}")
            try:
                ((status, _),) = asyncio.run(fetch_all(s.port, [http_request("GET", s.port, s.ready)]))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = 0
            if status == 200:
                s.pids = group_pids(s.proc.pid)
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            raise SystemExit(
                f"not ready after {timeout:.0f} s: {[s.name for s in pending]}\n" + "\n".join(tail(s.log) for s in pending)
            )
        if pending:
            time.sleep(0.25)


def stop(server: Server) -> None:
    """SIGTERM to the server's process group; SIGKILL to whatever of it is left after 15 s."""
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        server.proc.poll()  # reaps the leader once it exits
        if not group_pids(server.proc.pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- checks ----------------------------------------------------------------------------------------


def verify(servers: dict[str, Server], requests: dict[str, list[bytes]], expected_scores: np.ndarray, batch: int) -> int:
    """Every prepared request, to both servers: the same predictions, and our scores equal to the pipeline's."""
    got: dict[str, list[tuple[int, bytes]]] = {}
    for name, s in servers.items():
        try:
            got[name] = asyncio.run(asyncio.wait_for(fetch_all(s.port, requests[name]), CHECK_TIMEOUT_S))
        except TimeoutError:
            raise SystemExit(
                f"{name} took over {CHECK_TIMEOUT_S:.0f} s to answer the batch-{batch} check requests (is the machine busy?)"
            )
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise SystemExit(
                f"{name} failed a batch-{batch} check request ({type(exc).__name__}: {exc}); its log ends:\n{tail(s.log, 6)}"
            )
        for i, (status, body) in enumerate(got[name]):
            if status != 200:
                raise SystemExit(
                    f"{name} answered {status} to batch-{batch} check request {i}: {body[:300]!r}; its log ends:\n{tail(s.log, 6)}"
                )
    ours_pred, ours_scores, theirs_pred = [], [], []
    for (_, b_ours), (_, b_theirs) in zip(got[OURS], got[MLFLOW]):
        o, t = json.loads(b_ours), json.loads(b_theirs)
        if str(o.get("model_version")) != "1":
            raise SystemExit(f"our server serves version {o.get('model_version')!r}, not 1")
        ours_pred += o["predictions"]
        ours_scores += o["scores"]
        theirs_pred += t["predictions"]
    ours_arr, theirs_arr = np.asarray(ours_pred, dtype="float64"), np.asarray(theirs_pred, dtype="float64")
    if len(ours_arr) != len(theirs_arr) or not np.array_equal(ours_arr, theirs_arr):
        diff = int((ours_arr != theirs_arr).sum()) if len(ours_arr) == len(theirs_arr) else "all"
        raise SystemExit(f"the servers disagree: {diff} of {len(ours_arr)} predictions differ")
    n = len(ours_scores)
    if not np.allclose(np.asarray(ours_scores), expected_scores[:n], rtol=0, atol=1e-9):
        raise SystemExit("our scores differ from the pipeline's predict_proba on the same rows")
    return n


def verify_flights(servers: dict[str, Server], requests: dict[str, list[bytes]], version: str, batch: int) -> dict[str, int]:
    """Every prepared flights request, to both stores' servers: 200, the champion, and the same scores
    (the stores hold the same rows). Returns rows checked and, per store, the rows the server flagged
    with an unknown entity: these may differ, because Feast's Redis store answers a key it has no row
    for as present with null values (status PRESENT, event time 0) where SQLite answers NOT_FOUND."""
    got: dict[str, list[dict]] = {}
    for name, s in servers.items():
        try:
            answers = asyncio.run(asyncio.wait_for(fetch_all(s.port, requests[name]), CHECK_TIMEOUT_S))
        except TimeoutError:
            raise SystemExit(f"{FLIGHTS} on {name} took over {CHECK_TIMEOUT_S:.0f} s to answer the batch-{batch} check requests")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise SystemExit(
                f"{FLIGHTS} on {name} failed a batch-{batch} check request ({type(exc).__name__}: {exc}):\n{tail(s.log, 6)}"
            )
        for i, (status, body) in enumerate(answers):
            if status != 200:
                raise SystemExit(
                    f"{FLIGHTS} on {name} answered {status} to batch-{batch} request {i}: {body[:300]!r}:\n{tail(s.log, 6)}"
                )
        got[name] = [json.loads(body) for _, body in answers]
    scores, unknown = {}, {}
    for name, answers in got.items():
        versions = {str(a.get("model_version")) for a in answers}
        if versions != {version}:
            raise SystemExit(f"{FLIGHTS} on {name} serves versions {versions}, not the champion {version}")
        scores[name] = np.asarray([x for a in answers for x in a["scores"]], dtype="float64")
        unknown[name] = [x for a in answers for x in a.get("unknown_entities", [[]] * len(a["scores"]))]
    if len(scores[SQLITE]) != len(scores[REDIS]) or not np.allclose(scores[SQLITE], scores[REDIS], rtol=0, atol=1e-9):
        raise SystemExit(f"{FLIGHTS}: the SQLite and Redis online stores give different scores for the same flights")
    out = {"rows": len(scores[SQLITE])}
    for name in (SQLITE, REDIS):
        out[f"rows_with_unknown_entity_{name}"] = sum(1 for u in unknown[name] if u)
    return out


# --- report ----------------------------------------------------------------------------------------


def median(cells: list[Cell], metric: str) -> float:
    values = [getattr(c, metric)() if callable(getattr(c, metric)) else getattr(c, metric) for c in cells]
    return float(statistics.median(values))


def summarise(cells: list[Cell], batches: list[int], names: tuple[str, str] = (OURS, MLFLOW), prefix: str = "") -> dict[str, Any]:
    """Per batch size (``<prefix>batch_<n>``), per server the medians over rounds; ``ratio`` is the
    first server's pred/s over the second's."""
    out: dict[str, Any] = {}
    for b in batches:
        row: dict[str, Any] = {}
        for name in names:
            mine = [c for c in cells if c.server == name and c.batch == b]
            row[f"{name}_req_s"] = round(median(mine, "req_s"), 1)
            row[f"{name}_pred_s"] = round(median(mine, "pred_s"), 1)
            row[f"{name}_p50_ms"] = round(statistics.median(c.ms(50) for c in mine), 3)
            row[f"{name}_p99_ms"] = round(statistics.median(c.ms(99) for c in mine), 3)
            row[f"{name}_errors"] = statistics.median(c.error_count for c in mine)
            row[f"{name}_errors_total"] = sum(c.error_count for c in mine)
            row[f"{name}_server_cpu"] = round(median(mine, "server_cpu"), 2)
            row[f"{name}_client_cpu"] = round(median(mine, "client_cpu"), 2)
            row[f"{name}_other_cpu_max"] = round(max(c.other_cpu for c in mine), 2)
        first, second = names
        row["ratio"] = round(row[f"{first}_pred_s"] / row[f"{second}_pred_s"], 2) if row[f"{second}_pred_s"] else None
        out[f"{prefix}batch_{b}"] = row
    return out


def table(summary: dict[str, Any], batches: list[int], names: tuple[str, str] = (OURS, MLFLOW), prefix: str = "") -> str:
    head = f"{'batch':>6} {'server':<7} {'req/s':>9} {'pred/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'srv cpu':>8} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for b in batches:
        row = summary[f"{prefix}batch_{b}"]
        for name in names:
            ratio = f"{row['ratio']:.2f}x" if name == names[0] and row["ratio"] is not None else ""
            lines.append(
                f"{b:>6} {name:<7} {row[f'{name}_req_s']:>9,.0f} {row[f'{name}_pred_s']:>11,.0f} "
                f"{row[f'{name}_p50_ms']:>8.2f} {row[f'{name}_p99_ms']:>8.2f} {row[f'{name}_errors_total']:>7} "
                f"{row[f'{name}_server_cpu']:>8.2f} {ratio:>6}"
            )
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell's window")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections, each one request at a time")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every cell; medians are reported")
    parser.add_argument("--batches", default="1,100,1000", help="rows per request, comma-separated")
    parser.add_argument(
        "--omp-threads", type=int, help="OMP_NUM_THREADS for both servers (default: unset, the libraries' own choice)"
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary home (registry, server logs)")
    parser.add_argument(
        "--flights-batches", default="1,100", help=f"rows per request of the {FLIGHTS} cells (SQLite vs Redis); '' for none"
    )
    parser.add_argument("--flights-days", type=int, default=6, help=f"days of {FLIGHTS} ingested before its model is trained")
    parser.add_argument("--prepare-flights", metavar="HOME", help=argparse.SUPPRESS)  # the preparation process
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    flights_batches = [int(b) for b in args.flights_batches.split(",") if b.strip()]
    if max(batches + flights_batches) > POOL_ROWS:
        parser.error(f"batches above {POOL_ROWS} rows are not prepared")
    os.environ.setdefault("MLOPS_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.path.insert(0, str(ROOT))
    if args.prepare_flights:
        print(json.dumps(prepare_flights(Path(args.prepare_flights), args.redis, args.flights_days)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the servers are stopped (finally) on SIGTERM too

    from mlops_assets.core.training import feature_frame, predict_scores
    from mlops_assets.specs import find_spec

    t_start = time.perf_counter()
    spec = find_spec(str(SPEC_FILE))
    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    servers: dict[str, Server] = {}
    flight_servers: dict[str, Server] = {}
    services = contextlib.ExitStack()
    flights: dict[str, Any] = {}
    cells: list[Cell] = []
    flight_cells: list[Cell] = []
    try:
        train, rest = load_rows(spec)
        pool = rest.head(POOL_ROWS)
        log(f"home {home}: fitting {spec.name} on {len(train)} rows ({TRAIN_DAYS} days), logging it to MLflow ...")
        cwd = os.getcwd()
        os.chdir(home)  # MLflow records its Default experiment under ./mlruns of the working directory: not the repo's
        try:
            fitted = register_model(home, spec, train)
        finally:
            os.chdir(cwd)
        expected = predict_scores(fitted, feature_frame(pool, spec), spec)
        setup_s = time.perf_counter() - t_start

        (home / "tmp").mkdir()
        (home / "logs").mkdir()
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow execs `uvicorn` from PATH
            "MLOPS_ENV": "local",
            "MLOPS_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "MLFLOW_TRACKING_URI": tracking_uri(home),
            "TMPDIR": str(home / "tmp"),
        }
        if args.omp_threads:
            env["OMP_NUM_THREADS"] = str(args.omp_threads)
        p_ours, p_mlflow = free_port(), free_port()
        servers[OURS] = start(
            OURS,
            [str(BIN / "mlops"), "serve", "--spec", str(SPEC_FILE), "--host", HOST, "--port", str(p_ours)],
            env,
            p_ours,
            f"/v1/models/{spec.name}:predict",
            "/readyz",
            home / "logs",
        )
        servers[MLFLOW] = start(
            MLFLOW,
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{spec.name}/1", "--env-manager", "local"]
            + ["--host", HOST, "-p", str(p_mlflow), "-w", "1"],
            env,
            p_mlflow,
            "/invocations",
            "/ping",
            home / "logs",
        )
        if flights_batches:
            from mlops_assets_tests.services import redis_server

            redis = services.enter_context(redis_server())
            t_prep = time.perf_counter()
            log(
                f"{FLIGHTS}: running the pipeline on {args.flights_days} days (SQLite online store), "
                f"then materializing them into Redis {redis.connection_string} ..."
            )
            prep = subprocess.run(
                [sys.executable, __file__, "--prepare-flights", str(home), "--redis", redis.connection_string]
                + ["--flights-days", str(args.flights_days)],
                cwd=home,
                env={**env, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                check=False,
            )
            if prep.returncode != 0:
                raise SystemExit(f"{FLIGHTS} preparation failed (exit {prep.returncode}):\n{prep.stderr[-4000:]}")
            flights = json.loads(prep.stdout.strip().splitlines()[-1])
            flights["prepare_s"] = time.perf_counter() - t_prep
            log(f"{FLIGHTS}: champion v{flights['version']}, online rows {flights['online_rows']} ({flights['prepare_s']:.0f} s)")
            route = f"/v1/models/{FLIGHTS}:predict"
            p_sqlite, p_redis = free_port(), free_port()
            flight_servers[SQLITE] = start(
                f"{FLIGHTS}-{SQLITE}",
                [str(BIN / "mlops"), "serve", "--spec", FLIGHTS, "--host", HOST, "--port", str(p_sqlite)],
                env,
                p_sqlite,
                route,
                "/readyz",
                home / "logs",
            )
            flight_servers[REDIS] = start(
                f"{FLIGHTS}-{REDIS}",
                [sys.executable, "-c", SERVE_ON_REDIS, FLIGHTS, HOST, str(p_redis), redis.connection_string],
                {**env, "PYTHONPATH": str(ROOT)},
                p_redis,
                route,
                "/readyz",
                home / "logs",
            )
        t_ready = time.perf_counter()
        wait_ready([*servers.values(), *flight_servers.values()], READY_TIMEOUT_S)
        if flights_batches:
            flight_servers[REDIS].pids.append(redis.pid)  # the store's CPU is the Redis cells' serving CPU too
        pids = {n: s.pids for n, s in [*servers.items(), *flight_servers.items()]}
        log(f"servers ready in {time.perf_counter() - t_ready:.1f} s; processes {pids}")

        requests: dict[int, dict[str, list[bytes]]] = {}
        for b in batches:
            ours_b, theirs_b = bodies(pool, spec, b)
            requests[b] = {
                OURS: [http_request("POST", p_ours, servers[OURS].path, x) for x in ours_b],
                MLFLOW: [http_request("POST", p_mlflow, servers[MLFLOW].path, x) for x in theirs_b],
            }
        checked = {b: verify(servers, requests[b], expected, b) for b in batches}
        log(f"same predictions from both servers: {checked} rows per batch size")
        flight_requests: dict[int, dict[str, list[bytes]]] = {}
        for b in flights_batches:
            flight_requests[b] = {
                n: [http_request("POST", s.port, s.path, x) for x in flights_bodies(flights["pool"], b)]
                for n, s in flight_servers.items()
            }
        flights["checked"] = {
            b: verify_flights(flight_servers, flight_requests[b], flights["version"], b) for b in flights_batches
        }
        if flights_batches:
            log(f"{FLIGHTS}: the same scores from SQLite and Redis: {flights['checked']}")

        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
        gc.collect()
        gc.freeze()  # the loaded libraries' objects are not scanned again during the cells
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            for r in range(args.repeats):
                order = [OURS, MLFLOW] if r % 2 == 0 else [MLFLOW, OURS]
                for b in batches:
                    for name in order:
                        s = servers[name]
                        if s.proc.poll() is not None:
                            raise SystemExit(f"{name} server died (exit {s.proc.returncode}):\n{tail(s.log)}")
                        cell = runner.run(
                            run_cell(name, s.port, s.pids, requests[b][name], b, args.concurrency, args.warmup, args.duration)
                        )
                        cells.append(cell)
                        log(
                            f"round {r + 1} batch {b:>4} {name:<6}: {cell.req_s:>8,.0f} req/s {cell.pred_s:>10,.0f} pred/s "
                            f"p50 {cell.ms(50):6.2f} ms p99 {cell.ms(99):6.2f} ms errors {cell.errors or 0} "
                            f"cpu: server {cell.server_cpu:.2f} client {cell.client_cpu:.2f} other {cell.other_cpu:.2f}"
                        )
                order = [SQLITE, REDIS] if r % 2 == 0 else [REDIS, SQLITE]
                for b in flights_batches:
                    for name in order:
                        s = flight_servers[name]
                        if s.proc.poll() is not None:
                            raise SystemExit(f"{FLIGHTS} {name} server died (exit {s.proc.returncode}):\n{tail(s.log)}")
                        cell = runner.run(
                            run_cell(
                                name, s.port, s.pids, flight_requests[b][name], b, args.concurrency, args.warmup, args.duration
                            )
                        )
                        flight_cells.append(cell)
                        log(
                            f"round {r + 1} {FLIGHTS} batch {b:>4} {name:<6}: {cell.req_s:>8,.0f} req/s {cell.pred_s:>10,.0f} pred/s "
                            f"p50 {cell.ms(50):6.2f} ms p99 {cell.ms(99):6.2f} ms errors {cell.errors or 0} "
                            f"cpu: server {cell.server_cpu:.2f} client {cell.client_cpu:.2f} other {cell.other_cpu:.2f}"
                        )
    finally:
        for s in [*servers.values(), *flight_servers.values()]:
            stop(s)
        services.close()  # the Redis server, stopped by process id
        server_logs = {
            s.name: s.log.read_text(errors="replace") for s in [*servers.values(), *flight_servers.values()] if s.log.exists()
        }
        if args.keep_home:
            log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    summary = summarise(cells, batches)
    ratios = [summary[f"batch_{b}"]["ratio"] for b in batches]
    goals = {
        "ratio_ge_2": all(x is not None and x >= 2 for x in ratios),
        "single_row_p99_le_10ms": summary["batch_1"][f"{OURS}_p99_ms"] <= 10 if 1 in batches else None,
        "batch_1000_ge_100k_pred_s": summary["batch_1000"][f"{OURS}_pred_s"] >= 100_000 if 1000 in batches else None,
    }
    flights_summary = summarise(flight_cells, flights_batches, (REDIS, SQLITE), prefix="flights_") if flight_cells else {}
    errors = sum(c.error_count for c in cells)
    flights_errors = sum(c.error_count for c in flight_cells)
    tracebacks = {n: text.count("Traceback") for n, text in server_logs.items()}
    warnings = []
    if errors + flights_errors:
        warnings.append(
            f"{errors + flights_errors} failed requests: {sorted({k for c in cells + flight_cells for k in c.errors})}"
        )
    if any(tracebacks.values()):
        warnings.append(f"tracebacks in the server logs: {tracebacks}")
    if (busy := max(c.other_cpu for c in cells + flight_cells)) > 0.25:
        warnings.append(f"the machine was not quiet: other processes used up to {busy:.2f} cores during a cell")
    for b, checked in flights.get("checked", {}).items():
        if checked[f"rows_with_unknown_entity_{SQLITE}"] != checked[f"rows_with_unknown_entity_{REDIS}"]:
            warnings.append(
                f"{FLIGHTS} batch {b}: the server flagged {checked[f'rows_with_unknown_entity_{SQLITE}']} of {checked['rows']} rows "
                f"with an unknown entity on SQLite and {checked[f'rows_with_unknown_entity_{REDIS}']} on Redis (same scores): "
                "Feast's Redis store answers a missing key as present with null values"
            )
    if (client := max(c.client_cpu for c in cells + flight_cells)) > 0.9:
        warnings.append(f"the load generator used up to {client:.2f} cores: it may have limited a cell")
    result = {
        "bench": "serving",
        "model": f"{spec.name} v1 ({spec.estimator.cls.rsplit('.', 1)[1]}, skops)",
        "workers_per_server": 1,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "omp_num_threads": args.omp_threads or os.environ.get("OMP_NUM_THREADS"),
        **summary,
        "errors_total": errors,
        "warnings": warnings,
        "setup_s": round(setup_s, 1),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "goals": goals,
    }
    if flight_cells:
        result.update(
            {
                "flights_model": f"{FLIGHTS} v{flights['version']} (online features from Feast: SQLite vs Redis)",
                "flights_days": f"{flights['days'][0]}..{flights['days'][-1]}",
                "flights_online_rows": flights["online_rows"][SQLITE],
                "flights_checked": flights["checked"],
                "flights_prepare_s": round(flights["prepare_s"], 1),
                **flights_summary,
                "flights_ratio_redis_sqlite": {
                    f"batch_{b}": flights_summary[f"flights_batch_{b}"]["ratio"] for b in flights_batches
                },
                "flights_errors_total": flights_errors,
            }
        )
    print(
        f"\n{spec.name} v1 on 127.0.0.1, one worker process per server, {args.concurrency} keep-alive connections, "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up, median of {args.repeats} rounds\n"
    )
    print(table(summary, batches))
    if flight_cells:
        print(
            f"\n{FLIGHTS} v{flights['version']}, every request looks its flights up in the online store (ratio: Redis / SQLite)\n"
        )
        print(table(flights_summary, flights_batches, (REDIS, SQLITE), prefix="flights_"))
    print(f"\ngoals: {goals}")
    for w in warnings:
        print(f"WARNING: {w}")
    print(json.dumps(result))
    return 0 if not errors + flights_errors else 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
