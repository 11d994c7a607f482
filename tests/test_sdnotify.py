"""The daemon speaks the systemd notify protocol: READY, WATCHDOG only while audio flows, STOPPING."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT


def test_ready_watchdog_while_audio_flows_and_stopping(tmp_path, tiny_model):
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--source", "-", "--device-id", "sd",
                             "--model-detector", str(tiny_model), "--model-classifier", str(tiny_model)],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def collect(seconds: float, feed: bool) -> list[str]:
        got, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            if feed:
                proc.stdin.write(b"\0\1" * 1600)  # 100 ms of near-silence, s16le
                proc.stdin.flush()
            try:
                got += sock.recv(4096).decode().split("\n")
            except socket.timeout:
                pass
        return got

    try:
        flowing = collect(3.0, feed=True)
        assert "READY=1" in flowing
        assert flowing.count("WATCHDOG=1") >= 3, flowing
        stalled = collect(2.0, feed=False)  # the stream stalls: the watchdog must starve
        assert "WATCHDOG=1" not in stalled[2:], stalled
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()
        assert "STOPPING=1" in collect(0.5, feed=False) + stalled
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
