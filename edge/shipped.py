"""The shipped models, named in one place: their folder per role, their file, where install.sh puts them.

    python -m edge.shipped      # one folder name per line (install.sh and deploy copy these)
"""
from __future__ import annotations

from pathlib import Path

MODELS = {"detector": "cough-detector", "classifier": "covid-screen"}
"""The folder of each role's model (README "Shipped models")."""
VERIFIER = "cough-verifier"
"""The folder of the shipped verifier (``edge.verifier``), beside the models; used when ``[model] verifier`` is
``auto``."""
VERIFIER_FILES = ("verifier.json", "*.onnx", "*.md")
"""What of a verifier folder goes onto a Pi (deploy sdcard; deploy/install.sh copies the same)."""
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


def verifier_files(folder: Path) -> list[Path]:
    """The files of ``folder`` a Pi gets (:data:`VERIFIER_FILES`); none when it holds no verifier.json."""
    if not (folder / VERIFIER_FILES[0]).is_file():
        return []
    return sorted({f for pattern in VERIFIER_FILES for f in folder.glob(pattern) if f.is_file()})


def shipped_verifier() -> Path | None:
    """The installed verifier folder, else a checkout's, else None (the models carry none)."""
    for base in (INSTALLED, CHECKOUT):
        if (base / VERIFIER / "verifier.json").is_file():
            return base / VERIFIER
    return None


if __name__ == "__main__":
    print("\n".join(MODELS.values()))
