"""Shared fixtures: a real mosquitto on a free loopback port, tiny real models, real audio."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from mosquitto import Broker, make_broker as _make_broker  # noqa: E402

from edge.shipped import CHECKOUT, model_path  # noqa: E402

DATA = ROOT / "tests" / "data"
DEMO = DATA / "demo.flac"
DETECTOR = model_path(CHECKOUT, "detector")
CLASSIFIER = model_path(CHECKOUT, "classifier")


def load_schema(name: str) -> dict:
    """A published message's JSON schema: ``event`` or ``counts`` (edge/<name>.schema.json)."""
    import json

    return json.loads((ROOT / "edge" / f"{name}.schema.json").read_text())


class LocalRunner:
    """`deploy model push`'s commands run here rather than over SSH (a stand-in for the Pi)."""

    sudo = ""

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)

    def put(self, local: Path, remote: str) -> None:
        Path(remote).write_bytes(local.read_bytes())


def make_broker(folder: Path, extra: str = "") -> Broker:
    try:
        return _make_broker(folder, extra)
    except RuntimeError as exc:
        pytest.fail(str(exc))


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
