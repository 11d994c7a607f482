"""The unit file passes `systemd-analyze verify` and rates "OK" or better in `systemd-analyze security`."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import ROOT

UNIT = ROOT / "systemd" / "coughwatch-edge.service"


@pytest.fixture
def unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    fake = tmp_path / "edge"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    # verify checks that ExecStart exists on this machine; point it at a stand-in, change nothing else.
    text = UNIT.read_text().replace("/opt/coughwatch/venv/bin/edge", str(fake))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_unit_verifies(unit):
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_unit_security_exposure_is_ok_or_better(unit):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 4.0 and match.group(2) in ("OK", "SAFE"), match.group(0)


def test_unit_declares_notify_watchdog_and_sandbox():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StartLimitBurst=", "StateDirectory=coughwatch",
                 "ConfigurationDirectory=coughwatch", "ProtectSystem=strict", "DevicePolicy=closed",
                 "DeviceAllow=char-alsa rw", "SupplementaryGroups=audio", "MemoryMax="):
        assert line in text, line
