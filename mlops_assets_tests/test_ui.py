"""The demo and the UI as a new user meets them: `mlops demo`, then `mlops ui` in a real browser.

The demo runs as a person runs it (a subprocess, its own home) on the bundled flight_delays spec
under another name and on a free port, so its endpoint cannot collide with a server on 8787. Then
`mlops ui` starts the Dagster UI and the MLflow UI on that home, and headless Chromium (Debian's
`chromium`, driven by Playwright) opens the lineage, the model, the predictions' checks and the
endpoint, and checks what a person would look at. Screenshots are kept as test artifacts in
`test-artifacts/ui/` (the README's come from there). Finally Ctrl-C (SIGINT) stops both UIs, exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from mlops_assets_tests.conftest import REPO, free_port, stop_process_group

BIN = Path(sys.executable).parent
SPEC = "flights_ui"
DAYS = 7  # `make demo` lands 14; a week is enough for every phase and page (and keeps the suite short)
ARTIFACTS = REPO / "test-artifacts" / "ui"
STAGES = ("raw", "dataset", "features", "feature_registry", "online_features", "training_set", "model", "champion")
NOISE = ("Telemetry", "Warning", "INFO", "DEBUG", "Creating initial", "Successfully registered", "Created version", "alembic")

pytestmark = pytest.mark.slow


@dataclass
class Demo:
    env: dict[str, str]
    proc: subprocess.CompletedProcess
    mlflow_port: int


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    bundled = (REPO / "mlops_assets" / "specs" / "flight_delays.yaml").read_text()
    text = bundled.replace("name: flight_delays\n", f"name: {SPEC}\n", 1).replace("port: 8787\n", f"port: {free_port()}\n", 1)
    assert text.count(f"name: {SPEC}\n") == 1 and "port: 8787\n" not in text, "the bundled spec changed; adapt this test"
    (root / f"{SPEC}.yaml").write_text(text)
    mlflow_port = free_port()
    env = {
        **os.environ,
        "MLOPS_HOME": str(root / "home"),
        "MLOPS_SPECS": str(root / f"{SPEC}.yaml"),
        "MLOPS_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow_port}",  # where the UI's MLflow links point
        "COLUMNS": "100",
    }
    env.pop("DAGSTER_HOME", None)  # the demo uses the home's own instance, as `make demo` does
    args = [str(BIN / "mlops"), "demo", "--spec", SPEC, "--start", "2013-01-01", "--days", str(DAYS)]
    proc = subprocess.run(args, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    try:
        yield Demo(env, proc, mlflow_port)
    finally:  # the endpoint the demo started
        subprocess.run(
            [str(BIN / "mlops"), "serve", "--spec", SPEC, "--stop"],
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=120,
        )


def test_the_demo_shows_progress_and_a_guide_and_no_library_noise(demo):
    out, err = demo.proc.stdout, demo.proc.stderr
    assert demo.proc.returncode == 0, err[-4000:]
    assert err.strip() == "", err[-4000:]  # nothing from MLflow, SQLAlchemy, Dagster or Feast
    for noise in NOISE:
        assert noise not in out, noise
    for phase in ("landing", "ingesting", "training", "scoring", "deploying"):  # a progress bar each
        assert phase in out, phase
    assert f"{DAYS}/{DAYS}" in out and f"{DAYS + 1}/{DAYS + 1}" in out  # days landed; register + days ingested
    assert f"{SPEC}: champion version 1" in out and "holdout_roc_auc" in out and "(95 % interval 0." in out
    assert f"MLflow UI http://127.0.0.1:{demo.mlflow_port}" in out  # where its links point
    assert "checks: " in out and "make ui" in out and f"{SPEC}/predictions → Checks" in out
    failed = [line for line in out.splitlines() if line.strip().startswith("✗")]
    for line in failed:  # each red check is named with its own verdict ...
        assert f"{SPEC}/" in line and ":" in line, line
    if any(f"{SPEC}/predictions" in line for line in failed):  # ... and the demo says why monitoring is red
        assert "Why red on the demo" in out and "policies.drift.retrain_when" in out
    assert "curl -s http://127.0.0.1:" in out  # a request to paste


def _wait_for(log: Path, text: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        assert proc.poll() is None, f"mlops ui exited {proc.returncode}:\n{log.read_text()[-4000:]}"
        time.sleep(1)
    raise AssertionError(f"no {text!r} after {seconds:.0f} s:\n{log.read_text()[-4000:]}")


def _refuses(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return True
    return False


def _metadata_row(page, key: str):
    """The row of one metadata entry (its key cell exactly ``key``) in a metadata table."""
    return page.locator("tr").filter(has=page.locator("td").get_by_text(key, exact=True)).last


def _show_markdown_image(page, row_key: str) -> dict:
    """Open a markdown metadata entry (Dagster shows it behind "[Show Markdown]") and measure its image."""
    row = _metadata_row(page, row_key)
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator("img").first
    image.wait_for(state="visible", timeout=30_000)
    page.wait_for_timeout(500)  # the dialog's fade-in, for the screenshot
    return image.evaluate("i => ({w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width})")


def test_mlops_ui_serves_both_uis_and_the_browser_shows_the_models_story(demo, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    assert demo.proc.returncode == 0, demo.proc.stderr[-4000:]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen(
            [str(BIN / "mlops"), "ui", "--port", str(port)],
            cwd=REPO,
            env=demo.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(log, "Ctrl-C stops both.", ui, 240)
        assert f"MLflow UI: http://127.0.0.1:{demo.mlflow_port}" in log.read_text()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            skip = page.get_by_role("button", name="Skip")  # Dagster's first-visit community dialog
            page.add_locator_handler(skip, lambda: skip.click())  # dismissed whenever it shows up

            def shoot(name: str) -> None:
                if skip.is_visible():
                    skip.click()
                page.screenshot(path=str(ARTIFACTS / name))

            # the lineage at its default zoom: every stage's name whole, none cut with an ellipsis
            page.goto(f"{base}/locations/mlops_assets/asset-groups/{SPEC}/lineage", wait_until="networkidle")
            for stage in STAGES:
                label = page.get_by_text(stage, exact=True).first
                label.wait_for(state="visible", timeout=60_000)
                assert label.evaluate("e => e.scrollWidth <= e.clientWidth"), f"{stage} is cut"
            shoot("lineage.png")

            # the model: holdout metrics, its scores chart, and an MLflow link that leads to the run
            page.goto(f"{base}/assets/{SPEC}/model", wait_until="networkidle")
            page.get_by_text("holdout_roc_auc").first.click()  # (a click: the dialog handler runs first)
            text = page.inner_text("body")
            assert "training_partitions" in text and f"2013-01-01..{date(2013, 1, DAYS).isoformat()} ({DAYS} days)" in text
            run_link = next(w for w in text.split() if w.startswith(f"http://127.0.0.1:{demo.mlflow_port}/#/experiments/"))
            shoot("model.png")
            chart = _show_markdown_image(page, "holdout_scores")
            assert chart["w"] > 100 and chart["shown"] > 100, chart
            shoot("model_holdout_chart.png")
            page.keyboard.press("Escape")
            # its model card: intervals, importance (table and chart) and the worst slices, in place
            for entry, column in (("metric_intervals", "high"), ("feature_importance", "importance"), ("worst_slices", "gap")):
                row = _metadata_row(page, entry)
                assert row.locator("table").first.is_visible(), entry
                assert column in row.inner_text(), entry
            assert "carrier" in _metadata_row(page, "worst_slices").inner_text()
            importance = _show_markdown_image(page, "feature_importance_chart")
            assert importance["w"] > 100 and importance["shown"] > 100, importance
            shoot("model_card_importance.png")
            page.keyboard.press("Escape")
            run_id = run_link.rsplit("/", 1)[1]
            api = f"http://127.0.0.1:{demo.mlflow_port}/api/2.0/mlflow/runs/get?run_id={run_id}"
            with urllib.request.urlopen(api, timeout=10) as response:
                assert json.loads(response.read())["run"]["info"]["run_id"] == run_id
            page.goto(run_link)  # (the MLflow UI polls: never network-idle)
            page.get_by_text(run_id).first.wait_for(timeout=60_000)  # the MLflow UI shows that run

            # the predictions' checks: the drift table in place, and the drift plot
            page.goto(f"{base}/assets/{SPEC}/predictions?view=checks", wait_until="networkidle")
            page.get_by_text("feature_drift").first.click()
            table = page.locator("table", has=page.get_by_text("jensenshannon")).first
            table.wait_for(state="visible", timeout=60_000)
            assert "weekday" in table.inner_text() and "drifted" in table.inner_text()
            shoot("checks.png")
            plot = _show_markdown_image(page, "plot")
            assert plot["w"] > 100 and plot["shown"] > 100, plot
            shoot("checks_drift_plot.png")
            page.keyboard.press("Escape")

            # the endpoint: what serves and its audit history
            page.goto(f"{base}/assets/{SPEC}/endpoint", wait_until="networkidle")
            page.get_by_text("stable_version").first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            assert "first deployment: v1" in text and "server_start" in text
            shoot("endpoint.png")
            browser.close()
    finally:
        if ui.poll() is None:
            ui.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            code = ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process_group(ui)
            raise
    assert code == 0, log.read_text()[-4000:]
    assert "mlops ui: stopping" in log.read_text()
    assert _refuses(port) and _refuses(demo.mlflow_port)  # both servers and their children are gone
