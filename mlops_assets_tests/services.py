"""Throwaway real services for tests and bench scripts: PostgreSQL, Redis, S3 (moto) and GCS (emulator).

Each context manager starts one server on a free loopback port (from ``socket.bind(("127.0.0.1", 0))``)
in a temporary directory, waits until it answers, yields a small handle, and on exit stops it by
process id (never by name) and removes the directory::

    with postgres_server() as pg:   # .host .port .user .password .url(db) .create_database(name)
    with redis_server() as r:       # .host .port .url .connection_string
    with s3_server() as s3:         # .endpoint_url .make_bucket(name) .env .storage_options
    with gcs_server() as gcs:       # .endpoint_url .make_bucket(name) .env .storage_options

Binaries: PostgreSQL's ``initdb``/``pg_ctl`` from the newest ``/usr/lib/postgresql/*/bin`` (or
``$PG_BIN``), ``redis-server`` from PATH (Debian packages ``postgresql`` and ``redis-server``),
``moto_server`` and ``gcp-storage-emulator`` from the venv. A missing one goes through
:func:`require`: under pytest it skips the test, or fails it when ``CI=true``; outside pytest it
raises :class:`ServiceUnavailable`.

PostgreSQL and its ``initdb`` refuse to run as root; as root they run as the ``postgres`` user
(created by the Debian package) via ``runuser``, and the temporary directory is chowned to it.
The cluster is throwaway: fsync, synchronous_commit and full_page_writes are off.

Redis, moto and the GCS emulator are children of the process that starts them, in their own
session, and also get SIGTERM if that thread dies (PR_SET_PDEATHSIG), so a session killed by
``timeout`` or SIGKILL does not leave them running; start them from the main thread. The PostgreSQL
postmaster is daemonized by ``pg_ctl`` and has no such guard: only a normal exit of the context
manager stops it (``pg_ctl stop -m fast``, else SIGKILL to the pid in ``postmaster.pid``).

Emulator facts, measured against moto 5.2.5 and gcp-storage-emulator 2026.7.19 (and asserted in
``test_services.py`` so an upgrade that changes them is noticed):

* moto (S3) honours conditional writes on ``put_object``: ``IfNoneMatch="*"`` on an existing key
  fails with 412 PreconditionFailed (and succeeds on a new key); ``IfMatch=<etag>`` succeeds with
  the current ETag and fails with 412 with a stale one. So S3 compare-and-swap can be tested here.
* gcp-storage-emulator (GCS) does NOT honour ``ifGenerationMatch`` on uploads: ``ifGenerationMatch=0``
  on an existing object and a stale generation both overwrite it (200) instead of answering 412.
  A GCS design that relies on generation preconditions for mutual exclusion cannot be tested
  against this emulator; test that logic against moto (or real GCS) and use the emulator only for
  plain reads and writes.
* Both work through fsspec: ``s3fs.S3FileSystem(client_kwargs={"endpoint_url": ...}, key="testing",
  secret="testing")`` and ``gcsfs.GCSFileSystem(endpoint_url=..., token="anon")``, and so
  ``pandas.read_parquet/to_parquet("s3://..." / "gs://...", storage_options=handle.storage_options)``.
* gcsfs >= 2026 trap: ``gcsfs.GCSFileSystem`` is ``ExtendedGcsFileSystem`` unless
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` is set before gcsfs is imported. Before each operation it
  asks the Storage Control gRPC API for the bucket's layout (zonal/hierarchical); the emulator speaks
  no gRPC, the call is retried for 60 s, fails, and the failure is not cached, so *every* operation
  takes about a minute (measured: one ``fs.pipe`` 103 s). It then falls back to the JSON API and works.
  Hence ``GCS.storage_options`` carries ``retry_timeout=0`` (the probe fails at once; each operation
  logs a "Could not determine bucket type" warning and goes on, in milliseconds), and ``GCS.env`` sets
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` for subprocesses. Code under test that builds its own
  ``GCSFileSystem`` against the emulator must pass these storage options too.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

START_TIMEOUT = 30.0  # seconds; every server here is normally up in well under 3 s
HOST = "127.0.0.1"
INSTALL_HINTS = {
    "initdb": "apt-get install postgresql",
    "pg_ctl": "apt-get install postgresql",
    "redis-server": "apt-get install redis-server",
    "moto_server": "pip install 'moto[server]' (it is in requirements.lock)",
    "gcp-storage-emulator": "pip install gcp-storage-emulator (it is in requirements.lock)",
}


class ServiceUnavailable(RuntimeError):
    """A service binary is missing (raised by :func:`require` outside pytest) or a server did not start."""


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _missing(name: str, why: str) -> NoReturn:
    hint = INSTALL_HINTS.get(name, "")
    msg = f"{name} not found; it is needed for {why}" + (f" (install: {hint})" if hint else "")
    if "pytest" not in sys.modules:
        raise ServiceUnavailable(msg)
    import pytest

    if _in_ci():
        pytest.fail(f"{msg}. CI=true, so a missing service is a failure, not a skip", pytrace=False)
    pytest.skip(msg)


def pg_bin_dir() -> Path | None:
    """``$PG_BIN`` if set, else the newest ``/usr/lib/postgresql/<version>/bin`` that has initdb."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    dirs = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    dirs.sort(key=lambda d: [int(x) if x.isdigit() else 0 for x in d.parent.name.split(".")])
    return dirs[-1] if dirs else None


