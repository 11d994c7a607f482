"""Nested frozen-dataclass settings <-> TOML file <-> ``--<section>-<field>`` flags <-> environment.

Shared by ``edge`` and ``trainer`` so both map flags one to one onto their settings the same way.
Precedence: defaults < TOML file < environment (``<PREFIX>_<SECTION>_<FIELD>``) < flags.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import sys
import typing
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names the key and the value."""


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: quotes, backslashes and control characters escaped (TOML 1.0)."""
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{ord(ch):04X}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_arguments(parser: argparse.ArgumentParser, root: type, shortcuts: dict[str, str] | None = None, *,
                  only: Collection[str] | None = None) -> None:
    """One flag per field of each section of ``root``; ``shortcuts`` maps extra flags to ``section_field``.

    ``only`` names the sections (``"mqtt"``) or fields (``"mqtt.host"``) that get flags: a subcommand shows the
    flags it reads and no others.
    """
    shortcuts = shortcuts or {}
    for section, cls in typing.get_type_hints(root).items():
        if only is not None and section not in only and not any(k.startswith(f"{section}.") for k in only):
            continue
        group = parser.add_argument_group(section)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.metadata.get("secret"):
                continue  # a secret on the command line shows in `ps`: environment or file only
            if only is not None and section not in only and f"{section}.{f.name}" not in only:
                continue
            dest = f"{section}_{f.name}"
            flags = [f"--{section}-{f.name.replace('_', '-')}"] + [k for k, v in shortcuts.items() if v == dest]
            doc = _field_doc(cls, f.name)
            if hints[f.name] is bool:
                group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=doc)
            else:
                group.add_argument(*flags, dest=dest, type=str, default=None, help=doc,
                                   metavar=hints[f.name].__name__.upper())


def build(root: type, *, file: str | Path | None = None, args: argparse.Namespace | None = None,
          env_prefix: str = "", environ: dict[str, str] | None = None, file_required: bool = True):
    """Construct ``root`` from the layered sources; raises :class:`ConfigError` naming the bad key."""
    raw = _read_file(Path(file), file_required) if file is not None else {}
    environ = os.environ if environ is None else environ
    sections = typing.get_type_hints(root)
    if env_prefix:
        _warn_unknown_environment(env_prefix, sections, environ)
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"{file}: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    parts = {}
    for section, cls in sections.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{file}: [{section}] must be a table")
        hints = typing.get_type_hints(cls)
        bad = set(values) - set(hints)
        if bad:
            raise ConfigError(f"{file}: [{section}] has unknown key(s) {sorted(bad)}; known: {sorted(hints)}")
        kwargs = {}
        secret = {f.name for f in fields(cls) if f.metadata.get("secret")}
        for name, ftype in hints.items():
            key = f"{section}.{name}"
            source, value = None, None
            if name in values:
                source, value = "config file", values[name]
            env_name = f"{env_prefix}_{section}_{name}".upper() if env_prefix else ""
            if env_name and env_name in environ:
                source, value = f"environment {env_name}", environ[env_name]
            flag = getattr(args, f"{section}_{name}", None) if args is not None else None
            if flag is not None:
                source, value = f"--{section}-{name.replace('_', '-')}", flag
            if source is None:
                continue
            kwargs[name] = _coerce(key, value, ftype, source, secret=name in secret)
        try:
            parts[section] = cls(**kwargs)
        except ValueError as exc:
            raise ConfigError(f"[{section}] {exc}") from exc
    try:
        return root(**parts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _read_file(path: Path, required: bool) -> dict:
    """The TOML file (or a run's settings.json) as a dict; a clear ConfigError when it is missing, unreadable, not
    UTF-8 or not TOML."""
    if not path.exists():
        if required:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file")
    try:
        text = path.read_bytes().decode("utf-8")
        if path.suffix == ".json":  # a run folder's settings.json, as `trainer distill` wrote it
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: not a JSON object of settings sections")
            return {k: v for k, v in data.items() if k != "command"}
        return tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          "save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _warn_unknown_environment(prefix: str, sections: dict, environ) -> None:
    """A misspelt ``<PREFIX>_<SECTION>_<KEY>`` variable would be ignored silently: name it, with the known ones."""
    known = {f"{prefix}_{section}_{f.name}".upper() for section, cls in sections.items() for f in fields(cls)}
    for name in sorted(environ):
        if name.upper().startswith(f"{prefix.upper()}_") and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            logging.getLogger(__name__).warning("environment variable %s is not a setting and is ignored%s",
                                                name, hint)


def _coerce(key: str, value, ftype, source: str, *, secret: bool = False):
    try:
        return _convert(value, ftype)
    except ValueError as exc:
        shown = "<hidden>" if secret else repr(value)
        raise ConfigError(f"{key} = {shown} (from {source}): {'invalid value' if secret else exc}") from exc


def _convert(value, ftype):
    if ftype is bool:
        return value if isinstance(value, bool) else _parse_bool(str(value))
    if ftype in (int, float):
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        number = float(value) if ftype is float else _whole_number(value)
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number
    if ftype is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError("expected a string")
        return str(value)
    if typing.get_origin(ftype) is tuple:
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        return tuple(str(v) for v in items)
    return value


def _whole_number(value) -> int:
    """An integer key takes whole numbers only: 2.5 is refused rather than truncated to 2."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError("must be a whole number")
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"not a whole number: {value!r}") from None


def _field_doc(cls: type, name: str) -> str | None:
    """The docstring written under a dataclass field, read from the class source (units live there)."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return None
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)):
            return str(nxt.value.value).replace("%", "%%")
    return None
