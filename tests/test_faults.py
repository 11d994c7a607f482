"""The fault benchmark as a test: broker restarts and a SIGKILL lose no event and deliver none twice."""
from __future__ import annotations

import re
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
    stored = re.search(r"event ids stored by the daemon: (\d+)", result.stdout)
    assert stored and int(stored.group(1)) >= 5, result.stdout  # the demo's coughs, read from the outbox file
