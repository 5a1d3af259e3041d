#!/usr/bin/env python3
r"""The platform's Kubernetes Secrets from Terraform's outputs.

    terraform -chdir=infra/terraform/aws output -json | python3 infra/k8s/secrets_from_terraform.py \
        | kubectl apply --server-side --field-manager=secrets-from-terraform -f -

Reads the document `terraform output -json` prints (from stdin, or from the file given as argument)
and prints, as YAML for `kubectl apply -f -`:

- Secret "mlops-secrets": one key per variable the k8s profile reads (`mlops_assets.k8s.secret_keys()`:
  the cloud's stores and the Dagster instance's PostgreSQL), each the Terraform output of the same
  name. Every Dagster run and step pod, the code location and the exporter take it with envFrom.
- Secret "dagster-postgresql-secret": key "postgresql-password" (DAGSTER_PG_PASSWORD), the Secret
  the Dagster Helm chart reads the instance's password from (generatePostgresqlPasswordSecret: false).

`--format env` prints the first Secret's keys as KEY=value lines instead (for `docker run --env-file`
or `kubectl create secret generic --from-env-file`). `--output FILE` writes to a new file readable
by its owner only, instead of stdout.

The cloud is the output MLOPS_K8S_CLOUD (or --cloud); the namespace the output MLOPS_K8S_NAMESPACE
(or --namespace, default "mlops"). A required output that is missing, empty or not a single value
stops the script before anything is printed, naming it. Values are written only where asked: an
error names outputs, never what they hold.

Standard library only: it runs wherever Terraform does. When mlops_assets is importable, the keys
are the profile's own list; otherwise the copy below, which the test suite keeps equal to it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

NAMESPACE = "mlops"  # mlops_assets.k8s.NAMESPACE
SECRET = "mlops-secrets"  # mlops_assets.k8s.SECRET
PG_PASSWORD_SECRET = "dagster-postgresql-secret"  # mlops_assets.k8s.PG_PASSWORD_SECRET
PG_PASSWORD_KEY = "postgresql-password"  # the key the Dagster Helm chart reads
PG_PASSWORD_OUTPUT = "DAGSTER_PG_PASSWORD"
CLOUDS = ("aws", "gcp")
CLOUD_OUTPUT = "MLOPS_K8S_CLOUD"
NAMESPACE_OUTPUT = "MLOPS_K8S_NAMESPACE"

# mlops_assets.k8s.secret_keys(cloud), for a machine without the package
FALLBACK_KEYS = {
    "aws": [
        "MLOPS_STORAGE_URI",
        "MLOPS_LANDING_URI",
        "MLOPS_IO_BUCKET",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_ARTIFACT_URI",
        "FEAST_REGISTRY_URI",
        "MLOPS_REDIS",
        "MLOPS_ADMIN_TOKEN",
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_PORT",
        "DAGSTER_PG_USER",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_DB",
    ],
}
FALLBACK_KEYS["gcp"] = [*FALLBACK_KEYS["aws"][:7], "GOOGLE_CLOUD_PROJECT", *FALLBACK_KEYS["aws"][7:]]


class Refused(Exception):
    """The outputs cannot make the Secrets; the message names outputs, never their values."""


def secret_keys(cloud: str) -> list[str]:
    """The keys of mlops-secrets on `cloud`: the profile's list when mlops_assets is installed."""
    try:
        from mlops_assets.k8s import secret_keys as profile_keys
    except ImportError:
        return list(FALLBACK_KEYS[cloud])
    return profile_keys(cloud)


def read_outputs(text: str) -> dict[str, object]:
    """{name: value} from `terraform output -json` ({name: {"value": ..., "sensitive": ..., "type": ...}})."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:  # the message gives a position, never the text
        raise Refused(f"not the JSON of `terraform output -json` (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(document, dict) or not all(isinstance(o, dict) and "value" in o for o in document.values()):
        raise Refused('not the JSON of `terraform output -json`: expected {name: {"value": ...}, ...}')
    return {name: output["value"] for name, output in document.items()}


def _text(name: str, value: object) -> str:
    """An output as an environment variable's text: strings as they are, numbers and booleans as
    Terraform prints them; lists, maps and empty values refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise Refused(f"output {name} is not a single value (a list or a map)")
    if not value:
        raise Refused(f"output {name} is empty")
    return value


