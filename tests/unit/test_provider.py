"""The provider's command without a database: an unreachable one is one clear sentence."""

from __future__ import annotations

import subprocess
import sys


def test_an_unreachable_database_is_one_clear_sentence():
    result = subprocess.run([sys.executable, "-m", "effectively_once.payments.provider", "--dsn",
                             "postgresql://nobody@127.0.0.1:1/none"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot reach its database" in result.stderr and "--dsn" in result.stderr