def _find(name: str) -> str | None:
    if name in {"initdb", "pg_ctl"}:  # $PG_BIN strictly if set, else the newest Debian version, else PATH
        d = pg_bin_dir()
        if d and os.access(d / name, os.X_OK):
            return str(d / name)
        return None if os.environ.get("PG_BIN") else shutil.which(name)
    venv_bin = Path(sys.executable).parent / name
    if os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    return shutil.which(name)


def require(name: str, why: str) -> str:
    """Path of the service binary ``name`` (e.g. "initdb", "redis-server", "moto_server").

    If it is missing: under pytest, skip the test, or fail it when ``CI=true`` (CI must not
    silently skip the service tests); outside pytest, raise :class:`ServiceUnavailable`.
    ``why`` says what needs it and ends up in the message.
    """
    path = _find(name)
    if path is None:
        _missing(name, why)
    return path


def _wait(ready, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(Exception):  # not up yet
            if ready():
                return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise ServiceUnavailable(f"{what} did not start within {START_TIMEOUT:.0f} s\n{tail}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of a server started with ``start_new_session=True``, SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as e:  # a 4xx still means the server answers
        return e.code < 500


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the thread that started it dies (Linux prctl
    PR_SET_PDEATHSIG), so a test session killed without cleanup does not leave servers behind."""
    with contextlib.suppress(Exception):  # not Linux: only the normal stop applies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextmanager
def _server(cmd: list[str], what: str, ready, tmp: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only
        )
    try:
        _wait(ready, what, proc, log)
        yield proc
    finally:
        _stop_group(proc)


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    data_dir: Path
    pid: int = 0  # the postmaster's

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(self.url(database))

    def create_database(self, name: str) -> str:
        """Create database ``name`` (if it does not exist yet); returns its URL."""
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(user: str = "mlops", password: str = "mlops") -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster (scram-sha-256 auth) on 127.0.0.1:<free port>, removed afterwards."""
    initdb = require("initdb", "a throwaway PostgreSQL server")
    pg_ctl = require("pg_ctl", "a throwaway PostgreSQL server")
    tmp = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    data = tmp / "data"
    started = False
    try:
        pwfile = tmp / "pwfile"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError:
                _missing("postgres user", "running PostgreSQL as root (initdb refuses root; the Debian package creates it)")
            for p in (tmp, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        _run_pg(
            [initdb, "-D", data, "-U", user, "-A", "scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"],
            tmp,
            "initdb failed",
        )
        port = free_port()
        opts = f"-p {port} -k {tmp} -c listen_addresses={HOST} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        started = True  # from here on, a postmaster may exist even if pg_ctl reports failure
        log = tmp / "server.log"
        _run_pg(
            [pg_ctl, "-D", data, "-l", log, "-o", opts, "-w", "-t", int(START_TIMEOUT), "start"],
            tmp,
            "PostgreSQL did not start",
            log,
        )
        pg = Postgres(HOST, port, user, password, data, _postmaster_pid(data) or 0)
        _wait(lambda: pg.connect().close() is None, "PostgreSQL")
        yield pg
    finally:
        if started:
            _stop_postgres(pg_ctl, data)
        shutil.rmtree(tmp, ignore_errors=True)


def _run_pg(cmd: list, cwd: Path, failure: str, log: Path | None = None) -> None:
    """Run a PostgreSQL tool (as the postgres user when root); on failure raise with its output and log."""
    result = subprocess.run(_as_pg_user([str(c) for c in cmd]), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise ServiceUnavailable(f"{failure}:\n{result.stdout}\n{result.stderr}\n{tail}")


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_postgres(pg_ctl: str, data: Path) -> None:
    """``pg_ctl stop -m fast``; if that fails, SIGKILL the postmaster by the pid in postmaster.pid."""
    pid = _postmaster_pid(data)
    if pid is None:
        return
    result = subprocess.run(
        _as_pg_user([pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "20", "stop"]),
        cwd=data.parent,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0 and pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # its backends exit once the postmaster is gone


# ---------------------------------------------------------------- Redis


@dataclass
class Redis:
    host: str
    port: int
    pid: int = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def connection_string(self) -> str:
        """``host:port``, the form Feast's Redis online store takes."""
        return f"{self.host}:{self.port}"


def _redis_ping(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


@contextmanager
def redis_server() -> Iterator[Redis]:
    """A Redis server without persistence on 127.0.0.1:<free port>."""
    binary = require("redis-server", "a throwaway Redis server (Feast online store)")
    tmp = Path(tempfile.mkdtemp(prefix="mlops-redis-"))
    try:
        port = free_port()
        cmd = [
            binary,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(tmp),
        ]
        with _server(cmd, "redis-server", lambda: _redis_ping(port), tmp) as proc:
            yield Redis(HOST, port, proc.pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- S3 (moto)

S3_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@dataclass
class S3:
    endpoint_url: str
    env: dict[str, str] = field(default_factory=dict)
    pid: int = 0

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options: ``pd.read_parquet("s3://b/k", storage_options=s3.storage_options)``."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


@contextmanager
def s3_server() -> Iterator[S3]:
    """moto's S3 (and every other moto service) in server mode on 127.0.0.1:<free port>, in memory."""
    binary = require("moto_server", "a throwaway S3 endpoint")
    tmp = Path(tempfile.mkdtemp(prefix="mlops-s3-"))
    try:
        port = free_port()
        url = f"http://{HOST}:{port}"
        with _server([binary, "-H", HOST, "-p", str(port)], "moto_server", lambda: _http_ok(f"{url}/moto-api/"), tmp) as proc:
            env = {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": url,
            }
            yield S3(url, env, proc.pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- GCS (gcp-storage-emulator)


@dataclass
class GCS:
    endpoint_url: str
    env: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    project: str = "test"

    @property
    def storage_options(self) -> dict:
        """fsspec/gcsfs options: ``pd.read_parquet("gs://b/k", storage_options=gcs.storage_options)``.

        ``retry_timeout=0`` makes gcsfs's bucket-layout gRPC probe (which the emulator cannot answer)
        fail at once instead of after 60 s per operation; see the module docstring."""
        return {"endpoint_url": self.endpoint_url, "token": "anon", "project": self.project, "retry_timeout": 0}

    def make_bucket(self, name: str) -> str:
        req = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10):
            pass
        return name


@contextmanager
def gcs_server() -> Iterator[GCS]:
    """gcp-storage-emulator (in memory) on 127.0.0.1:<free port>."""
    binary = require("gcp-storage-emulator", "a throwaway GCS endpoint")
    tmp = Path(tempfile.mkdtemp(prefix="mlops-gcs-"))
    try:
        port = free_port()
        url = f"http://{HOST}:{port}"
        with _server(
            [binary, "start", "--host", HOST, "--port", str(port), "--in-memory", "--quiet"],
            "gcp-storage-emulator",
            lambda: _http_ok(f"{url}/storage/v1/b?project=test"),
            tmp,
        ) as proc:
            env = {"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "test", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
            yield GCS(url, env, pid=proc.pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
