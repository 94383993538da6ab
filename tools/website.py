"""The course as a website: Jupyter Book 1 (Sphinx) over the executed notebooks, which it never executes again.

    python tools/website.py build            # `make site`: the static site in _build/site
    python tools/website.py build --out DIR  # somewhere else

The pages come from the course map (``effectively_once/course/map.py``), in its order:
a landing page (README's "What this course teaches" and the map), then one page
per notebook, showing the outputs committed in ``notebooks/``. Everything the
build needs is a Python package pinned in pyproject.toml: no Node.js, nothing
fetched while it builds, and no page asks another host for a script, a
stylesheet or a font, so the site reads the same on a machine with no network.

The build copies what it needs into a temporary folder, deleted after it, and
changes only those copies:

- a widget's output keeps its static picture (the message-loss widget stores an
  SVG frame) and loses the live view, which a page without a kernel cannot draw;
  a widget with no picture (a button, a quiz) becomes a line saying it works in
  JupyterLab;
- a link from one notebook to another (``01_two_generals.ipynb``) in an output
  points at that notebook's page;
- a note after each title offers the notebook, and its lab when it has one, as
  downloads, and says how to run them (``make lab``).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from effectively_once.course.map import COURSE  # noqa: E402
from notebooks import MACHINE_PATH, readme_table  # noqa: E402  (tools/notebooks.py: one definition of each)

OUT = ROOT / "_build" / "site"
TITLE = "Exactly-Once in Production"
README_SECTION = "## What this course teaches, and to whom"
DOWNLOADS = "downloads"  # the staged folder of files offered for download (not pages)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# A widget's own picture, shown on the page in its place (the first one present wins).
STATIC_MIMES = ("image/svg+xml", "image/png", "text/html")
WIDGET_ONLY_NOTE = ("<p class='eo-widget-note'><em>An interactive control stands here in the notebook: it works "
                    "when you run the notebook yourself in JupyterLab (<code>make lab</code>).</em></p>")


class SiteError(RuntimeError):
    """What went wrong, in one sentence with the fix."""


def log(message: str) -> None:
    print(f"[site] {message}", flush=True)


# --- the pages -------------------------------------------------------------------------------

def readme_section() -> str:
    """README's "What this course teaches, and to whom", without its heading."""
    text = (ROOT / "README.md").read_text()
    start = text.index(README_SECTION) + len(README_SECTION)
    end = text.index("\n## ", start)
    return text[start:end].strip()


def course_map_markdown() -> str:
    """README's course map (tools/notebooks.py writes it from course/map.py), each notebook linking to its page."""
    table = readme_table()
    for nb in COURSE:
        table = table.replace(f"| `{nb.stem}` |", f"| [{nb.stem}]({nb.stem}.ipynb) |", 1)
    return table


def landing_page() -> str:
    return "\n\n".join([
        f"# {TITLE}",
        README_SECTION,
        readme_section(),
        "## Course map",
        "Each page shows a notebook with the outputs it printed when it ran, on Apache Kafka 4.4 and "
        "PostgreSQL where it needs them. Read them here; to run them, and to do the exercises, clone the "
        "course and run `make lab`, which installs everything, starts Kafka and PostgreSQL, and opens "
        "JupyterLab.",
        course_map_markdown(),
    ]) + "\n"


def run_note(stem: str, has_lab: bool) -> str:
    """The note under a page's title: its downloads, and how to run them."""
    notebook = f"{{download}}`notebooks/{stem}.ipynb <{DOWNLOADS}/notebooks/{stem}.ipynb>`"
    if has_lab:
        title = "Run it, and its exercises"
        offer = (f"The notebook: {notebook}. Its exercises: {{download}}`labs/{stem}.ipynb "
                 f"<{DOWNLOADS}/labs/{stem}.ipynb>`, each followed by a check cell that says what is wrong.")
    else:
        title = "Run it"
        offer = f"The notebook: {notebook}."
    return (f"```{{admonition}} {title}\n:class: note eo-run-note\n\n"
            f"This page shows the notebook's saved outputs. {offer} To run it, clone the course and run "
            "`make lab`: it installs everything, starts Kafka and PostgreSQL and opens JupyterLab"
            + (f", where the exercises are `labs/{stem}.ipynb`." if has_lab else ".") + "\n```")


def _page_links(text: str) -> str:
    # An output's link to another notebook of the course (notebook 00's map) points at its page.
    for nb in COURSE:
        text = re.sub(rf"""href=(['"]){re.escape(nb.stem)}\.ipynb\1""", rf"href=\g<1>{nb.stem}.html\g<1>", text)
    return text


