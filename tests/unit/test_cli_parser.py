"""The command line imports only the command it runs: `status` does not load the payment lab, `--help` lists all."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from effectively_once import cli

PROBE = ("import json, sys; from effectively_once import cli; cli.build_parser(cli.command_named({argv!r})); "
         "print(json.dumps(sorted({{m for m in {modules!r} if m in sys.modules}})))")


def _imported(argv: list[str]) -> list[str]:
    modules = [target.partition(":")[0] for target in cli.PLUGIN_COMMANDS.values()]
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, modules=modules)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_a_command_imports_its_own_plugin_module_and_no_other():
    assert _imported(["status", "--json"]) == []
    assert _imported(["reset", "--help"]) == ["effectively_once.workspace"]
    assert "effectively_once.payments.crash_demo" not in _imported(["clean"])


def test_help_lists_every_command_with_its_help_and_an_unknown_one_is_refused(capsys):
    assert cli.command_named(["--help"]) is None and cli.command_named(["-h", "demo"]) is None
    assert cli.command_named(["demo", "-h"]) == "demo"
    listing = cli.build_parser(None).format_help()
    for name in (*cli.PLUGIN_COMMANDS, "up", "status", "down", "doctor"):
        assert f"    {name} " in listing, f"{name} is not listed with its help"
    parser = cli.build_parser(cli.command_named(["bogus"]))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bogus"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
