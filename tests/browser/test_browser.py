"""The course in a real browser: JupyterLab in headless Chromium, checking only what nbval cannot.

The notebooks lane has already run every notebook under nbval: its cells, its
asserts, its stored outputs. This lane does not run them again. It checks what
only a browser shows:

- every committed notebook, opened as a learner first opens it: each stored
  output renders, every image loads, no error and no traceback shows (the
  widgets, which need a live kernel, are left to the next point), in
  tests/browser/test_browser_saved.py;
- every notebook live, as a learner's Run All (its time measured against the
  goal, tests/browser/run_all.py), and in particular those whose point is an
  interaction: 01's proof stepper, 02's
  animated widget (every label of the summary chart lies inside the chart;
  rewind and play move a token and the counters), 07's quiz (it opens
  unanswered: no choice selected, no feedback shown), each after Run All with
  every widget rendered and no error shown;
- 04 as the learner runs it: the cells up to the kill button, the button
  pressed once the consumer has paused, then the rest; the kill report names
  the button, and the tables the notebook promises are on the page. nbval runs
  04 with no one to press the button, through its fallback cell.

One JupyterLab server per module serves a temporary copy of ``notebooks/`` (with
``labs/`` and ``solutions/`` beside it, as notebook 00's course map expects) and
gets the run's stack through ``EO_HOME``. Each live Run All's wall time is
printed, and recorded with the test's report (tests/browser/run_all.py), which
writes them all to ``run_all_times_<broker>.json``.

Uses Debian's ``chromium`` through Playwright's ``executable_path`` (Playwright
never downloads a browser here). Where Chromium is not installed the tests are
skipped and say why (``-ra`` prints the reason). Screenshots and the times go to
``$EO_ARTIFACTS`` or ``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from effectively_once.stack.processes import free_port, pid_alive, port_open, stop_pid, wait_until
from tests.browser import run_all
from tests.browser.run_all import ARTIFACTS

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

# Every course notebook, and how long its Run All may take where this lane runs one (seconds).
NOTEBOOKS = {
    "00_start_here": 120,
    "01_two_generals": 120,
    "02_message_loss": 180,
    "03_kafka_guarantees": 300,
    "03b_kafka_4x": 300,
    "04_kill_the_consumer": 300,
    "04b_beyond_the_dedup_table": 240,
    "04c_two_workers_one_message": 240,
    "04d_order": 180,
    "04e_the_provider_talks_back": 240,
    "05_observability": 240,
    "06_incidents": 360,
    "07_review": 120,
}
# Every notebook runs live here, as a learner's Run All: its widgets render, no cell shows an error, and its
# time is measured (04 has its own test: the learner presses the kill button).
LIVE = tuple(name for name in NOTEBOOKS if name != "04_kill_the_consumer")


def _chromium() -> str | None:
    for candidate in (os.environ.get("EO_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable, or a skip that says how to get one."""
    path = _chromium()
    if path is None:
        pytest.skip("no Chromium: install Debian's `chromium` (apt-get install chromium) or set EO_CHROMIUM")
    return path


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def jupyterlab(chromium, stack, tmp_path_factory):
    """JupyterLab on a free loopback port, serving a copy of the course, on the run's stack; stopped by pid."""
    tmp = tmp_path_factory.mktemp("jupyterlab")
    work = tmp / "course"
    work.mkdir()
    for folder in ("notebooks", "labs", "solutions"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port, token = free_port(), secrets.token_hex(16)
    env = os.environ.copy()  # EO_HOME is the run's stack's (tests/services.py exported it)
    # The kernels import this checkout's package, wherever the venv's editable install points.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Keep the server's runtime files, settings and workspaces out of the user's home.
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("JUPYTER_CONFIG_DIR", "config")):
        env[var] = str(tmp / sub)
    # Render every cell (no windowing), so every output exists in the DOM wherever it is.
    settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    # No "get notified about Jupyter news?" toast over the screenshots.
    notices = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    notices.mkdir(parents=True)
    (notices / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    log = tmp / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
             "--ServerApp.port_retries=0", "--LabApp.news_url=", "--ServerApp.terminals_enabled=False",
             # window.jupyterapp: the tests run JupyterLab's own commands (Run All, save) through it.
             "--LabApp.expose_app_in_browser=True"]
            + (["--allow-root"] if os.geteuid() == 0 else []),
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    children: set[int] = set()
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 60, "JupyterLab", proc=proc, log=log)
        yield {"base": base, "token": token, "proc": proc, "log": log, "work": work, "children": children}
    finally:
        children.update(_descendants(proc.pid))
        _shutdown_kernels(base, token)
        stop_pid(proc.pid, timeout=15)
        assert not pid_alive(proc.pid), "JupyterLab is still running"
        left = [pid for pid in children if pid_alive(pid)]
        for pid in left:
            stop_pid(pid, timeout=5)
        assert not left, f"JupyterLab's kernels (or their children) outlived it: pids {left}"


