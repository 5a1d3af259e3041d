"""The one place that leans on another library's internals, each with a test (``test_storage``).

Feast's DuckDB offline store reads a ``FileSource`` with ``ibis.read_parquet``, on ibis's default
DuckDB connection. For an ``s3://`` path ibis first installs DuckDB's httpfs extension, a download
this platform cannot rely on (air-gapped clusters, CI without internet), and httpfs would need its
own copy of the credentials. DuckDB can instead read any path through a registered fsspec
filesystem: the same s3fs/gcsfs objects the rest of the platform writes with. So the default
connection gets those filesystems, and ibis's httpfs step is skipped for the protocols they serve.
"""

from __future__ import annotations

import functools

PROTOCOLS = ("s3", "gs")


@functools.cache
def register_object_stores_with_duckdb() -> tuple[str, ...]:
    """Register s3fs and gcsfs with ibis's default DuckDB connection (once per process); returns the
    protocols registered. No connection is made here: fsspec filesystems connect on first use."""
    import fsspec
    import ibis

    backend = ibis.get_backend()
    if backend.name != "duckdb":
        return ()
    registered = []
    for protocol in PROTOCOLS:
        try:
            fs = fsspec.filesystem(protocol)
        except ImportError:  # s3fs / gcsfs not installed
            continue
        backend.register_filesystem(fs)
        registered.append(protocol)
    load = backend._load_extensions  # private: ibis 12's hook that installs httpfs for s3:// paths

    def load_extensions(extensions, force_install=False):
        wanted = [e for e in extensions if not (e == "httpfs" and registered)]
        if wanted:
            load(wanted, force_install=force_install)

    backend._load_extensions = load_extensions
    return tuple(registered)
