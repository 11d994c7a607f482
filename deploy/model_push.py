"""`deploy model push`: copy a model to a Pi, verify it, swap it in atomically, restart, roll back on failure."""
from __future__ import annotations

import hashlib
import importlib.util
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge.shipped import INSTALLED, MODEL_FILE, MODELS

from .sdcard import DeployError


class Runner(Protocol):
    """Where the commands run: over SSH on a Pi (tests run them locally)."""

    sudo: str

    def run(self, command: str) -> subprocess.CompletedProcess: ...
    def put(self, local: Path, remote: str) -> None: ...


@dataclass
class SshRunner:
    host: str
    options: list[str] = field(default_factory=list)
    sudo: str = "sudo "

    def _ssh(self) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", *[x for o in self.options for x in ("-o", o)], self.host]

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self._ssh(), command], capture_output=True, text=True, timeout=300)

    def put(self, local: Path, remote: str) -> None:
        cmd = ["scp", "-q", "-o", "BatchMode=yes", *[x for o in self.options for x in ("-o", o)], str(local),
               f"{self.host}:{remote}"]
        if subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode:
            raise DeployError(f"could not copy {local} to {self.host}:{remote}")


def push_model(runner: Runner, model: Path, *, role: str = "classifier", models_dir: str = str(INSTALLED),
               restart: str = "systemctl restart coughwatch-edge.service",
               check: str = "/opt/coughwatch/venv/bin/edge check --skip-mic --config /etc/coughwatch/edge.toml",
               validate_locally: bool = True) -> str:
    """Returns the sha256 of the model now in service; raises DeployError after rolling back."""
    if not model.is_file():
        raise DeployError(f"{model} does not exist")
    if validate_locally:
        if importlib.util.find_spec("onnxruntime") is None:  # the Pi's `edge check` still guards the swap
            print("deploy model push: onnxruntime is not installed here; the model is checked on the Pi only")
        else:
            from edge.inference import Model

            Model(model)  # contract and a test inference; raises ContractError naming what is wrong
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    dest = f"{models_dir}/{MODELS[role]}/{MODEL_FILE}"
    q = shlex.quote
    staging = f"/tmp/coughwatch-{sha[:16]}.onnx"
    runner.put(model, staging)

    def sh(command: str, what: str) -> str:
        result = runner.run(command)
        if result.returncode:
            raise DeployError(f"{what} failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    incoming, prev = dest + ".incoming", dest + ".prev"
    sh(f"{runner.sudo}install -D -m 0644 {q(staging)} {q(incoming)} && rm -f {q(staging)}", "staging")
    got = sh(f"sha256sum {q(incoming)}", "checksum").split()[0]
    if got != sha:
        runner.run(f"{runner.sudo}rm -f {q(incoming)}")
        raise DeployError(f"sha256 mismatch after copy ({got} != {sha}); nothing changed")
    swap = f"[ ! -f {q(dest)} ] || cp -p {q(dest)} {q(prev)}; mv -f {q(incoming)} {q(dest)}"  # rename: atomic
    sh(f"{runner.sudo}sh -c {q(swap)}", "swap")
    restarted = runner.run(f"{runner.sudo}{restart}")
    checked = runner.run(f"{runner.sudo}{check}") if restarted.returncode == 0 else restarted
    if checked.returncode:
        runner.run(f"{runner.sudo}sh -c {q(f'[ -f {q(prev)} ] && mv -f {q(prev)} {q(dest)}')}")
        runner.run(f"{runner.sudo}{restart}")
        raise DeployError(f"the new model failed `edge check`, rolled back to the previous one:\n"
                          f"{(checked.stdout + checked.stderr).strip()}")
    print(f"deploy model push: {model.name} ({sha[:12]}) is now the {role} at {dest}")
    for line in checked.stdout.splitlines():  # e.g. a new detector the shipped verifier was not tuned with
        if "no verifier:" in line:
            print(f"deploy model push: note: {line.split('no verifier:', 1)[1].strip()} (the detector runs alone)")
    return sha