@pytest.fixture(scope="module")
def browser(chromium, jupyterlab):
    """One headless Chromium for the module; each test opens its own page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        running = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield running
        finally:
            running.close()


def _api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else None


def _shutdown_kernels(base: str, token: str) -> None:
    # Kernels are the server's children: shut them down through the API before stopping the server.
    try:
        for kernel in _api(base, token, "/api/kernels"):
            _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    except OSError:
        pass


# -- driving JupyterLab ---------------------------------------------------------------------
# The notebook panel of PATH, through the app JupyterLab exposes (--LabApp.expose_app_in_browser).
PANEL = """(path) => {
    for (const w of window.jupyterapp.shell.widgets('main')) {
        if (w.context && w.context.path === path) return w;
    }
    return null;
}"""

# Where a notebook stands: its kernel's status, and per code cell its execution count and error outputs.
STATE = f"""(path) => {{
    const panel = ({PANEL})(path);
    if (!panel) return null;
    const kernel = panel.sessionContext.session?.kernel;
    const cells = [];
    const model = panel.content.model;
    for (let i = 0; i < model.cells.length; i++) {{
        const cell = model.cells.get(i);
        if (cell.type !== 'code') continue;
        const outputs = cell.outputs.toJSON();
        cells.push({{index: i, count: cell.executionCount,
                     errors: outputs.filter(o => o.output_type === 'error')
                                    .map(o => o.ename + ': ' + o.evalue)}});
    }}
    return {{kernel: kernel ? kernel.status : 'none', cells}};
}}"""

# Run one of JupyterLab's commands on the notebook PATH, with its cell INDEX active (-1: leave it).
COMMAND = f"""([path, command, index]) => {{
    const panel = ({PANEL})(path);
    window.jupyterapp.shell.activateById(panel.id);
    if (index >= 0) panel.content.activeCellIndex = index;
    // Not awaited: Run All's promise settles only when the last cell is done; the test polls instead.
    window.jupyterapp.commands.execute(command);
    return true;
}}"""

SAVE = f"""async (path) => {{
    const panel = ({PANEL})(path);
    await panel.context.save();
    return true;
}}"""

CELL_INDEX = f"""([path, needle]) => {{
    const model = ({PANEL})(path).content.model;
    for (let i = 0; i < model.cells.length; i++) {{
        if (model.cells.get(i).sharedModel.getSource().includes(needle)) return i;
    }}
    return -1;
}}"""

# Tracebacks on the page: the stderr stream and the error outputs both render with this mime type.
STDERR_TRACEBACKS = """() => [...document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.innerText).filter(t => t.includes('Traceback'))"""


KERNEL_DIALOG = ".jp-Dialog button.jp-mod-accept"


def _open(page, jupyterlab: dict, path: str) -> None:
    # A workspace of its own, so that JupyterLab does not reopen the notebooks of earlier tests beside it.
    workspace = f"eo-{secrets.token_hex(4)}"
    page.goto(f"{jupyterlab['base']}/lab/workspaces/{workspace}/tree/{urllib.parse.quote(path)}"
              f"?token={jupyterlab['token']}", timeout=60_000)
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell", timeout=60_000)
    idle = f"({PANEL})(path)?.sessionContext.session?.kernel?.status === 'idle'"
    # A fresh JupyterLab may ask which kernel to start (the notebook's own, python3, is preselected) before it
    # starts one: wait for whichever comes first, the question or the idle kernel, and answer the question.
    page.wait_for_function(f"(path) => !!document.querySelector('{KERNEL_DIALOG}') || {idle}", arg=path,
                           timeout=60_000)
    if page.locator(KERNEL_DIALOG).count():
        page.locator(KERNEL_DIALOG).first.click()
    page.wait_for_function(f"(path) => {idle}", arg=path, timeout=60_000)
    jupyterlab["children"].update(_descendants(jupyterlab["proc"].pid))


def _command(page, path: str, command: str, index: int = -1) -> None:
    page.evaluate(COMMAND, [path, command, index])


def _run(page, path: str, command: str, cells: range | None, timeout: float, index: int = -1) -> float:
    """Run ``command``; wait until the kernel is idle and ``cells`` (code cells, default all) are counted.

    Returns the wall time. Fails at once, naming the cell, when a cell shows an error.
    """
    _command(page, path, command, index)
    start = time.monotonic()
    deadline = start + timeout
    idle_since = None
    while True:
        state = page.evaluate(STATE, path)
        wanted = [c for c in state["cells"] if cells is None or c["index"] in cells]
        errors = [(c["index"], e) for c in state["cells"] for e in c["errors"]]
        assert not errors, f"{path}: cells raised {errors}"
        idle = state["kernel"] == "idle"
        if idle and all(c["count"] is not None for c in wanted):
            return time.monotonic() - start
        # Idle for a while with cells left: the run stopped (an error, or a cell never queued).
        idle_since = (idle_since or time.monotonic()) if idle else None
        missing = [c["index"] for c in wanted if c["count"] is None]
        assert not (idle_since and time.monotonic() - idle_since > 20), (
            f"{path}: the kernel is idle but cells {missing} never ran")
        assert time.monotonic() < deadline, (
            f"{path}: {command} not done after {timeout:.0f} s; cells {missing} have not run "
            f"(kernel {state['kernel']})")
        time.sleep(0.5)


def _clear(page, path: str) -> None:
    _command(page, path, "notebook:clear-all-cell-outputs")
    page.wait_for_function(f"(path) => ({STATE})(path).cells.every(c => c.count === null)", arg=path,
                           timeout=20_000)


def _saved_and_clean(page, jupyterlab: dict, path: str) -> dict:
    """Save the notebook; check the saved file: every code cell counted, no error output. Returns it."""
    page.evaluate(SAVE, path)
    saved = _api(jupyterlab["base"], jupyterlab["token"], f"/api/contents/{urllib.parse.quote(path)}?content=1")
    code = [c for c in saved["content"]["cells"] if c["cell_type"] == "code"]
    assert code, f"{path} was saved without code cells"
    unrun = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unrun, f"{path}: saved with code cells {unrun} never run"
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in code for o in c.get("outputs", [])
              if o["output_type"] == "error"]
    assert not errors, f"{path}: the saved notebook holds error outputs {errors}"
    tracebacks = page.evaluate(STDERR_TRACEBACKS)
    assert not tracebacks, f"{path}: the page shows a traceback on stderr:\n{tracebacks[0][:2000]}"
    return saved


def _output_text(saved: dict) -> str:
    """All text of the saved notebook's outputs: streams, text/plain and text/html."""
    parts = []
    for cell in saved["content"]["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
            for mime in ("text/plain", "text/html"):
                value = out.get("data", {}).get(mime)
                if value:
                    parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def _shutdown_session(jupyterlab: dict, path: str) -> None:
    """Stop the notebook's kernel (its labs clean up at exit), so the next notebook has the machine."""
    for session in _api(jupyterlab["base"], jupyterlab["token"], "/api/sessions"):
        if session.get("path") == path:
            _api(jupyterlab["base"], jupyterlab["token"], f"/api/sessions/{session['id']}", method="DELETE")


def _report_time(record_property, capsys, name: str, seconds: float, stack) -> None:
    run_all.record(record_property, name, seconds, stack)
    with capsys.disabled():
        print(f"\n[browser] {name}: Run All took {seconds:.1f} s on {stack.broker_flavor}", flush=True)


# -- per-notebook checks after Run All ------------------------------------------------------
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


def _check_message_loss_widget(page, saved: dict) -> None:
    """02: the summary chart's labels all lie inside it; rewind and play moves a token and the counters."""
    widget = page.locator(".eo-message-loss-widget").first
    widget.wait_for(timeout=60_000)
    # Run All leaves the widget at step 0; its "last step" button shows the summary chart.
    widget.locator("button.eo-end").click()
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
    page.screenshot(path=str(ARTIFACTS / "browser_02_message_loss.png"), full_page=False)
    assert second > first, f"counters did not move while playing ({first} -> {second})"
    assert page.locator("svg.eo-message-loss line").count() > 4, "the diagram draws no arrows"


# The quiz widgets of notebook 07 as the page shows them.
QUIZ_STATE = """() => {
    const area = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
    const radios = [...area.querySelectorAll('.widget-radio-box input[type="radio"]')];
    return {
        groups: area.querySelectorAll('.widget-radio-box').length,
        radios: radios.length,
        checked: radios.filter(r => r.checked).map(r => r.parentElement.innerText.trim()),
        // A choice whose text needs more height than its label has is drawn over the next choice.
        overflowing: radios.map(r => r.parentElement).filter(l => l.scrollHeight > l.clientHeight + 1)
                     .map(l => l.innerText.trim()),
        textareas: [...area.querySelectorAll('.widget-textarea textarea')].map(t => t.value),
        feedback: [...area.querySelectorAll('.jp-OutputArea-output .widget-html-content')]
                  .map(e => e.innerText.trim())
                  .filter(t => /^(Right\\.|Not quite\\.|Pick an answer first\\.|Model answer\\.)/.test(t)),
    };
}"""


def _check_quiz_unanswered(page, saved: dict) -> None:
    """07: after Run All both quizzes open unanswered: nothing selected, no feedback, empty answers."""
    page.wait_for_selector(".widget-radio-box input[type='radio']", timeout=30_000)
    quiz = page.evaluate(QUIZ_STATE)
    assert quiz["groups"] >= 2 and quiz["radios"] >= 6, f"the quiz widgets did not render: {quiz}"
    assert not quiz["checked"], f"Run All picked answers for the learner: {quiz['checked']}"
    assert not quiz["feedback"], f"the quiz shows feedback nobody asked for: {quiz['feedback']}"
    assert quiz["textareas"] and not any(quiz["textareas"]), f"the open questions are not empty: {quiz}"
    assert not quiz["overflowing"], f"choices drawn over the next one: {quiz['overflowing']}"
    page.locator(".widget-radio-box").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "browser_07_quiz_unanswered.png"))


