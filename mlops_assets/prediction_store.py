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
``predictions_<spec>`` for a day reads that day's folder (``read_day``). A request without an
``event_timestamp`` is an event happening now, filed under the day it arrived.

The server appends rows to memory and a background thread writes a new file every second (and at
shutdown), so a request never waits for a write and several server processes (pods, SageMaker
instances) never write the same file: on an object store each flush is one new object per day. Each file's name starts with the time it was written, so
the canary check reads what was served since a moment (``read_since``) whatever days the events are.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from mlops_assets import files

REQUESTS, SERVED = "requests", "served"
FEATURE_PREFIX = "feature."  # the batch predictions' convention (scoring.FEATURE_PREFIX)


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


class PredictionLog:
    """Buffers log rows in memory and writes them as parquet files from a background thread.

    A block is a dict of equal-length columns (lists or arrays). Blocks are only referenced on the
    request path; a flush concatenates each column once and builds one table, so the cost per request
    is a list append and the flush costs one numpy concatenation per column, not one DataFrame per
    request. Times are epoch nanoseconds (``*_ns`` columns), turned into timestamps at flush."""

    def __init__(self, root: str, spec: str, timezone: str, flush_seconds: float = 1.0):
        self.root, self.spec, self.timezone = root, spec, timezone
        self.flush_seconds = flush_seconds
        self._buffers: dict[str, list[dict[str, Any]]] = {REQUESTS: [], SERVED: []}
        self._unwritten: list[tuple[str, str, pd.DataFrame]] = []  # (table, day, rows) a failed flush kept
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, table: str, columns: dict[str, Any]) -> None:
        """Queue a block of rows: a dict of equal-length columns."""
        with self._lock:
            self._buffers[table].append(columns)

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # the store is unreachable for now: rows stay queued for the next flush
                logging.getLogger(__name__).exception("prediction log: flush to %s failed; retrying", self.root)

    def flush(self) -> list[str]:
        """Write what is queued, one file per table and day. A write that fails (the store is
        unreachable) keeps its part, and every part after it, for the next flush: each row is
        written exactly once, whichever file failed."""
        with self._lock:
            pending = {t: b for t, b in self._buffers.items() if b}
            self._buffers = {REQUESTS: [], SERVED: []}
            parts, self._unwritten = self._unwritten, []
        for table, blocks in pending.items():
            frame = _frame(blocks)
            # local calendar day of each row, vectorised (strftime on every row cost half the flush)
            filed_by = "event_timestamp" if table == SERVED else "received_at"
            days = frame[filed_by].dt.tz_convert(self.timezone).dt.tz_localize(None).to_numpy().astype("datetime64[D]")
            parts += [(table, pd.Timestamp(day).strftime("%Y-%m-%d"), part) for day, part in frame.groupby(days, sort=True)]
        written = []
        for i, (table, day, part) in enumerate(parts):
            name = f"{time.time_ns()}-{os.getpid()}-{next(self._seq)}.parquet"
            buffer = io.BytesIO()
            part.reset_index(drop=True).to_parquet(buffer, index=False)
            try:
                written.append(files.write_bytes(files.join(day_dir(self.root, table, self.spec, day), name), buffer.getvalue()))
            except Exception:
                with self._lock:  # nothing answered is lost: these go first at the next flush
                    self._unwritten = parts[i:] + self._unwritten
                raise
        return written

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


def _frame(blocks: list[dict[str, Any]]) -> pd.DataFrame:
    """One frame from many blocks with the same columns: one concatenation per column."""
    import numpy as np

    columns = {}
    for name in blocks[0]:
        parts = [np.asarray(b[name], dtype=object) if isinstance(b[name], list) else np.asarray(b[name]) for b in blocks]
        values = np.concatenate(parts)
        if name.endswith("_ns"):
            columns[name[:-3]] = pd.to_datetime(values.astype("int64"), unit="ns", utc=True)
        else:
            columns[name] = values if values.dtype != object else pd.array(values, dtype=_object_dtype(values))
    return pd.DataFrame(columns)


def _object_dtype(values) -> str:
    """Text stays text; object arrays of numbers (a list column) become numbers."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, str) or sample is None:
        return "string"
    return "Float64" if isinstance(sample, float) else "Int64"


def canary_sides(
    root: str,
    spec,
    deployment,
    labels: Callable[[list[str]], pd.DataFrame | None],
):
    """What each version of a running canary served since it started, from the prediction store:
    requests, server errors (5xx), p99 latency and, for predictions whose event has a label by now
    (``labels(days)`` returns ``event_id``/``label`` of those days), the spec's metric."""
    from mlops_assets.core.names import EVENT_ID, LABEL
    from mlops_assets.core.rollout import SideStats, p99
    from mlops_assets.core.training import evaluate

    since = pd.Timestamp(deployment.canary_started)
    since = since.tz_localize("UTC") if since.tzinfo is None else since
    requests = read_since(root, REQUESTS, spec.name, since)
    served = read_since(root, SERVED, spec.name, since)
    label_frame = None
    if served is not None and served["event_id"].notna().any():
        days = sorted(set(served["event_timestamp"].dt.tz_convert(spec.source.timestamp.timezone).dt.strftime("%Y-%m-%d")))
        label_frame = labels(days)
    sides = []
    # by model version, not by the server's variant label: under KServe or SageMaker each version
    # runs in its own server, which calls itself "stable"
    for version in (deployment.stable, deployment.canary):
        req = requests[requests["model_version"] == int(version)] if requests is not None else None
        n = 0 if req is None else len(req)
        errors = 0 if req is None else int((req["status"] >= 500).sum())
        latency = p99(req.loc[req["status"] < 500, "latency_ms"]) if n else 0.0
        metric, labelled = None, 0
        if label_frame is not None and served is not None:
            mine = served[(served["model_version"] == int(version)) & served["event_id"].notna()]
            joined = mine.merge(label_frame[[EVENT_ID, LABEL]], on=EVENT_ID, how="inner")
            joined = joined[joined[LABEL].notna()]
            labelled = len(joined)
            if labelled:
                metric = evaluate(joined[LABEL], joined["score"].to_numpy(), spec)[spec.promotion.metric]
        sides.append(SideStats(str(version), n, errors, latency, metric, labelled))
    return sides[0], sides[1]
