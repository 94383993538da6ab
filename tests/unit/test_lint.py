"""The Idempotency-Key lint rule on its good and bad samples, on each construct it follows, and as a command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from effectively_once.incidents import lint
from tests.conftest import run_cli

SAMPLES = Path(__file__).parent / "lint_samples"
GOOD = sorted((SAMPLES / "good").glob("*.py"))
BAD = sorted((SAMPLES / "bad").glob("*.py"))


def flagged_lines(path: Path) -> set[int]:
    return {n for n, line in enumerate(path.read_text().splitlines(), 1) if line.rstrip().endswith("# flagged")}


def lines(source: str) -> list[int]:
    return [f.line for f in lint.lint_source(source, "sample.py")]


def test_there_are_samples_of_each_kind():
    assert len(GOOD) >= 4 and len(BAD) >= 6
    assert all(flagged_lines(p) for p in BAD), "every bad sample marks at least one line"


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_samples_are_clean(path):
    assert lint.lint_source(path.read_text(), str(path)) == []


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_samples_are_flagged_on_exactly_the_marked_lines(path):
    findings = lint.lint_source(path.read_text(), str(path))
    assert {f.line for f in findings} == flagged_lines(path)
    assert len(findings) == len(flagged_lines(path))
    assert all("Idempotency-Key" in f.reason and not f.error for f in findings)


# Each construct on its own, so a regression names the case it broke.
@pytest.mark.parametrize("source, expected", [
    ("import requests\nrequests.post('u')", [2]),
    ("import httpx\nhttpx.post('u', headers={'Idempotency-Key': 'k'})", []),
    ("import requests as r\nr.post('u')", [2]),
    ("from httpx import post as send\nsend('u')", [2]),
    ("from requests import post\npost('u', headers={'idempotency-key': 'k'})", []),
    ("import requests\ns = requests.Session()\ns.post('u')", [3]),
    ("import requests\ns = requests.session()\ns.post('u', headers={'Idempotency-Key': 'k'})", []),
    ("import httpx\nwith httpx.Client() as c:\n    c.post('u')", [3]),
    ("import httpx\nasync def f():\n    async with httpx.AsyncClient() as c:\n        await c.post('u')", [4]),
    ("from httpx import AsyncClient\nc = AsyncClient()\nasync def f():\n    await c.post('u')", [4]),
    ("import requests\nrequests.request('POST', 'u')", [2]),
    ("import requests\nrequests.request('GET', 'u')", []),
    ("import httpx\nc = httpx.Client()\nc.request(method='post', url='u')", [3]),
    ("import requests\nh = {'Idempotency-Key': 'k'}\nrequests.post('u', headers=h)", []),
    ("import requests\nh = {}\nh['Idempotency-Key'] = 'k'\nrequests.post('u', headers=h)", []),
    ("import requests\nh = {}\nrequests.post('u', headers=h)\nh['Idempotency-Key'] = 'k'", [3]),
    ("import requests\nh = dict([('Idempotency-Key', 'k')])\nrequests.post('u', headers=h)", []),
    ("import requests\nh = dict(a='1')\nrequests.post('u', headers=h)", [3]),
    ("import requests\nrequests.post('u', headers=dict({'Idempotency-Key': 'k'}))", []),
    ("import requests\ndef f(h):\n    requests.post('u', headers=h)", [3]),
    ("import requests\nrequests.post('u', headers=make_headers())", [2]),
    ("class Box:\n    def post(self):\n        pass\nBox().post()", []),
    ("import json\njson.post = print\njson.post('u')", []),
])
def test_each_construct(source, expected):
    assert lines(source) == expected


def test_the_documented_blind_spot_is_reported_as_unverifiable():
    source = ("import requests\n"
              "def headers_for(msg):\n"
              "    return {'Idempotency-Key': msg}\n"
              "requests.post('u', headers=headers_for('m'))\n")
    [finding] = lint.lint_source(source, "consumer.py")
    assert finding.line == 4
    assert "headers_for()" in finding.reason and "cannot confirm" in finding.reason
    assert "helper function" in lint.__doc__


def test_a_file_that_does_not_parse_gets_a_clear_error(tmp_path):
    with pytest.raises(lint.LintSyntaxError, match=r"broken\.py:2: cannot check this file: it is not valid Python"):
        lint.lint_source("import requests\nrequests.post('u'\n", "broken.py")
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n")
    (tmp_path / "fine.py").write_text("import requests\nrequests.post('u')\n")
    findings = lint.lint_paths([tmp_path, tmp_path / "missing.py"])
    assert [(Path(f.path).name, f.line, f.error) for f in findings] == [
        ("broken.py", 1, True), ("fine.py", 2, False), ("missing.py", 0, True)]
    assert "not valid Python" in findings[0].reason and "no such file" in findings[2].reason


def test_command_exit_codes_and_output(tmp_path):
    good = run_cli("lint", str(SAMPLES / "good"), timeout=60)
    assert good.returncode == 0 and good.stdout == "", good.stdout + good.stderr
    bad = run_cli("lint", str(SAMPLES / "bad" / "stripe_2020_retry.py"), timeout=60)
    assert bad.returncode == 1
    assert re.fullmatch(r".*stripe_2020_retry\.py:10: client\.post sends no headers.*\n", bad.stdout)
    (tmp_path / "broken.py").write_text("def f(:\n")
    broken = run_cli("lint", str(tmp_path / "broken.py"), timeout=60)
    assert broken.returncode == 2 and "not valid Python" in broken.stderr