AFTER_RUN_ALL = {"02_message_loss": _check_message_loss_widget, "07_review": _check_quiz_unanswered}


# -- a notebook as it was saved ---------------------------------------------------------------
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# Per code cell of PATH: the outputs its model holds, the output areas the page shows, and which of them
# render a widget (those need a live kernel, so a saved notebook shows them only once run).
RENDERED = f"""(path) => {{
    const panel = ({PANEL})(path);
    const model = panel.content.model;
    const cells = [];
    for (let i = 0; i < model.cells.length; i++) {{
        const cell = model.cells.get(i);
        if (cell.type !== 'code') continue;
        const node = panel.content.widgets[i].node;
        const shown = [...node.querySelectorAll('.jp-OutputArea-output')];
        const saved = cell.outputs.toJSON();
        cells.push({{index: i, saved: saved.length,
                     widgets: saved.filter(o => o.data && '{WIDGET_MIME}' in o.data).length,
                     shown: shown.length,
                     empty: shown.filter(e => !e.innerHTML.trim()).length}});
    }}
    return cells;
}}"""

# Images in output areas that did not load (a broken data URL, a missing file).
BROKEN_IMAGES = """() => [...document.querySelectorAll('.jp-OutputArea-output img')]
    .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => (img.src || '').slice(0, 80))"""

