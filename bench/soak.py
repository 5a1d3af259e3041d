"""Soak: the model server under a bounded mixed load of valid and hostile requests, killed and
restarted in the middle. Nothing answered may be lost outside the documented SIGKILL window, and no
request may get a 5xx for its content.

Why: the server is the one part of the platform that strangers talk to. Its tests prove each rule
once; this runs them all at the same time, for long enough that buffers fill, files rotate and a
crash lands somewhere in between, and counts what came out.

What it does, in a temporary home (local profile):

1. fits the Elec2 spec's pipeline on its first 28 days (as ``bench/serving.py`` does), registered as
   version 1 with the ``champion`` alias in a SQLite MLflow registry;
2. starts ``mlops serve --spec examples/specs/elec2.yaml`` on a free loopback port, in its own session;
3. clean phase: ``--concurrency`` clients send valid requests only, for ``--clean-seconds``: the
   reference p99 of valid requests;
4. mixed phase, ``--seconds`` long: the same clients send a mix (``MIX``): valid single rows and
   batches (each row with a unique ``event_id``), and every kind of malformed request (not JSON,
   wrong types, unknown and missing fields, empty / loose / out-of-range timestamps, non-finite and
   absurd numbers, deep nesting, too many rows, oversized bodies with and without Content-Length,
   the admin route without or with a wrong token, another model's name). Half-way through, the
   server's process group gets SIGKILL and the server is started again on the same home; requests
   that fail to connect meanwhile are counted as ``unanswered`` (not as answers);
5. SIGTERM (the server flushes its prediction log), then the prediction store is read: every row of
   every request answered 200 must be there exactly once (by ``event_id``).

Reported: requests, answers by status, ``responses_5xx`` (goal 0), predictions answered and logged,
``rows_lost`` outside the SIGKILL window (goal 0), ``rows_lost_in_kill_window`` (rows answered within
the documented loss window before the kill: 0 s with the server's write-ahead folder, else its 1 s
flush interval), ``rows_duplicated`` (goal 0), the
server's peak RSS over both processes, and the p99 of valid requests in the mixed phase against the
clean phase.

    MLOPS_DATA_DIR=../shared/data .venv/bin/python bench/soak.py [--seconds 60] [--clean-seconds 15]
        [--concurrency 8] [--keep-home]

Prints progress on stderr, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import (  # the serving benchmark's model and process helpers
    BIN,
    HOST,
    READY_TIMEOUT_S,
    ROOT,
    SPEC_FILE,
    free_port,
    group_pids,
    load_rows,
    register_model,
    tail,
    tracking_uri,
)

TOKEN = "soak-admin-token-" + os.urandom(8).hex()
TIMEOUT_S = 30.0


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


# --- requests ----------------------------------------------------------------------------------------


class Requests:
    """Request bodies: valid ones carry fresh event ids; malformed ones are one of each kind."""

    def __init__(self, spec: Any, rows: Any, max_body_bytes: int, max_rows: int):
        from mlops_assets.core.requests import request_schema

        self.spec = spec
        self.schema = request_schema(spec)
        self.fields = list(self.schema.required)
        self.rows = rows.reset_index(drop=True)
        self.ts = [t.isoformat() for t in rows[spec.source.timestamp.column].pipe(_as_time)]
        self.ids = itertools.count()
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows

    def row(self) -> dict[str, Any]:
        i = random.randrange(len(self.rows))
        r = {f: _plain(self.rows.at[i, f]) for f in self.fields}
        r["event_timestamp"] = self.ts[i]
        r["event_id"] = f"soak-{next(self.ids)}"
        return r

    def valid(self, n: int) -> tuple[bytes, list[str]]:
        rows = [self.row() for _ in range(n)]
        return json.dumps({"instances": rows}).encode(), [r["event_id"] for r in rows]

    def malformed(self, kind: str) -> tuple[str, bytes, dict[str, str]]:
        """(path suffix, body, extra headers) of one malformed request of ``kind``."""
        r = self.row()
        number = next((f for f, k in self.schema.required.items() if k == "number"), None)
        bad: Any
        if kind == "not_json":
            return "predict", b"{instances: [1,2", {}
        if kind == "wrong_type":
            bad = {**r, **({number: "twelve"} if number else {})}
        elif kind == "unknown_field":
            bad = {**r, "not_a_field": 1}
        elif kind == "missing_field":
            bad = {k: v for k, v in r.items() if k != self.fields[0]}
        elif kind == "empty_timestamp":
            bad = {**r, "event_timestamp": ""}
        elif kind == "loose_timestamp":
            bad = {**r, "event_timestamp": random.choice(["now", "14/01/2013", "yesterday", "2013-13-45"])}
        elif kind == "out_of_range_timestamp":
            bad = {**r, "event_timestamp": random.choice(["0001-01-01T00:00", "2262-04-12T00:00", "3000-01-01", "9999-12-31"])}
        elif kind == "non_finite":
            body = json.dumps({"instances": [{**r, **({number: 0} if number else {})}]})
            literal = random.choice(["NaN", "Infinity", "-Infinity", "1e999", "1e308"])
            return "predict", body.replace(f'"{number}": 0', f'"{number}": {literal}').encode(), {}
        elif kind == "deep_nesting":
            depth = random.choice([40, 500, 5000])
            return (
                "predict",
                json.dumps({"instances": [{**r, self.fields[0]: None}]}).replace("null", "[" * depth + "]" * depth).encode(),
                {},
            )
        elif kind == "too_many_rows":
            return "predict", json.dumps({"instances": [r] * (self.max_rows + 1)}).encode(), {}
        elif kind == "oversized":  # declared by Content-Length; sent after 100 Continue, as curl does
            return "predict", b'{"instances": [' + b" " * (self.max_body_bytes + 1024) + b"]}", {"Expect": "100-continue"}
        elif kind == "oversized_chunked":
            return "predict", b'{"instances": [' + b" " * (self.max_body_bytes + 1024) + b"]}", {"chunked": "1"}
        elif kind == "admin_no_token":
            return "deployment", b'{"stable": "1"}', {}
        elif kind == "admin_wrong_token":
            return "deployment", b'{"stable": "1"}', {"Authorization": "Bearer wrong"}
        elif kind == "wrong_model":
            return "wrong_model", json.dumps({"instances": [r]}).encode(), {}
        else:
            raise ValueError(kind)
        return "predict", json.dumps({"instances": [bad]}).encode(), {}


MALFORMED = [
    "not_json",
    "wrong_type",
    "unknown_field",
    "missing_field",
    "empty_timestamp",
    "loose_timestamp",
    "out_of_range_timestamp",
    "non_finite",
    "deep_nesting",
    "too_many_rows",
    "admin_no_token",
    "admin_wrong_token",
    "wrong_model",
]
OVERSIZED = ["oversized", "oversized_chunked"]
# the mixed phase's draw: mostly valid traffic, a steady share of every malformed kind, few huge bodies
MIX = [("valid_row", 50), ("valid_batch", 10), ("malformed", 38), ("oversized", 2)]


def _as_time(col):
    import pandas as pd

    return pd.to_datetime(col)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


# --- HTTP ---------------------------------------------------------------------------------------------


async def http(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    """One request on its own connection; the status, or 0 when the server could not be reached or
    closed the connection without an answer."""
    chunked = headers.pop("chunked", None) is not None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), TIMEOUT_S)
    except (OSError, TimeoutError):
        return 0
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Content-Type: application/json", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if headers.get("Expect") == "100-continue":  # the body only once the server asks for it
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
            if not line:
                return 0
            status = int(line.split()[1])
            if status != 100:  # answered from the headers alone (413 for a declared size over the limit)
                await asyncio.wait_for(reader.read(), TIMEOUT_S)
                return status
            while (await asyncio.wait_for(reader.readline(), TIMEOUT_S)) not in (b"\r\n", b""):
                pass  # the interim response's headers, up to its blank line
        try:
            if chunked:
                for i in range(0, len(body), 1 << 20):
                    part = body[i : i + (1 << 20)]
                    writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the server answered (413) and closed before the body was sent: read its answer
        line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
        if not line:
            return 0
        status = int(line.split()[1])
        await asyncio.wait_for(reader.read(), TIMEOUT_S)
        return status
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
        return 0
    finally:
        writer.close()


class Tally:
    def __init__(self) -> None:
        self.by_kind: dict[str, dict[int, int]] = {}
        self.valid_latency_ms: list[float] = []
        self.answered: list[tuple[float, list[str]]] = []  # (answered at, event ids) of valid requests answered 200
        self.rows_answered = 0

    def add(self, kind: str, status: int) -> None:
        counts = self.by_kind.setdefault(kind, {})
        counts[status] = counts.get(status, 0) + 1


async def client(port: int, requests: Requests, spec_name: str, until: float, tally: Tally, mixed: bool) -> None:
    kinds, weights = zip(*MIX, strict=True)
    predict = f"/v1/models/{spec_name}:predict"
    while time.monotonic() < until:
        kind = random.choices(kinds, weights)[0] if mixed else "valid_row"
        if kind in ("valid_row", "valid_batch"):
            body, ids = requests.valid(1 if kind == "valid_row" else random.choice([10, 100]))
            t0 = time.perf_counter()
            status = await http(port, "POST", predict, body, {})
            if status == 200:
                tally.valid_latency_ms.append((time.perf_counter() - t0) * 1000)
                tally.answered.append((time.time(), ids))
                tally.rows_answered += len(ids)
            tally.add(kind, status)
            if status == 0:  # the server is down (the kill): retry shortly rather than spin
                await asyncio.sleep(0.05)
            continue
        which = random.choice(OVERSIZED if kind == "oversized" else MALFORMED)
        target, body, headers = requests.malformed(which)
        path = {
            "predict": predict,
            "deployment": f"/v1/models/{spec_name}/deployment",
            "wrong_model": "/v1/models/not_this_model:predict",
        }[target]
        status = await http(port, "PUT" if target == "deployment" else "POST", path, body, dict(headers))
        tally.add(which, status)
        if status == 0:
            await asyncio.sleep(0.05)


async def load(
    port: int, requests: Requests, spec_name: str, seconds: float, concurrency: int, tally: Tally, mixed: bool
) -> None:
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(port, requests, spec_name, until, tally, mixed) for _ in range(concurrency)))


# --- the server process ---------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.env = {
            **os.environ,
            "MLOPS_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "MLFLOW_TRACKING_URI": tracking_uri(home),
            "MLOPS_ADMIN_TOKEN": TOKEN,
            "MLOPS_SPECS": str(SPEC_FILE),
        }
        self.proc: subprocess.Popen | None = None
        self.peak_rss_kib = 0
        self.starts = 0

    def start(self) -> None:
        cmd = [str(BIN / "mlops"), "serve", "--spec", str(SPEC_FILE), "--host", HOST, "--port", str(self.port)]
        self.starts += 1
        out = (self.home / f"server-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=self.home, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"the server exited with {self.proc.returncode}:\n{tail(self.home / f'server-{self.starts}.log')}"
                )
            if asyncio.run(http(self.port, "GET", "/readyz", b"", {})) == 200:
                return
            time.sleep(0.25)
        raise SystemExit(
            f"the server was not ready after {READY_TIMEOUT_S:.0f} s:\n{tail(self.home / f'server-{self.starts}.log')}"
        )

    def sample_rss(self) -> None:
        if self.proc is None:
            return
        for pid in group_pids(self.proc.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
            except OSError:
                pass

    def kill(self) -> None:
        self.sample_rss()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        self.sample_rss()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


async def sample_rss_until(server: ServerProcess, until: float) -> None:
    while time.monotonic() < until:
        server.sample_rss()
        await asyncio.sleep(0.5)


def logged_event_ids(home: Path, spec_name: str) -> list[str]:
    """Every event id in the prediction store's served rows of the spec, one entry per logged row."""
    import pandas as pd

    ids: list[str] = []
    for f in sorted((home / "lake" / "served" / spec_name).rglob("*.parquet")):
        frame = pd.read_parquet(f, columns=["event_id"])
        ids += [str(v) for v in frame["event_id"] if v is not None and v is not pd.NA]
    return ids


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="mixed phase, with one SIGKILL half-way")
    parser.add_argument("--clean-seconds", type=float, default=15.0, help="valid requests only: the reference p99")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep-home", action="store_true")
    args = parser.parse_args()

    from mlops_assets.specs import DeploymentSpec, load_spec

    spec = load_spec(SPEC_FILE)
    random.seed(0)
    home = Path(tempfile.mkdtemp(prefix="mlops-soak-"))
    server: ServerProcess | None = None
    try:
        train, rest = load_rows(spec)
        log(f"registering the Elec2 model in {home}")
        register_model(home, spec, train)
        port = free_port()
        server = ServerProcess(home, port)
        server.start()
        deployment = spec.deployment or DeploymentSpec()  # the server's limits (its defaults without a section)
        max_body = int(deployment.max_body_mb * 2**20)
        requests = Requests(spec, rest.head(5000), max_body, deployment.max_batch_rows)

        log(f"clean phase: {args.clean_seconds:.0f} s of valid requests at {args.concurrency} connections")
        clean = Tally()
        asyncio.run(load(port, requests, spec.name, args.clean_seconds, args.concurrency, clean, mixed=False))

        log(f"mixed phase: {args.seconds:.0f} s, SIGKILL and restart half-way")
        mixed = Tally()

        async def mixed_phase() -> float:
            until = time.monotonic() + args.seconds
            rss = asyncio.create_task(sample_rss_until(server, until))
            traffic = asyncio.create_task(load(port, requests, spec.name, args.seconds, args.concurrency, mixed, mixed=True))
            await asyncio.sleep(args.seconds / 2)
            killed_at = time.time()
            server.kill()
            await asyncio.to_thread(server.start)
            await traffic
            await rss
            return killed_at

        killed_at = asyncio.run(mixed_phase())
        server.terminate()

        # the documented SIGKILL loss (prediction_store): nothing with a write-ahead folder, which
        # `mlops serve` on the local profile keeps in <home>/endpoints/<spec>/wal; else one flush interval
        wal = (home / "endpoints" / spec.name / "wal").is_dir()
        window = 0.0 if wal else 1.0
        logged = logged_event_ids(home, spec.name)
        counts: dict[str, int] = {}
        for i in logged:
            counts[i] = counts.get(i, 0) + 1
        lost = lost_in_window = 0
        for when, ids in clean.answered + mixed.answered:
            missing = sum(1 for i in ids if i not in counts)
            if when <= killed_at and killed_at - when <= window:
                lost_in_window += missing
            else:
                lost += missing
        duplicated = sum(n - 1 for n in counts.values() if n > 1)
        statuses: dict[str, int] = {}
        for tally in (clean, mixed):
            for per in tally.by_kind.values():
                for status, n in per.items():
                    statuses[str(status)] = statuses.get(str(status), 0) + n
        malformed_5xx = {k: {str(s): n for s, n in v.items()} for k, v in mixed.by_kind.items() if any(s >= 500 for s in v)}
        result = {
            "benchmark": "soak",
            "seconds_mixed": args.seconds,
            "seconds_clean": args.clean_seconds,
            "concurrency": args.concurrency,
            "requests": sum(statuses.values()),
            "responses_by_status": dict(sorted(statuses.items())),
            "responses_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
            "kinds_answered_5xx": malformed_5xx,
            "unanswered": statuses.get("0", 0),
            "predictions_answered": clean.rows_answered + mixed.rows_answered,
            "predictions_logged": len(logged),
            "rows_lost": lost,
            "rows_lost_in_kill_window": lost_in_window,
            "kill_window_s": window,
            "write_ahead_log": wal,
            "rows_duplicated": duplicated,
            "server_starts": server.starts,
            "peak_rss_mib": round(server.peak_rss_kib / 1024, 1),
            "p99_valid_ms_clean": round(p99(clean.valid_latency_ms), 2),
            "p99_valid_ms_mixed": round(p99(mixed.valid_latency_ms), 2),
            "p50_valid_ms_clean": round(statistics.median(clean.valid_latency_ms), 2) if clean.valid_latency_ms else None,
            "p50_valid_ms_mixed": round(statistics.median(mixed.valid_latency_ms), 2) if mixed.valid_latency_ms else None,
            "by_kind": {k: {str(s): n for s, n in sorted(v.items())} for k, v in sorted(mixed.by_kind.items())},
        }
        if result["p99_valid_ms_clean"]:
            result["p99_ratio_mixed_clean"] = round(result["p99_valid_ms_mixed"] / result["p99_valid_ms_clean"], 2)
        print(json.dumps(result))
        return 0
    finally:
        if server is not None and server.proc is not None and server.proc.poll() is None:
            server.terminate()
        if args.keep_home:
            log(f"home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
