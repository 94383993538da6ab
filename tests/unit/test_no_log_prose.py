"""No test learns what a process did from its log prose: it reads the process's event lines.

The sentences the consumer, the provider, the receiver and the relay log are for people, and free to
change; a test that matches one breaks when a word changes, or passes on a line that merely quotes it.
What a test needs to know, the process also writes as an event line (``protocol.ProcessEvent``).
Two checks over every test file:

1. no string a test compares (``in``, ``==``, ``startswith``, ``re.search``, ...) is a piece of a
   sentence those processes log, as collected from their log calls and from ``protocol``;
2. no string is looked for in a log: an expression that names one (``log_tail()``, ``zombie_log``,
   ``logs``, ``saved_log``, a line of them) or a helper that greps one (``zombie_said``).

An error a process prints to stderr for the learner ("cannot reach its database ... check --dsn") is
what the learner is promised, and a test may assert it: (1) leaves ``print(..., file=sys.stderr)`` out.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "effectively_once"
# The processes whose logs the tests read, and the module that writes their lines.
LOGGING_MODULES = [PACKAGE / "payments" / name for name in
                   ("consumer.py", "steps.py", "provider.py", "receiver.py", "outbox.py", "webhooks.py", "client.py")]
PROTOCOL = PACKAGE / "protocol.py"
# Names of what holds a process's output: log, logs, log_tail, zombie_log, saved_log, all_logs, ...
LOG_NAME = re.compile(r"(^|_)(log|logs|log_tail)($|_)")
GREP_HELPERS = re.compile(r"_said$")  # ZombieRun.zombie_said: a grep of A's log, kept for the learner
MATCHING_CALLS = {"startswith", "endswith", "search", "match", "fullmatch", "findall", "count", "index", "find"}


def _words(text: str) -> bool:
    """True for a piece of text that reads as a sentence fragment: two words or more, not a mere name."""
    text = text.strip()
    return len(text) >= 8 and " " in text and any(c.isalpha() for c in text)


def _pieces(node: ast.AST) -> list[str]:
    """The literal text of a string or an f-string (each constant part), else nothing."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def _name_of(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def sentences_in(source: str, *, every_string: bool = False) -> set[str]:
    """The sentence fragments ``source`` logs: the text in its ``log(...)`` and ``print(...)`` calls
    (not those to stderr), or, with ``every_string``, in every string but docstrings and raised errors."""
    tree = ast.parse(source)
    found: set[str] = set()
    if every_string:
        skip = _docstrings(tree) | {id(n) for r in ast.walk(tree) if isinstance(r, ast.Raise) for n in ast.walk(r)}
        for node in ast.walk(tree):
            if id(node) not in skip:
                found.update(p for p in _pieces(node) if _words(p))
        return found
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _name_of(node.func) not in ("log", "print"):
            continue
        if any(k.arg == "file" for k in node.keywords):  # an error for the learner, on stderr
            continue
        for arg in node.args:
            for part in ast.walk(arg):
                found.update(p for p in _pieces(part) if _words(p))
    return found


@cache
def known_sentences() -> frozenset[str]:
    """Every sentence fragment the pipeline's processes log."""
    found = sentences_in(PROTOCOL.read_text(), every_string=True)
    for path in LOGGING_MODULES:
        found |= sentences_in(path.read_text())
    return frozenset(found)


def _is_piece_of_a_sentence(text: str, sentences: frozenset[str]) -> str | None:
    """The logged sentence ``text`` is a piece of (or holds a whole piece of), or None."""
    needle = text.strip()
    if not _words(needle):
        return None
    for sentence in sentences:
        if needle in sentence or (len(sentence.strip()) >= 12 and sentence.strip() in needle):
            return sentence
    return None


def _names_a_log(node: ast.AST, log_bound: set[str]) -> bool:
    """True when the expression reads a process's output: it names a log, or a line taken from one."""
    for part in ast.walk(node):
        name = part.attr if isinstance(part, ast.Attribute) else part.id if isinstance(part, ast.Name) else None
        if name and (LOG_NAME.search(name) or name in log_bound):
            return True
    return False


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}"


