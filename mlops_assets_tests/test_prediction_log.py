"""The prediction log files every acknowledged row exactly once (``prediction_store.PredictionLog``).

Crashes are real: a child process appends blocks and prints each request id once ``append`` has
returned (the moment the server would answer 200); the test kills it with SIGKILL, at random or
while a flush has written one file of a segment and not yet deleted its write-ahead segment, then a
new log on the same folder replays what was left. Every acknowledged id must be in the store exactly
once, and no id twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_assets import files
from mlops_assets.prediction_store import REQUESTS, SERVED, LogError, PredictionLog, read_day

DAYS = ["2013-01-01", "2013-01-02", "2013-01-03"]
NOON_NS = [pd.Timestamp(f"{d}T12:00Z").value for d in DAYS]

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np
    from mlops_assets import files
    from mlops_assets.prediction_store import SERVED, PredictionLog

    root, wal, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    days = [int(x) for x in sys.argv[4].split(",")]
    if mode == "kill-in-flush":  # stop forever right after the first file of a flush is stored
        real = files.write_bytes
        def slow(uri, data):
            out = real(uri, data)
            print("WROTE", flush=True)
            time.sleep(600)
            return out
        files.write_bytes = slow
    log = PredictionLog(root, "spec", "UTC", flush_seconds=0.02 if mode == "kill" else 3600,
                        wal_dir=None if wal == "-" else wal)
    if mode == "term":
        def stop(signum, frame):
            log.close()
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
    i = 0
    while True:
        ids = [f"r{i}-{k}" for k in range(3)]
        at = days[i % len(days)]
        log.append(SERVED, {
            "request_id": ids,
            "received_at_ns": np.full(3, at, dtype="int64"),
            "event_timestamp_ns": np.array([days[(i + k) % len(days)] for k in range(3)], dtype="int64"),
            "model_version": np.full(3, 1, dtype="int64"),
            "score": np.random.default_rng(i).random(3),
            "feature.carrier": np.array(["UA", None, "AA"], dtype=object),
        })
        print("ACK " + " ".join(ids), flush=True)
        i += 1
        if mode == "kill-in-flush" and i == 200:
            log.flush()
        time.sleep(0.0005 if mode == "kill" else 0)
        if mode == "term" and i == 300:
            print("READY", flush=True)
            time.sleep(600)
    """
)


def _child(root: Path, wal: Path | None, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(wal) if wal else "-", mode, ",".join(map(str, NOON_NS))],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def _read_until(proc: subprocess.Popen, stop: str | int) -> set[str]:
    """Acknowledged ids until a marker line (or a number of acknowledgements)."""
    acked: set[str] = set()
    for line in proc.stdout:
        if line.startswith("ACK "):
            acked.update(line.split()[1:])
            if isinstance(stop, int) and len(acked) >= stop:
                break
        elif line.strip() == stop:
            break
    return acked


def _stored_ids(root: Path, table: str = SERVED) -> list[str]:
    frames = [read_day(str(root), table, "spec", d) for d in DAYS]
    return [i for f in frames if f is not None for i in f["request_id"]]


def _assert_exactly_once(root: Path, acked: set[str]) -> None:
    stored = _stored_ids(root)
    assert len(stored) == len(set(stored)), "a row was filed twice"
    missing = acked - set(stored)
    assert not missing, f"{len(missing)} acknowledged rows lost, e.g. {sorted(missing)[:3]}"


def test_sigkill_loses_no_acknowledged_row_and_files_none_twice(tmp_path):
    """Killed at random while appending and flushing every 20 ms: the next log replays the
    write-ahead segments; many flushes happened, so the kill may land anywhere in one."""
    root, wal = tmp_path / "store", tmp_path / "wal"
    proc = _child(root, wal, "kill")
    acked = _read_until(proc, 3000)
    proc.send_signal(signal.SIGKILL)
    acked |= _read_until(proc, "never")  # whatever it printed before dying was acknowledged
    proc.wait()
    assert len(list((wal / "spec").glob("*.wal"))) >= 1
    PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal).close()
    _assert_exactly_once(root, acked)
    assert not list((wal / "spec").glob("*.wal")), "replayed segments are deleted"


def test_a_kill_between_a_store_write_and_the_segment_deletion_rewrites_the_same_file(tmp_path):
    """The flush stored the first day's file of a segment, then the process died before the other
    days and before deleting the segment: the replay writes the same file name again, not a copy."""
    root, wal = tmp_path / "store", tmp_path / "wal"
    proc = _child(root, wal, "kill-in-flush")
    acked = _read_until(proc, "WROTE")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [e.name for e in files.listing(str(root / SERVED / "spec" / DAYS[0]), ".parquet")]
    assert len(first) == 1 and len(acked) == 600
    PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal).close()
    assert [e.name for e in files.listing(str(root / SERVED / "spec" / DAYS[0]), ".parquet")] == first
    _assert_exactly_once(root, acked)
    assert set(_stored_ids(root)) == acked


def test_sigterm_stores_everything_without_a_wal(tmp_path):
    """The server's lifespan closes the log on SIGTERM: every row is written, even with no WAL and
    a flush interval far longer than the run."""
    root = tmp_path / "store"
    proc = _child(root, None, "term")
    acked = _read_until(proc, "READY")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert len(acked) == 900
    assert sorted(_stored_ids(root)) == sorted(acked)


