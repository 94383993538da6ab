"""The probe's wire helpers and its command, without a broker."""

from __future__ import annotations

import subprocess
import sys

from effectively_once.guarantees.crc32c import crc32c
from effectively_once.guarantees.wire import varint
from tests.conftest import ROOT


def test_wire_helpers_match_the_protocol():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert [varint(n) for n in (0, -1, 1, 63, -64, 64)] == [
        b"\x00", b"\x01", b"\x02", b"\x7e", b"\x7f", b"\x80\x01"]


def test_the_package_runs_as_a_command_of_its_own():
    result = subprocess.run([sys.executable, "-m", "effectively_once.guarantees", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "python -m effectively_once.guarantees" in result.stdout and "--only CHECK" in result.stdout
