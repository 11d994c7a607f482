"""A real Home Assistant for tests: installed from PyPI into its own virtual environment (cached between runs),
started on a free loopback port with a prepared configuration folder whose MQTT integration points at the test's
mosquitto, and read back through its REST API with a long-lived access token written into its auth store."""
from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HA_VERSION = "2024.3.3"
"""The last Home Assistant release series that runs on Python 3.11 (2024.4 needs 3.12)."""
HA_EXTRA = ("home-assistant-frontend", "Pillow", "numpy", "SQLAlchemy", "fnv-hash-fast", "psutil-home-assistant",
            "PyTurboJPEG", "securetar==2024.2.1", "pyotp==2.8.0", "PyQRCode==1.2.1", "paho-mqtt", "janus",
            "josepy<2")
"""Requirements of the integrations Home Assistant sets up by default and of mqtt, installed with the release
(versions from its package_constraints.txt), so that it starts without installing anything. josepy 2 removed what
the release's acme needs (every HTTP request would fail importing hass_nabucasa)."""


def venv_dir() -> Path:
    """``$COUGHWATCH_HA_VENV``, or ``~/.cache/coughwatch/ha-venv-<version>``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "coughwatch" / f"ha-venv-{HA_VERSION}"
    return Path(os.environ.get("COUGHWATCH_HA_VENV", default))


def ensure_installed(venv: Path) -> Path:
    """Install Home Assistant into ``venv`` unless a finished install is there; returns its ``hass``."""
    hass, done = venv / "bin" / "hass", venv / ".coughwatch-installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:  # two test runs at once install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and hass.exists():
            return hass
        python = os.environ.get("COUGHWATCH_HA_PYTHON", sys.executable)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        wheel_dir = venv / "wheel"
        _run([python, "-m", "venv", "--clear", str(venv)])
        _run([*pip, "install", "-q", "--upgrade", "pip"])
        _run([*pip, "download", "-q", "--no-deps", "-d", str(wheel_dir), f"homeassistant=={HA_VERSION}"])
        constraints = venv / "constraints.txt"
        with zipfile.ZipFile(next(wheel_dir.glob("homeassistant-*.whl"))) as wheel:
            constraints.write_bytes(wheel.read("homeassistant/package_constraints.txt"))
        _run([*pip, "install", "-q", "-c", str(constraints), f"homeassistant=={HA_VERSION}", *HA_EXTRA])
        done.write_text(f"homeassistant=={HA_VERSION}\n")
    return hass


def _run(step: list[str]) -> None:
    result = subprocess.run(step, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f"installing Home Assistant {HA_VERSION} failed at {' '.join(step[:5])}: "
                           f"{result.stderr[-2000:]}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token(refresh_id: str, jwt_key: str, lifetime_s: int = 3600) -> str:
    """The JWT (HS256) Home Assistant checks an API call's bearer token against: issuer = the refresh token's id."""
    now = int(time.time())
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"iss": refresh_id, "iat": now, "exp": now + lifetime_s}).encode())
    sig = hmac.new(jwt_key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _store(key: str, data: dict, version: int = 1) -> str:
    return json.dumps({"version": version, "minor_version": 1, "key": key, "data": data}, indent=1)


def write_config(folder: Path, *, http_port: int, mqtt_port: int, statestream: str) -> str:
    """A configuration folder: http on loopback, the REST API, MQTT (a config entry) at the broker, and
    mqtt_statestream publishing event entities' states under ``statestream``; returns an access token."""
    (folder / ".storage").mkdir(parents=True, exist_ok=True)
    (folder / "configuration.yaml").write_text(
        "homeassistant:\n  name: coughwatch test\n  latitude: 0\n  longitude: 0\n  elevation: 0\n"
        "  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: GB\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {http_port}\napi:\n"
        f"mqtt_statestream:\n  base_topic: {statestream}\n  include:\n    domains: [event]\n"
        "logger:\n  default: warning\n")
    entry = {"entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 1, "domain": "mqtt", "title": "127.0.0.1",
             "data": {"broker": "127.0.0.1", "port": mqtt_port, "discovery": True}, "options": {},
             "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
             "unique_id": None, "disabled_by": None}
    (folder / ".storage" / "core.config_entries").write_text(_store("core.config_entries", {"entries": [entry]}))
    user_id, refresh_id, jwt_key = uuid.uuid4().hex, uuid.uuid4().hex, secrets.token_hex(64)
    auth = {
        "users": [{"id": user_id, "group_ids": ["system-admin"], "is_owner": True, "is_active": True,
                   "name": "coughwatch test", "system_generated": False, "local_only": False}],
        "groups": [{"id": "system-admin", "name": "Administrators"}, {"id": "system-users", "name": "Users"},
                   {"id": "system-read-only", "name": "Read Only"}],
        "credentials": [],
        "refresh_tokens": [{"id": refresh_id, "user_id": user_id, "client_id": None, "client_name": "coughwatch test",
                            "client_icon": None, "token_type": "long_lived_access_token",
                            "created_at": "2024-01-01T00:00:00+00:00", "access_token_expiration": 315360000.0,
                            "token": secrets.token_hex(64), "jwt_key": jwt_key, "last_used_at": None,
                            "last_used_ip": None, "credential_id": None, "version": HA_VERSION}],
    }
    (folder / ".storage" / "auth").write_text(_store("auth", auth))
    return access_token(refresh_id, jwt_key)


@dataclass
class HomeAssistant:
    hass: Path
    folder: Path
    port: int
    token: str
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.folder / "hass.out"

    def start(self, timeout: float = 300.0) -> None:
        """Start and wait until the API answers and the MQTT integration is loaded."""
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(self.hass), "-c", str(self.folder)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Home Assistant exited with {self.proc.returncode}: {self.tail()}")
            try:
                if "mqtt" in self.get("/api/config")["components"]:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Home Assistant did not load MQTT within {timeout:.0f} s: {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        logfile = self.folder / "home-assistant.log"
        if logfile.exists():
            text += logfile.read_text(errors="replace")
        return text[-chars:]

    def request(self, path: str, body: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.read().decode()

    def get(self, path: str):
        return json.loads(self.request(path))

    def state(self, entity_id: str) -> dict | None:
        """The entity's state object, or None when Home Assistant has no such entity."""
        try:
            return self.get(f"/api/states/{entity_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def template(self, text: str) -> str:
        return self.request("/api/template", {"template": text})

    def stop(self, timeout: float = 60.0) -> None:
        """Stop cleanly (SIGTERM): Home Assistant writes its registries to .storage on the way out."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def registry(self, key: str) -> dict:
        """A registry Home Assistant saved (``core.device_registry``, ``core.entity_registry``)."""
        return json.loads((self.folder / ".storage" / key).read_text())["data"]
