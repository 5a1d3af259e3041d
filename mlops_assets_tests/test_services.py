"""The throwaway services of services.py work, and the emulator facts its docstring states hold.

Each service is a session fixture (conftest.py), so these tests share one server per kind; names
(databases, buckets, keys) are unique per test.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from mlops_assets_tests import services
from mlops_assets_tests.services import require

FRAME = pd.DataFrame({"id": [1, 2, 3], "value": [0.5, 1.5, 2.5], "name": ["a", "b", "c"]})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in {"Z", "X"}


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_database_and_table_round_trip(postgres):
    import psycopg2

    name = unique("db").replace("-", "_")
    url = postgres.create_database(name)
    assert url == f"postgresql://mlops:{postgres.password}@127.0.0.1:{postgres.port}/{name}" == postgres.url(name)
    writer = psycopg2.connect(url)
    with writer, writer.cursor() as cur:  # one transaction, committed on leaving
        cur.execute("CREATE TABLE runs (id serial PRIMARY KEY, metric double precision, tag text)")
        cur.executemany("INSERT INTO runs (metric, tag) VALUES (%s, %s)", [(0.9, "a"), (0.7, "b")])
    writer.close()
    reader = postgres.connect(name)  # a new connection sees the committed rows
    with reader.cursor() as cur:
        cur.execute("SELECT tag, metric FROM runs ORDER BY id")
        assert cur.fetchall() == [("a", 0.9), ("b", 0.7)]
    reader.close()
    assert postgres.create_database(name) == url  # idempotent


def test_postgres_requires_the_password(postgres):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user, password="wrong", dbname="postgres")


# ---------------------------------------------------------------- Redis


def test_redis_set_get(redis):
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    key = unique("k")
    client.set(key, b"v1", ex=60)
    assert client.get(key) == b"v1"
    assert redis.connection_string == f"127.0.0.1:{redis.port}"
    client.close()


# ---------------------------------------------------------------- S3 (moto)


def test_s3_parquet_round_trip_through_fsspec(s3):
    import s3fs

    bucket = s3.make_bucket(unique("bkt"))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint_url}, key="testing", secret="testing")
    fs.pipe(f"{bucket}/raw/hello.txt", b"hello")
    assert fs.cat(f"{bucket}/raw/hello.txt") == b"hello"
    assert fs.ls(f"{bucket}/raw") == [f"{bucket}/raw/hello.txt"]
    fs.rm(f"{bucket}/raw/hello.txt")
    assert not fs.exists(f"{bucket}/raw/hello.txt")

    FRAME.to_parquet(f"s3://{bucket}/t/x.parquet", storage_options=s3.storage_options)
    back = pd.read_parquet(f"s3://{bucket}/t/x.parquet", storage_options=s3.storage_options)
    pd.testing.assert_frame_equal(back, FRAME)
    assert set(s3.env) == set(services.S3_ENV_KEYS) and s3.env["AWS_ENDPOINT_URL"] == s3.endpoint_url


def test_s3_honours_conditional_puts(s3):
    """moto answers 412 to IfNoneMatch="*" on an existing key and to IfMatch with a stale ETag."""
    from botocore.exceptions import ClientError

    client = s3.client()
    bucket = s3.make_bucket(unique("bkt"))
    first = client.put_object(Bucket=bucket, Key="lock", Body=b"1", IfNoneMatch="*")  # new key: created
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="lock", Body=b"2", IfNoneMatch="*")
    assert exc.value.response["Error"]["Code"] == "PreconditionFailed"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412

    second = client.put_object(Bucket=bucket, Key="lock", Body=b"2", IfMatch=first["ETag"])  # current ETag: swapped
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="lock", Body=b"3", IfMatch=first["ETag"])  # stale ETag
    assert exc.value.response["Error"]["Code"] == "PreconditionFailed"
    body = client.get_object(Bucket=bucket, Key="lock")
    assert body["Body"].read() == b"2" and body["ETag"] == second["ETag"]


# ---------------------------------------------------------------- GCS (gcp-storage-emulator)


def test_gcs_parquet_round_trip_through_fsspec(gcs):
    import gcsfs

    bucket = gcs.make_bucket(unique("bkt"))
    # retry_timeout=0 (in storage_options too): see services.py on gcsfs's per-operation gRPC probe
    fs = gcsfs.GCSFileSystem(endpoint_url=gcs.endpoint_url, token="anon", retry_timeout=0)
    fs.pipe(f"{bucket}/raw/hello.txt", b"hello")
    assert fs.cat(f"{bucket}/raw/hello.txt") == b"hello"
    assert fs.ls(f"{bucket}/raw") == [f"{bucket}/raw/hello.txt"]
    fs.rm(f"{bucket}/raw/hello.txt")
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/raw/hello.txt")

    FRAME.to_parquet(f"gs://{bucket}/t/x.parquet", storage_options=gcs.storage_options)
    back = pd.read_parquet(f"gs://{bucket}/t/x.parquet", storage_options=gcs.storage_options)
    pd.testing.assert_frame_equal(back, FRAME)
    assert gcs.env["STORAGE_EMULATOR_HOST"] == gcs.endpoint_url and gcs.env["GOOGLE_CLOUD_PROJECT"] == "test"


def _media_upload(gcs, bucket: str, name: str, data: bytes, generation_match: int | None) -> int:
    query = f"uploadType=media&name={name}" + ("" if generation_match is None else f"&ifGenerationMatch={generation_match}")
    req = urllib.request.Request(
        f"{gcs.endpoint_url}/upload/storage/v1/b/{bucket}/o?{query}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_gcs_emulator_ignores_generation_preconditions(gcs):
    """Real GCS answers 412 to both writes below; gcp-storage-emulator overwrites (a documented limitation:
    generation-based compare-and-swap cannot be tested against it)."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = gcs.make_bucket(unique("bkt"))
    # the JSON API, media upload
    assert _media_upload(gcs, bucket, "lock", b"1", generation_match=0) == 200
    assert _media_upload(gcs, bucket, "lock", b"2", generation_match=0) == 200  # real GCS: 412
    assert _media_upload(gcs, bucket, "lock", b"3", generation_match=1) == 200  # stale generation; real GCS: 412
    # the official client (multipart upload)
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=gcs.endpoint_url)
    )
    blob = client.bucket(bucket).blob("lock")
    blob.upload_from_string(b"4", if_generation_match=0)  # real GCS: PreconditionFailed
    assert client.bucket(bucket).blob("lock").download_as_bytes() == b"4"
    meta = json.load(urllib.request.urlopen(f"{gcs.endpoint_url}/storage/v1/b/{bucket}/o/lock", timeout=10))
    assert int(meta["generation"]) > 0


# ---------------------------------------------------------------- require() and clean stops


def test_require_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-server not found; it is needed for a test"):
        require("no-such-server", "a test")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require("no-such-server", "a test")


@pytest.mark.parametrize(
    "start",
    [services.postgres_server, services.redis_server, services.s3_server, services.gcs_server],
    ids=["postgres", "redis", "s3", "gcs"],
)
def test_servers_stop_by_pid_and_leave_no_files(start, monkeypatch):
    # the server's temporary directory goes under a fresh base, to see it created and removed; not under
    # tmp_path, whose parents are private to this user (PostgreSQL runs as `postgres` when tests run as root)
    base = Path(tempfile.mkdtemp(prefix="mlops-services-test-"))
    base.chmod(0o755)
    monkeypatch.setattr(services.tempfile, "tempdir", str(base))
    try:
        with start() as server:
            pid = server.pid
            assert pid > 0 and alive(pid)
            assert len(list(base.iterdir())) == 1
        assert not alive(pid)
        assert list(base.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)
