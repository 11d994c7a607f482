"""A real mosquitto on a free loopback port, for tests and benchmarks."""
from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


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


def make_broker(folder: Path, extra: str = "", *, persistence: bool = False) -> Broker:
    if shutil.which("mosquitto") is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = folder / "mosquitto.conf"
    # Started as root, mosquitto drops to its own user and could not read a private tmp folder.
    lines = [f"user {getpass.getuser()}", f"listener {port} 127.0.0.1",
             f"persistence {'true' if persistence else 'false'}", f"persistence_location {folder}/",
             extra or "allow_anonymous true"]
    conf.write_text("\n".join(lines) + "\n")
    return Broker(port, folder, conf)
