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

@functools.cache
def register_object_store_with_duckdb(protocol: str) -> bool:
    """Register the fsspec filesystem of ``protocol`` (``s3`` or ``gs``) with ibis's default DuckDB
    connection, once per process. No connection is made here: fsspec filesystems connect on first
    use. Returns False when the default backend is not DuckDB."""
    import ibis

    from mlops_assets import files

    backend = ibis.get_backend()
    if backend.name != "duckdb":
        return False
    backend.register_filesystem(files.filesystem(f"{protocol}://")[0])  # the platform's own object
    if not getattr(backend, "_mlops_fsspec", False):
        load = backend._load_extensions  # private: ibis 12's hook that installs httpfs for s3:// paths

        def load_extensions(extensions, force_install=False):
            wanted = [e for e in extensions if e != "httpfs"]  # registered filesystems serve those paths
            if wanted:
                load(wanted, force_install=force_install)

        backend._load_extensions = load_extensions
        backend._mlops_fsspec = True
    return True
