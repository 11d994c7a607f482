#!/bin/bash
# coughwatch first boot (copied onto the SD card's boot partition by `deploy sdcard`).
# Stage 1 runs from firstrun.sh (kernel command line, no network yet) or from cloud-init runcmd:
# it moves secrets off the FAT partition with the right modes, configures Wi-Fi, and schedules stage 2.
# Stage 2 (coughwatch-firstboot.service) runs once the network is up, or without it for an offline
# install from the wheels on the card, and installs the daemon with deploy/install.sh.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"      # <boot>/coughwatch/deploy
CARD="$(dirname "$HERE")"                                  # <boot>/coughwatch
TARGET="${COUGHWATCH_TARGET:-}"                            # a root prefix, for tests; empty on a Pi
# shellcheck source=/dev/null
. "$CARD/settings.env"

wipe() {  # a secret's bytes are overwritten in place before unlinking: FAT keeps deleted data until reused
  [ -f "$1" ] || return 0
  shred -n 0 -z -u "$1" 2>/dev/null || { dd if=/dev/zero of="$1" bs=1 count="$(stat -c %s "$1")" conv=notrunc \
    2>/dev/null; sync; rm -f "$1"; }
}

stage1() {
  install -d -m 0750 "$TARGET/etc/coughwatch"
  if [ -f "$CARD/secrets.env" ]; then
    install -m 0600 "$CARD/secrets.env" "$TARGET/etc/coughwatch/secrets.env"
    wipe "$CARD/secrets.env"   # secrets do not stay on the world-readable FAT partition
  fi
  if [ -n "${WIFI_SSID:-}" ] && [ -f "$CARD/wifi.psk" ]; then
    local psk conn="$TARGET/etc/NetworkManager/system-connections/coughwatch-wifi.nmconnection"
    psk="$(cat "$CARD/wifi.psk")"
    install -d -m 0700 "$(dirname "$conn")"
    umask 077
    cat >"$conn" <<NM
[connection]
id=coughwatch-wifi
type=wifi
autoconnect=true

[wifi]
mode=infrastructure
ssid=$WIFI_SSID

[wifi-security]
key-mgmt=wpa-psk
psk=$psk

[ipv4]
method=auto

[ipv6]
method=auto
NM
    chmod 0600 "$conn"
    wipe "$CARD/wifi.psk"
    if [ -z "$TARGET" ] && command -v raspi-config >/dev/null && [ -n "${WIFI_COUNTRY:-}" ]; then
      raspi-config nonint do_wifi_country "$WIFI_COUNTRY" || true
    fi
  fi
  install -d "$TARGET/etc/systemd/system/multi-user.target.wants"
  cat >"$TARGET/etc/systemd/system/coughwatch-firstboot.service" <<UNIT
[Unit]
Description=coughwatch first-boot install
Wants=network-online.target
After=network-online.target time-sync.target
ConditionPathExists=$CARD/deploy/install.sh

[Service]
Type=oneshot
ExecStart=/bin/bash $CARD/deploy/firstboot.sh stage2
TimeoutStartSec=1800

[Install]
WantedBy=multi-user.target
UNIT
  ln -sf ../coughwatch-firstboot.service "$TARGET/etc/systemd/system/multi-user.target.wants/coughwatch-firstboot.service"
}

stage2() {
  local args=(--device-id "$DEVICE_ID")
  [ -z "${MQTT_HOST:-}" ] || args+=(--mqtt-host "$MQTT_HOST" --mqtt-port "${MQTT_PORT:-1883}")
  [ "${MQTT_TLS:-false}" != "true" ] || args+=(--mqtt-tls)
  [ -z "${MQTT_USERNAME:-}" ] || args+=(--mqtt-username "$MQTT_USERNAME")
  [ ! -d "$CARD/wheels" ] || args+=(--wheels "$CARD/wheels")
  [ -z "$TARGET" ] || args+=(--root "$TARGET")
  if bash "$CARD/deploy/install.sh" "${args[@]}"; then
    rm -f "$TARGET/etc/systemd/system/multi-user.target.wants/coughwatch-firstboot.service" \
          "$TARGET/etc/systemd/system/coughwatch-firstboot.service"
  else
    echo "coughwatch first boot: install failed; it is retried at the next boot" >&2
    exit 1
  fi
}

case "${1:-stage1}" in
  stage1) stage1 ;;
  stage2) stage2 ;;
  *) echo "usage: firstboot.sh [stage1|stage2]" >&2; exit 2 ;;
esac
