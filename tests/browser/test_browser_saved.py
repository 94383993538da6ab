"""Every committed notebook in JupyterLab as a learner first opens it, before running anything.

Each stored output renders, every image loads, and no error or traceback shows (the widgets, which need a
live kernel, are tests/browser/test_browser.py's). A module of its own, with its own JupyterLab, so that
the browser lane's two xdist workers share the lane's work more evenly.
"""

from __future__ import annotations

import json

import pytest

from tests.browser.test_browser import (  # noqa: F401  (fixtures, used by name)
    ARTIFACTS,
    NOTEBOOKS,
    ROOT,
    _check_saved_rendering,
    _notebook_page,
    browser,
    chromium,
    jupyterlab,
)


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_the_saved_notebook_renders_as_a_learner_first_opens_it(name, browser, jupyterlab):  # noqa: F811
    """Open the committed notebook without running it: its outputs, images, and no error on the page."""
    path = f"notebooks/{name}.ipynb"
    saved = json.loads((ROOT / path).read_text())
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in saved["cells"] for o in c.get("outputs", [])
              if o["output_type"] == "error"]
    assert not errors, f"{path} is saved with error outputs {errors}"
    with _notebook_page(browser, jupyterlab, name, clear=False, shot="_saved") as (page, path):
        cells = _check_saved_rendering(page, path)
        assert sum(c["shown"] for c in cells) > 0, f"{path} shows no output at all"
        page.screenshot(path=str(ARTIFACTS / f"browser_{name}_saved.png"))
