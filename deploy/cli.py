"""`deploy`: prepare an SD card or image for first boot; push a model to a running Pi."""
from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from edge import broker, logs
from edge.broker import PASSWORD_ENV, read_secret
from edge.config import ConfigError
from edge.contract import ContractError
from edge.shipped import CHECKOUT, MODEL_FILE, MODELS

from .sdcard import CardSettings, DeployError, FolderPartition, ImagePartition, prepare


def _prompt(question: str) -> str:
    """A secret typed in a terminal; a DeployError saying where else it may come from otherwise."""
    if not sys.stdin.isatty():
        raise DeployError(f"{question.rstrip(': ')} is needed and stdin is not a terminal: give it in a file "
                          f"(--mqtt-password-file, --wifi-psk-file) or, the MQTT password, in {PASSWORD_ENV}")
    return getpass.getpass(question)


def card_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> CardSettings:
    """The card's settings from the flags; the broker and its password as every coughwatch program reads them."""
    try:
        mqtt = broker.from_args(args, environ, _prompt)
        psk = read_secret(args.wifi_psk_file, "--wifi-psk-file") if args.wifi_psk_file else ""
    except ConfigError as exc:
        raise DeployError(str(exc)) from None
    if args.wifi_ssid and not psk:
        psk = _prompt("Wi-Fi passphrase: ")
    return CardSettings(device_id=args.device_id, mqtt=mqtt, wifi_ssid=args.wifi_ssid, wifi_psk=psk,
                        wifi_country=args.wifi_country, boot_mount=args.boot_mount)


def cmd_sdcard(args: argparse.Namespace) -> int:
    if bool(args.boot) == bool(args.image):
        raise DeployError("give exactly one of --boot DIR (a mounted boot partition) or --image FILE.img")
    part = FolderPartition(args.boot) if args.boot else ImagePartition(args.image)
    for line in prepare(part, card_settings(args, os.environ), models=args.models, extra_wheels=args.wheels):
        print(f"deploy sdcard: {line}")
    print("deploy sdcard: done; on first boot the Pi installs coughwatch and starts coughwatch-edge.service")
    return 0


def cmd_model_push(args: argparse.Namespace) -> int:
    from .model_push import SshRunner, push_model

    push_model(SshRunner(args.host, args.ssh_option), args.model, role=args.role)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy", description="Provision Raspberry Pis for coughwatch.", allow_abbrev=False)
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sdcard", help="prepare a flashed SD card (or .img) to install coughwatch on first boot",
                       allow_abbrev=False)  # --mqtt-password must not pass for --mqtt-password-file
    p.add_argument("--boot", type=Path, help="mounted boot partition (e.g. /media/$USER/bootfs)")
    p.add_argument("--image", type=Path, help="a Raspberry Pi OS .img file, edited in place with mtools")
    p.add_argument("--device-id", required=True, help="device id (letters, digits, - and _)")
    broker.add_arguments(p)
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-psk-file", type=Path, help="file whose first line is the Wi-Fi passphrase")
    p.add_argument("--wifi-country", default="GB", help="two-letter country code (default GB)")
    p.add_argument("--models", type=Path, default=CHECKOUT, help=f"folder with <name>/{MODEL_FILE}")
    p.add_argument("--wheels", type=Path, help="extra wheels for an offline install (aarch64, cp311)")
    p.add_argument("--boot-mount", default="/boot/firmware", help="boot partition mount point on the Pi")
    p = sub.add_parser("model", help="model operations on a running Pi")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser("push", help="copy, verify sha256, swap atomically, restart, roll back if `edge check` fails")
    q.add_argument("model", type=Path)
    q.add_argument("--host", required=True, help="ssh destination, e.g. pi@kitchen.local")
    q.add_argument("--role", choices=sorted(MODELS), default="classifier")
    q.add_argument("--ssh-option", action="append", default=[], help="extra ssh -o option (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        return cmd_sdcard(args) if args.command == "sdcard" else cmd_model_push(args)
    except (DeployError, ContractError) as exc:  # a model refused by the contract or its test inference
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
