"""What a SageMaker container of the platform's model server is given: its environment and its model
artifact (used by ``rollout.sagemaker``).

The container runs on the platform's profile, so its prediction log lands in the profile's object
store (where the ``canary`` check reads it) and online features come from the profile's Redis:
the model's ``Environment`` carries ``MLOPS_ENV`` (the profile's cloud) and the store variables the
server reads (``kubernetes.server_vars``), their values taken only from the environment of the
process that creates the model (``profile_environment``), never from a spec or a resource config.
A variable missing there is named before anything is created. On the ``local`` profile only
``MLOPS_ENV=local`` is passed: the model comes from ``/opt/ml/model`` and the log stays in the
container.

**Where the secret values then live.** SageMaker has no secret references for container
environment variables (unlike Kubernetes' ``secretKeyRef``): ``MLFLOW_TRACKING_URI``,
``FEAST_REGISTRY_URI`` and ``MLOPS_REDIS``, with the passwords inside them, are stored in plain text
in the SageMaker model definition: anyone allowed ``sagemaker:DescribeModel`` on the model reads
them, and a rotated password needs new models (models are immutable; ``ensure_model`` refuses a
model whose environment differs, naming the variables, not the values). For production, give the
variants an execution role (``role_arn``) that grants the object store, so no storage keys are
passed at all, and have the container fetch the three connection strings from AWS Secrets Manager
at start (the role allowed ``secretsmanager:GetSecretValue`` on that one secret), passing only the
secret's ARN here. That lookup is not built. ``MLOPS_ADMIN_TOKEN`` (the admin route's bearer token)
goes the same way when it is set where the model is created; without it the container's server
generates a token nobody knows, which is no loss: SageMaker only routes ``/ping`` and
``/invocations`` to a container, and the target changes what is served by new endpoint configs.
No value is ever logged or returned as metadata (errors name variables, not values).

Plain Python, no dagster import.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path

from mlops_assets.server import ADMIN_TOKEN_ENV


def profile_environment(env: str | None = None) -> dict[str, str]:
    """The container's profile variables with their values from this process's environment (see the
    module docstring: on SageMaker the values, secrets included, are stored in the model definition).
    Raises ``ValueError`` naming any variable the server needs that is not set here."""
    from mlops_assets.rollout.kubernetes import server_vars

    value, plain, secret = server_vars(env)
    if value == "local":  # the variant's model is unpacked beside the server: no registry, no stores to share
        return {"MLOPS_ENV": "local"}
    names = plain + secret
    missing = [k for k in names if not os.environ.get(k)]
    if missing:
        raise ValueError(f"MLOPS_ENV={value}: the SageMaker container needs {', '.join(missing)}, not set in this process")
    out = {"MLOPS_ENV": value, **{k: os.environ[k] for k in names}}
    if os.environ.get(ADMIN_TOKEN_ENV):  # the admin route's token, as the platform's servers share it
        out[ADMIN_TOKEN_ENV] = os.environ[ADMIN_TOKEN_ENV]
    return out


def deterministic_tar_gz(source: Path, target: Path) -> str:
    """Write the files under ``source`` to ``target`` as a reproducible tar.gz at the archive root
    (SageMaker unpacks it into ``/opt/ml/model``); returns its MD5 hex digest."""
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(source.rglob("*")):
            info = tarfile.TarInfo(path.relative_to(source).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif path.is_file():
                info.size = path.stat().st_size
                info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)
    md5 = hashlib.md5()
    with target.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    return md5.hexdigest()
