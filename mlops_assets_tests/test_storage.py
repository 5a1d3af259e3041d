"""The filesystem layer (``mlops_assets.files``) and ``LakeStorage`` on a local folder, on S3 (moto's
server) and on GCS (gcp-storage-emulator): the same calls, the same guarantees.

What object stores lack is what these tests aim at: a write is whole or absent, a rewrite changes
the stamp the landing sensor keys on, two writers of one month file never lose a day (S3 lock by
``If-None-Match``; the GCS emulator ignores preconditions, so there only the single-writer path is
checked), and Feast's DuckDB offline store reads the lake's parquet through the same fsspec objects
(``compat``) without downloading DuckDB's httpfs extension.
"""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from mlops_assets import files


@pytest.fixture(params=["local", "s3", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    server = request.getfixturevalue("s3" if request.param == "s3" else "gcs")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in server.env.items():
            mp.setenv(k, v)
        bucket = f"t-{tmp_path.name.lower().replace('_', '-')[-40:]}"
        server.make_bucket(bucket)
        yield f"{request.param}://{bucket}/platform"


def test_a_file_is_written_whole_listed_with_a_stamp_that_changes_on_rewrite(root):
    uri = files.join(root, "landing", "spec", "2013-01-01.csv")
    files.write_bytes(uri, b"a,b\n1,2\n")
    files.write_bytes(files.join(root, "landing", "spec", ".work.tmp"), b"half")  # hidden: never listed
    [entry] = files.listing(files.join(root, "landing", "spec"))
    assert (entry.name, entry.size, files.read_bytes(entry.uri)) == ("2013-01-01.csv", 8, b"a,b\n1,2\n")
    files.write_bytes(uri, b"a,b\n1,3\n")
    [again] = files.listing(files.join(root, "landing", "spec"))
    assert again.stamp != entry.stamp  # the landing sensor sees the new content
    assert files.listing(files.join(root, "nowhere")) == [] and not files.exists(files.join(root, "nowhere", "x"))
    files.move(uri, files.join(root, "quarantine", "spec", "2013-01-01.csv"))
    assert not files.exists(uri) and files.read_bytes(files.join(root, "quarantine", "spec", "2013-01-01.csv"))
    assert files.subfolders(root) == ["landing", "quarantine"]


def test_lake_partitions_and_feature_days_round_trip(root):
    from mlops_assets.resources import LakeStorage

    lake = LakeStorage(root=root)
    frame = pd.DataFrame({"event_id": ["a", "b"], "x": [1.0, 2.0]})
    lake.write(frame, lake.partition_path("dataset", "s", "2013-01-02"))
    lake.write(frame, lake.partition_path("dataset", "s", "2013-01-01"))
    assert lake.partitions("dataset", "s") == ["2013-01-01", "2013-01-02"]
    both = lake.read_partitions("dataset", "s", ["2013-01-01", "2013-01-02", "2013-01-03"])
    assert len(both) == 4
    lake.write_feature_day("s", "events", "2013-01-01", frame)
    lake.write_feature_day("s", "events", "2013-01-01", frame.iloc[:1])  # rewritten: replaces, never adds
    pd.testing.assert_frame_equal(lake.read_feature_day("s", "events", "2013-01-01"), frame.iloc[:1])


def test_a_parquet_file_read_again_is_parsed_once_and_a_rewrite_is_never_missed(root, monkeypatch):
    """``files.read_parquet`` keeps parsed frames by the digest of the file's bytes: a file read again
    unchanged is not parsed again, a rewrite of the same size at once (no clock or name can tell it
    apart) reads the new rows, and no caller sees what another did to its copy."""
    import io

    uri = files.join(root, "lake", "predictions", "s", "2013-01-01.parquet")
    first = pd.DataFrame({"event_id": ["a", "b"], "score": [0.25, 0.75]})
    files.write_parquet(first, uri)
    monkeypatch.setattr(files, "_parsed", files._ParsedParquet())  # what this process read before is not this test's
    parsed = []
    real = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda source, **kw: parsed.append(source) or real(source, **kw))

    a = files.read_parquet(uri)
    a.loc[0, "score"] = 99.0  # a caller's own copy
    b = files.read_parquet(uri)
    pd.testing.assert_frame_equal(b, first)
    assert len(parsed) == 1 and isinstance(parsed[0], io.BytesIO)

    second = first.assign(score=[0.5, 0.125])  # the same size, written at once
    files.write_parquet(second, uri)
    pd.testing.assert_frame_equal(files.read_parquet(uri), second)
    assert len(parsed) == 2
    only_b = files.read_parquet(uri, filters=[("event_id", "==", "b")])  # a filtered read is its own
    assert only_b["event_id"].tolist() == ["b"] and len(parsed) == 3


def test_the_landed_file_of_a_day_is_found_among_many(root):
    from mlops_assets.resources import LakeStorage

    lake = LakeStorage(root=root)
    for day in ("2013-01-01", "2013-01-02", "2013-01-10"):
        lake.land("s", day, pd.DataFrame({"x": [1]}))
    files.write_bytes(files.join(lake.landing_dir("s"), ".2013-01-03.csv.tmp-1"), b"half")  # a work file
    assert lake.landing_file("s", "2013-01-01") == files.join(lake.landing_dir("s"), "2013-01-01.csv")
    assert lake.landing_file("s", "2013-01-03") is None
    assert [e.name for e in files.listing(lake.landing_dir("s"), prefix="2013-01-1")] == ["2013-01-10.csv"]


def test_two_writers_of_one_month_file_lose_no_day_on_s3(s3, tmp_path, monkeypatch):
    """The month file's read-modify-write runs under a lock object created with If-None-Match: *,
    which moto honours as S3 does: eight days written at once by eight threads all survive."""
    from mlops_assets.resources import LakeStorage

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    s3.make_bucket("month-race")
    lake = LakeStorage(root="s3://month-race/p")
    days = [f"2013-03-{d:02d}" for d in range(1, 9)]
    errors = []

    def write(day: str) -> None:
        try:
            lake.write_feature_day("s", "events", day, pd.DataFrame({"event_id": [day], "x": [1.0]}))
        except (OSError, TimeoutError, ValueError) as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(d,)) for d in days]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    month = files.read_parquet(files.join(lake.feature_table_dir("s", "events"), "2013-03.parquet"))
    assert sorted(month["event_id"]) == days
    assert not files.exists(files.join(lake.feature_table_dir("s", "events"), ".2013-03.lock"))


