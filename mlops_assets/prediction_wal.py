"""The prediction log's write-ahead segment format (``prediction_store.PredictionLog``).

A segment is a sequence of records, each ``<length, CRC-32, kind>`` then its payload: ``B`` a block
of rows, ``S`` the seal (the time the segment was closed). A block is ``marshal``'s plain values: a
numeric column as its dtype and raw bytes, any other column as a list of plain values, so reading a
segment back never builds an object of a class or runs code, as unpickling could. A record cut short
by a crash fails its length or CRC check and ends the readable part of the segment.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from typing import Any

import numpy as np
import pandas as pd


def _plain(value: Any) -> Any:
    """A plain stand-in for a value of a text or object column: numpy scalars become Python ones,
    times their ISO text, anything else its text."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):
        return value.item() if not isinstance(value, np.datetime64 | np.timedelta64) else str(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, str | int | float):  # subclasses: their plain value
        return type(value).__mro__[-2](value)
    return str(value)


def encode_block(table: str, block: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The record of a block, and the block as it will be read back (object columns reduced to plain
    values, so the stored rows are the same whether they come from memory or from a replay).
    Raises ``ValueError`` for a value that has no plain form."""

    def dump(b: dict[str, Any]) -> bytes:
        cols = [
            (k, v.dtype.str, v.tobytes()) if type(v) is np.ndarray else (k, "", v)  # arrays are numeric (_checked)
            for k, v in b.items()
        ]
        return marshal.dumps((table, cols))

    try:
        payload = dump(block)
    except ValueError:  # an object marshal does not know: reduce every list to plain values
        block = {k: v if type(v) is np.ndarray else [_plain(x) for x in v] for k, v in block.items()}
        try:
            payload = dump(block)
        except ValueError as e:
            raise ValueError(f"a {table} block holds a value the prediction log cannot file: {e}") from e
    return _frame_record(b"B", payload), block


_HEADER = struct.Struct("<IIc")  # payload length, CRC-32 of kind + payload, kind (B: block, S: seal)


def seal_record(sealed_ns: int) -> bytes:
    """The record that closes a segment, with the time it was sealed (after every row it holds)."""
    return _frame_record(b"S", struct.pack("<q", sealed_ns))


def _frame_record(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(kind + payload), kind) + payload


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def lock(fd: int) -> None:
    """An exclusive lock on a segment: held by its live writer, so a dead writer's segment is told apart."""
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def read_segment(fd: int) -> tuple[list[tuple[str, dict[str, Any]]], int | None, int, int]:
    """The blocks of a WAL file, its seal time (None when unsealed), the length of its whole records
    and how many bytes after them belong to a record that was never finished."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    blocks, sealed_ns, pos = [], None, 0
    while pos + _HEADER.size <= len(data):
        length, crc, kind = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(kind + payload) != crc:
            break
        if kind == b"S":
            sealed_ns = struct.unpack("<q", payload)[0]
        elif kind == b"B":
            table, cols = marshal.loads(payload)
            blocks.append((table, {k: np.frombuffer(v, dtype=np.dtype(dt)).copy() if dt else v for k, dt, v in cols}))
        pos += _HEADER.size + length
    return blocks, sealed_ns, pos, len(data) - pos
