"""Notebook 02 in a real browser: JupyterLab in headless Chromium, run all, read the chart, press play.

After Run All the widget stands at its last step: every label of the summary chart
must lie inside the chart (``getBBox`` of each text against the SVG's viewBox).
Then rewind and play: a token must move between animation frames and the counters
must count.

Uses Debian's ``chromium`` through Playwright's ``executable_path`` (Playwright
never downloads a browser here). Where Chromium is not installed the test is
skipped and says why (``-ra`` prints the reason). Screenshots go to
``$EO_ARTIFACTS`` or ``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from effectively_once.stack.processes import free_port, pid_alive, port_open, stop_pid, wait_until

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_message_loss.ipynb"
ARTIFACTS = Path(os.environ.get("EO_ARTIFACTS") or ROOT / "tests" / "artifacts")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("EO_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def chromium() -> str:
    """The Chromium executable, or a skip that says how to get one."""
    path = _chromium()
    if path is None:
        pytest.skip("no Chromium: install Debian's `chromium` (apt-get install chromium) or set EO_CHROMIUM")
    return path


@pytest.fixture
def jupyterlab(chromium, tmp_path):
    """JupyterLab on a free loopback port, serving a temporary copy of notebook 02; stopped by pid."""
    work = tmp_path / "course"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    port, token = free_port(), secrets.token_hex(16)
    env = os.environ.copy()
    # Keep the server's runtime files, settings and workspaces out of the user's home.
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("JUPYTER_CONFIG_DIR", "config")):
        env[var] = str(tmp_path / sub)
    # Render every cell (no windowing), so the widget's output exists in the DOM wherever it is.
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    # No "get notified about Jupyter news?" toast over the screenshot.
    notices = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    notices.mkdir(parents=True)
    (notices / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    log = tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
             "--ServerApp.port_retries=0", "--LabApp.news_url=", "--ServerApp.terminals_enabled=False"]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 60, "JupyterLab", proc=proc, log=log)
        yield {"base": base, "token": token, "proc": proc, "log": log}
    finally:
        _shutdown_kernels(base, token)
        stop_pid(proc.pid, timeout=15)
        assert not pid_alive(proc.pid), "JupyterLab is still running"


def _api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def _shutdown_kernels(base: str, token: str) -> None:
    # Kernels are the server's children: shut them down through the API before stopping the server.
    try:
        for kernel in _api(base, token, "/api/kernels"):
            _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    except OSError:
        pass


def _counter(page, name: str) -> int:
    return int(page.locator(f'.eo-counter[data-name="{name}"]').first.inner_text())


# Each text of the summary chart against the chart's own viewBox, measured by the browser's fonts.
CLIPPED_LABELS = """() => {
    const svg = document.querySelector('svg.eo-summary');
    if (!svg) return null;
    const box = svg.viewBox.baseVal;
    return [...svg.querySelectorAll('text')].map(t => {
        const b = t.getBBox();
        return {text: t.textContent, left: b.x, right: b.x + b.width, top: b.y, bottom: b.y + b.height,
                inside: b.x >= box.x && b.x + b.width <= box.x + box.width
                        && b.y >= box.y && b.y + b.height <= box.y + box.height};
    });
}"""

# Where the travelling token is, over 40 animation frames (null while none is in flight).
TOKEN_TRACK = """async () => {
    const seen = [];
    for (let i = 0; i < 40; i++) {
        await new Promise(r => requestAnimationFrame(r));
        const t = document.querySelector('.eo-token');
        const x = t && (t.getAttribute('cx') ?? t.getAttribute('x'));
        seen.push(t ? x + ',' + (t.getAttribute('cy') ?? t.getAttribute('y')) : null);
    }
    return seen;
}"""


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_message_loss_widget_plays_in_jupyterlab(chromium, jupyterlab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_02_message_loss.png"
    url = f"{jupyterlab['base']}/lab/tree/{NOTEBOOK.name}?token={jupyterlab['token']}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url, timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            # A fresh JupyterLab may ask which kernel to start; the notebook's own (python3) is preselected.
            try:
                page.locator(".jp-Dialog button.jp-mod-accept").click(timeout=10_000)
            except PlaywrightTimeout:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            widget = page.locator(".eo-message-loss-widget").first
            widget.wait_for(timeout=60_000)
            # Run All ends with the widget at its last step, where the summary chart appears.
            page.wait_for_function(
                "() => [...document.querySelectorAll('.eo-counter[data-name=\"messages\"]')]"
                ".some(e => e.textContent.trim() === '10')", timeout=60_000)
            summary = page.locator("svg.eo-summary").first
            summary.wait_for(timeout=20_000)
            assert "Out of 1000 messages" in widget.inner_text()
            summary.scroll_into_view_if_needed()
            summary.screenshot(path=str(ARTIFACTS / "browser_02_summary_chart.png"))
            labels = page.evaluate(CLIPPED_LABELS)
            assert labels and sum(label["text"].endswith("duplicated") for label in labels) >= 4, labels
            clipped = [label for label in labels if not label["inside"]]
            assert not clipped, f"summary labels drawn outside the chart: {clipped}"

            widget.locator("button.eo-rewind").click()              # back to step 0
            page.wait_for_function(
                "() => document.querySelector('.eo-counter[data-name=\"network sends\"]').textContent.trim() === '0'",
                timeout=20_000)
            widget.scroll_into_view_if_needed()
            widget.locator("button.eo-play").click()
            page.wait_for_function(
                "() => +document.querySelector('.eo-counter[data-name=\"network sends\"]').textContent >= 2",
                timeout=30_000)
            first = _counter(page, "deliveries") + _counter(page, "network sends")
            track = page.evaluate(TOKEN_TRACK)
            positions = {xy for xy in track if xy is not None}
            assert len(positions) >= 3, f"no token travelled along a lane over 40 frames: {track}"
            time.sleep(2.0)
            second = _counter(page, "deliveries") + _counter(page, "network sends")
            page.screenshot(path=str(shot), full_page=False)
            assert second > first, f"counters did not move while playing ({first} -> {second})"
            assert page.locator("svg.eo-message-loss line").count() > 4, "the diagram draws no arrows"
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser_02_message_loss_failure.png"))
            raise
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