def findings(source: str, path: str = "<test>", sentences: frozenset[str] | None = None) -> list[Finding]:
    """Every place in a test's ``source`` that matches a logged sentence, or looks for a string in a log."""
    sentences = known_sentences() if sentences is None else sentences
    tree = ast.parse(source)
    # Names bound to lines of a log (``for line in c.log_tail().splitlines()``), where they are bound: inside
    # the loop, or the comprehension.
    log_lines: dict[int, set[str]] = {}
    for node in ast.walk(tree):
        loops = node.generators if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)) \
            else [node] if isinstance(node, ast.For) else []
        for loop in loops:
            if _names_a_log(loop.iter, set()):
                names = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
                for inner in ast.walk(node):
                    log_lines.setdefault(id(inner), set()).update(names)
    found = []

    def check_literal(node: ast.AST, where: int) -> None:
        for piece in _pieces(node):
            sentence = _is_piece_of_a_sentence(piece, sentences)
            if sentence is not None:
                found.append(Finding(path, where, f"matches the logged sentence {sentence.strip()!r} with {piece!r}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, (ast.In, ast.NotIn)):
                    check_literal(node.left, node.lineno)
                    if _names_a_log(right, log_lines.get(id(node), set())):
                        found.append(Finding(path, node.lineno, f"looks for {ast.unparse(node.left)} in a log"))
                elif isinstance(op, (ast.Eq, ast.NotEq)):
                    check_literal(node.left, node.lineno)
                    check_literal(right, node.lineno)
        elif isinstance(node, ast.Call):
            name = _name_of(node.func)
            if name in MATCHING_CALLS:
                for arg in node.args[:1]:
                    check_literal(arg, node.lineno)
            if GREP_HELPERS.search(name) and any(_pieces(a) for a in node.args):
                found.append(Finding(path, node.lineno, f"greps a log with {name}()"))
    return found


def _test_files() -> list[Path]:
    return sorted(p for p in (ROOT / "tests").rglob("*.py") if p.resolve() != Path(__file__).resolve())


def test_the_sentences_come_from_the_log_calls():
    """Check (1) knows what it guards: it collects the consumer's own sentences."""
    sentences = known_sentences()
    for piece in ("consumer started: topic ", " revoked: waiting for the rebalance (not idle time)",
                  "offset commit refused (", "provider listening on ",
                  ": waiting for a SIGKILL (SIGTERM stops it too)"):
        assert piece in sentences, f"{piece!r} is not among the sentences collected from the log calls"
    assert not any("must be a non-empty string" in s for s in sentences), "docstrings and errors are not log lines"


# The old test_faults.py and test_leases_and_ordering.py, as they read before the event lines.
OLD_WAYS = {
    "a sentence in a log tail": ('while "consumer started" not in c.log_tail(20000):\n    pass\n', 2),
    "a sentence in a saved log": ('assert "no offset committed for this batch" in logs\n', 2),
    "a piece of a sentence, f-string": ('said = f"exiting with code {EXIT_RESTART} (restart me)" in logs\n', 2),
    "a line of a log": ('said = [line for line in c.log_tail(200_000).splitlines() if "offset commit" in line]\n', 2),
    "a code in a log, grepped by a helper": ('assert run.zombie_said("_MAX_POLL_EXCEEDED")\n', 1),
    "a library's words in a log": ('assert not any("Traceback" in line for line in run.zombie_log)\n', 1),
    "a logged sentence in a captured list": ('assert lines[0] == "the dedup table absorbs them"\n', 0),
    "a sentence kept in a constant": ('assert CRASHED_AFTER_PUBLISH in crashed.log_tail()\n', 1),
}


@pytest.mark.parametrize("snippet, at_least", OLD_WAYS.values(), ids=list(OLD_WAYS))
def test_the_check_flags_each_old_way_of_reading_a_log(snippet, at_least):
    flagged = findings(snippet)
    if at_least:
        assert len(flagged) >= at_least, f"only {flagged} in:\n{snippet}"
    else:
        assert flagged, f"nothing flagged in:\n{snippet}"


def test_the_check_leaves_events_and_learner_errors_alone():
    clean = (
        'while not b.log_events(EventKind.REVOKED):\n    pass\n'
        'assert [e.kind for e in events] == ["revoked"]\n'
        'assert "cannot reach its database" in result.stderr\n'
        'assert report.result == "charged"\n'
        'assert f"{point} reached" in str(error)\n'
    )
    assert findings(clean) == []


def test_no_test_asserts_on_a_log_sentence():
    flagged = [f for path in _test_files() for f in findings(path.read_text(), str(path.relative_to(ROOT)))]
    assert not flagged, ("read what a process did from its event lines (Child.log_events, protocol.parse_events), "
                         "not from its log prose:\n" + "\n".join(map(str, flagged)))


# The package's own reads of a log that are for people: ZombieRun's account of A and B (the lines a
# notebook prints, and ``zombie_said``, with which a learner looks for librdkafka's own words).
FOR_PEOPLE = {("effectively_once/payments/zombie.py", "looks for fragment in a log"),
              ("effectively_once/payments/zombie.py", "looks for word in a log")}


def test_no_lab_code_waits_on_a_log_sentence():
    """The labs, tools and benchmarks decide from event lines too (zombie.py once waited for a log line)."""
    paths = [p for folder in ("effectively_once", "tools", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))]
    flagged = [f for path in paths for f in findings(path.read_text(), str(path.relative_to(ROOT)))
               if (f.path, f.why) not in FOR_PEOPLE]
    assert not flagged, "read what a process did from its event lines:\n" + "\n".join(map(str, flagged))
