"""The course as a website: build it, then read every page in headless Chromium, as a reader with no network.

The module builds the site once (``tools/website.py``, as ``make site`` does)
into a temporary folder and serves it on a free loopback port. Chromium may
fetch nothing but that server: any other request is blocked and is a failure,
so the pages are checked as they open on a machine without internet. For every
page, the landing page and one per notebook of the course map, in its order:

- the page loads with no console error, no page error, no failed request and
  no request to another host;
- every internal link resolves (HTTP 200, and its ``#anchor`` exists on the
  target page), every image has loaded; the sidebar lists the notebooks in the
  order of the map;
- the links of its "Sources and further reading" are the notebook's, as links;
- a screenshot of the whole page goes to ``$EO_ARTIFACTS/site`` or ``artifacts/site``.

And per notebook, the outputs a reader comes for: the course map table (landing
page and 00), 02's widget as its static SVG frame, 04's crash matrix, 05's
dashboard, every image output of each notebook, a note where a widget with no
picture stood, and the notebook and its lab offered as downloads (the very
files) with the note on ``make lab``. Last, the built site holds no path of this
machine and no note on how the course was made.

Uses Debian's ``chromium`` through Playwright's ``executable_path`` (Playwright
never downloads a browser here); without it the tests are skipped and say why.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from effectively_once.course.map import COURSE

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EO_ARTIFACTS") or ROOT / "artifacts") / "site"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SOURCES_HEADING = "Sources and further reading"
MARKDOWN_LINK = re.compile(r"\]\((https?://[^)\s]+)\)|<(https?://[^>\s]+)>")
PAGES = ["index"] + [nb.stem for nb in COURSE]



def _load_website():
    spec = importlib.util.spec_from_file_location("website_tool", ROOT / "tools" / "website.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def website():
    return _load_website()


@pytest.fixture(scope="module")
def built(website, tmp_path_factory) -> Path:
    """The site, built from this checkout into a temporary folder."""
    out = tmp_path_factory.mktemp("site") / "html"
    try:
        return website.build(out)
    except website.SiteError as err:
        pytest.fail(f"make site failed: {err}")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(built):
    """The built site on a free loopback port, stopped with the module."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(built)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable, or a skip that says how to get one."""
    for candidate in (os.environ.get("EO_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium: install Debian's `chromium` (apt-get install chromium) or set EO_CHROMIUM")


@pytest.fixture(scope="module")
def browser(chromium):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        running = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield running
        finally:
            running.close()


def page_path(name: str) -> str:
    return f"{name}.html"


class Opened:
    """A page loaded in Chromium that may reach only the site's server, with everything that went wrong."""

    def __init__(self, browser, base: str, name: str, path: str | None = None, ready: str = "article") -> None:
        self.problems: list[str] = []
        self.name = name
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._only_the_site(base))
        self.page = page = self.context.new_page()
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        page.goto(base + (path or page_path(name)), wait_until="networkidle", timeout=60_000)
        page.wait_for_selector(ready, timeout=30_000)
        # An image below the fold may load lazily: scroll through the page so that each one loads.
        page.evaluate("""async () => {
            for (let y = 0; y < document.body.scrollHeight; y += 600) {
                window.scrollTo(0, y); await new Promise(r => setTimeout(r, 30));
            }
            window.scrollTo(0, 0);
        }""")
        page.wait_for_load_state("networkidle")

    def _only_the_site(self, base: str):
        def route(r) -> None:
            if r.request.url.startswith(base):
                r.continue_()
            else:
                self.problems.append(f"request to another host: {r.request.url}")
                r.abort()
        return route

    def screenshot(self, suffix: str = "", full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}{suffix}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def open_page(browser, served):
    """open_page(name) -> the page, opened once for the module (its problems are those of its loading)."""
    opened: dict[str, Opened] = {}

    def open_(name: str) -> Opened:
        if name not in opened:
            opened[name] = Opened(browser, served, name)
        return opened[name]

    yield open_
    for o in opened.values():
        o.close()


@functools.cache
def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def _notebook(stem: str) -> dict:
    return json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())


def _outputs(stem: str):
    for cell in _notebook(stem)["cells"]:
        if cell["cell_type"] == "code":
            yield from cell.get("outputs", [])


