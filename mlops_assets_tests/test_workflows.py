"""The CI/CD workflows: actionlint finds nothing, and they drive the platform the way the README says
(the test command, `dagster job execute` of the spec's jobs, both images, an approval before production)."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from mlops_assets import environments
from mlops_assets.core import names
from mlops_assets_tests.conftest import DATA_DIR, REPO
from mlops_assets_tests.infra_tools import actionlint, load_script

WORKFLOWS = REPO / ".github" / "workflows"
SCRIPTS = REPO / ".github" / "scripts"


def load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_actionlint_finds_nothing_in_any_workflow():
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert {f.name for f in files} >= {"ci.yml", "train-and-promote.yml"}
    findings = {name: found for name, found in actionlint(files).items() if found}
    assert findings == {}


def test_actionlint_is_live(tmp_path):
    """A defect actionlint must report (an unknown context property and a misspelt action input)."""
    broken = tmp_path / "broken.yml"
    text = (WORKFLOWS / "ci.yml").read_text()
    broken.write_text(text.replace("python-version: ${{ env.PYTHON_VERSION }}", "python-versio: ${{ github.event_nme }}", 1))
    found = actionlint([broken])[str(broken)]
    kinds = {f["kind"] for f in found}
    assert {"action", "expression"} <= kinds, found


def test_ci_runs_the_readme_test_command_the_spec_jobs_and_builds_both_images():
    ci = load("ci.yml")
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make test" in runs(ci["jobs"]["test"])
    assert {"push", "pull_request"} <= set(ci["on"])
    assert ci["permissions"] == {"contents": "read"}

    pipeline = runs(ci["jobs"]["pipeline"])
    spec = ci["jobs"]["pipeline"]["env"]["SPEC"]
    for kind in ("register", "ingest", "train", "score"):
        assert f'-j "{names.job_name(kind, "$SPEC")}"' in pipeline
    assert "dagster job execute -m mlops_assets.definitions" in pipeline and spec == "flight_delays"

    targets = set(re.findall(r"^FROM \S+ AS (\S+)", (REPO / "infra" / "Dockerfile").read_text(), re.MULTILINE))
    built = {entry["target"] for entry in ci["jobs"]["images"]["strategy"]["matrix"]["include"]}
    assert built == {"code-location", "serving"} and built <= targets

    infra = runs(ci["jobs"]["infra"])
    for test_file in re.findall(r"mlops_assets_tests/\S+\.py", infra):
        assert (REPO / test_file).exists(), test_file


def test_promotion_to_production_needs_the_protected_environment_and_the_gate():
    flow = load("train-and-promote.yml")
    assert {"workflow_dispatch", "schedule"} <= set(flow["on"])
    train, promote = flow["jobs"]["train"], flow["jobs"]["promote"]
    assert train["environment"] == "staging"
    environment = promote["environment"]
    assert (environment["name"] if isinstance(environment, dict) else environment) == "production"
    assert promote["needs"] == "train" and "needs.train.outputs.decision == 'promoted'" in promote["if"]
    assert f'-j "{names.job_name("train", "$SPEC")}"' in runs(train)
    assert f'-j "{names.job_name("deploy", "$SPEC")}"' in runs(promote)
    # both jobs set exactly the variables the cloud profiles read (Terraform outputs carry the same names)
    profile = {getattr(environments.CLOUD_VARS, f) for f in environments.CloudVars.__dataclass_fields__}
    profile |= set(environments.DAGSTER_PG_VARS)
    for job in (train, promote):
        assert set(job["env"]) - {"DAGSTER_HOME"} == profile
        assert all(value == f"${{{{ secrets.{name} }}}}" for name, value in job["env"].items() if name != "DAGSTER_HOME")


def _script(name: str):
    return load_script(SCRIPTS / f"{name}.py")


def test_fetch_datasets_checks_hashes_and_derives_elec2_byte_for_byte(tmp_path):
    fetch = _script("fetch_datasets")
    for name, (_url, expected) in fetch.SOURCES.items():
        local = DATA_DIR / name
        if not local.exists():
            pytest.fail(f"{local} is missing: the tests read the datasets from MLOPS_DATA_DIR")
        assert fetch.sha256(local) == expected, name
        # a download is the same code path with a file:// URL: kept when the hash matches ...
        fetch.fetch(local.as_uri(), tmp_path / name, expected)
        assert (tmp_path / name).read_bytes() == local.read_bytes()
    # ... and refused, naming the file, when it does not
    with pytest.raises(SystemExit, match="hour.csv"):
        fetch.fetch(
            (DATA_DIR / "bike_sharing" / "day.csv").as_uri(),
            tmp_path / "x" / "hour.csv",
            fetch.SOURCES["bike_sharing/hour.csv"][1],
        )
    shutil.rmtree(tmp_path / "x")
    assert fetch.main(str(tmp_path)) == 0
    assert fetch.sha256(tmp_path / "elec2" / "elec2_with_timestamp.csv") == fetch.ELEC2_DERIVED_SHA256
    assert fetch.ELEC2_DERIVED_SHA256 == fetch.sha256(DATA_DIR / "elec2" / "elec2_with_timestamp.csv")