def choose(outputs: dict[str, object], cloud: str | None, namespace: str | None) -> tuple[str, str]:
    """The cloud and namespace: the arguments, else the outputs MLOPS_K8S_CLOUD / MLOPS_K8S_NAMESPACE."""
    if cloud is None:
        if CLOUD_OUTPUT not in outputs:
            raise Refused(f"no output {CLOUD_OUTPUT}: pass --cloud aws or --cloud gcp")
        cloud = _text(CLOUD_OUTPUT, outputs[CLOUD_OUTPUT])
    if cloud not in CLOUDS:
        raise Refused(f"cloud {cloud!r} is not one of {', '.join(CLOUDS)}")
    if namespace is None:
        namespace = _text(NAMESPACE_OUTPUT, outputs[NAMESPACE_OUTPUT]) if NAMESPACE_OUTPUT in outputs else NAMESPACE
    return cloud, namespace


def secret_data(outputs: dict[str, object], cloud: str) -> dict[str, str]:
    """The keys of mlops-secrets and their values, in the profile's order; refuses naming every
    missing output at once."""
    keys = secret_keys(cloud)
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise Refused(f"Terraform outputs missing for the {cloud} profile: {', '.join(missing)}")
    return {k: _text(k, outputs[k]) for k in keys}


def secrets(outputs: dict[str, object], cloud: str, namespace: str) -> list[dict]:
    """The two Secret manifests."""
    data = secret_data(outputs, cloud)
    labels = {"app.kubernetes.io/part-of": "mlops-assets", "app.kubernetes.io/managed-by": "secrets_from_terraform"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": namespace, "labels": labels},
            "type": "Opaque",
            "stringData": data,
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": PG_PASSWORD_SECRET, "namespace": namespace, "labels": labels},
            "type": "Opaque",
            "stringData": {PG_PASSWORD_KEY: data[PG_PASSWORD_OUTPUT]},
        },
    ]


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS else json.dumps(key)


def _yaml(node: dict, indent: int = 0) -> list[str]:
    """Block YAML of nested dicts of strings; every value double-quoted with JSON's escapes (a
    subset of YAML's), so no value can be read back as another type or break the document."""
    lines = []
    pad = " " * indent
    for key, value in node.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{_key(key)}:" + (" {}" if not value else ""))
            lines += _yaml(value, indent + 2)
        else:
            lines.append(f"{pad}{_key(key)}: {json.dumps(value)}")
    return lines


def to_yaml(manifests: list[dict]) -> str:
    return "".join("---\n" + "\n".join(_yaml(m)) + "\n" for m in manifests)


def to_env(data: dict[str, str]) -> str:
    """KEY=value lines; env files take the rest of the line literally, so a value with a line break
    cannot be written."""
    broken = [k for k, v in data.items() if "\n" in v or "\r" in v]
    if broken:
        raise Refused(f"outputs with a line break cannot go into an env file: {', '.join(broken)}")
    return "".join(f"{k}={v}\n" for k, v in data.items())


def write_private(path: str, text: str) -> None:
    """Write a new file only its owner can read (it holds passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="?", help="file holding `terraform output -json` (default: stdin)")
    parser.add_argument("--cloud", choices=CLOUDS, help=f"default: the output {CLOUD_OUTPUT}")
    parser.add_argument("--namespace", help=f"default: the output {NAMESPACE_OUTPUT}, else {NAMESPACE}")
    parser.add_argument("--format", choices=("yaml", "env"), default="yaml", help="Secret manifests (default) or an env file")
    parser.add_argument("--output", "-o", help="write to this new file (mode 0600) instead of stdout")
    args = parser.parse_args(argv)
    try:
        if args.outputs:
            with open(args.outputs, encoding="utf-8") as f:
                text = f.read()
        else:
            text = sys.stdin.read()
        outputs = read_outputs(text)
        cloud, namespace = choose(outputs, args.cloud, args.namespace)
        if args.format == "env":
            rendered = to_env(secret_data(outputs, cloud))
        else:
            rendered = to_yaml(secrets(outputs, cloud, namespace))
        if args.output:
            write_private(args.output, rendered)
        else:
            sys.stdout.write(rendered)
    except Refused as exc:
        print(f"secrets_from_terraform: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or already exists: its name, not its content
        print(f"secrets_from_terraform: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