# --- every page -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PAGES)
def test_page_opens_clean_offline_and_its_links_resolve(name, open_page, served):
    """No console error, nothing from another host; every internal link and anchor resolves; a screenshot."""
    opened = open_page(name)
    page = opened.page
    opened.screenshot()
    assert not opened.problems, f"{name}: " + "\n".join(opened.problems)
    hrefs = page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")
    internal = sorted({h for h in hrefs if h.startswith(served)})
    assert len(internal) > len(COURSE), f"{name} links to {len(internal)} places on the site, fewer than its pages"
    broken = []
    for href in internal:
        url, _, anchor = href.partition("#")
        status, body = _fetch(url)
        if status != 200:
            broken.append(f"{href}: HTTP {status}")
        elif anchor and f'id="{urllib.parse.unquote(anchor)}"'.encode() not in body:
            broken.append(f"{href}: no element with id {anchor!r} there")
    assert not broken, f"{name}: internal links that do not resolve:\n" + "\n".join(broken)
    images = page.evaluate("""() => [...document.querySelectorAll('img')]
        .map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth, complete: i.complete}))""")
    unloaded = [i for i in images if not i["complete"] or i["width"] == 0]
    assert not unloaded, f"{name}: images that did not load: {unloaded}"
    nav = page.evaluate("() => [...document.querySelectorAll('nav.bd-docs-nav a.reference.internal')]"
                        ".map(a => a.getAttribute('href'))")
    current = "#" if name != "index" else None
    expected = [current if nb.stem == name else page_path(nb.stem) for nb in COURSE]
    assert nav == expected, f"{name}: the sidebar lists {nav}, the course map is {expected}"


def _sources_links(stem: str) -> set[str]:
    """The links of the notebook's "Sources and further reading", from its Markdown."""
    text = "\n".join("".join(c["source"]) for c in _notebook(stem)["cells"] if c["cell_type"] == "markdown")
    assert f"## {SOURCES_HEADING}" in text, f"notebooks/{stem}.ipynb has no section {SOURCES_HEADING!r}"
    section = text.split(f"## {SOURCES_HEADING}", 1)[1].split("\n## ", 1)[0]
    return {a or b for a, b in MARKDOWN_LINK.findall(section)}


@pytest.mark.parametrize("stem", [nb.stem for nb in COURSE])
def test_sources_and_further_reading_are_links(stem, open_page):
    """Each link of a notebook's "Sources and further reading" is a link on its page, in that section."""
    wanted = _sources_links(stem)
    assert wanted, f"notebooks/{stem}.ipynb has no links under {SOURCES_HEADING!r}"
    shown = open_page(stem).page.evaluate("""(heading) => {
        const h = [...document.querySelectorAll('article section > h2')].find(e => e.textContent.includes(heading));
        return h ? [...h.parentElement.querySelectorAll('a[href]')].map(a => a.href) : null;
    }""", SOURCES_HEADING)
    assert shown is not None, f"the page of {stem} has no section {SOURCES_HEADING!r}"
    missing = sorted(url for url in wanted if url not in shown and url + "/" not in shown)
    assert not missing, f"{stem}: sources shown as text, not as links: {missing}"


def test_search_works_offline(browser, served):
    """The search page finds a word of the course in the site's own index, with nothing from another host."""
    opened = Opened(browser, served, "search", "search.html?q=idempotency", ready="#search-results")
    try:
        results = opened.page.locator("#search-results li a")
        results.first.wait_for(state="visible", timeout=30_000)
        found = {urllib.parse.urlsplit(h).path.rsplit("/", 1)[-1] for h in
                 opened.page.evaluate("() => [...document.querySelectorAll('#search-results li a')].map(a => a.href)")}
        assert page_path("04_kill_the_consumer") in found, f"searching 'idempotency' finds only {sorted(found)}"
        opened.screenshot()
        assert not opened.problems, "search: " + "\n".join(opened.problems)
    finally:
        opened.close()


# --- the outputs a reader comes for ----------------------------------------------------------------

COURSE_MAP = """(stems) => [...document.querySelectorAll('article table')].filter(t => {
    const r = t.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && stems.every(s => t.innerText.includes(s));
}).map(t => [...t.querySelectorAll('a[href]')].map(a => a.getAttribute('href')))"""


