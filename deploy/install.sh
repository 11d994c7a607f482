#!/usr/bin/env bash
# Install, upgrade or remove the coughwatch edge daemon on a Raspberry Pi (or any Debian-like system).
# Idempotent: running it twice with the same arguments changes nothing the second time.
#
#   sudo deploy/install.sh --device-id kitchen --mqtt-host broker.lan --mqtt-port 8883 --mqtt-tls \
#        [--mqtt-username pi --mqtt-password-file F]   # or COUGHWATCH_MQTT_PASSWORD, or a prompt
#   sudo deploy/install.sh --upgrade            # newer package and models, config kept
#   sudo deploy/install.sh --uninstall [--purge]  # config and outbox kept unless --purge
#
# The broker flags and the password are those of edge and deploy (README "One vocabulary").
# Offline: --wheels DIR (coughwatch and its dependency wheels) and --models DIR (<name>/student.int8.onnx);
# without --wheels it installs from this checkout, or from the package index.
# --root DIR installs into a throwaway root (tests): no user creation, no service start.
set -euo pipefail

ROOT=""
DEVICE_ID=""
MQTT_ARGS=()
WHEELS=""
MODELS=""
MODE="install"
PURGE=0
START=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHANGED=0

die() { echo "install.sh: error: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --device-id) DEVICE_ID="${2:?--device-id needs a value}"; shift 2 ;;
    --mqtt-host|--mqtt-port|--mqtt-username|--mqtt-password-file) MQTT_ARGS+=("$1=${2?$1 needs a value}"); shift 2 ;;
    --mqtt-tls|--no-mqtt-tls) MQTT_ARGS+=("$1"); shift ;;
    --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
    --models) MODELS="${2:?--models needs a directory}"; shift 2 ;;
    --upgrade) MODE="upgrade"; shift ;;
    --uninstall) MODE="uninstall"; shift ;;
    --purge) PURGE=1; shift ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo), or give --root DIR"
[ "$PURGE" -eq 0 ] || [ "$MODE" = "uninstall" ] || die "--purge only goes with --uninstall"

PREFIX="$ROOT/opt/coughwatch"
VENV="$PREFIX/venv"
CONF_DIR="$ROOT/etc/coughwatch"
STATE_DIR="$ROOT/var/lib/coughwatch"
UNIT="$ROOT/etc/systemd/system/coughwatch-edge.service"
JOURNAL_CONF="$ROOT/etc/systemd/journald.conf.d/coughwatch.conf"

systemctl_() {
  if [ -n "$ROOT" ]; then
    case "$1" in enable|disable) systemctl --root="$ROOT" "$@" >/dev/null 2>&1 || true ;; esac
  elif command -v systemctl >/dev/null; then
    systemctl "$@"
  fi
}

# install_file SRC DEST MODE: copy only when the content or mode differs.
install_file() {
  local src="$1" dest="$2" mode="$3"
  mkdir -p "$(dirname "$dest")"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    return 0
  fi
  install -m "$mode" "$src" "$dest"
  CHANGED=1
  say "wrote ${dest#"$ROOT"}"
}

write_config() {  # through Python: the flags parsed as edge parses them, every value TOML-escaped, checked
  if [ -f "$CONF_DIR/edge.toml" ] && [ -z "$DEVICE_ID" ] && [ "${#MQTT_ARGS[@]}" -eq 0 ]; then
    return 0  # no new settings given: keep the existing file as it is
  fi
  local tmp args=()
  tmp="$(mktemp -d)"
  [ -f "$CONF_DIR/secrets.env" ] || ! [ -t 0 ] || args+=(--prompt)
  if ! "$VENV/bin/python" -m edge.install_config --out "$tmp/edge.toml" --secrets-out "$tmp/secrets.env" \
      "--device-id=$DEVICE_ID" "${args[@]}" "${MQTT_ARGS[@]}"; then
    rm -rf "$tmp"
    exit 2  # edge.install_config said what is wrong
  fi
  install_file "$tmp/edge.toml" "$CONF_DIR/edge.toml" 0640
  [ ! -f "$tmp/secrets.env" ] || install_file "$tmp/secrets.env" "$CONF_DIR/secrets.env" 0600
  rm -rf "$tmp"
}