# The message ipywidgets shows where a widget cannot be displayed.
WIDGET_ERRORS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
    .map(e => e.innerText).filter(t => t.includes('Error displaying widget'))"""


def _check_saved_rendering(page, path: str) -> list[dict]:
    """Each stored output of the saved notebook renders, every image loads, no traceback shows; returns the cells."""
    page.wait_for_function(f"(path) => ({RENDERED})(path).every(c => c.shown >= c.saved)", arg=path,
                           timeout=60_000)
    cells = page.evaluate(RENDERED, path)
    missing = [c["index"] for c in cells if c["shown"] < c["saved"]]
    assert not missing, f"{path}: cells {missing} show fewer outputs than they hold"
    blank = [c["index"] for c in cells if c["empty"] > c["widgets"]]
    assert not blank, f"{path}: cells {blank} show an empty output"
    broken = page.evaluate(BROKEN_IMAGES)
    assert not broken, f"{path}: images that did not load: {broken}"
    tracebacks = page.evaluate(STDERR_TRACEBACKS)
    assert not tracebacks, f"{path}: the page shows a traceback on stderr:\n{tracebacks[0][:2000]}"
    return cells


def _check_widgets_render(page, path: str, saved: dict) -> None:
    """After a live run: every widget output renders, none shows ipywidgets' error."""
    wanted = sum(1 for c in saved["content"]["cells"] for o in c.get("outputs", []) if WIDGET_MIME in o.get("data", {}))
    if not wanted:
        return
    page.wait_for_function("(n) => document.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length >= n",
                           arg=wanted, timeout=30_000)
    errors = page.evaluate(WIDGET_ERRORS)
    assert not errors, f"{path}: widgets that did not display: {errors}"


