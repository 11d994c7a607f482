"""The shipped models, named in one place: their folder per role, their file, where install.sh puts them.

    python -m edge.shipped      # one folder name per line (install.sh and deploy copy these)
"""
from __future__ import annotations

from pathlib import Path

MODELS = {"detector": "cough-detector", "classifier": "covid-screen"}
"""The folder of each role's model (README "Shipped models")."""
MODEL_FILE = "student.int8.onnx"
"""The file the daemon loads from a model's folder."""
CARD_FILE = "MODEL_CARD.md"
"""The model card beside it, copied with it."""
INSTALLED = Path("/var/lib/coughwatch/models")
"""Where deploy/install.sh puts the models (and `deploy model push` replaces them)."""
CHECKOUT = Path(__file__).resolve().parent.parent / "models"
"""Where a checkout of this repository keeps them."""


def model_path(base: Path, role: str) -> Path:
    """``<base>/<folder of role>/student.int8.onnx``."""
    return base / MODELS[role] / MODEL_FILE


def default_model(role: str) -> str:
    """The installed model of ``role``, else a checkout's, else the installed path (the error then names it)."""
    for base in (INSTALLED, CHECKOUT):
        if model_path(base, role).is_file():
            return str(model_path(base, role))
    return str(model_path(INSTALLED, role))


if __name__ == "__main__":
    print("\n".join(MODELS.values()))