install_package() {
  if [ ! -x "$VENV/bin/python" ]; then
    command -v python3 >/dev/null || die "python3 is missing (apt-get install python3 python3-venv)"
    python3 -m venv "$VENV" || die "cannot create a virtual environment (apt-get install python3-venv)"
    CHANGED=1
  fi
  if [ -x "$VENV/bin/edge" ] && [ "$MODE" != "upgrade" ]; then
    return 0
  fi
  local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  [ "$MODE" = "upgrade" ] && pip+=(--upgrade)
  if [ -n "$WHEELS" ]; then
    say "installing coughwatch[edge] from $WHEELS (offline)"
    if ! "${pip[@]}" --no-index --find-links "$WHEELS" "coughwatch[edge]"; then
      say "offline install incomplete; trying the package index"
      "${pip[@]}" --find-links "$WHEELS" "coughwatch[edge]" || die "could not install coughwatch[edge]"
    fi
  elif [ -f "$HERE/../pyproject.toml" ]; then
    say "installing coughwatch[edge] from $(cd "$HERE/.." && pwd)"
    "${pip[@]}" "$HERE/..[edge]" || die "could not install coughwatch[edge] from the checkout"
  else
    "${pip[@]}" "coughwatch[edge]" || die "could not install coughwatch[edge] from the package index"
  fi
  CHANGED=1
}

install_models() {
  local src="${MODELS:-$HERE/../models}" name names
  [ -d "$src" ] || die "no models at $src (give --models DIR)"
  names="$("$VENV/bin/python" -m edge.shipped)" || die "the installed package does not name its models"
  for name in $names; do
    [ -f "$src/$name/student.int8.onnx" ] || die "$src/$name/student.int8.onnx is missing"
    if [ -f "$STATE_DIR/models/$name/student.int8.onnx" ] && [ "$MODE" != "upgrade" ]; then
      continue  # a model pushed later (deploy model push) is not overwritten by a plain re-run
    fi
    install_file "$src/$name/student.int8.onnx" "$STATE_DIR/models/$name/student.int8.onnx" 0644
    [ ! -f "$src/$name/MODEL_CARD.md" ] || install_file "$src/$name/MODEL_CARD.md" "$STATE_DIR/models/$name/MODEL_CARD.md" 0644
  done
  install_verifier "$src/cough-verifier"
}

install_verifier() {  # the verifier folder, when the models carry one (edge.shipped.VERIFIER_FILES); used by default ([model] verifier = "auto")
  local src="$1" f
  [ -f "$src/verifier.json" ] || return 0
  if [ -f "$STATE_DIR/models/cough-verifier/verifier.json" ] && [ "$MODE" != "upgrade" ]; then
    return 0  # one retuned for a pushed detector is not overwritten by a plain re-run, as the models are not
  fi
  for f in "$src"/verifier.json "$src"/*.onnx "$src"/*.md; do
    [ -f "$f" ] || continue
    install_file "$f" "$STATE_DIR/models/cough-verifier/$(basename "$f")" 0644
  done
}

ensure_user() {
  [ -z "$ROOT" ] || return 0
  if ! id coughwatch >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /var/lib/coughwatch --shell /usr/sbin/nologin \
      --groups audio coughwatch
    CHANGED=1
    say "created system user coughwatch (group audio)"
  fi
}

do_install() {
  mkdir -p "$CONF_DIR" "$STATE_DIR"
  install_package
  write_config  # refuses a bad value before the user, models or unit are touched
  ensure_user
  install_models
  local tmp
  tmp="$(mktemp)"
  printf '[Journal]\n# coughwatch: bound the journal to spare the SD card\nSystemMaxUse=50M\nRuntimeMaxUse=20M\n' >"$tmp"
  install_file "$tmp" "$JOURNAL_CONF" 0644
  rm -f "$tmp"
  install_file "$HERE/../systemd/coughwatch-edge.service" "$UNIT" 0644
  if [ -z "$ROOT" ]; then
    chown -R coughwatch:coughwatch "$STATE_DIR"
    chgrp coughwatch "$CONF_DIR" "$CONF_DIR/edge.toml"
    chmod 0750 "$CONF_DIR"
  fi
  systemctl_ daemon-reload
  systemctl_ enable coughwatch-edge.service
  if [ "$START" -eq 1 ] && [ -z "$ROOT" ]; then
    if [ "$CHANGED" -eq 1 ]; then systemctl_ restart coughwatch-edge.service; else systemctl_ start coughwatch-edge.service; fi
  fi
  if [ "$CHANGED" -eq 1 ]; then say "installed"; else say "nothing to change"; fi
}

do_uninstall() {
  if [ -z "$ROOT" ]; then systemctl_ stop coughwatch-edge.service 2>/dev/null || true; fi
  systemctl_ disable coughwatch-edge.service
  rm -f "$UNIT" "$JOURNAL_CONF"
  rm -rf "$PREFIX"
  systemctl_ daemon-reload
  if [ "$PURGE" -eq 1 ]; then
    rm -rf "$CONF_DIR" "$STATE_DIR"
    if [ -z "$ROOT" ] && id coughwatch >/dev/null 2>&1; then userdel coughwatch; fi
    say "removed everything (config and outbox included)"
  else
    say "removed; kept ${CONF_DIR#"$ROOT"} and ${STATE_DIR#"$ROOT"} (outbox, models): --purge removes them"
  fi
}

case "$MODE" in
  install|upgrade) do_install ;;
  uninstall) do_uninstall ;;
esac
