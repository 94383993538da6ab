"""Run a Python child that dies with its parent: ``python -m effectively_once.die_with_parent SIG PPID -m MODULE ...``.

``lifetime.spawn`` starts the course's Python children (the provider, the
consumers, the relay) through this module on Linux. It asks the kernel for
signal SIG when the parent dies (``prctl(PR_SET_PDEATHSIG)``), checks that the
parent PPID has not died already, then runs the child's own ``-m MODULE`` or
``-c CODE`` in this same interpreter, as ``python -m``/``-c`` would: the child
costs no second interpreter, and its parent can start it without a
``preexec_fn``, which would force a full ``fork()`` of a large notebook
kernel instead of the cheap ``vfork()``.

Standard library only: it runs before anything else in the child.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main(argv: list[str]) -> None:
    signal_number, parent, mode, target, *rest = argv
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal_number), 0, 0, 0)
    if os.getppid() != int(parent):  # the parent died before the request took effect
        os.kill(os.getpid(), int(signal_number))
    if mode == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif mode == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        raise SystemExit(f"usage: python -m effectively_once.die_with_parent SIG PPID (-m MODULE | -c CODE) ARGS...; "
                         f"got {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
