"""Shared fixtures: a real mosquitto on a free loopback port, tiny real models, real audio."""
from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
DEMO = DATA / "demo.flac"
DETECTOR = ROOT / "models" / "cough-detector" / "student.int8.onnx"
CLASSIFIER = ROOT / "models" / "covid-screen" / "student.int8.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    port: int
    folder: Path
    conf: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def make_broker(folder: Path, extra: str = "") -> Broker:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = folder / "mosquitto.conf"
    # Started as root, mosquitto drops to its own user and could not read pytest's private tmp folder.
    user = f"user {getpass.getuser()}\n"
    conf.write_text(f"{user}listener {port} 127.0.0.1\npersistence false\n{extra or 'allow_anonymous true'}\n")
    return Broker(port, folder, conf)


@pytest.fixture
def broker(tmp_path):
    b = make_broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real (untrained) CNN student exported through the trainer's own export path."""
    import torch

    from trainer.export import contract_metadata, export_onnx
    from trainer.models import build_cnn_student

    torch.manual_seed(0)
    model = build_cnn_student(("cough", "not_cough"), "cough", window_samples=16000, pre_roll_samples=4000,
                              widths=(8, 8)).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    meta = contract_metadata(model.spec, threshold=0.5, train_data="none (test fixture)", teacher="none", metrics={})
    export_onnx(model, path, meta, name="tiny")
    return path
