"""The broker and its password, said one way by every program that names one (`edge`, `deploy sdcard`, `install.sh`).

The broker is the ``[mqtt]`` keys ``host``, ``port``, ``tls`` and ``username``, one flag each
(``--mqtt-host``, ``--mqtt-port``, ``--mqtt-tls``/``--no-mqtt-tls``, ``--mqtt-username``). The password is
never a flag (a flag shows in ``ps``): it is the first line of the file ``--mqtt-password-file`` names, or the
environment variable ``COUGHWATCH_MQTT_PASSWORD``, or, where a person runs the tool in a terminal
(``deploy sdcard``, ``install.sh``) and a user name is given, a prompt.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .mqtt import MqttSettings

BROKER_KEYS = ("host", "port", "tls", "username", "password_file")
"""The ``[mqtt]`` keys every program takes, as ``--mqtt-<key>`` flags."""
PASSWORD_ENV = "COUGHWATCH_MQTT_PASSWORD"
"""The environment variable that holds the MQTT password."""


@dataclass(frozen=True)
class BrokerSettings:
    """The settings root of a program that names a broker but runs no daemon (``deploy``, ``install.sh``)."""

    mqtt: MqttSettings = field(default_factory=MqttSettings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mqtt-host``, ``--mqtt-port``, ``--mqtt-tls``, ``--mqtt-username``, ``--mqtt-password-file``."""
    config.add_arguments(parser, BrokerSettings, only=[f"mqtt.{key}" for key in BROKER_KEYS])


def from_args(args: argparse.Namespace, environ: Mapping[str, str],
              prompt: Callable[[str], str] | None = None) -> MqttSettings:
    """The broker the flags name, its password read by :func:`with_password`; ``prompt`` asks for a missing one."""
    secret = {PASSWORD_ENV: environ[PASSWORD_ENV]} if PASSWORD_ENV in environ else {}
    s = with_password(config.build(BrokerSettings, args=args, env_prefix="COUGHWATCH", environ=secret).mqtt)
    if prompt is not None and s.username and not s.password:
        s = dataclasses.replace(s, password=prompt(f"MQTT password for {s.username}: "))
    return s


def with_password(s: MqttSettings) -> MqttSettings:
    """``s`` with its password read from ``password_file`` when that names one (ConfigError if given twice)."""
    if not s.password_file:
        return s
    if s.password:
        raise config.ConfigError(f"the MQTT password is given twice (mqtt.password_file = {s.password_file!r} and "
                                 f"{PASSWORD_ENV} or mqtt.password): give it one way")
    return dataclasses.replace(s, password=read_secret(Path(s.password_file), "mqtt.password_file"))


def read_secret(path: Path, key: str) -> str:
    """The first line of ``path``, stripped; ConfigError naming ``key`` (never the content) when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise config.ConfigError(f"{key} = {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise config.ConfigError(f"{key} = {str(path)!r} is not UTF-8 text") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""
