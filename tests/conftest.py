"""Shared fixtures: a real mosquitto on a free loopback port, tiny real models, real audio."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from mosquitto import Broker, make_broker as _make_broker  # noqa: E402
DATA = ROOT / "tests" / "data"
DEMO = DATA / "demo.flac"
DETECTOR = ROOT / "models" / "cough-detector" / "student.int8.onnx"
CLASSIFIER = ROOT / "models" / "covid-screen" / "student.int8.onnx"


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
