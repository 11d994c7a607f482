#!/usr/bin/env bash
# Build what runs the edge package as 64-bit ARM under qemu-user on an x86-64 Debian host, without
# touching the host's dpkg architectures: an arm64 Python 3.11 (Debian bookworm, as on Raspberry Pi OS
# bookworm) unpacked into a sysroot, aarch64 wheels of the edge dependencies, and a sitecustomize shim.
# Recipe and its two traps: ../shared/notes/arm-emulation.md. Idempotent; prints the folder when done.
#   tests/arm64/setup.sh DIR
set -euo pipefail
OUT="$(mkdir -p "${1:?usage: setup.sh DIR}" && cd "$1" && pwd)"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
command -v qemu-aarch64-static >/dev/null || { echo "setup.sh: apt-get install qemu-user-static" >&2; exit 2; }
SYSROOT="$OUT/sysroot"

if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
  APT="$OUT/apt"
  mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/etc/sources.list.d" \
           "$APT/etc/preferences.d" "$APT/etc/apt.conf.d" "$SYSROOT"
  : >"$APT/state/status"
  # The host's Debian mirrors, limited to arm64.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed -e '/^Types:/a Architectures: arm64' "$f" >"$APT/etc/sources.list.d/$(basename "$f")"
  done
  if [ -f /etc/apt/sources.list ]; then
    sed -n -e 's/^deb \(\[[^]]*\] \)\?/deb [arch=arm64] /p' /etc/apt/sources.list >"$APT/etc/sources.list"
  else
    : >"$APT/etc/sources.list"
  fi
  cat >"$APT/apt.conf" <<CONF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::State "$APT/state";
Dir::State::status "$APT/state/status";
Dir::Cache "$APT/cache";
Dir::Etc "$APT/etc";
Dir::Etc::sourcelist "$APT/etc/sources.list";
Dir::Etc::sourceparts "$APT/etc/sources.list.d";
Dir::Etc::trusted "/etc/apt/trusted.gpg";
Dir::Etc::trustedparts "/etc/apt/trusted.gpg.d";
CONF
  export APT_CONFIG="$APT/apt.conf"
  apt-get -qq update
  apt-get -qq install --download-only -y python3.11 libportaudio2 >/dev/null
  for deb in "$APT"/cache/archives/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  # Trap 1: onnxruntime >= 1.28 segfaults reading the host's x86 /proc/cpuinfo through qemu 7.2;
  # qemu serves <sysroot>/proc/cpuinfo instead when it exists: a Raspberry Pi 4 (Cortex-A72) one.
  mkdir -p "$SYSROOT/proc"
  for i in 0 1 2 3; do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
  done >"$SYSROOT/proc/cpuinfo"
fi

if [ ! -f "$OUT/wheels/.done" ]; then
  rm -rf "$OUT/wheels"
  platforms=()
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
  python3 -m pip install --quiet --target "$OUT/wheels" --only-binary=:all: --implementation cp \
    --python-version 3.11 --abi cp311 --platform manylinux2014_aarch64 "${platforms[@]}" \
    numpy onnxruntime paho-mqtt sounddevice soundfile soxr cffi
  touch "$OUT/wheels/.done"
fi

# Trap 2: ctypes.util.find_library runs the host's x86 ldconfig, which knows no ARM libraries;
# look in the multiarch folder first (qemu redirects it into the sysroot).
mkdir -p "$OUT/shim"
cat >"$OUT/shim/sitecustomize.py" <<'PY'
import ctypes.util
import glob

_find = ctypes.util.find_library


def find_library(name):
    for folder in ("/usr/lib/aarch64-linux-gnu", "/lib/aarch64-linux-gnu"):
        hits = sorted(glob.glob(f"{folder}/lib{name}.so*"))
        if hits:
            return hits[0]
    return _find(name)


ctypes.util.find_library = find_library
PY

# The command that runs Python as a Raspberry Pi 4 would: tests/arm64/python <args>
cat >"$OUT/python" <<SH
#!/bin/sh
QEMU_CPU=cortex-a72 QEMU_LD_PREFIX="$SYSROOT" PYTHONPATH="$OUT/shim:$OUT/wheels:$ROOT" \\
  exec qemu-aarch64-static "$SYSROOT/usr/bin/python3.11" "\$@"
SH
chmod +x "$OUT/python"
echo "$OUT"
