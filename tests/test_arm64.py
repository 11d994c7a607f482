"""Proof on 64-bit ARM: the edge package under qemu-aarch64 (Cortex-A72, a Raspberry Pi 4) with an arm64
Python 3.11 from Debian bookworm publishes the same events as on x86-64 to a real mosquitto (the daemon as
shipped: both models and the verifier).

The emulated environment is built by tests/arm64/setup.sh (cached in .cache/arm64); it needs
qemu-user-static, Debian's arm64 packages and PyPI's aarch64 wheels.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import DEMO, ROOT

pytestmark = pytest.mark.slow

SCORE_TOLERANCE = {"shipped": 0.02, "alone": 1e-4}
"""|cough_score| difference allowed between the architectures. The models' own outputs agree to 1e-4 (measured:
0), so the detector alone is held to that; the verifier's tagger (YAMNet) does not quite: its embedding differs
between onnxruntime's aarch64 and x86-64 kernels, and the mixed score of the demo's events by up to 8e-3 (measured;
the test prints it)."""


@pytest.fixture(scope="module")
def arm_python() -> str:
    if shutil.which("qemu-aarch64-static") is None:
        pytest.fail("qemu-user-static is not installed (apt-get install qemu-user-static)")
    out = subprocess.run(["bash", str(ROOT / "tests/arm64/setup.sh"), str(ROOT / ".cache/arm64")], capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1] + "/python"


def collect(port: int, expected: int, run) -> list[dict]:
    got: list[dict] = []
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"arm-{time.time_ns()}")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("coughwatch/+/event", qos=1)
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    time.sleep(0.5)
    run()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(got) < expected:
        time.sleep(0.1)
    sub.disconnect()
    sub.loop_stop()
    return sorted(got, key=lambda e: e["onset_sample"])


def edge_cmd(python: list[str], port: int, device: str, tmp_path, extra: list[str]) -> list[str]:
    return [*python, "-m", "edge", "run", "--source", str(DEMO), "--fast", "--device-id", device, "--mqtt-host",
            "127.0.0.1", "--mqtt-port", str(port), "--device-outbox", str(tmp_path / f"{device}.sqlite"), *extra]


@pytest.mark.parametrize("daemon, extra", [("shipped", []), ("alone", ["--model-verifier", ""])])
def test_arm64_publishes_the_same_events_as_x86(arm_python, broker, tmp_path, daemon, extra):
    machine = subprocess.run([arm_python, "-c", "import platform, onnxruntime; print(platform.machine())"],
                             capture_output=True, text=True, timeout=300)
    assert machine.stdout.strip() == "aarch64", machine.stderr

    def run(python, device):
        result = subprocess.run(edge_cmd(python, broker.port, device, tmp_path, extra), capture_output=True,
                                text=True, timeout=600, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr.count("msg=event id=")

    x86 = collect(broker.port, 3, lambda: run([sys.executable], "x86"))
    arm = collect(broker.port, len(x86), lambda: run([arm_python], "arm64"))
    assert len(x86) >= 3 and len(arm) == len(x86)
    for a, b in zip(arm, x86):
        assert a["device_id"] == "arm64" and b["device_id"] == "x86"
        assert a["onset_sample"] == b["onset_sample"] and a["duration_s"] == b["duration_s"]
        assert a["label"] == b["label"] and a["model"] == b["model"] and a["detector"] == b["detector"]
        assert abs(a["cough_score"] - b["cough_score"]) <= SCORE_TOLERANCE[daemon], (a["cough_score"], b["cough_score"])
        for label, p in b["probabilities"].items():
            assert abs(a["probabilities"][label] - p) <= 1e-4, (label, a["probabilities"], b["probabilities"])
    worst = max(abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(arm, x86) for k in b["probabilities"])
    score = max(abs(a["cough_score"] - b["cough_score"]) for a, b in zip(arm, x86))
    print(f"\narm64 vs x86-64 ({daemon}): {len(arm)} events, same onsets, max |dp| = {worst:.2e}, "
          f"max |d cough_score| = {score:.2e}")
