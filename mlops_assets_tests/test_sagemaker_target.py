"""The SageMaker target of ``endpoint_<model>`` against moto's server (real HTTP, real boto3 clients).

What moto 5.2.5 implements and how the tests lean on it:

- CreateModel / DescribeModel, Create/Describe/Delete/ListEndpointConfig(s), Create/Describe/DeleteEndpoint
  and UpdateEndpointWeightsAndCapacities are implemented; endpoints are InService at once, so the
  waits return on the first poll.
- ``describe_endpoint`` fills both ``CurrentWeight`` and ``DesiredWeight`` with the same value, also after
  ``update_endpoint_weights_and_capacities``; ``verify`` reads ``CurrentWeight`` (what AWS routes by)
  and falls back to ``DesiredWeight``.
- UpdateEndpoint is NOT implemented (moto answers 500 NotImplementedError). The target itself always
  calls ``update_endpoint`` for a new config, as on AWS; the tests stand in for that one call on the
  target's client (``_emulate_update_endpoint``): the endpoint is replaced by one built from the new
  config, which is the state AWS reaches when a blue/green update is InService.
- A Failed endpoint or a rolled-back update cannot be produced in moto; those waits are checked with
  botocore's Stubber.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlops_assets.endpoint_state import Deployment
from mlops_assets.rollout.sagemaker import MAX_NAME, SageMakerTarget
from mlops_assets.specs import BUNDLED_SPEC_DIR, DeploymentSpec, SageMakerTargetSpec, load_spec

BUCKET = "mlops-models-test"
REGION = "us-east-1"
NAME_RE = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
# the aws profile as a deployment configures it where the endpoint asset runs
AWS_PROFILE = {
    "MLOPS_STORAGE_URI": "s3://acme-lake/platform",
    "MLOPS_LANDING_URI": "s3://acme-landing/incoming",
    "MLFLOW_TRACKING_URI": "postgresql://mlflow:tr4ck-pw@db.internal:5432/mlflow",
    "MLFLOW_ARTIFACT_URI": "s3://acme-artifacts/mlflow",
    "FEAST_REGISTRY_URI": "postgresql+psycopg://feast:r3g-pw@db.internal:5432/feast",
    "MLOPS_REDIS": "redis.internal:6379,password=r3dis-pw,ssl=true",
}
PROFILE_VARS = ("MLOPS_ENV", "MLOPS_K8S_CLOUD", "MLOPS_IO_BUCKET", "GOOGLE_CLOUD_PROJECT", *AWS_PROFILE)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        import boto3

        s3 = boto3.client(
            "s3", region_name=REGION, endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        s3.create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for key in PROFILE_VARS:  # every test starts on the local profile, whatever the shell exports
        monkeypatch.delenv(key, raising=False)


def _emulate_update_endpoint(target: SageMakerTarget) -> list[dict]:
    """Stand in for UpdateEndpoint, which moto 5.2.5 does not implement, on this target's client only:
    the endpoint is deleted and created again from the new config. Returns the calls seen."""
    from botocore.awsrequest import AWSResponse

    sm = target.sagemaker
    calls: list[dict] = []

    def update_endpoint(params: dict, **_: object) -> tuple[AWSResponse, dict]:
        body = json.loads(params["body"])
        calls.append(body)
        sm.delete_endpoint(EndpointName=body["EndpointName"])
        arn = sm.create_endpoint(EndpointName=body["EndpointName"], EndpointConfigName=body["EndpointConfigName"])["EndpointArn"]
        return AWSResponse(params.get("url", ""), 200, {}, None), {"EndpointArn": arn}

    sm.meta.events.register("before-call.sagemaker.UpdateEndpoint", update_endpoint)
    return calls


@pytest.fixture
def make_target(moto_url: str) -> Callable[[str], SageMakerTarget]:
    """A target for a spec of its own name (moto's state lives as long as the module's server)."""
    base = load_spec(BUNDLED_SPEC_DIR / "flight_delays.yaml")

    def make(name: str) -> SageMakerTarget:
        deployment = DeploymentSpec(target="sagemaker", sagemaker=SageMakerTargetSpec(model_data_prefix=f"s3://{BUCKET}/models"))
        spec = base.model_copy(update={"name": name, "deployment": deployment})
        target = SageMakerTarget(spec, endpoint_url=moto_url, poll_seconds=0.05, timeout_seconds=5)
        target.update_calls = _emulate_update_endpoint(target)  # type: ignore[attr-defined]
        return target

    return make


def _model_dir(root: Path, marker: str) -> Path:
    d = root / f"model-{marker}"
    (d / "artifacts").mkdir(parents=True)
    (d / "MLmodel").write_text(f"flavors:\n  python_function: {{}}\nrun_id: {marker}\n")
    (d / "model.pkl").write_bytes(marker.encode() * 100)
    (d / "artifacts" / "reference.json").write_text(json.dumps({"marker": marker}))
    return d


def _endpoint_weights(target: SageMakerTarget) -> dict[str, tuple[float | None, float | None]]:
    desc = target.sagemaker.describe_endpoint(EndpointName=target.endpoint_name)
    return {v["VariantName"]: (v.get("CurrentWeight"), v.get("DesiredWeight")) for v in desc["ProductionVariants"]}


def _config_variants(target: SageMakerTarget, config: str) -> dict[str, tuple[str, float]]:
    desc = target.sagemaker.describe_endpoint_config(EndpointConfigName=config)
    return {v["VariantName"]: (v["ModelName"], v["InitialVariantWeight"]) for v in desc["ProductionVariants"]}


def test_upload_model_puts_tar_gz_once(make_target, tmp_path: Path) -> None:
    target = make_target("upload_model")
    puts: list[str] = []
    for op in ("PutObject", "CreateMultipartUpload"):
        target.s3.meta.events.register(f"before-call.s3.{op}", lambda model, **_: puts.append(model.name))
    model_dir = _model_dir(tmp_path, "a")

    uri = target.upload_model("1", model_dir)
    assert uri == f"s3://{BUCKET}/models/upload_model/1/model.tar.gz"
    body = target.s3.get_object(Bucket=BUCKET, Key="models/upload_model/1/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = set(tar.getnames())
        assert {"MLmodel", "model.pkl", "artifacts/reference.json"} <= names  # at the root: SageMaker unpacks to /opt/ml/model
        assert tar.extractfile("MLmodel").read() == (model_dir / "MLmodel").read_bytes()  # type: ignore[union-attr]
    assert puts == ["PutObject"]

    assert target.upload_model("1", model_dir) == uri  # same bytes: the archive is reproducible, nothing uploaded
    assert puts == ["PutObject"]
    (model_dir / "model.pkl").write_bytes(b"retrained")
    target.upload_model("1", model_dir)
    assert puts == ["PutObject", "PutObject"]

    with pytest.raises(ValueError, match="no MLmodel"):
        target.upload_model("2", tmp_path)


def test_first_deploy_stable_only(make_target, tmp_path: Path) -> None:
    target = make_target("first_deploy")
    v1 = target.upload_model("1", _model_dir(tmp_path, "v1"))

    result = target.apply(Deployment(stable="1"), {"1": v1})
    assert result["endpoint"] == "first-deploy"
    assert result["action"] == "created"
    assert result["models_created"] == ["first-deploy-v1"]
    assert result["config"] == result["config_created"] and result["config"].startswith("first-deploy-c")
    assert result["variants"] == [{"variant": "stable", "version": "1", "model": "first-deploy-v1", "weight": 1.0}]

    model = target.sagemaker.describe_model(ModelName="first-deploy-v1")
    container = model["PrimaryContainer"]
    assert container["Image"] == target.target.image_uri
    assert container["ModelDataUrl"] == v1
    assert container["Environment"] == {
        "MLOPS_DEPLOYMENT": json.dumps({"stable": "1"}),
        "MLOPS_MODEL_DIR": "/opt/ml/model",  # the server loads what SageMaker unpacked, not the registry
        "MLOPS_SPEC": "first_deploy",
        "MLOPS_ENV": "local",  # the local profile: nothing of this machine's stores is handed over
    }
    assert model["ExecutionRoleArn"] == target.target.role_arn
    assert _config_variants(target, result["config"]) == {"stable": ("first-deploy-v1", 1.0)}
    desc = target.sagemaker.describe_endpoint(EndpointName="first-deploy")
    assert desc["EndpointStatus"] == "InService" and desc["EndpointConfigName"] == result["config"]

    checked = target.verify(Deployment(stable="1"))
    assert checked["variants"] == [{"variant": "stable", "model": "first-deploy-v1", "weight": 1.0, "percent": 100.0}]

    again = target.apply(Deployment(stable="1"), {"1": v1})  # idempotent: nothing new
    assert again["action"] == "unchanged" and again["config"] == result["config"]
    assert again["config_created"] is None and again["models_created"] == []

    with pytest.raises(RuntimeError, match="models are immutable"):
        target.apply(Deployment(stable="1"), {"1": f"s3://{BUCKET}/elsewhere/model.tar.gz"})
    with pytest.raises(ValueError, match="no model data"):
        target.apply(Deployment(stable="2"), {"1": v1})


@pytest.mark.parametrize(("profile", "cloud"), [("aws", None), ("k8s", "aws"), ("gcp", None)])
def test_the_container_runs_on_the_profile_of_the_process(make_target, tmp_path: Path, monkeypatch, profile, cloud) -> None:
    """The model's Environment carries MLOPS_ENV and the store variables, values from this process's
    environment only, so the server's prediction log lands in the profile's object store."""
    target = make_target(f"profile_{profile}_{cloud or ''}")
    v1 = target.upload_model("1", _model_dir(tmp_path, "v1"))
    monkeypatch.setenv("MLOPS_ENV", profile)
    if cloud:
        monkeypatch.setenv("MLOPS_K8S_CLOUD", cloud)
    values = dict(AWS_PROFILE)
    if (cloud or profile) == "gcp":
        values |= {k: v.replace("s3://", "gs://") for k, v in values.items() if v.startswith("s3://")}
        values["GOOGLE_CLOUD_PROJECT"] = "acme-ml"
    for k, v in values.items():
        if k != "MLOPS_REDIS":
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLOPS_IO_BUCKET", "acme-io")  # the platform's, not the server's: not handed over

    # a variable the server needs is missing here: named, and nothing is created
    with pytest.raises(ValueError, match=r"MLOPS_ENV=(aws|gcp): the SageMaker container needs MLOPS_REDIS"):
        target.apply(Deployment(stable="1"), {"1": v1})
    assert target.describe_model("1") is None and target.describe_endpoint() is None

    monkeypatch.setenv("MLOPS_REDIS", values["MLOPS_REDIS"])
    monkeypatch.setenv("MLOPS_ADMIN_TOKEN", "admin-token-of-the-platform")  # the servers' shared admin token
    applied = target.apply(Deployment(stable="1"), {"1": v1})
    assert applied["action"] == "created"
    assert "admin-token-of-the-platform" not in json.dumps(applied, default=str)  # never in the asset's metadata
    environment = target.sagemaker.describe_model(ModelName=target.model_name("1"))["PrimaryContainer"]["Environment"]
    assert environment == {
        "MLOPS_DEPLOYMENT": json.dumps({"stable": "1"}),
        "MLOPS_MODEL_DIR": "/opt/ml/model",
        "MLOPS_SPEC": target.spec.name,
        "MLOPS_ENV": cloud or profile,  # the stores' profile: a server needs no k8s executor
        "MLOPS_ADMIN_TOKEN": "admin-token-of-the-platform",
        **values,
    }
    assert target.apply(Deployment(stable="1"), {"1": v1})["action"] == "unchanged"

    # a rotated password: the immutable model would keep the old one; refused, naming the variable only
    monkeypatch.setenv("MLOPS_REDIS", "redis.internal:6379,password=n3w-pw,ssl=true")
    with pytest.raises(RuntimeError, match=r"another container environment \(differs in MLOPS_REDIS from") as info:
        target.apply(Deployment(stable="1"), {"1": v1})
    assert "pw" not in str(info.value)


def test_canary_share_promotion_and_cleanup(make_target, tmp_path: Path) -> None:
    target = make_target("canary_flow")
    data = {v: target.upload_model(v, _model_dir(tmp_path, f"v{v}")) for v in ("1", "2")}
    first = target.apply(Deployment(stable="1"), data)

    # canary: a new config with two variants, 90/10
    canary = Deployment(stable="1", canary="2", canary_percent=10, canary_started="2024-05-01T00:00:00Z")
    started = target.apply(canary, data)
    assert started["action"] == "updated" and started["config"] != first["config"]
    assert started["models_created"] == ["canary-flow-v2"]
    assert [c["EndpointConfigName"] for c in target.update_calls] == [started["config"]]
    assert _config_variants(target, started["config"]) == {"stable": ("canary-flow-v1", 90.0), "canary": ("canary-flow-v2", 10.0)}
    # moto fills CurrentWeight and DesiredWeight alike
    assert _endpoint_weights(target) == {"stable": (90.0, 90.0), "canary": (10.0, 10.0)}
    assert {v["variant"]: v["percent"] for v in target.verify(canary)["variants"]} == {"canary": 10.0, "stable": 90.0}

    # the share alone: update_endpoint_weights_and_capacities (implemented by moto), the config stays
    half = Deployment(stable="1", canary="2", canary_percent=50, canary_started=canary.canary_started)
    shifted = target.apply(half, data)
    assert shifted["action"] == "weights"
    assert shifted["config"] == started["config"] and shifted["config_created"] is None
    assert len(target.update_calls) == 1
    assert _endpoint_weights(target) == {"stable": (50.0, 50.0), "canary": (50.0, 50.0)}
    target.verify(half)
    with pytest.raises(RuntimeError, match=r"variant 'canary' takes 50.00 % of the traffic, expected 10.00 %"):
        target.verify(canary)

    # promotion: v2 alone on the stable variant
    promoted = target.apply(Deployment(stable="2"), data)
    assert promoted["action"] == "updated" and promoted["models_created"] == []
    assert _config_variants(target, promoted["config"]) == {"stable": ("canary-flow-v2", 1.0)}
    assert list(_endpoint_weights(target)) == ["stable"]
    target.verify(Deployment(stable="2"))

    # clean-up: the config in use and the one before it stay
    assert target.delete_old_configs(keep=2) == [first["config"]]
    left = {
        c["EndpointConfigName"] for c in target.sagemaker.list_endpoint_configs(NameContains="canary-flow-c")["EndpointConfigs"]
    }
    assert left == {started["config"], promoted["config"]}
    assert target.delete_old_configs(keep=1) == [started["config"]]
    target.verify(Deployment(stable="2"))


def test_verify_names_the_mismatch(make_target) -> None:
    target = make_target("verify_mismatch")
    data = {v: f"s3://{BUCKET}/models/verify_mismatch/{v}/model.tar.gz" for v in ("1", "2", "3")}
    deployment = Deployment(stable="1", canary="2", canary_percent=10)
    created = target.apply(deployment, data)  # a first deploy may start with a canary
    assert created["action"] == "created"
    target.verify(deployment)

    with pytest.raises(RuntimeError, match=r"variant 'canary' serves model verify-mismatch-v2, expected verify-mismatch-v3"):
        target.verify(Deployment(stable="1", canary="3", canary_percent=10))
    with pytest.raises(RuntimeError, match=r"variants \['canary', 'stable'\] are served, expected \['stable'\]"):
        target.verify(Deployment(stable="1"))
    # changed behind our back: the check reads what SageMaker reports, not what was applied
    target.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=target.endpoint_name,
        DesiredWeightsAndCapacities=[
            {"VariantName": "stable", "DesiredWeight": 70},
            {"VariantName": "canary", "DesiredWeight": 30},
        ],
    )
    with pytest.raises(RuntimeError, match=r"variant 'canary' takes 30.00 % .*expected 10.00 %"):
        target.verify(deployment)


def test_waits_report_failure_reason(make_target) -> None:
    from datetime import UTC, datetime

    from botocore.stub import Stubber

    target = make_target("failing_endpoint")
    now = datetime(2024, 5, 1, tzinfo=UTC)

    def described(status: str, config: str, reason: str | None = None) -> dict:
        desc = {
            "EndpointName": target.endpoint_name,
            "EndpointArn": f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{target.endpoint_name}",
            "EndpointConfigName": config,
            "EndpointStatus": status,
            "CreationTime": now,
            "LastModifiedTime": now,
        }
        return desc | ({"FailureReason": reason} if reason else {})

    with Stubber(target.sagemaker) as stub:
        stub.add_response("describe_endpoint", described("Creating", "c1"))
        stub.add_response(
            "describe_endpoint", described("Failed", "c1", "The primary container did not pass the ping health check.")
        )
        with pytest.raises(RuntimeError, match="failing-endpoint failed: The primary container did not pass the ping"):
            target.wait_in_service("c1")

        stub.add_response("describe_endpoint", described("Updating", "c1"))
        stub.add_response("describe_endpoint", described("InService", "c1", "Image pull failed for c2"))
        with pytest.raises(RuntimeError, match="update to c2 was rolled back .*still on c1.*: Image pull failed"):
            target.wait_in_service("c2")


def test_names_fit_sagemaker_limits(make_target) -> None:
    target = make_target("a_rather_long_model_name_that_keeps_going_and_going_past_the_limit")
    for name in (target.endpoint_name, target.model_name("123"), target.new_config_name()):
        assert len(name) <= MAX_NAME
        assert re.match(NAME_RE, name), name
    assert target._config_re.match(target.new_config_name())
    with pytest.raises(ValueError, match="alphanumeric"):
        target.model_name("1/../2")
    with pytest.raises(ValueError, match="no stable version"):
        target.desired_variants(Deployment())
