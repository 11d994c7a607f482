"""The fault benchmark as a test: broker restarts and a SIGKILL lose no event and deliver none twice."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import DEMO, ROOT


@pytest.mark.slow
def test_broker_restarts_and_sigkill_lose_nothing():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "fault.py"), str(DEMO), "--speed", "3"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "missing: 0" in result.stdout and "PASS" in result.stdout
