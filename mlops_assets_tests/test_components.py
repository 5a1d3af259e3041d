"""Model specs as Dagster components, driven with `dg` as a user does, in a copy of the project.

The copy (pyproject.toml and the package, first on PYTHONPATH) keeps the scaffolded model out of
the repository and out of every other test's code location. In it: `dg scaffold defs` writes a
model, `dg check yaml` and `dg check defs` pass on it and then fail on a broken one with the
spec's own message and the file (and line), the code location builds the new model's assets from
`defs/` next to the bundled ones, and `mlops check` finds it by name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops_assets_tests.conftest import REPO

BIN = Path(sys.executable).parent
NAME = "my_model"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "pyproject.toml", root)
    shutil.copytree(REPO / "mlops_assets", root / "mlops_assets", ignore=shutil.ignore_patterns("__pycache__"))
    for child in (root / "mlops_assets" / "defs").iterdir():  # only what this test scaffolds
        if child.is_dir():
            shutil.rmtree(child)
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "MLOPS_HOME": str(root / "home"),
        "VIRTUAL_ENV": str(BIN.parent),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLOPS_SPECS", None)
    env.pop("DAGSTER_HOME", None)
    return root, env


def dg(project, *args: str) -> subprocess.CompletedProcess:
    root, env = project
    return subprocess.run([str(BIN / "dg"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)


def defs_yaml(project) -> Path:
    return project[0] / "mlops_assets" / "defs" / NAME / "defs.yaml"


def test_dg_scaffolds_a_model_that_checks_and_loads(project):
    out = dg(project, "scaffold", "defs", "mlops_assets.components.ModelSpecComponent", NAME)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(defs_yaml(project).read_text())
    assert doc["type"] == "mlops_assets.components.ModelSpecComponent"
    assert doc["attributes"]["name"] == NAME and "deployment" not in doc["attributes"]

    assert dg(project, "check", "yaml").returncode == 0
    checked = dg(project, "check", "defs")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    root, env = project
    listing = subprocess.run(
        [sys.executable, "-c", "import json, mlops_assets.definitions as d; print(json.dumps([k.to_user_string() for k in d.defs.resolve_all_asset_keys()]))"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    keys = json.loads(listing.stdout.strip().splitlines()[-1])
    assert f"{NAME}/model" in keys and f"{NAME}/predictions" in keys and "flight_delays/model" in keys
    found = subprocess.run(
        [str(BIN / "mlops"), "check", "--spec", NAME], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert found.returncode == 0 and f"{NAME}: 11 source columns" in found.stdout, found.stdout + found.stderr


def test_dg_check_reports_a_broken_model_with_the_specs_own_words(project):
    path = defs_yaml(project)
    good = path.read_text()
    try:
        path.write_text(good.replace("\n  training:", "\n  trainig:", 1))  # a misspelled key: the schema is the spec's
        out = dg(project, "check", "yaml")
        assert out.returncode == 1
        assert f"{path}:" in out.stdout and "attributes.trainig" in out.stdout and "'trainig' was unexpected" in out.stdout

        path.write_text(good.replace("HistGradientBoostingClassifier", "HistGradientBoostingClassifer", 1))
        assert dg(project, "check", "yaml").returncode == 0  # a valid shape ...
        out = dg(project, "check", "defs")  # ... that the spec's own check refuses, naming file and field
        assert out.returncode == 1
        text = out.stdout + out.stderr
        assert f"{path}: estimator.class: module 'sklearn.ensemble' has no class 'HistGradientBoostingClassifer'" in text
    finally:
        path.write_text(good)


def test_dg_run_as_the_readme_writes_it_says_nothing_but_its_result(tmp_path):
    """`.venv/bin/dg check defs` from the repository, no virtual environment activated: no
    environment-mismatch warning, no telemetry notice (pyproject.toml's [tool.dg.cli])."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLOPS_SPECS", "DAGSTER_HOME")}
    env["MLOPS_HOME"] = str(tmp_path)
    out = subprocess.run(
        [str(BIN / "dg"), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert lines == ["All component YAML validated successfully.", "All definitions loaded successfully."], lines