def test_a_row_that_cannot_be_filed_fails_its_block_at_append(tmp_path):
    """A batch row with an empty timestamp (NaT) was answered 200 and then dropped at flush; now the
    append refuses the block, naming the row, and nothing of it is stored."""
    log = PredictionLog(str(tmp_path / "store"), "spec", "UTC", flush_seconds=3600, wal_dir=tmp_path / "wal")
    times = pd.DatetimeIndex([pd.Timestamp(DAYS[0], tz="UTC"), pd.NaT, pd.Timestamp(DAYS[1], tz="UTC")]).as_unit("ns").asi8
    block = {"request_id": ["a", "b", "c"], "received_at_ns": np.full(3, NOON_NS[0]), "event_timestamp_ns": times}
    with pytest.raises(LogError, match="served row 1 of 3: event_timestamp is missing"):
        log.append(SERVED, block)
    with pytest.raises(LogError, match="not a time"):
        log.append(SERVED, {**block, "event_timestamp_ns": [NOON_NS[0], None, NOON_NS[1]]})
    with pytest.raises(LogError, match="unequal length: 'event_timestamp_ns' has 2 rows, 'request_id' has 3"):
        log.append(SERVED, {**block, "event_timestamp_ns": np.array(NOON_NS[:2])})
    with pytest.raises(LogError, match="without 'event_timestamp_ns'"):
        log.append(SERVED, {"request_id": ["a"], "received_at_ns": [NOON_NS[0]]})
    log.append(SERVED, {**block, "event_timestamp_ns": np.array(NOON_NS)})
    log.close()
    assert sorted(_stored_ids(tmp_path / "store")) == ["a", "b", "c"]
    with pytest.raises(LogError, match="closed"):
        log.append(SERVED, block)
    log.close()  # idempotent


def test_a_failing_store_with_a_wal_files_every_row_once_after_a_restart(tmp_path, monkeypatch):
    """The store fails on the second file of a flush and is still down at shutdown: the segment stays
    on disk; the next log (a restarted server) stores it, rewriting the file that had succeeded."""
    root, wal = tmp_path / "store", tmp_path / "wal"
    log = PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal)
    for i, at in enumerate(NOON_NS * 2):
        log.append(REQUESTS, {"request_id": [f"q{i}"], "received_at_ns": [at], "status": [200]})
        log.append(SERVED, {"request_id": [f"r{i}"], "received_at_ns": [at], "event_timestamp_ns": [at], "score": [0.5]})
    real, calls = files.write_bytes, []

    def down_after_first(uri, data):
        calls.append(uri)
        if len(calls) > 1:
            raise OSError("store unreachable")
        return real(uri, data)

    monkeypatch.setattr(files, "write_bytes", down_after_first)
    with pytest.raises(OSError):
        log.close()
    monkeypatch.setattr(files, "write_bytes", real)
    assert len(calls) == 2 and len(list((wal / "spec").glob("*.wal"))) == 1
    written_first = sorted(Path(calls[0]).parent.iterdir())
    PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal).close()
    assert sorted(Path(calls[0]).parent.iterdir()) == written_first  # rewritten, not copied
    assert sorted(_stored_ids(root)) == sorted(f"r{i}" for i in range(6))
    assert sorted(_stored_ids(root, REQUESTS)) == sorted(f"q{i}" for i in range(6))


def test_a_live_writers_segment_is_not_adopted_and_a_torn_tail_is_ignored(tmp_path):
    """Two logs on one folder: a flush of one never takes the other's open segment (its lock); a
    record cut short by a crash mid-write was never acknowledged and is dropped on replay."""
    root, wal = tmp_path / "store", tmp_path / "wal"
    first = PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal)
    first.append(SERVED, {"request_id": ["a"], "received_at_ns": [NOON_NS[0]], "event_timestamp_ns": [NOON_NS[0]]})
    second = PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal)
    assert second.flush() == []
    first.close()
    second.close()
    assert _stored_ids(root) == ["a"]

    # a dead process's segment ending in half a record
    third = PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal)
    third.append(SERVED, {"request_id": ["b"], "received_at_ns": [NOON_NS[1]], "event_timestamp_ns": [NOON_NS[1]]})
    third.append(SERVED, {"request_id": ["c"], "received_at_ns": [NOON_NS[1]], "event_timestamp_ns": [NOON_NS[1]]})
    segment = third._active
    os.truncate(segment.path, segment.size - 5)
    segment.release(delete=False)  # what a SIGKILL does to the lock
    third._active = None
    PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=wal).close()
    assert sorted(_stored_ids(root)) == ["a", "b"]


def test_blocks_with_different_columns_or_value_types_are_all_stored(tmp_path):
    """Hostile or uneven blocks never make a flush fail forever: a missing column is empty in the
    rows that lack it, values of disagreeing types are stored as text."""
    root = tmp_path / "store"
    log = PredictionLog(str(root), "spec", "UTC", flush_seconds=3600, wal_dir=tmp_path / "wal")
    at = [NOON_NS[0]]
    log.append(SERVED, {"request_id": ["a"], "received_at_ns": at, "event_timestamp_ns": at, "event_id": ["e1"]})
    log.append(SERVED, {"request_id": ["b"], "received_at_ns": at, "event_timestamp_ns": at, "event_id": [7]})
    log.append(SERVED, {"request_id": ["c"], "received_at_ns": at, "event_timestamp_ns": at, "event_id": [np.int64(8)]})
    log.append(SERVED, {"request_id": ["d"], "received_at_ns": at, "event_timestamp_ns": at, "extra": [time.time()]})
    log.close()
    out = read_day(str(root), SERVED, "spec", DAYS[0]).set_index("request_id")
    assert out["event_id"].tolist()[:3] == ["e1", "7", "8"] and pd.isna(out.loc["d", "event_id"])
    assert out["extra"].notna().sum() == 1
