#!/usr/bin/env bash
# Set up the dev environment (system packages, .venv with torch 2.13.0 CPU) and run every test, slow ones included.
# tests/test_home_assistant.py installs Home Assistant into its own cached venv (tests/real_home_assistant.py).
set -euo pipefail
cd "$(dirname "$0")/.."
need=(mosquitto systemd-analyze shellcheck mcopy mkfs.fat qemu-aarch64-static)
missing=0
for tool in "${need[@]}"; do command -v "$tool" >/dev/null || missing=1; done
if [ "$missing" -eq 1 ] || ! ldconfig -p | grep -q libportaudio.so.2; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto libportaudio2 libsndfile1 openssl systemd \
    shellcheck mtools dosfstools qemu-user-static >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/python -m pytest "$@"
