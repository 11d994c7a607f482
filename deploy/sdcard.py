"""`deploy sdcard`: prepare a freshly flashed Raspberry Pi OS card (or .img) to install coughwatch at first boot.

Everything goes onto the FAT boot partition under ``coughwatch/`` (installer, unit, models, the
coughwatch wheel, settings, secrets). The first boot runs ``coughwatch/deploy/firstboot.sh`` through
the mechanism the image uses: ``firstrun.sh`` started by ``systemd.run=`` in ``cmdline.txt``
(Raspberry Pi OS bookworm, as Raspberry Pi Imager does it) or cloud-init ``user-data`` ``runcmd``
(images that ship cloud-init). Standard library only, plus mtools for images.
"""
from __future__ import annotations

import shlex
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge.broker import PASSWORD_ENV
from edge.mqtt import MqttSettings
from edge.settings import check_device_id
from edge.shipped import CARD_FILE, MODEL_FILE, MODELS, VERIFIER, verifier_files

REPO = Path(__file__).resolve().parent.parent
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
RUN_ARGS = "systemd.run={mount}/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target"


class DeployError(RuntimeError):
    """The card or the arguments cannot be used; the message says why."""


class BootPartition(Protocol):
    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...


class FolderPartition:
    """A mounted boot partition (e.g. /media/$USER/bootfs)."""

    def __init__(self, root: Path) -> None:
        if not (root / "config.txt").is_file() and not (root / "cmdline.txt").is_file():
            raise DeployError(f"{root} does not look like a Raspberry Pi boot partition (no config.txt or cmdline.txt)")
        self.root = root

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def fat_offset(image: Path) -> int:
    """Byte offset of the first FAT partition in an MBR-partitioned image."""
    with image.open("rb") as fh:
        mbr = fh.read(512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        raise DeployError(f"{image}: no MBR partition table (is it a Raspberry Pi OS image?)")
    for i in range(4):
        entry = mbr[446 + 16 * i: 462 + 16 * i]
        ptype, lba = entry[4], struct.unpack("<I", entry[8:12])[0]
        if ptype in FAT_TYPES and lba:
            return lba * 512
    raise DeployError(f"{image}: no FAT partition in its partition table")


class ImagePartition:
    """The FAT boot partition inside a .img file, edited in place with mtools (no root, no mount)."""

    def __init__(self, image: Path) -> None:
        if shutil.which("mcopy") is None:
            raise DeployError("mtools is needed to edit an image (apt-get install mtools)")
        self.spec = f"{image}@@{fat_offset(image)}"
        if self.read("cmdline.txt") is None and self.read("config.txt") is None:
            raise DeployError(f"{image}: its FAT partition has no cmdline.txt or config.txt")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, check=check, env={"MTOOLS_SKIP_CHECK": "1",
                                                                             "PATH": "/usr/bin:/bin"})

    def read(self, name: str) -> bytes | None:
        result = self._run("mtype", "-i", self.spec, f"::/{name}", check=False)
        return result.stdout if result.returncode == 0 else None

    def write(self, name: str, data: bytes) -> None:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            self._run("mmd", "-i", self.spec, "::/" + "/".join(parts[:depth]), check=False)
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                self._run("mcopy", "-o", "-i", self.spec, tmp.name, f"::/{name}")
            except subprocess.CalledProcessError as exc:
                raise DeployError(f"mcopy could not write {name}: {exc.stderr.decode(errors='replace')}") from exc


@dataclass(frozen=True)
class CardSettings:
    device_id: str
    """Device id (topics, events, MQTT client id)."""
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    """The broker (host empty = events to the journal) and its password, as edge.broker reads them."""
    wifi_ssid: str = ""
    wifi_psk: str = ""
    """Read from a file or a prompt, never from the command line."""
    wifi_country: str = "GB"
    """ISO 3166 country code for the Wi-Fi regulatory domain."""
    boot_mount: str = "/boot/firmware"
    """Where the Pi mounts the boot partition (/boot/firmware on bookworm, /boot before)."""

    def __post_init__(self) -> None:
        try:
            check_device_id(self.device_id)
        except ValueError as exc:
            raise DeployError(f"--device-id: {exc}") from None
        if self.wifi_ssid and not 8 <= len(self.wifi_psk) <= 63 and len(self.wifi_psk) != 64:
            raise DeployError("the Wi-Fi passphrase must be 8 to 63 characters (or a 64-digit hex PSK)")
        if len(self.wifi_country) != 2 or not self.wifi_country.isalpha():
            raise DeployError(f"--wifi-country {self.wifi_country!r} must be a two-letter country code")


def build_wheel(out: Path) -> Path:
    """The coughwatch wheel (pure Python), built from this checkout."""
    import importlib.util
    import sys

    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "-w", str(out),
                             str(REPO)], capture_output=True, text=True)
    if result.returncode:
        raise DeployError(f"could not build the coughwatch wheel: {result.stderr.strip()[-500:]}")
    return next(out.glob("coughwatch-*.whl"))


