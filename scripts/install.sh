#!/usr/bin/env bash
# Installs cue-scheduler as a system service: the release binary, a configuration, an
# environment file for the database password, a service account, a log directory, logrotate,
# and the systemd unit (or, without systemd, the SysV init script). Safe to re-run: files that
# match are left alone, and an existing configuration or environment file is never overwritten.
#
# Usage: scripts/install.sh [options]          (see --help)
#   sudo scripts/install.sh                    build, install, systemctl daemon-reload
#   sudo scripts/install.sh --enable           ... and enable + start the service
#   scripts/install.sh --dry-run               show what would be done, change nothing
#   scripts/install.sh --destdir /tmp/pkg      stage everything under /tmp/pkg (packaging)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

NAME=cue-scheduler
SERVICE_USER=cue-scheduler
SERVICE_GROUP=cue-scheduler
CONF_DIR=/etc/cue-scheduler
CONFIG=$CONF_DIR/scheduler.yaml
LOG_DIR=/var/log/cue-scheduler
LOG_FILE=$LOG_DIR/scheduler.log
UNIT=/etc/systemd/system/$NAME.service
INIT_SCRIPT=/etc/init.d/$NAME
LOGROTATE=/etc/logrotate.d/$NAME
SAMPLE_LOG_PATH=/opt/rqd/logs/scheduler.log # logging.path in conf/scheduler.yaml
SHIPPED_BIN=/usr/local/bin/$NAME            # binary path written in conf/cue-scheduler.{service,init}

usage() {
  cat <<EOF
Usage: scripts/install.sh [options]

Builds cue-scheduler (cargo build --release --locked) and installs it as a service.

Options:
  --prefix DIR      install the binary as DIR/bin/$NAME (default: \$PREFIX or /usr/local)
  --destdir DIR     stage every file under DIR instead of /: no user creation, no ownership
                    changes, no systemctl (for packages and tests)
  --dry-run         print what would be done; change nothing
  --enable          enable and start the service (systemctl enable --now, or update-rc.d /
                    chkconfig and the init script); without it nothing is enabled or started
  --skip-build      do not build; use --binary, else an existing release build
  --binary PATH     install this binary (implies --skip-build)
  --init KIND       systemd, sysv, both, or auto (default: systemd if it is running, else
                    sysv; both with --destdir)
  --env-dir DIR     where the environment file goes (default: /etc/sysconfig on RHEL/SUSE-like
                    systems, else /etc/default)
  -h, --help        this text

Installs (under --destdir when given; ENV_DIR as chosen by --env-dir):
  PREFIX/bin/cue-scheduler                    the binary
  /etc/cue-scheduler/scheduler.yaml           configuration from conf/scheduler.yaml, only if absent
  /etc/cue-scheduler/scheduler.yaml.example   the current example, always refreshed
  ENV_DIR/cue-scheduler                       environment (database password), 0600, only if absent
  /var/log/cue-scheduler/                     log directory, owned by cue-scheduler
  /etc/logrotate.d/cue-scheduler              logrotate rules (copytruncate)
  /etc/systemd/system/cue-scheduler.service   systemd unit (hosts running systemd)
  /etc/init.d/cue-scheduler                   SysV init script (other hosts)
Build output goes to \$CARGO_TARGET_DIR (default \$HOME/.cache/cue-scheduler/target).
EOF
}

PREFIX=${PREFIX:-/usr/local}
DESTDIR=
DRY_RUN=0
ENABLE=0
SKIP_BUILD=0
BINARY=
INIT=auto
ENV_DIR=auto

need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix=*) PREFIX=${1#*=} ;;
    --prefix) need_value "$@"; PREFIX=$2; shift ;;
    --destdir=*) DESTDIR=${1#*=} ;;
    --destdir) need_value "$@"; DESTDIR=$2; shift ;;
    --binary=*) BINARY=${1#*=}; SKIP_BUILD=1 ;;
    --binary) need_value "$@"; BINARY=$2; SKIP_BUILD=1; shift ;;
    --init=*) INIT=${1#*=} ;;
    --init) need_value "$@"; INIT=$2; shift ;;
    --env-dir=*) ENV_DIR=${1#*=} ;;
    --env-dir) need_value "$@"; ENV_DIR=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --enable) ENABLE=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option: $1 (see scripts/install.sh --help)" ;;
  esac
  shift
done

# --- checks -------------------------------------------------------------------------------------

