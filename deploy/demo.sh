#!/usr/bin/env bash
# Set up the edge daemon alone (no torch) and run it on the bundled recording with the shipped models.
# With no broker configured it prints one JSON event per cough on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ldconfig -p | grep -q libportaudio.so.2; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libportaudio2 >/dev/null
fi
[ -x .venv-edge/bin/python ] || python3 -m venv .venv-edge
.venv-edge/bin/pip install -q -e '.[edge]'
exec .venv-edge/bin/edge run --source tests/data/demo.flac --fast --device-id demo "$@"
