"""Writes ``edge.toml`` for ``deploy/install.sh``: every value escaped, the file checked by the daemon's own loader.

    python -m edge.install_config --out FILE [--device-id ID] [--broker mqtt[s]://host[:port]] [--username U]

Exits 0 once FILE holds a config that ``edge`` accepts; 2 with one line naming what is wrong otherwise (FILE is
then left as it was).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from . import config
from .settings import EdgeSettings

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class InstallConfigError(ValueError):
    """A value given to install.sh cannot make a valid edge.toml; the message names it."""


def parse_broker(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` from ``mqtt://host[:port]`` or ``mqtts://host[:port]``; IPv6 hosts in brackets."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 0x7F or ch in "\"'\\" for ch in url):
        raise InstallConfigError(f"--broker {url!r} contains a space, quote, backslash or control character")
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 - raises ValueError for an unbalanced IPv6 bracket
    except ValueError as exc:
        raise InstallConfigError(f"--broker {url!r} cannot be parsed: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS or not url.startswith(f"{parts.scheme}://"):
        raise InstallConfigError(f"--broker {url!r} must start with mqtt:// or mqtts://")
    if parts.netloc.count(":") > 1 and not parts.netloc.startswith("["):
        raise InstallConfigError(f"--broker {url!r}: an IPv6 address goes in brackets, as in mqtts://[fd00::1]:8883")
    try:
        port = parts.port
    except ValueError as exc:
        raise InstallConfigError(f"--broker {url!r}: the port is not a number in 1..65535 ({exc})") from None
    port = DEFAULT_PORTS[parts.scheme] if port is None else port
    host = parts.hostname or ""
    if not host or parts.username is not None or not 1 <= port <= 65535:
        raise InstallConfigError(f"--broker {url!r} needs a host, no user name, and a port in 1..65535")
    return host, port, parts.scheme == "mqtts"


def default_device_id() -> str:
    """The host name up to its first dot (``kitchen.lan`` -> ``kitchen``): a device id has no dots."""
    return socket.gethostname().split(".")[0]


def render(device_id: str, broker: str, username: str) -> str:
    q = config.toml_string
    lines = ["# coughwatch edge configuration (written by deploy/install.sh; edit freely, --upgrade keeps it).",
             "# Results are research screening signals, not a diagnosis.", "[device]", f"id = {q(device_id)}",
             'outbox = "/var/lib/coughwatch/outbox.sqlite"', "outbox_max_events = 10000", "", "[model]",
             'detector = "/var/lib/coughwatch/models/cough-detector/student.int8.onnx"',
             'classifier = "/var/lib/coughwatch/models/covid-screen/student.int8.onnx"', "", "[mqtt]"]
    if broker:
        host, port, tls = parse_broker(broker)
        lines += [f"host = {q(host)}", f"port = {port}", f"tls = {'true' if tls else 'false'}"]
    else:
        lines.append('host = ""   # empty: events go to the journal as JSON lines')
    if username:
        lines.append(f"username = {q(username)}")
    lines.append("# the password comes from /etc/coughwatch/secrets.env (COUGHWATCH_MQTT_PASSWORD)")
    return "\n".join(lines) + "\n"


def write(out: Path, device_id: str, broker: str, username: str) -> None:
    """Render, load back with the daemon's own settings builder, and only then replace ``out``."""
    try:
        text = render(device_id or default_device_id(), broker, username).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InstallConfigError(f"a value is not valid UTF-8 text ({exc.reason})") from None
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".edge.toml.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        config.build(EdgeSettings, file=tmp, environ={})  # raises ConfigError naming the key and the value
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.install_config", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device-id", default="")
    parser.add_argument("--broker", default="")
    parser.add_argument("--username", default="")
    args = parser.parse_args(argv)
    try:
        write(args.out, args.device_id, args.broker, args.username)
    except (InstallConfigError, config.ConfigError, OSError) as exc:
        print(f"install.sh: error: edge.toml not written: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