def payload(s: CardSettings, wheels: list[Path], models: Path) -> dict[str, bytes]:
    """Every file ``deploy sdcard`` puts under coughwatch/ on the boot partition."""
    files = {
        "coughwatch/deploy/install.sh": (REPO / "deploy/install.sh").read_bytes(),
        "coughwatch/deploy/firstboot.sh": (REPO / "deploy/firstboot.sh").read_bytes(),
        "coughwatch/systemd/coughwatch-edge.service": (REPO / "systemd/coughwatch-edge.service").read_bytes(),
    }
    for name in MODELS.values():
        model = models / name / MODEL_FILE
        if not model.is_file():
            raise DeployError(f"{model} is missing (give --models DIR)")
        files[f"coughwatch/models/{name}/{MODEL_FILE}"] = model.read_bytes()
        card = models / name / CARD_FILE
        if card.is_file():
            files[f"coughwatch/models/{name}/{CARD_FILE}"] = card.read_bytes()
    for f in verifier_files(models / VERIFIER):  # used by default (verifier = auto) where the models carry it
        files[f"coughwatch/models/{VERIFIER}/{f.name}"] = f.read_bytes()
    for wheel in wheels:
        files[f"coughwatch/wheels/{wheel.name}"] = wheel.read_bytes()
    env = {"DEVICE_ID": s.device_id, "MQTT_HOST": s.mqtt.host, "MQTT_PORT": str(s.mqtt.port),
           "MQTT_TLS": "true" if s.mqtt.tls else "false", "MQTT_USERNAME": s.mqtt.username,
           "WIFI_SSID": s.wifi_ssid, "WIFI_COUNTRY": s.wifi_country}
    files["coughwatch/settings.env"] = "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()).encode()
    if s.mqtt.password:
        files["coughwatch/secrets.env"] = f"{PASSWORD_ENV}={s.mqtt.password}\n".encode()
    if s.wifi_ssid:
        files["coughwatch/wifi.psk"] = s.wifi_psk.encode()
    return files


def hook_firstrun(part: BootPartition, mount: str) -> str:
    """Chain into Imager's firstrun.sh, or write one and add systemd.run to cmdline.txt. Idempotent."""
    call = f"bash {mount}/coughwatch/deploy/firstboot.sh stage1"
    existing = part.read("firstrun.sh")
    if existing is not None:
        lines = existing.decode().splitlines()
        if call not in lines:
            cleanup = next((i for i, line in enumerate(lines) if line.startswith("rm -f") and "firstrun.sh" in line),
                           None)
            if cleanup is None:
                cleanup = next((i for i, line in enumerate(lines) if line.strip() == "exit 0"), len(lines))
            lines.insert(cleanup, call)
            part.write("firstrun.sh", ("\n".join(lines) + "\n").encode())
        how = "chained into the existing firstrun.sh"
    else:
        script = ["#!/bin/bash", "set +e", call, f"rm -f {mount}/firstrun.sh",
                  f"sed -i 's| systemd.run.*||g' {mount}/cmdline.txt", "exit 0"]
        part.write("firstrun.sh", ("\n".join(script) + "\n").encode())
        how = "wrote firstrun.sh"
    cmdline = (part.read("cmdline.txt") or b"").decode().strip()
    if not cmdline:
        raise DeployError("cmdline.txt is missing or empty: is this a Raspberry Pi OS boot partition?")
    if "systemd.run=" not in cmdline:
        part.write("cmdline.txt", (cmdline + " " + RUN_ARGS.format(mount=mount) + "\n").encode())
        how += "; added systemd.run to cmdline.txt"
    return how


def hook_cloud_init(part: BootPartition, mount: str, user_data: bytes) -> str:
    """Add our first boot to cloud-init's runcmd (stage 1, then start stage 2 now). Idempotent."""
    items = [f"  - [bash, {mount}/coughwatch/deploy/firstboot.sh, stage1]",
             "  - [systemctl, start, --no-block, coughwatch-firstboot.service]"]
    lines = user_data.decode().splitlines()
    if items[0] in lines:
        return "cloud-init user-data already runs coughwatch"
    if "runcmd:" in lines:
        at = lines.index("runcmd:") + 1
        lines[at:at] = items
    else:
        lines += ["runcmd:", *items]
    part.write("user-data", ("\n".join(lines) + "\n").encode())
    return "added to cloud-init user-data runcmd"


def prepare(part: BootPartition, s: CardSettings, *, models: Path, extra_wheels: Path | None = None) -> list[str]:
    """Write the payload and the first-boot hook; returns what was done, one line each."""
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [build_wheel(Path(tmp))]
        if extra_wheels is not None:
            wheels += sorted(extra_wheels.glob("*.whl"))
        files = payload(s, wheels, models)
        for name, data in files.items():
            part.write(name, data)
    user_data = part.read("user-data")
    how = hook_cloud_init(part, s.boot_mount, user_data) if user_data is not None else hook_firstrun(part, s.boot_mount)
    return [f"wrote {len(files)} files under coughwatch/ ({sum(len(d) for d in files.values()) / 1e6:.1f} MB)", how]