def test_a_lock_left_by_a_dead_holder_is_broken_after_its_lease(s3, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    s3.make_bucket("stale-lock")
    lock = "s3://stale-lock/x/.lock"
    assert files.create_exclusive(lock, b"dead holder")
    assert not files.create_exclusive(lock, b"second")  # held
    with pytest.raises(TimeoutError), files.lock(lock, timeout_s=0.5, lease_s=3600):
        pass
    with files.lock(lock, timeout_s=10, lease_s=0.0):  # the lease is over: the lock is broken and taken
        assert files.read_bytes(lock) != b"dead holder"
    assert not files.exists(lock)


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_duckdb_reads_the_object_store_through_fsspec_without_httpfs(protocol, request, monkeypatch):
    """What Feast's DuckDB offline store calls for a FileSource (``ibis.read_parquet`` on the default
    connection) reads month files on the object store through the registered fsspec filesystem."""
    import ibis

    from mlops_assets.compat import register_object_store_with_duckdb

    server = request.getfixturevalue("s3" if protocol == "s3" else "gcs")
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    server.make_bucket(f"duck-{protocol}")
    folder = f"{protocol}://duck-{protocol}/features/spec/events"
    files.write_parquet(pd.DataFrame({"event_id": ["a"], "x": [1.0]}), files.join(folder, "2013-01.parquet"))
    files.write_parquet(pd.DataFrame({"event_id": ["b"], "x": [2.0]}), files.join(folder, "2013-02.parquet"))
    assert register_object_store_with_duckdb(protocol)
    table = ibis.read_parquet(f"{folder}/*.parquet").execute()
    assert sorted(table["event_id"]) == ["a", "b"]
    loaded = ibis.get_backend().raw_sql("select loaded from duckdb_extensions() where extension_name = 'httpfs'").fetchall()
    assert loaded == [(False,)]


def test_a_failed_prediction_log_flush_writes_every_row_exactly_once_later(root, monkeypatch):
    """The prediction log writes a file per table and day; when the store fails on the second file
    of a flush, the next flush writes what was not written, and nothing twice."""
    from mlops_assets.prediction_store import REQUESTS, PredictionLog, read_day

    log = PredictionLog(root, "spec", "UTC", flush_seconds=3600)
    day1, day2 = pd.Timestamp("2013-01-01T12:00Z").value, pd.Timestamp("2013-01-02T12:00Z").value
    for i, at in enumerate((day1, day1, day2, day2, day2)):
        log.append(REQUESTS, {"request_id": [f"r{i}"], "received_at_ns": [at], "status": [200]})
    real, calls = files.write_bytes, []

    def failing_second(uri, data):
        calls.append(uri)
        if len(calls) == 2:
            raise OSError("store unreachable")
        return real(uri, data)

    monkeypatch.setattr(files, "write_bytes", failing_second)
    with pytest.raises(OSError):
        log.flush()
    monkeypatch.setattr(files, "write_bytes", real)
    log.append(REQUESTS, {"request_id": ["r5"], "received_at_ns": [day2], "status": [200]})
    log.close()
    assert sorted(read_day(root, REQUESTS, "spec", "2013-01-01")["request_id"]) == ["r0", "r1"]
    assert sorted(read_day(root, REQUESTS, "spec", "2013-01-02")["request_id"]) == ["r2", "r3", "r4", "r5"]


def test_the_platform_reads_mlops_redis_as_feast_does(redis):
    """compat.redis_connection: Feast's parser of the connection string, so the row count reaches the
    store Feast writes (TLS CA, db, timeouts included), on a real Redis."""
    from mlops_assets.compat import redis_connection
    from mlops_assets.resources.feast import redis_row_count

    host, port, options = redis_connection(f"{redis.host}:{redis.port},db=3,ssl=false,ssl_ca_certs=/etc/mlops/redis-ca/ca.pem")
    assert (host, port) == (redis.host, redis.port)
    assert options == {"db": 3, "ssl": False, "ssl_ca_certs": "/etc/mlops/redis-ca/ca.pem"}
    import redis as redis_py

    client = redis_py.Redis(host=redis.host, port=redis.port, db=3)
    client.hset(b"entity-1flight_delays", mapping={b"_ts:flights": b"1", b"_ts:weather": b"1", b"other": b"x"})
    try:
        assert redis_row_count(f"{redis.host}:{redis.port},db=3", "flight_delays") == 2
        assert redis_row_count(f"{redis.host}:{redis.port},db=4", "flight_delays") == 0
    finally:
        client.flushdb()