# -- the tests ------------------------------------------------------------------------------
@contextlib.contextmanager
def _notebook_page(browser, jupyterlab: dict, name: str, *, clear: bool = True, shot: str = ""):
    """A page with notebook NAME open and cleared (as saved, with ``clear=False``); a screenshot if the test
    fails (``browser_<name><shot>_failure.png``); its kernel stopped after."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = f"notebooks/{name}.ipynb"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open(page, jupyterlab, path)
        if clear:
            _clear(page, path)
        yield page, path
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"browser_{name}{shot}_failure.png"))
        raise
    finally:
        page.close()
        _shutdown_session(jupyterlab, path)


def _end_state(page, jupyterlab: dict, path: str, name: str) -> dict:
    """Save and check the notebook (see ``_saved_and_clean``), then screenshot its last cell."""
    saved = _saved_and_clean(page, jupyterlab, path)
    page.locator(".jp-Notebook .jp-Cell").last.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"))
    return saved


def _live_params():
    for name in LIVE:
        yield pytest.param(name, NOTEBOOKS[name], id=name, marks=pytest.mark.timeout(NOTEBOOKS[name] + 120))


@pytest.mark.parametrize(("name", "limit"), list(_live_params()))
def test_every_notebook_runs_all_cells_in_jupyterlab(name, limit, browser, jupyterlab, stack, capsys,
                                                      record_property):
    """Open the notebook, clear it, Run All: every cell runs, every widget renders, no error; then its own checks."""
    with _notebook_page(browser, jupyterlab, name) as (page, path):
        seconds = _run(page, path, "notebook:run-all-cells", None, limit)
        _report_time(record_property, capsys, name, seconds, stack)
        saved = _end_state(page, jupyterlab, path, name)
        _check_widgets_render(page, path, saved)
        if name in AFTER_RUN_ALL:
            AFTER_RUN_ALL[name](page, saved)


KILL_REPORT = "SIGKILL sent to consumer pid"


@pytest.mark.timeout(NOTEBOOKS["04_kill_the_consumer"] + 180)
def test_learner_kills_the_consumer_in_notebook_04(browser, jupyterlab, stack, capsys, record_property):
    """Run 04 up to the kill button, press it once the consumer paused, run the rest; check the tables."""
    name = "04_kill_the_consumer"
    limit = NOTEBOOKS[name]
    with _notebook_page(browser, jupyterlab, name) as (page, path):
        button_cell = page.evaluate(CELL_INDEX, [path, "lab.kill_button(consumer)"])
        kill_cell = page.evaluate(CELL_INDEX, [path, "kill = lab.kill_consumer(consumer)"])
        assert 0 < button_cell < kill_cell, (button_cell, kill_cell)
        # Everything above the fallback cell: the lab, the paused consumer, and the button.
        before = _run(page, path, "notebook:run-all-above", range(kill_cell), limit, index=kill_cell)
        # The notebook says to press once the consumer has paused; the cell above the button waits for that.
        page.get_by_text("paused at after_provider_call with msg-nb04-00000").first.wait_for(timeout=10_000)
        button = page.locator("button", has_text="SIGKILL pid").first
        button.scroll_into_view_if_needed()
        button.click()
        report = page.locator(".jp-OutputArea-output", has_text=KILL_REPORT).first
        report.wait_for(timeout=30_000)
        assert "by you (the button)" in report.inner_text(), report.inner_text()
        page.screenshot(path=str(ARTIFACTS / "browser_04_kill_button_pressed.png"))
        after = _run(page, path, "notebook:run-all-below", None, limit, index=kill_cell)
        _report_time(record_property, capsys, name, before + after, stack)
        saved = _end_state(page, jupyterlab, path, name)
        _check_widgets_render(page, path, saved)

        cells = saved["content"]["cells"]
        fallback = _output_text({"content": {"cells": [cells[kill_cell]]}})
        assert KILL_REPORT in fallback and "by you (the button)" in fallback, (
            f"the kill cell should report the learner's SIGKILL, not its own:\n{fallback}")
        assert "by lab.kill_consumer()" not in fallback, fallback
        text = _output_text(saved)
        for promised in ("<b>shop: charges</b>", "<b>provider: ledger</b>", "<b>provider: idempotency_keys</b>",
                         "Idempotent-Replayed: true", "<th>idempotency_key</th>", "charge-msg-nb04-00000"):
            assert promised in text, f"notebook 04 promises {promised!r}; its outputs lack it"
        # The same tables as the learner sees them on the page.
        for caption in ("shop: charges", "provider: ledger", "provider: idempotency_keys"):
            assert page.locator("caption", has_text=caption).count() >= 1, f"no table {caption!r} on the page"
        assert page.get_by_text("Idempotent-Replayed: true").count() >= 1