@pytest.mark.parametrize("name", ["index", "00_start_here"])
def test_course_map_table_is_visible_and_links_each_page(name, open_page):
    """The landing page and notebook 00 show the course map: one table naming every notebook, linking its page."""
    opened = open_page(name)
    tables = opened.page.evaluate(COURSE_MAP, [nb.stem for nb in COURSE])
    assert tables, f"{name} shows no table naming all of {[nb.stem for nb in COURSE]}"
    assert tables[0] == [page_path(nb.stem) for nb in COURSE], f"{name}: the map's links are {tables[0]}"
    opened.page.locator("article table").first.scroll_into_view_if_needed()
    opened.screenshot("_course_map", full_page=False)


def _png_size(data: str) -> tuple[int, int]:
    """Width and height of a base64 PNG, from its IHDR chunk."""
    head = base64.b64decode("".join(data))[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


OUTPUT_IMAGES = """() => [...document.querySelectorAll('article .cell_output img')].map(i => {
    const r = i.getBoundingClientRect();
    return {src: i.currentSrc || i.src, natural: [i.naturalWidth, i.naturalHeight], shown: [r.width, r.height]};
})"""


@pytest.mark.parametrize("stem", [nb.stem for nb in COURSE])
def test_every_image_output_is_on_its_page(stem, open_page):
    """Each picture a notebook stores (PNG plots, the widget's SVG frame) is on its page, loaded and visible."""
    wanted = [o["data"] for o in _outputs(stem) if {"image/png", "image/svg+xml"} & set(o.get("data", {}))]
    shown = open_page(stem).page.evaluate(OUTPUT_IMAGES)
    assert len(shown) == len(wanted), f"{stem}: {len(wanted)} stored pictures, {len(shown)} on the page: {shown}"
    for data, image in zip(wanted, shown, strict=True):
        assert image["shown"][0] > 100 and image["shown"][1] > 100, f"{stem}: a picture is not visible: {image}"
        if "image/svg+xml" not in data:
            assert tuple(image["natural"]) == _png_size(data["image/png"]), \
                f"{stem}: {image['src']} is not the stored picture ({image['natural']})"


def _markdown_table_heads(stem: str) -> list[list[str]]:
    """The header cells of each table in the notebook's Markdown outputs (07's summary has one)."""
    heads = []
    for output in _outputs(stem):
        lines = "".join(output.get("data", {}).get("text/markdown", "")).splitlines()
        heads += [[c.strip() for c in line.strip().strip("|").split("|")] for line, below
                  in zip(lines, lines[1:], strict=False) if re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*", below)]
    return heads


@pytest.mark.parametrize("stem", [nb.stem for nb in COURSE if _markdown_table_heads(nb.stem)])
def test_markdown_outputs_show_their_tables(stem, open_page):
    """A table in a Markdown output (07's summary) is a table on the page, not a paragraph of pipes."""
    shown = open_page(stem).page.evaluate("""() => [...document.querySelectorAll('article .cell_output table')]
        .filter(t => t.getBoundingClientRect().height > 0)
        .map(t => [...t.rows[0].cells].map(c => c.innerText.trim()))""")
    for head in _markdown_table_heads(stem):
        assert head in shown, f"{stem}: the Markdown table headed {head} is not a table on the page ({shown})"


def test_dashboard_of_05_is_visible_at_full_width(open_page):
    """05's dashboard, its one stored PNG, is on the page, loaded and not shrunk to a thumbnail."""
    [png] = [o["data"]["image/png"] for o in _outputs("05_observability") if "image/png" in o.get("data", {})]
    opened = open_page("05_observability")
    [image] = opened.page.evaluate(OUTPUT_IMAGES)
    assert tuple(image["natural"]) == _png_size(png), f"05's picture is not the stored dashboard: {image}"
    assert image["shown"][0] >= 600, f"the dashboard is shown {image['shown'][0]:.0f} px wide"
    opened.page.locator("article .cell_output img").first.scroll_into_view_if_needed()
    opened.screenshot("_dashboard", full_page=False)


def test_crash_matrix_of_04_is_visible(open_page):
    """04's crash matrix: the table with a row per crash point and a column per set of layers."""
    from effectively_once.protocol import CRASH_POINTS

    opened = open_page("04_kill_the_consumer")
    table = opened.page.locator("article table", has=opened.page.locator("caption", has_text="crash point x layers"))
    table.first.wait_for(state="visible", timeout=20_000)
    text = table.first.inner_text()
    for point in CRASH_POINTS:
        assert point in text, f"the crash matrix on the page lacks the row {point!r}"
    for layers in ("both", "dedup_only", "idempotency_key_only", "none"):
        assert layers in text, f"the crash matrix on the page lacks the column {layers!r}"
    table.first.scroll_into_view_if_needed()
    opened.screenshot("_crash_matrix", full_page=False)


def test_message_loss_widget_shows_its_static_svg_frame(open_page, served, website):
    """02's widget is on the page as the SVG frame its output stores: the four lanes, the very picture."""
    [frame] = ["".join(o["data"]["image/svg+xml"]) for o in _outputs("02_message_loss")
               if website.WIDGET_VIEW in o.get("data", {}) and "image/svg+xml" in o["data"]]
    opened = open_page("02_message_loss")
    svgs = [i for i in opened.page.evaluate(OUTPUT_IMAGES) if i["src"].endswith(".svg")]
    assert len(svgs) == 1, f"the page of 02 shows {len(svgs)} SVG pictures: {svgs}"
    assert svgs[0]["shown"][0] > 400 and svgs[0]["shown"][1] > 200, f"the frame is not visible: {svgs[0]}"
    status, body = _fetch(svgs[0]["src"])
    assert status == 200 and body.decode() == frame, "the page's SVG is not the frame notebook 02 stores"
    for lane in ("producer", "network", "broker", "consumer"):
        assert f">{lane}</text>" in frame, f"the widget's frame lacks the lane {lane!r}"
    outputs = opened.page.locator("article .cell_output").all_inner_texts()
    assert not [o for o in outputs if "MessageLossWidget(" in o], \
        "the page shows the widget's text form instead of its picture"
    opened.page.locator("article .cell_output img[src$='.svg']").scroll_into_view_if_needed()
    opened.screenshot("_widget", full_page=False)


@pytest.mark.parametrize("stem", [nb.stem for nb in COURSE])
def test_a_widget_with_no_picture_becomes_a_note(stem, open_page, website):
    """Where a widget has no picture of its own (04's kill button, 07's quiz), a note says it works in JupyterLab."""
    blind = [o for o in _outputs(stem) if website.WIDGET_VIEW in o.get("data", {})
             and not set(website.STATIC_MIMES) & set(o["data"])]
    page = open_page(stem).page
    notes = page.locator("article .cell_output .eo-widget-note")
    assert notes.count() == len(blind), f"{stem}: {len(blind)} widgets with no picture, {notes.count()} notes"
    for i in range(notes.count()):
        assert notes.nth(i).is_visible() and "make lab" in notes.nth(i).inner_text()
    views = page.locator("script[type='application/vnd.jupyter.widget-view+json']").count()
    assert views == 0, f"{stem}: {views} live widget views on a page without a kernel"


@pytest.mark.parametrize("stem", [nb.stem for nb in COURSE])
def test_notebook_and_lab_are_downloads_next_to_it(stem, open_page):
    """The note under the title offers the notebook, and its lab when it has one (the very files), and `make lab`."""
    lab = ROOT / "labs" / f"{stem}.ipynb"
    note = open_page(stem).page.locator("article .eo-run-note")
    assert note.count() == 1 and note.is_visible(), f"{stem}: no note on how to run it"
    assert "make lab" in note.inner_text()
    hrefs = note.evaluate("n => [...n.querySelectorAll('a[download]')].map(a => a.href)")
    wanted = [ROOT / "notebooks" / f"{stem}.ipynb"] + ([lab] if lab.exists() else [])
    assert len(hrefs) == len(wanted), f"{stem}: downloads {hrefs}, expected {[str(w) for w in wanted]}"
    for href, path in zip(hrefs, wanted, strict=True):
        status, body = _fetch(href)
        assert status == 200 and body == path.read_bytes(), f"{href} is not {path.relative_to(ROOT)}"


# --- what the site must not hold -------------------------------------------------------------------

def test_site_holds_no_machine_path_no_making_note_and_nothing_from_a_cdn(built, website):
    """No path of this machine, no note on how the course was made, no asset from another host."""
    assert not website.leaks(built)
    assert not website.remote_assets(built)
    files = [p for p in built.rglob("*") if p.is_file() and p.suffix in website.TEXT_SUFFIXES]
    assert any(p.name == "index.html" for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        for machine in ("/work/", "/tmp/", "/root/", str(ROOT), str(built)):
            assert machine not in text, f"{path.relative_to(built)} holds the machine path {machine}"
