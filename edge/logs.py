"""One verbosity flag and one log format for every program (`edge`, `trainer`, `deploy`; install.sh's Python)."""
from __future__ import annotations

import argparse
import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s"
"""key=value lines on stderr: journald and grep read them alike."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` (DEBUG, INFO, WARNING or ERROR; default INFO)."""
    parser.add_argument("--log-level", default="INFO", choices=LEVELS, help="what is logged (default INFO)")


def configure(level: str) -> None:
    """Log records at ``level`` and above to stderr in :data:`FORMAT`."""
    logging.basicConfig(level=level, stream=sys.stderr, format=FORMAT)