case "$PREFIX" in *[[:space:]\#\&\\]*) die "--prefix must not contain spaces, #, & or backslashes" ;; esac
case "$PREFIX" in /*) PREFIX=${PREFIX%/} ;; *) die "--prefix must be an absolute path, got '$PREFIX'" ;; esac
[ -n "$PREFIX" ] || PREFIX=/
case "$INIT" in auto | systemd | sysv | both) ;; *) die "--init must be systemd, sysv, both or auto, got '$INIT'" ;; esac
if [ -n "$DESTDIR" ]; then
  case "$DESTDIR" in /*) ;; *) DESTDIR="$PWD/$DESTDIR" ;; esac
  DESTDIR=${DESTDIR%/}
  [ -n "$DESTDIR" ] || die "--destdir / means a real install: leave --destdir out"
  [ "$ENABLE" = 0 ] || die "--enable cannot be combined with --destdir (nothing is started when staging)"
elif [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "installing into / needs root: run it with sudo, or stage with --destdir DIR, or look first with --dry-run"
fi
if [ -n "$BINARY" ]; then
  case "$BINARY" in /*) ;; *) BINARY="$PWD/$BINARY" ;; esac
  if [ ! -f "$BINARY" ] || [ ! -x "$BINARY" ]; then die "--binary $BINARY is not an executable file"; fi
fi

case "$ENV_DIR" in auto | /*) ENV_DIR=${ENV_DIR%/} ;; *) die "--env-dir must be an absolute path, got '$ENV_DIR'" ;; esac
if [ "$ENV_DIR" = auto ]; then
  ENV_DIR=/etc/default
  if [ -e /etc/redhat-release ] || [ -e /etc/SuSE-release ] ||
    grep -Eqs '^ID(_LIKE)?=.*(rhel|fedora|centos|suse)' /etc/os-release; then
    ENV_DIR=/etc/sysconfig
  fi
fi
ENV_FILE=$ENV_DIR/$NAME

if [ "$INIT" = auto ]; then
  if [ -n "$DESTDIR" ]; then
    INIT=both
  elif [ -d /run/systemd/system ]; then
    INIT=systemd
  else
    INIT=sysv
  fi
fi
want_systemd() { [ "$INIT" = systemd ] || [ "$INIT" = both ]; }
want_sysv() { [ "$INIT" = sysv ] || [ "$INIT" = both ]; }

# Real install (not staged, not dry): only then users, ownership and service managers are touched.
live() { [ -z "$DESTDIR" ] && [ "$DRY_RUN" = 0 ]; }

# --- output helpers -----------------------------------------------------------------------------

say() { printf '%s\n' "install: $*"; }
# Runs a command, or in --dry-run prints it.
act() {
  if [ "$DRY_RUN" = 1 ]; then
    printf 'install: would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}
verb() { # $1 = done form; in --dry-run "would <infinitive>" is printed instead
  if [ "$DRY_RUN" = 1 ]; then printf 'would %s' "$2"; else printf '%s' "$1"; fi
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cue-scheduler-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- file installation --------------------------------------------------------------------------

# make_dir PATH MODE [OWNER:GROUP] [enforce]
# Creates PATH (under DESTDIR) with MODE and OWNER. An existing directory keeps its mode and owner
# unless "enforce" is given (the log directory must stay writable by the service account).
make_dir() {
  local target="$DESTDIR$1" mode=$2 owner=${3:-} enforce=${4:-}
  if [ -d "$target" ]; then
    [ "$enforce" = enforce ] || return 0
  elif [ "$DRY_RUN" = 1 ]; then
    say "would create directory $target (mode $mode${owner:+, owner $owner})"
    return 0
  else
    mkdir -p "$target"
    say "created directory $target (mode $mode)"
  fi
  [ "$DRY_RUN" = 0 ] || return 0
  chmod "$mode" "$target"
  if [ -n "$owner" ] && live; then chown "$owner" "$target"; fi
}

# place SRC DEST MODE [OWNER:GROUP] [keep]
# Copies SRC to DEST (under DESTDIR) atomically. With "keep", an existing DEST is never touched.
# Sets CHANGED=1 when DEST was (or, in --dry-run, would be) written.
CHANGED=0
place() {
  local src=$1 dest=$2 mode=$3 owner=${4:-} keep=${5:-}
  local target="$DESTDIR$dest"
  CHANGED=0
  if [ -e "$target" ] && [ "$keep" = keep ]; then
    say "kept existing $target (never overwritten)"
    return
  fi
  if [ -e "$target" ] && cmp -s "$src" "$target"; then
    say "unchanged $target"
  else
    CHANGED=1
    if [ -e "$target" ]; then
      say "$(verb updated update) $target (mode $mode)"
    else
      say "$(verb installed install) $target (mode $mode)"
    fi
    [ "$DRY_RUN" = 1 ] && return
    mkdir -p "$(dirname "$target")"
    local tmp
    tmp=$(mktemp "$(dirname "$target")/.$(basename "$target").XXXXXX")
    cat "$src" >"$tmp"
    mv -f "$tmp" "$target"
  fi
  [ "$DRY_RUN" = 1 ] && return
  chmod "$mode" "$target"
  if [ -n "$owner" ] && live; then chown "$owner" "$target"; fi
}

# --- 1. the binary ------------------------------------------------------------------------------

find_built_binary() {
  local dir candidates=()
  candidates+=("${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/cue-scheduler/target}/release/$NAME")
  if [ -n "${SUDO_USER:-}" ]; then
    dir=$(getent passwd "$SUDO_USER" | cut -d: -f6 || true)
    [ -n "$dir" ] && candidates+=("$dir/.cache/cue-scheduler/target/release/$NAME")
  fi
  candidates+=("$ROOT/target/release/$NAME")
  for dir in "${candidates[@]}"; do
    if [ -x "$dir" ]; then
      echo "$dir"
      return
    fi
  done
  die "--skip-build: no release binary found (looked in: ${candidates[*]}); pass --binary PATH or drop --skip-build"
}

if [ "$SKIP_BUILD" = 1 ]; then
  [ -n "$BINARY" ] || BINARY=$(find_built_binary)
  say "using existing binary $BINARY"
else
  if ! command -v cargo >/dev/null && [ -n "${SUDO_USER:-}" ]; then
    die "cargo is not on root's PATH: build as $SUDO_USER first (cargo build --release --locked), then run sudo $0 --skip-build"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/cue-scheduler/target}"
    say "would run: cargo build --release --locked (in $ROOT, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  else
    ensure_build_tools
    say "building: cargo build --release --locked (CARGO_TARGET_DIR=$CARGO_TARGET_DIR; the first build takes several minutes)"
    (cd "$ROOT" && cargo build --release --locked)
  fi
  BINARY="$CARGO_TARGET_DIR/release/$NAME"
  if [ "$DRY_RUN" = 0 ] && [ ! -x "$BINARY" ]; then die "the build did not produce $BINARY"; fi
fi
if [ -x "$BINARY" ]; then
  version=$("$BINARY" --version 2>/dev/null | head -n 1 || true)
  [ -n "$version" ] && say "binary reports: $version"
fi

if [ -n "$DESTDIR" ]; then
  say "staging into $DESTDIR (no user, ownership or service-manager changes)"
fi
[ "$DRY_RUN" = 1 ] && say "dry run: nothing will be changed"

BIN_PATH="$PREFIX/bin/$NAME"
[ "$PREFIX" = / ] && BIN_PATH="/bin/$NAME"
BINARY_CHANGED=0
if [ -x "$BINARY" ]; then
  place "$BINARY" "$BIN_PATH" 0755
  BINARY_CHANGED=$CHANGED
else
  say "would install $DESTDIR$BIN_PATH (mode 0755) from $BINARY, once built"
  BINARY_CHANGED=1
fi

# --- 2. service account and directories ---------------------------------------------------------

if [ -n "$DESTDIR" ]; then
  say "skipping account creation: the package must create system user $SERVICE_USER"
elif id -u "$SERVICE_USER" >/dev/null 2>&1; then
  say "system user $SERVICE_USER exists"
else
  nologin=/usr/sbin/nologin
  [ -x "$nologin" ] || nologin=/sbin/nologin
  [ -x "$nologin" ] || nologin=/bin/false
  command -v useradd >/dev/null || [ "$DRY_RUN" = 1 ] || die "useradd not found: create system user $SERVICE_USER by hand and re-run"
  group_opt=(--user-group)
  if getent group "$SERVICE_GROUP" >/dev/null 2>&1; then group_opt=(--gid "$SERVICE_GROUP"); fi
  say "$(verb creating 'create') system user $SERVICE_USER"
  act useradd --system "${group_opt[@]}" --home-dir /nonexistent --no-create-home \
    --shell "$nologin" --comment "OpenCue frame scheduler" "$SERVICE_USER"
fi

make_dir "$CONF_DIR" 0755
make_dir "$ENV_DIR" 0755
make_dir "$LOG_DIR" 0750 "$SERVICE_USER:$SERVICE_GROUP" enforce

# --- 3. configuration and environment -----------------------------------------------------------

# The example, with logging.path moved to our log directory (used when file_appender is true).
sed "s#^\\(  path: \\)$SAMPLE_LOG_PATH\$#\\1$LOG_FILE#" "$ROOT/conf/scheduler.yaml" >"$WORK/scheduler.yaml"
if ! grep -q "^  path: $LOG_FILE\$" "$WORK/scheduler.yaml"; then
  say "note: conf/scheduler.yaml has no 'path: $SAMPLE_LOG_PATH' line; logging.path left as shipped"
fi
place "$WORK/scheduler.yaml" "$CONFIG.example" 0644
place "$WORK/scheduler.yaml" "$CONFIG" 0640 "root:$SERVICE_GROUP" keep

place "$ROOT/conf/$NAME.default" "$ENV_FILE" 0600 root:root keep
if [ -e "$DESTDIR$ENV_FILE" ] && [ "$DRY_RUN" = 0 ]; then
  mode=$(stat -c %a "$DESTDIR$ENV_FILE")
  if [ "$mode" != 600 ]; then
    chmod 0600 "$DESTDIR$ENV_FILE"
    say "tightened $DESTDIR$ENV_FILE from mode $mode to 0600 (it holds the database password)"
  fi
fi

# A log file outside the log directory is read-only under the unit's ProtectSystem=strict.
if [ -r "$DESTDIR$CONFIG" ] && grep -Eq '^[[:space:]]*file_appender:[[:space:]]*true' "$DESTDIR$CONFIG"; then
  path=$(sed -n 's/^[[:space:]]*path:[[:space:]]*//p' "$DESTDIR$CONFIG" | head -n 1 | tr -d "\"'")
  case "$path" in
    "$LOG_DIR"/*) ;;
    *) say "warning: $CONFIG logs to '$path', outside $LOG_DIR: the systemd unit cannot write there (add ReadWritePaths= with systemctl edit $NAME) and logrotate does not rotate it" ;;
  esac
fi

# --- 4. logrotate, unit, init script ------------------------------------------------------------

place "$ROOT/conf/$NAME.logrotate" "$LOGROTATE" 0644

sed "s#$SHIPPED_BIN#$BIN_PATH#g" "$ROOT/conf/$NAME.service" >"$WORK/$NAME.service"
sed "s#$SHIPPED_BIN#$BIN_PATH#g" "$ROOT/conf/$NAME.init" >"$WORK/$NAME.init"
UNIT_CHANGED=0
if want_systemd; then
  place "$WORK/$NAME.service" "$UNIT" 0644
  UNIT_CHANGED=$CHANGED
fi
if want_sysv; then
  place "$WORK/$NAME.init" "$INIT_SCRIPT" 0755
fi

# --- 5. service manager -------------------------------------------------------------------------

if [ -n "$DESTDIR" ]; then
  :
elif [ "$INIT" = systemd ] || [ "$INIT" = both ]; then
  act systemctl daemon-reload
  if [ "$ENABLE" = 1 ]; then
    was_active=0
    if [ "$DRY_RUN" = 0 ] && systemctl is-active --quiet "$NAME" 2>/dev/null; then was_active=1; fi
    act systemctl enable --now "$NAME"
    if [ "$was_active" = 1 ] && { [ "$BINARY_CHANGED" = 1 ] || [ "$UNIT_CHANGED" = 1 ]; }; then
      say "$NAME was already running the previous version: systemctl restart $NAME (drains in-flight launches first)"
    fi
  fi
else
  if [ "$ENABLE" = 1 ]; then
    if command -v update-rc.d >/dev/null; then
      act update-rc.d "$NAME" defaults
    elif command -v chkconfig >/dev/null; then
      act chkconfig --add "$NAME"
    else
      say "warning: neither update-rc.d nor chkconfig found: link $INIT_SCRIPT into your runlevels by hand"
    fi
    act "$INIT_SCRIPT" start
  fi
fi

# --- summary ------------------------------------------------------------------------------------

if [ "$DRY_RUN" = 1 ]; then
  say "dry run finished: nothing was changed"
  exit 0
fi
if [ -n "$DESTDIR" ]; then
  say "staged under $DESTDIR. The package's post-install step must: create system user $SERVICE_USER," \
    "chown $SERVICE_USER:$SERVICE_GROUP $LOG_DIR, chgrp $SERVICE_GROUP $CONFIG, then systemctl daemon-reload."
  exit 0
fi
say "done. Next:"
say "  1. edit $CONFIG (database.db_host, db_name, db_user, scheduler.facility ...)"
say "  2. put the database password in $ENV_FILE: OPENSCHEDULER_DATABASE__DB_PASS='...'"
if [ "$INIT" = sysv ]; then
  [ "$ENABLE" = 1 ] || say "  3. enable and start: update-rc.d $NAME defaults (or chkconfig --add $NAME); $INIT_SCRIPT start"
  say "  logs: $LOG_FILE; reload configuration: $INIT_SCRIPT reload; debug on/off: $INIT_SCRIPT debug"
else
  [ "$ENABLE" = 1 ] || say "  3. enable and start: systemctl enable --now $NAME"
  say "  logs: journalctl -u $NAME (or $LOG_FILE with logging.file_appender: true); reload: systemctl reload $NAME"
fi
