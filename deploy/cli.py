"""`deploy`: prepare an SD card or image for first boot; push a model to a running Pi."""
from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from edge.contract import ContractError

from .sdcard import CardSettings, DeployError, FolderPartition, ImagePartition, prepare

REPO = Path(__file__).resolve().parent.parent


def _secret(path: Path | None, prompt: str, needed: bool) -> str:
    """A secret from a file (first line) or an interactive prompt; never from the command line."""
    if path is not None:
        try:
            return path.read_text().splitlines()[0].strip() if path.read_text().strip() else ""
        except OSError as exc:
            raise DeployError(f"cannot read {path}: {exc}") from exc
    if needed:
        if not sys.stdin.isatty():
            raise DeployError(f"{prompt.rstrip(': ')} is needed: give it in a file (see --help) or run in a terminal")
        return getpass.getpass(prompt)
    return ""


def cmd_sdcard(args: argparse.Namespace) -> int:
    if bool(args.boot) == bool(args.image):
        raise DeployError("give exactly one of --boot DIR (a mounted boot partition) or --image FILE.img")
    part = FolderPartition(args.boot) if args.boot else ImagePartition(args.image)
    settings = CardSettings(
        device_id=args.device_id, broker=args.broker, mqtt_username=args.mqtt_username,
        mqtt_password=_secret(args.mqtt_password_file, "MQTT password: ", bool(args.mqtt_username)),
        wifi_ssid=args.wifi_ssid, wifi_psk=_secret(args.wifi_psk_file, "Wi-Fi passphrase: ", bool(args.wifi_ssid)),
        wifi_country=args.wifi_country, boot_mount=args.boot_mount)
    for line in prepare(part, settings, models=args.models, extra_wheels=args.wheels):
        print(f"deploy sdcard: {line}")
    print("deploy sdcard: done; on first boot the Pi installs coughwatch and starts coughwatch-edge.service")
    return 0


def cmd_model_push(args: argparse.Namespace) -> int:
    from .model_push import SshRunner, push_model

    push_model(SshRunner(args.host, args.ssh_option), args.model, role=args.role)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy", description="Provision Raspberry Pis for coughwatch.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sdcard", help="prepare a flashed SD card (or .img) to install coughwatch on first boot")
    p.add_argument("--boot", type=Path, help="mounted boot partition (e.g. /media/$USER/bootfs)")
    p.add_argument("--image", type=Path, help="a Raspberry Pi OS .img file, edited in place with mtools")
    p.add_argument("--device-id", required=True, help="device id (letters, digits, - and _)")
    p.add_argument("--broker", default="", help="mqtt://host[:port] or mqtts://host[:port]")
    p.add_argument("--mqtt-username", default="")
    p.add_argument("--mqtt-password-file", type=Path, help="file whose first line is the MQTT password")
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-psk-file", type=Path, help="file whose first line is the Wi-Fi passphrase")
    p.add_argument("--wifi-country", default="GB", help="two-letter country code (default GB)")
    p.add_argument("--models", type=Path, default=REPO / "models", help="folder with <name>/student.int8.onnx")
    p.add_argument("--wheels", type=Path, help="extra wheels for an offline install (aarch64, cp311)")
    p.add_argument("--boot-mount", default="/boot/firmware", help="boot partition mount point on the Pi")
    p = sub.add_parser("model", help="model operations on a running Pi")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser("push", help="copy, verify sha256, swap atomically, restart, roll back if `edge check` fails")
    q.add_argument("model", type=Path)
    q.add_argument("--host", required=True, help="ssh destination, e.g. pi@kitchen.local")
    q.add_argument("--role", choices=["classifier", "detector"], default="classifier")
    q.add_argument("--ssh-option", action="append", default=[], help="extra ssh -o option (repeatable)")
    args = parser.parse_args(argv)
    try:
        return cmd_sdcard(args) if args.command == "sdcard" else cmd_model_push(args)
    except (DeployError, ContractError) as exc:  # a model refused by the contract or its test inference
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