def _static_output(output: dict) -> dict:
    """``output`` as a page without a kernel can show it (see the module's docstring)."""
    data = output.get("data") or {}
    if "text/html" in data:
        source = data["text/html"]
        data = {**data, "text/html": _page_links(source if isinstance(source, str) else "".join(source))}
    if WIDGET_VIEW in data:
        picture = {mime: data[mime] for mime in STATIC_MIMES if mime in data}
        if picture:
            data = {mime: value for mime, value in data.items() if mime != WIDGET_VIEW}
        else:
            data = {"text/html": WIDGET_ONLY_NOTE, "text/plain": "interactive control"}
    return {**output, "data": data} if "data" in output else output


def page_notebook(stem: str, has_lab: bool) -> dict:
    """The page's copy of ``notebooks/<stem>.ipynb``: a note on running it, static widgets, links to pages."""
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    cells = nb["cells"]
    if not cells or cells[0]["cell_type"] != "markdown":
        raise SiteError(f"notebooks/{stem}.ipynb should open with its title cell: "
                        f"add one to sources/notebooks/{stem}.md")
    cells.insert(1, {"cell_type": "markdown", "metadata": {}, "source": run_note(stem, has_lab),
                     "id": f"site-note-{stem}"[:64]})
    for cell in cells:
        if cell["cell_type"] == "code":
            cell["outputs"] = [_static_output(o) for o in cell.get("outputs", [])]
    return nb


FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#2471a3"/><text x="8" y="12" font-family="sans-serif" font-size="10" font-weight="bold" '
           'fill="white" text-anchor="middle">1</text></svg>\n')

# The site's look beyond the theme: the note that stands for a widget with no picture.
SITE_CSS = ".eo-widget-note { border-left: 3px solid #2471a3; padding-left: .6em; color: #444; }\n"


def book_config() -> dict:
    """Jupyter Book's _config.yml: nothing executed, nothing fetched, nothing a reader's browser fetches elsewhere."""
    return {
        "title": TITLE,
        "author": "",
        "copyright": "",
        "only_build_toc_files": True,  # the downloads are files, not pages
        "execute": {"execute_notebooks": "off"},
        "parse": {
            # No dollarmath: a "$" in prose stays a dollar, and no page needs MathJax (a script from a CDN).
            "myst_enable_extensions": ["colon_fence", "linkify"],
        },
        "html": {
            "favicon": "_static/favicon.svg",
            "home_page_in_navbar": True,
            "use_repository_button": False,
            "use_issues_button": False,
            "use_edit_page_button": False,
            "extra_footer": "",
        },
        "launch_buttons": {"thebe": False, "binderhub_url": "", "jupyterhub_url": "", "colab_url": "",
                           "deepnote_url": ""},
        "sphinx": {
            "config": {
                # Jupyter Book's own list without sphinx_thebe (a "run live on Binder" button whose page script
                # names a CDN; the course runs in JupyterLab) and intersphinx (inventories fetched at build time).
                "extensions": ["sphinx_togglebutton", "sphinx_copybutton", "myst_nb", "jupyter_book",
                               "sphinx_comments", "sphinx_external_toc", "sphinx_design", "sphinx_book_theme"],
                # myst-nb loads require.js and the widget manager from CDNs on a page whose notebook stores
                # widget state; ours store none (metadata.widgets is stripped), and this keeps it so.
                "nb_ipywidgets_js": {},
                # A Markdown output reads as JupyterLab shows it: GitHub's Markdown, tables included (07's summary).
                "nb_render_markdown_format": "gfm",
                # Printed lines of one cell read as one block, as in JupyterLab (03's probe prints as it goes).
                "nb_merge_streams": True,
                "html_css_files": ["site.css"],
                # The page's source is the build's copy of the notebook; the downloads offer the real one.
                "html_copy_source": False,
                "html_show_sourcelink": False,
                # The stored outputs (plots, tables, the widget's frame) are drawn on white. Unset, the
                # theme's script logs an error ("Got invalid theme mode") on every page.
                "html_context": {"default_mode": "light"},
                "html_theme_options": {
                    # Unset, the PyData theme adds a header bar holding a second search field.
                    "navbar_persistent": [],
                    "use_download_button": False,
                    "use_fullscreen_button": False,
                    "show_toc_level": 2,
                },
            },
        },
    }


def book_toc() -> dict:
    """Jupyter Book's _toc.yml: the landing page, then each notebook in the order of the course map."""
    return {"format": "jb-book", "root": "index", "chapters": [{"file": nb.stem} for nb in COURSE]}


