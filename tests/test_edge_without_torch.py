"""The edge package installs and runs with its own extra only: no torch, transformers or librosa."""
from __future__ import annotations

import json
import subprocess
import venv

import pytest

from conftest import DEMO, ROOT


@pytest.mark.slow
def test_edge_runs_in_a_clean_venv_with_only_the_edge_extra(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{ROOT}[edge]"], check=True, timeout=900)
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; "
                            "print([m for m in ('torch', 'transformers', 'librosa', 'sklearn') if u.find_spec(m)])"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"
    result = subprocess.run([str(env_dir / "bin" / "edge"), "run", "--source", str(DEMO), "--fast", "--device-id", "v",
                             "--model-detector", str(ROOT / "models/cough-detector/student.int8.onnx"),
                             "--model-classifier", str(ROOT / "models/covid-screen/student.int8.onnx")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) >= 3
    loaded = subprocess.run([str(py), "-c", "import sys, edge.__main__, edge.pipeline, edge.mqtt, edge.audio; "
                             "print(sorted(m for m in ('torch', 'transformers', 'librosa') if m in sys.modules))"],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert loaded.stdout.strip() == "[]"
