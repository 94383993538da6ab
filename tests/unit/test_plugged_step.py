"""A step written in a notebook runs in the consumer process as written: its imports, helpers and constants
go with it (payments/plugged.py), and a key made fresh on each attempt is called "a different key"."""

from __future__ import annotations

import linecache
import os
import subprocess
import sys
import textwrap

import pytest

from effectively_once.payments.matrix import PluggedStep
from effectively_once.payments.plugged import step_module_source

_CELLS = 0


def notebook_cell(source: str, namespace: dict) -> dict:
    """Run ``source`` as a notebook cell would: in ``namespace`` (a kernel's ``__main__``), its text in linecache."""
    global _CELLS
    _CELLS += 1
    filename = f"<notebook cell {_CELLS}>"
    source = textwrap.dedent(source)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def kernel() -> dict:
    return {"__name__": "__main__"}


# The step of exercise 1, as a learner may write it: `import uuid` at the top of the cell, a key derived
# from the message with it, and a helper and a constant of their own.
SOLVED_WITH_AN_IMPORT = '''
import uuid

from effectively_once.payments.steps import Outcome

KEY_PREFIX = "charge-"


def key_for(msg):
    return KEY_PREFIX + str(uuid.uuid5(uuid.NAMESPACE_URL, msg.msg_id))


def charge_once(ctx, msg):
    ctx.crash_point("before_dedup_insert")
    dedup_hit = False
    inserted = ctx.shop.execute(
        "INSERT INTO charges (msg_id, status) VALUES (%s, 'pending') ON CONFLICT (msg_id) DO NOTHING",
        (msg.msg_id,)).rowcount
    if inserted == 0:
        dedup_hit = True
        status = ctx.shop.execute("SELECT status FROM charges WHERE msg_id = %s", (msg.msg_id,)).fetchone()[0]
        if status == "done":
            return Outcome("skipped", dedup_hit=True)
        ctx.shop.execute("UPDATE charges SET attempts = attempts + 1 WHERE msg_id = %s", (msg.msg_id,))
    ctx.crash_point("after_dedup_insert")
    result = ctx.provider.charge(msg, idempotency_key=key_for(msg))
    ctx.crash_point("after_provider_call")
    ctx.shop.execute("UPDATE charges SET status = 'done', charge_id = %s WHERE msg_id = %s",
                     (result.charge_id, msg.msg_id))
    ctx.crash_point("after_status_update")
    return Outcome("replayed" if result.replayed else "charged", dedup_hit=dedup_hit, charge_id=result.charge_id)
'''


def test_the_module_carries_the_imports_helpers_and_constants_the_step_uses():
    ns = notebook_cell(SOLVED_WITH_AN_IMPORT, kernel())
    text = step_module_source(ns["charge_once"])
    assert "import uuid" in text and "from effectively_once.payments.steps import Outcome" in text
    assert "KEY_PREFIX = 'charge-'" in text and "def key_for(msg):" in text
    assert text.index("def key_for") < text.index("def charge_once"), "the helper comes before the step"


def test_an_import_in_an_earlier_cell_goes_with_the_step_too():
    ns = notebook_cell("import hashlib as h\nfrom uuid import uuid5, NAMESPACE_URL\n", kernel())
    notebook_cell("def key(msg):\n    return h.sha256(str(uuid5(NAMESPACE_URL, msg)).encode()).hexdigest()\n", ns)
    text = step_module_source(ns["key"])
    assert "import hashlib as h" in text and "from uuid import uuid5" in text, text
    assert "from uuid import NAMESPACE_URL" in text, "an object imported by name is imported again, not copied"


def test_the_plugged_module_runs_in_another_process_without_a_name_error(tmp_path):
    ns = notebook_cell(SOLVED_WITH_AN_IMPORT, kernel())
    with PluggedStep(ns["key_for"]) as step:
        module, function = step.spec.split(":")
        code = (f"import types, {module}\n"
                f"print({module}.{function}(types.SimpleNamespace(msg_id='msg-1')))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                              timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ns["key_for"](type("M", (), {"msg_id": "msg-1"})())


def test_a_step_that_uses_an_object_of_the_notebook_is_refused_with_its_name():
    ns = notebook_cell("conn = object()\n\ndef step(ctx, msg):\n    return conn\n", kernel())
    with pytest.raises(ValueError, match="step uses 'conn', an object of type object that cannot be copied"):
        PluggedStep(ns["step"])