def stage(folder: Path) -> Path:
    """Write the site's sources into ``folder`` (an empty one) and return it."""
    for sub in (f"{DOWNLOADS}/notebooks", f"{DOWNLOADS}/labs", "_static"):
        (folder / sub).mkdir(parents=True)
    for nb in COURSE:
        source = ROOT / "notebooks" / f"{nb.stem}.ipynb"
        if not source.exists():
            raise SiteError(f"the course map names {nb.stem}, but notebooks/{nb.stem}.ipynb does not exist: "
                            f"run `make notebooks NB={nb.stem}`, or remove it from effectively_once/course/map.py")
        lab = ROOT / "labs" / f"{nb.stem}.ipynb"
        shutil.copy(source, folder / DOWNLOADS / "notebooks")
        if lab.exists():
            shutil.copy(lab, folder / DOWNLOADS / "labs")
        page = page_notebook(nb.stem, lab.exists())
        (folder / f"{nb.stem}.ipynb").write_text(json.dumps(page, indent=1, ensure_ascii=False) + "\n")
    (folder / "index.md").write_text(landing_page())
    (folder / "_static" / "favicon.svg").write_text(FAVICON)
    (folder / "_static" / "site.css").write_text(SITE_CSS)
    # JSON is YAML: no YAML writer needed.
    (folder / "_config.yml").write_text(json.dumps(book_config(), indent=1) + "\n")
    (folder / "_toc.yml").write_text(json.dumps(book_toc(), indent=1) + "\n")
    return folder


# --- what the site must not contain ------------------------------------------------------------

# Words that would tell how the course was made rather than what it teaches. ("helper" is not one:
# notebook 06 teaches a lint rule that cannot see into a helper function.)
MAKING_NOTES = re.compile(r"\b(?:AI|LLM|language model|coding agent|assistant|Claude|ChatGPT|Copilot)\b")
TEXT_SUFFIXES = {".html", ".js", ".json", ".txt", ".ipynb", ".css", ".svg"}
# A script, stylesheet, font or image that a page would fetch from another host.
REMOTE_ASSET = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=["']((?:https?:)?//[^"']+)["'][^>]*>""")


def leaks(site: Path, *folders: Path) -> list[str]:
    """Every machine path, and every note on how the course was made, in the built site's text files.

    A machine path is one like ``/work/...`` or ``/tmp/...``, this checkout, the home folder, or one of
    ``folders`` (the build's own), each as a whole path ("/root" is not "/root_shop").
    """
    paths = (ROOT, Path.home(), *folders)
    machine = re.compile("(?:" + "|".join(re.escape(str(p)) for p in paths) + r")(?![\w.\-])")
    found = []
    for path in sorted(p for p in site.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES):
        text = path.read_text(errors="replace")
        where = path.relative_to(site)
        found += [f"{where}: {m.group(0)!r}" for m in machine.finditer(text)]
        if path.suffix in {".html", ".ipynb", ".json", ".svg"}:
            found += [f"{where}: {m.group(0)!r}" for m in MACHINE_PATH.finditer(text)]
        if path.suffix == ".html":
            found += [f"{where}: {m.group(0)!r}" for m in MAKING_NOTES.finditer(page_text(text))]
    return found


def remote_assets(site: Path) -> list[str]:
    """Every script, stylesheet, image or frame a page of the site would load from another host."""
    found = []
    for path in sorted(site.rglob("*.html")):
        found += [f"{path.relative_to(site)}: {m.group(1)}" for m in REMOTE_ASSET.finditer(path.read_text())
                  if not m.group(0).startswith("<link") or re.search(r"""rel=["'](?:stylesheet|preload|icon)""",
                                                                    m.group(0))]
    return found


def page_text(text: str) -> str:
    """The words a reader sees: a page's text without its markup and scripts."""
    text = re.sub(r"<script\b.*?</script>|<style\b.*?</style>", " ", text, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


# --- the build -------------------------------------------------------------------------------

def build(out: Path = OUT) -> Path:
    """Build the site into ``out``; returns it. Raises SiteError, with the fix, when something is wrong."""
    started = time.monotonic()
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    if not jupyter_book.exists():
        raise SiteError("jupyter-book is not installed in this environment: run `make setup`, then `make site`.")
    with tempfile.TemporaryDirectory(prefix="eo-site-") as tmp:
        src = stage(Path(tmp))
        # -W --keep-going: a warning (a broken cross-reference, a missing download) fails the build, after
        # Sphinx has listed every one of them.
        cmd = [str(jupyter_book), "build", str(src), "--builder", "html", "-W", "--keep-going"]
        log(f"jupyter-book build ({len(COURSE)} notebooks, none executed) ...")
        done = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
            raise SiteError(f"jupyter-book build failed (exit {done.returncode}):\n{tail}")
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / "_build" / "html", out)
        problems = [f"machine path or note on how the course was made: {p}" for p in leaks(out, src)]
    problems += [f"loaded from another host: {p}" for p in remote_assets(out)]
    if problems:
        raise SiteError("the built site must not hold these:\n  " + "\n  ".join(problems[:20]))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    log(f"built {shown}: {len(COURSE) + 1} pages, {size / 1e6:.1f} MB, in {time.monotonic() - started:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build",))
    parser.add_argument("--out", type=Path, default=OUT, help="where the site goes (default _build/site)")
    args = parser.parse_args(argv)
    try:
        build(args.out.resolve())
    except SiteError as err:
        print(f"make site: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
