"""Writes ``edge.toml`` (and ``secrets.env``) for ``deploy/install.sh``: every value escaped, checked by the daemon's loader.

    python -m edge.install_config --out FILE [--secrets-out FILE] [--prompt] [--device-id ID]
        [--mqtt-host H] [--mqtt-port N] [--mqtt-tls] [--mqtt-username U] [--mqtt-password-file F]

The broker flags and the password are those of every coughwatch program (edge.broker). Exits 0 once FILE holds a
config that ``edge`` accepts, and SECRETS (0600) the password when one was given; 2 with one line naming what is
wrong otherwise (the files are then left as they were).
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path

from . import broker, config
from .mqtt import MqttSettings
from .settings import EdgeSettings, default_device_id
from .shipped import INSTALLED, model_path


def render(device_id: str, mqtt: MqttSettings) -> str:
    """edge.toml for ``device_id`` and the broker keys of ``mqtt`` (its password goes to secrets.env, never here)."""
    q = config.toml_string
    lines = ["# coughwatch edge configuration (written by deploy/install.sh; edit freely, --upgrade keeps it).",
             "# Results are research screening signals, not a diagnosis.", "[device]", f"id = {q(device_id)}",
             'outbox = "/var/lib/coughwatch/outbox.sqlite"', "outbox_max_events = 10000", "", "[model]",
             f"detector = {q(str(model_path(INSTALLED, 'detector')))}",
             f"classifier = {q(str(model_path(INSTALLED, 'classifier')))}", "", "[mqtt]"]
    if mqtt.host:
        lines += [f"host = {q(mqtt.host)}", f"port = {mqtt.port}", f"tls = {'true' if mqtt.tls else 'false'}"]
    else:
        lines.append('host = ""   # empty: events go to the journal as JSON lines')
    if mqtt.username:
        lines.append(f"username = {q(mqtt.username)}")
    lines.append(f"# the password comes from /etc/coughwatch/secrets.env ({broker.PASSWORD_ENV})")
    return "\n".join(lines) + "\n"


def write(out: Path, device_id: str, mqtt: MqttSettings, secrets: Path | None = None) -> None:
    """Render, load back with the daemon's own settings builder, and only then replace ``out`` (and ``secrets``)."""
    try:
        text = render(device_id or default_device_id(), mqtt).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise config.ConfigError(f"a value is not valid UTF-8 text ({exc.reason})") from None
    _replace_checked(out, text)
    if secrets is not None and mqtt.password:
        if "\n" in mqtt.password or "\r" in mqtt.password:
            raise config.ConfigError("the MQTT password holds a line break")
        fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"{broker.PASSWORD_ENV}={mqtt.password}\n")


def _replace_checked(out: Path, text: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".edge.toml.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        config.build(EdgeSettings, file=tmp, environ={})  # raises ConfigError naming the key and the value
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _prompt(question: str) -> str:
    return getpass.getpass(question) if sys.stdin.isatty() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.install_config", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--out", type=Path, required=True, help="edge.toml to write")
    parser.add_argument("--secrets-out", type=Path, default=None, help="secrets.env to write when a password is given")
    parser.add_argument("--prompt", action="store_true", help="ask for a missing password (in a terminal)")
    parser.add_argument("--device-id", default="", help="device id (default: the host name up to its first dot)")
    broker.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        mqtt = broker.from_args(args, os.environ, _prompt if args.prompt else None)
        write(args.out, args.device_id, mqtt, args.secrets_out)
    except (config.ConfigError, OSError) as exc:
        print(f"install.sh: error: edge.toml not written: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
