"""The prediction store: every request and every prediction the server makes, as daily parquet files.

Two tables under the prediction store's root (``LakeStorage.predictions_root``: ``<storage>/lake``,
a local folder or an object-store prefix), one folder per day (the spec's timezone, like every
partition):

    lake/requests/<spec>/<YYYY-MM-DD>/<file>.parquet   one row per request, in the day it arrived:
                                                       id, time, variant, model version, HTTP
                                                       status, rows, latency
    lake/served/<spec>/<YYYY-MM-DD>/<file>.parquet     one row per prediction, in its event's day:
                                                       request id, event id and time, model version,
                                                       the features it saw (``feature.<name>``),
                                                       score, prediction

Predictions are filed by event day because that is the partition of every asset: monitoring of
``<spec>/predictions`` for a day reads that day's folder (``read_day``). A request without an
``event_timestamp`` is an event happening now, filed under the day it arrived.

**Every prediction answered 200 is filed exactly once.** The server appends each block of rows
(``PredictionLog.append``) before it answers; ``append`` checks that every row can be filed (equal
column lengths, a time that maps to a day in the spec's timezone) and raises ``LogError`` when not,
so the server answers 503 instead of 200 for a row it could not file. A background thread writes
what was appended as new parquet files every ``flush_seconds`` (and at shutdown: ``close``), so a
request never waits for the store and several server processes (pods, SageMaker instances) never
write the same file: on an object store each flush is one new object per table and day.

**Write-ahead file.** With ``wal_dir`` (a local folder the server finds again after a restart: the
local endpoint's run folder, a volume in a container) every appended block is first written to an
append-only segment file there (``<wal_dir>/<spec>/<segment>.wal``, one ``write`` per block, length-
and CRC-framed; plain values only, in ``marshal``'s format: reading it back never builds an object of
a class or runs code, as unpickling could). A flush seals the
active segment (a seal record with its time, fsynced), writes its rows to the store under names
derived from the segment (``<seal ns>-<segment>.parquet``) and only then deletes the segment. A segment
left behind (the process was killed, or the store was unreachable at shutdown) is adopted by the next
log on that folder (at start and at every flush; an exclusive ``flock`` tells a live writer's segment
from a dead one's) and written again under the same names: a crash between a store write and the
segment's deletion rewrites the same objects, so no row is ever filed twice.

**What can be lost.** SIGTERM: nothing (``close`` flushes everything; with a WAL, what the store
refused stays in the segment for the next start). SIGKILL or an out-of-memory kill: nothing with a
WAL (every answered block is in the page cache before its answer); without one (``wal_dir=None``),
the rows appended in the last ``flush_seconds``, plus those a store outage kept in memory. A machine
crash (power loss) with a WAL loses at most the last ``flush_seconds``: segments are fsynced when
sealed, not on every append (an fsync costs milliseconds; the append itself costs ~15 us per 1-row
block: ``bench/prediction_log.py``).

Each file's name starts with the time its segment was sealed, after every row it holds was received,
so the canary check reads what was served since a moment (``read_since``) whatever days the events are.
That time is the log's clock (``clock_ns``: the wall clock, or a replay's simulated clock for a
replay's server, ``server.clock``), and never earlier than the latest row of the segment was received,
so the rule holds whatever the clock says.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_assets import files
from mlops_assets import prediction_wal as wal_format

REQUESTS, SERVED = "requests", "served"
TABLES = (REQUESTS, SERVED)
FEATURE_PREFIX = "feature."  # the batch predictions' convention (scoring.FEATURE_PREFIX)
FILED_BY = {SERVED: "event_timestamp_ns", REQUESTS: "received_at_ns"}  # the time that picks a row's day
# A time within two days of pandas' range still has a calendar day in every timezone (offsets are
# at most 26 h); beyond it the day cannot be computed and the row cannot be filed.
_MARGIN_NS = 2 * 86_400 * 10**9
MIN_NS, MAX_NS = pd.Timestamp.min.value + _MARGIN_NS, pd.Timestamp.max.value - _MARGIN_NS
_RAW_KINDS = "biufcmM"  # numpy kinds written to the WAL as raw bytes; other columns as lists of plain values

log = logging.getLogger(__name__)


class LogError(RuntimeError):
    """A block of rows cannot be accepted for filing (a row without a day, columns of unequal
    length, an unwritable write-ahead file, a closed log): the server answers its request 503, never
    200, because a prediction answered 200 must be in the log."""


def day_dir(root: str, table: str, spec: str, day: str) -> str:
    """Folder of one table's files for one day, under the prediction store's ``root`` URI."""
    return files.join(root, table, spec, day)


def read_day(root: str, table: str, spec: str, day: str) -> pd.DataFrame | None:
    """Every row logged for a day (None when nothing was logged)."""
    return _read([e.uri for e in files.listing(day_dir(root, table, spec, day), ".parquet")])


def read_since(root: str, table: str, spec: str, since: pd.Timestamp) -> pd.DataFrame | None:
    """Rows received at or after ``since``, whatever day folder they are filed in: a file is written
    after every row it holds was received, so only files written since then are read."""
    base = files.join(root, table, spec)
    since_ns = pd.Timestamp(since).value
    found = [
        e.uri
        for day in files.subfolders(base)
        for e in files.listing(files.join(base, day), ".parquet")
        if _written_ns(e.name) >= since_ns
    ]
    out = _read(sorted(found, key=files.name_of))
    return None if out is None else out[out["received_at"] >= since].reset_index(drop=True)


def _written_ns(name: str) -> int:
    try:
        return int(name.split("-", 1)[0])
    except ValueError:  # not a file of this log
        return -1


def _read(uris: list[str]) -> pd.DataFrame | None:
    if not uris:
        return None
    return pd.concat([files.read_parquet(u) for u in uris], ignore_index=True)


class _Segment:
    """The blocks appended between two flushes: written to the store together, under names derived
    from ``id`` and ``sealed_ns``, so writing a segment twice rewrites the same objects."""

    def __init__(self, seg_id: str, fd: int | None = None, path: Path | None = None):
        self.id, self.fd, self.path = seg_id, fd, path
        self.blocks: list[tuple[str, dict[str, Any]]] = []
        self.size = 0  # bytes of whole records in the WAL file
        self.sealed_ns: int | None = None
        self.parts: list[tuple[str, str, bytes]] | None = None  # (table, day, parquet bytes), built once

    def release(self, delete: bool) -> None:
        """Close the WAL file (dropping its lock); delete it first when every row is in the store:
        unlinking before unlocking means a process waiting for the lock finds no file to adopt."""
        if self.fd is None:
            return
        if delete and self.path is not None:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


class PredictionLog:
    """Files log rows in the prediction store (see the module docstring for what is guaranteed).

    A block is a dict of equal-length columns (lists or 1-D arrays); ``*_ns`` columns are epoch
    nanoseconds, turned into timestamps when written. On the request path a block is checked, encoded
    (with a WAL) and referenced; a flush concatenates each column once per segment, so the cost per
    request is one small write, not one DataFrame per request."""

    def __init__(
        self,
        root: str,
        spec: str,
        timezone: str,
        flush_seconds: float = 1.0,
        wal_dir: str | os.PathLike | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ):
        self.root, self.spec, self.timezone = root, spec, timezone
        self.clock_ns = clock_ns
        self.flush_seconds = flush_seconds
        self.wal = Path(wal_dir) / spec if wal_dir is not None else None
        if self.wal is not None:
            self.wal.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._active: _Segment | None = None
        self._sealed: list[_Segment] = []  # oldest first; each leaves only once all its rows are stored
        self._lock = threading.Lock()  # the active segment (request path)
        self._flush_lock = threading.Lock()  # one flush at a time: the thread, close(), a caller
        self._token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._seq = itertools.count()
        self._closed = False
        if self.wal is not None:
            self._adopt_orphans()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    # --- request path -----------------------------------------------------------------------

    def append(self, table: str, columns: dict[str, Any]) -> None:
        """File a block of rows (a dict of equal-length columns), or raise ``LogError`` when any of
        them cannot be filed: then none is, and the request must not be answered 200."""
        if self._closed:
            raise LogError("the prediction log is closed (the server is shutting down)")
        block = _checked(table, columns)
        record = None
        if self.wal is not None:
            try:
                record, block = wal_format.encode_block(table, block)
            except ValueError as e:
                raise LogError(str(e)) from e
        with self._lock:
            if self._closed:
                raise LogError("the prediction log is closed (the server is shutting down)")
            seg = self._active if self._active is not None else self._open_segment()
            if record is not None:
                try:
                    wal_format.write_all(seg.fd, record)
                except OSError as e:
                    self._undo_partial(seg)
                    raise LogError(f"prediction log: cannot write the write-ahead file {seg.path}: {e}") from e
                seg.size += len(record)
            seg.blocks.append((table, block))

    def _open_segment(self) -> _Segment:
        seg_id = f"{self._token}-{next(self._seq):06d}"
        if self.wal is None:
            seg = _Segment(seg_id)
        else:
            path = self.wal / f"{seg_id}.wal"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
                wal_format.lock(fd)
            except OSError as e:
                raise LogError(f"prediction log: cannot create the write-ahead file {path}: {e}") from e
            seg = _Segment(seg_id, fd, path)
        self._active = seg
        return seg

    def _undo_partial(self, seg: _Segment) -> None:
        """A failed write may have left half a record: cut it off, and start a new segment for the
        next block, so no later record ever sits behind a torn one."""
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError:
            log.exception("prediction log: cannot truncate %s after a failed write", seg.path)
        self._active = None
        if seg.blocks:
            self._sealed.append(seg)  # sealed (durably) by the next flush
        else:
            seg.release(delete=True)

    # --- background -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # the store is unreachable for now: segments stay for the next flush
                log.exception("prediction log: flush to %s failed; retrying", self.root)

    def flush(self) -> list[str]:
        """Write every sealed segment (the active one is sealed first; with a WAL, orphaned segments
        of dead processes are adopted) to the store, oldest first. A segment whose write fails stays,
        whole, for the next flush, which rewrites the same file names: each row is stored exactly
        once, whichever file failed. Returns the URIs written; raises the first failure after trying
        every segment."""
        with self._flush_lock:
            with self._lock:
                if self._active is not None and self._active.blocks:
                    self._sealed.append(self._active)
                    self._active = None
            if self.wal is not None:
                self._adopt_orphans()
            written, failure = [], None
            for seg in list(self._sealed):
                try:
                    self._seal(seg)
                    written += self._store(seg)
                except Exception as e:  # noqa: BLE001 - any store error: the segment waits, the others go on
                    failure = failure or e
                    continue
                self._sealed.remove(seg)
                seg.release(delete=True)
            if failure is not None:
                raise failure
            return written

    def _seal(self, seg: _Segment) -> None:
        """Fix the segment's file names before any of its rows reach the store: with a WAL the seal
        time is written and fsynced first, so a replay after a crash uses the same names."""
        if seg.sealed_ns is not None:
            return
        received = [int(b["received_at_ns"].max()) for _, b in seg.blocks if len(b.get("received_at_ns", ()))]
        sealed_ns = max([self.clock_ns(), *received])  # after every row of the segment was received
        if seg.fd is not None:
            record = wal_format.seal_record(sealed_ns)
            os.lseek(seg.fd, seg.size, os.SEEK_SET)
            wal_format.write_all(seg.fd, record)
            os.fsync(seg.fd)
            seg.size += len(record)
        seg.sealed_ns = sealed_ns

    def _store(self, seg: _Segment) -> list[str]:
        if seg.parts is None:
            seg.parts = self._parts(seg)
        name = f"{seg.sealed_ns}-{seg.id}.parquet"
        return [files.write_bytes(files.join(day_dir(self.root, t, self.spec, d), name), data) for t, d, data in seg.parts]

    def _parts(self, seg: _Segment) -> list[tuple[str, str, bytes]]:
        """One parquet file per table and day of the segment's rows."""
        parts = []
        for table in TABLES:
            blocks = [b for t, b in seg.blocks if t == table]
            if not blocks:
                continue
            frame = _frame(blocks)
            # local calendar day of each row, vectorised (strftime on every row cost half the flush)
            filed_by = FILED_BY[table][:-3]
            days = frame[filed_by].dt.tz_convert(self.timezone).dt.tz_localize(None).to_numpy().astype("datetime64[D]")
            for day, part in frame.groupby(days, sort=True):
                buffer = io.BytesIO()
                part.reset_index(drop=True).to_parquet(buffer, index=False)
                parts.append((table, pd.Timestamp(day).strftime("%Y-%m-%d"), buffer.getvalue()))
        return parts

    def _adopt_orphans(self) -> None:
        """Take over the segments no live process holds (the process that wrote them was killed,
        or closed with the store unreachable): read their whole records, seal the unsealed ones."""
        assert self.wal is not None
        mine = {s.path for s in self._sealed} | ({self._active.path} if self._active else set())
        for path in sorted(self.wal.glob("*.wal")):
            if path in mine:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:  # written and deleted by its owner meanwhile
                continue
            try:
                wal_format.lock(fd)
            except OSError:  # a live process holds it
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink == 0:  # its owner stored it and deleted it while we waited
                os.close(fd)
                continue
            seg = _Segment(path.stem, fd, path)
            try:
                seg.blocks, seg.sealed_ns, seg.size, torn = wal_format.read_segment(fd)
                if torn:
                    log.warning("prediction log: %s ends in %d bytes of an unfinished record (never acknowledged)", path, torn)
                    os.ftruncate(fd, seg.size)
            except Exception:
                log.exception("prediction log: cannot read the write-ahead file %s; left in place", path)
                os.close(fd)
                continue
            if not seg.blocks:
                seg.release(delete=True)
                continue
            log.info("prediction log: replaying %d block(s) of %s", len(seg.blocks), path.name)
            self._sealed.append(seg)

    # --- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting rows and store everything appended (SIGTERM: the server's lifespan calls
        this). Safe to call again. When the store fails, the error is raised; with a WAL the
        segments stay on disk (their locks released) for the next log on this folder."""
        with self._lock:
            self._closed = True
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        try:
            self.flush()
        finally:
            if self.wal is not None:
                for seg in self._sealed:
                    seg.release(delete=False)
                self._sealed = []


# --- blocks ----------------------------------------------------------------------------------------


def _checked(table: str, columns: dict[str, Any]) -> dict[str, Any]:
    """The block with every column as a 1-D numeric array or a list, after checking that each row
    can be filed; ``LogError`` names what cannot."""
    if table not in TABLES:
        raise LogError(f"unknown prediction log table {table!r} (expected one of {TABLES})")
    if not columns:
        raise LogError(f"an empty {table} block")
    block = dict(columns)
    first, n = "", -1
    for name, value in columns.items():
        kind = type(value)
        if kind is np.ndarray and value.ndim == 1 and value.dtype.kind in _RAW_KINDS:
            length = value.shape[0]
        elif kind is list:
            length = len(value)
        else:
            value = block[name] = _normalised(table, name, value)
            length = len(value)
        if length != n:
            if n >= 0:
                raise LogError(f"{table} columns of unequal length: {name!r} has {length} rows, {first!r} has {n}")
            first, n = name, length
        if name.endswith("_ns") and (type(value) is not np.ndarray or value.dtype != np.int64):
            try:
                block[name] = np.asarray(value, dtype="int64")
            except (TypeError, ValueError, OverflowError) as e:
                raise LogError(f"{table} column {name!r} is not a time in epoch nanoseconds: {e}") from e
    key = FILED_BY[table]
    if key not in block:
        raise LogError(f"a {table} block without {key!r}: its rows cannot be filed under a day")
    times = block[key]
    if n == 1:
        unfiled = not MIN_NS <= int(times[0]) <= MAX_NS
    else:
        unfiled = n > 1 and (times.min() < MIN_NS or times.max() > MAX_NS)
    if unfiled:
        row = int(np.flatnonzero((times < MIN_NS) | (times > MAX_NS))[0])
        raise LogError(
            f"{table} row {row} of {n}: {key[:-3]} is missing or outside the range a day can be computed "
            f"for ({pd.Timestamp(MIN_NS).date()}..{pd.Timestamp(MAX_NS).date()}); the block cannot be filed"
        )
    return block


def _normalised(table: str, name: str, value: Any) -> np.ndarray | list:
    """Any other sequence (a tuple, a pandas array, a non-numeric array) as a numeric array or a list."""
    value = np.asarray(value)
    if value.ndim != 1:
        raise LogError(f"{table} column {name!r} has {value.ndim} dimensions, not 1")
    return value if value.dtype.kind in _RAW_KINDS else value.tolist()


def _frame(blocks: list[dict[str, Any]]) -> pd.DataFrame:
    """One frame from many blocks: one concatenation per column. A column some blocks lack is
    empty in their rows; object columns get one typed dtype, text when their values disagree."""
    names = list(dict.fromkeys(name for b in blocks for name in b))
    columns = {}
    for name in names:
        parts = []
        for b in blocks:
            value = b.get(name)
            n = len(next(iter(b.values())))
            if value is None:
                parts.append(
                    np.full(n, np.iinfo("int64").min, dtype="int64") if name.endswith("_ns") else np.full(n, None, dtype=object)
                )
            elif isinstance(value, list):
                parts.append(np.fromiter(value, dtype=object, count=n))
            else:
                parts.append(value)
        values = np.concatenate(parts)
        if name.endswith("_ns"):
            columns[name[:-3]] = pd.to_datetime(values.astype("int64"), unit="ns", utc=True)
        else:
            columns[name] = values if values.dtype != object else _typed(values)
    return pd.DataFrame(columns)


def _typed(values: np.ndarray):
    """Text stays text; numbers become nullable numbers; a column whose values disagree is text."""
    kinds = {type(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
    dtype = "string"
    if kinds and kinds <= {bool}:
        dtype = "boolean"
    elif kinds and kinds <= {int}:
        dtype = "Int64"
    elif kinds and kinds <= {int, float}:
        dtype = "Float64"
    try:
        return pd.array(values, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return pd.array([None if v is None else str(v) for v in values], dtype="string")
