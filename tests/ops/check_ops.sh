#!/usr/bin/env bash
# Checks the operations files: scripts/install.sh (staged with --destdir, using a stand-in
# binary, so nothing is built and nothing outside temporary directories is touched),
# conf/cue-scheduler.service (systemd-analyze verify, when available), conf/cue-scheduler.init
# (syntax, status codes, and a start/reload/stop cycle of a stand-in daemon) and
# conf/cue-scheduler.logrotate. If a real release binary is around (CUE_SCHEDULER_BIN, else
# $CARGO_TARGET_DIR/release/cue-scheduler), the exit codes the unit relies on are checked too.
#
# Usage: tests/ops/check_ops.sh            last line: "ops checks: N passed, M failed"
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
INSTALL="$ROOT/scripts/install.sh"
UNIT_SRC="$ROOT/conf/cue-scheduler.service"
INIT_SRC="$ROOT/conf/cue-scheduler.init"
LOGROTATE_SRC="$ROOT/conf/cue-scheduler.logrotate"

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'ok    %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$*"; }
skip() { printf 'skip  %s\n' "$*"; }
# Started under nohup, every child inherits SIGHUP ignored, and a non-interactive sh cannot
# trap a signal ignored on entry (POSIX): the stand-in would never see the init script's HUP.
hup_ignored_on_entry() {
  local mask
  mask=$(awk '/^SigIgn:/ { print $2 }' "/proc/$$/status" 2>/dev/null) || return 1
  [ -n "$mask" ] && (( (16#$mask & 1) != 0 ))
}
# check DESCRIPTION COMMAND...: passes when the command succeeds.
check() {
  local desc=$1
  shift
  if "$@"; then pass "$desc"; else fail "$desc"; fi
}
mode_is() { [ "$(stat -c %a "$1" 2>/dev/null)" = "$2" ]; }
has_line() { grep -qxF -- "$2" "$1" 2>/dev/null; }   # file, exact line
contains() { grep -qF -- "$2" "$1" 2>/dev/null; }    # file, substring
absent() { [ ! -e "$1" ]; }
# Process $1 has ended (a zombie counts: some container inits reap late or never).
gone() {
  [ -n "$1" ] || return 1
  [ -r "/proc/$1/stat" ] || return 0
  [ "$(sed -e 's/^.*) //' "/proc/$1/stat" | cut -d ' ' -f 1)" = Z ]
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cue-scheduler-ops.XXXXXX")
chmod 0755 "$TMP" # the account-switching cycles run the stand-in as nobody
STARTED_PIDFILES=()
cleanup() {
  # Stop any stand-in daemon this check started and left behind (by its recorded pid only).
  local f pid
  for f in "${STARTED_PIDFILES[@]}"; do
    pid=$(cat "$f" 2>/dev/null) || continue
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

# A stand-in daemon: answers --version, logs its arguments and the signals it gets, exits 0 on
# SIGTERM (like the real one after its drain). STANDIN_MODE=fail exits 2 at once (bad config);
# STANDIN_MODE=stubborn ignores SIGTERM.
make_standin() { # $1 = path, $2 = version text
  cat >"$1" <<EOF
#!/bin/sh
if [ "\${1:-}" = --version ]; then echo "cue-scheduler $2 (stand-in)"; exit 0; fi
echo "stand-in started: \$*"
case "\${STANDIN_MODE:-}" in
  fail) echo "stand-in: bad configuration"; exit 2 ;;
  stubborn) trap '' TERM ;;
  *) trap 'echo "stand-in: SIGTERM"; exit 0' TERM ;;
esac
trap 'echo "stand-in: SIGHUP"' HUP
trap 'echo "stand-in: SIGUSR1"' USR1
while :; do sleep 1 & wait \$! 2>/dev/null; done
EOF
  chmod 0755 "$1"
}
make_standin "$TMP/cue-scheduler" 1.0.0

if command -v shellcheck >/dev/null 2>&1; then
  echo "== shellcheck"
  check "shellcheck: scripts/install.sh" shellcheck -x -S warning "$INSTALL"
  check "shellcheck: conf/cue-scheduler.init (POSIX sh)" shellcheck -s sh -S warning "$INIT_SRC"
  check "shellcheck: conf/cue-scheduler.default (POSIX sh)" shellcheck -s sh -S warning "$ROOT/conf/cue-scheduler.default"
  check "shellcheck: tests/ops/check_ops.sh" shellcheck -S warning "${BASH_SOURCE[0]}"
else
  skip "shellcheck not installed: scripts not linted"
fi

echo "== scripts/install.sh"
check "install.sh parses (bash -n)" bash -n "$INSTALL"
check "install.sh is executable" test -x "$INSTALL"
check "install.sh uses set -euo pipefail" contains "$INSTALL" "set -euo pipefail"

# Stand-ins for the commands a staged install must never run: each records its call.
mkdir -p "$TMP/fakebin"
for tool in useradd adduser groupadd chown chgrp systemctl update-rc.d chkconfig service; do
  printf '#!/bin/sh\necho "%s $*" >>"%s"\n' "$tool" "$TMP/forbidden.calls" >"$TMP/fakebin/$tool"
  chmod 0755 "$TMP/fakebin/$tool"
done
D="$TMP/stage"
out="$TMP/install1.out"
PATH="$TMP/fakebin:$PATH" "$INSTALL" --destdir "$D" --skip-build --binary "$TMP/cue-scheduler" >"$out" 2>&1
check "staged install exits 0" test $? = 0
for entry in \
  "usr/local/bin/cue-scheduler 755" \
  "etc/cue-scheduler/scheduler.yaml 640" \
  "etc/cue-scheduler/scheduler.yaml.example 644" \
  "etc/logrotate.d/cue-scheduler 644" \
  "etc/systemd/system/cue-scheduler.service 644" \
  "etc/init.d/cue-scheduler 755" \
  "var/log/cue-scheduler 750" \
  "etc/cue-scheduler 755"; do
  # shellcheck disable=SC2086 # "path mode" pairs
  set -- $entry
  check "staged /$1 exists with mode $2" mode_is "$D/$1" "$2"
done
ENVFILE=
for f in "$D/etc/default/cue-scheduler" "$D/etc/sysconfig/cue-scheduler"; do
  if [ -e "$f" ]; then ENVFILE=$f; break; fi
done
check "staged environment file exists (/etc/default or /etc/sysconfig)" test -n "$ENVFILE"
check "environment file has mode 600" mode_is "$ENVFILE" 600
check "environment file documents OPENSCHEDULER_DATABASE__DB_PASS" contains "$ENVFILE" "OPENSCHEDULER_DATABASE__DB_PASS"
check "environment file sets no OPENSCHEDULER_* variable by default" \
  bash -c "! grep -Eq '^[[:space:]]*OPENSCHEDULER_' '$ENVFILE'"
check "staged unit is conf/cue-scheduler.service (default prefix)" cmp -s "$UNIT_SRC" "$D/etc/systemd/system/cue-scheduler.service"
check "staged init script is conf/cue-scheduler.init (default prefix)" cmp -s "$INIT_SRC" "$D/etc/init.d/cue-scheduler"
check "staged logrotate rules are conf/cue-scheduler.logrotate" cmp -s "$LOGROTATE_SRC" "$D/etc/logrotate.d/cue-scheduler"
check "staged environment file is conf/cue-scheduler.default" cmp -s "$ROOT/conf/cue-scheduler.default" "$ENVFILE"
check "staged binary is the given one" cmp -s "$TMP/cue-scheduler" "$D/usr/local/bin/cue-scheduler"
check "installed configuration logs to /var/log/cue-scheduler/scheduler.log" \
  has_line "$D/etc/cue-scheduler/scheduler.yaml" "  path: /var/log/cue-scheduler/scheduler.log"
check "installed configuration is otherwise the example" \
  bash -c "diff '$ROOT/conf/scheduler.yaml' '$D/etc/cue-scheduler/scheduler.yaml' | grep -c '^[<>]' | grep -qx 2"
check "unit runs /usr/local/bin/cue-scheduler" contains "$D/etc/systemd/system/cue-scheduler.service" "ExecStart=/usr/local/bin/cue-scheduler "
check "init script runs /usr/local/bin/cue-scheduler" has_line "$D/etc/init.d/cue-scheduler" "DAEMON=/usr/local/bin/cue-scheduler"
check "staging creates no user, changes no owner, calls no service manager" absent "$TMP/forbidden.calls"
check "staging says the package must create the account" contains "$out" "skipping account creation"

# Second run: the operator edited the configuration and the environment file (and loosened
# its mode); a new binary comes along.
echo "# operator edit" >>"$D/etc/cue-scheduler/scheduler.yaml"
echo "OPENSCHEDULER_DATABASE__DB_PASS='s3cret'" >>"$ENVFILE"
chmod 0644 "$ENVFILE"
make_standin "$TMP/cue-scheduler" 2.0.0
out="$TMP/install2.out"
"$INSTALL" --destdir "$D" --skip-build --binary "$TMP/cue-scheduler" >"$out" 2>&1
check "second staged install exits 0" test $? = 0
check "second run keeps the operator's configuration" contains "$D/etc/cue-scheduler/scheduler.yaml" "# operator edit"
check "second run keeps the environment file" contains "$ENVFILE" "s3cret"
check "second run restores mode 600 on the environment file" mode_is "$ENVFILE" 600
check "second run says the configuration was kept" contains "$out" "kept existing $D/etc/cue-scheduler/scheduler.yaml"
check "second run replaces the binary" cmp -s "$TMP/cue-scheduler" "$D/usr/local/bin/cue-scheduler"
check "second run reports the binary update" contains "$out" "updated $D/usr/local/bin/cue-scheduler"

out="$TMP/install3.out"
"$INSTALL" --destdir "$D" --skip-build --binary "$TMP/cue-scheduler" >"$out" 2>&1
check "third staged install exits 0" test $? = 0
check "third run changes nothing (idempotent)" bash -c "! grep -Eq '(installed|updated|created directory) ' '$out'"

out="$TMP/dry.out"
"$INSTALL" --dry-run --destdir "$TMP/dry" --skip-build --binary "$TMP/cue-scheduler" >"$out" 2>&1
check "--dry-run exits 0" test $? = 0
check "--dry-run writes nothing" absent "$TMP/dry"
check "--dry-run tells what it would do" contains "$out" "would install $TMP/dry/usr/local/bin/cue-scheduler"

out="$TMP/dry-live.out"
rm -f "$TMP/forbidden.calls"
PATH="$TMP/fakebin:$PATH" "$INSTALL" --dry-run --init systemd --enable --skip-build --binary "$TMP/cue-scheduler" >"$out" 2>&1
check "--dry-run of a real install exits 0" test $? = 0
check "--dry-run of a real install calls nothing" absent "$TMP/forbidden.calls"
check "--dry-run shows systemctl daemon-reload" contains "$out" "would run: systemctl daemon-reload"
check "--dry-run --enable shows systemctl enable --now" contains "$out" "would run: systemctl enable --now cue-scheduler"
out="$TMP/dry-live2.out"
PATH="$TMP/fakebin:$PATH" "$INSTALL" --dry-run --init systemd --skip-build --binary "$TMP/cue-scheduler" >"$out" 2>&1
check "without --enable nothing is enabled or started" bash -c "! grep -q 'enable' '$out'"

mkdir -p "$TMP/target/release"
cp "$TMP/cue-scheduler" "$TMP/target/release/cue-scheduler"
CARGO_TARGET_DIR="$TMP/target" "$INSTALL" --destdir "$TMP/found" --skip-build >"$TMP/found.out" 2>&1
check "--skip-build finds the binary in \$CARGO_TARGET_DIR/release" cmp -s "$TMP/cue-scheduler" "$TMP/found/usr/local/bin/cue-scheduler"

P="$TMP/prefix"
"$INSTALL" --destdir "$P" --prefix /opt/cue --init systemd --env-dir /etc/sysconfig \
  --skip-build --binary "$TMP/cue-scheduler" >"$TMP/prefix.out" 2>&1
check "--prefix /opt/cue install exits 0" test $? = 0
check "--prefix puts the binary in PREFIX/bin" test -x "$P/opt/cue/bin/cue-scheduler"
check "--prefix is written into the unit" contains "$P/etc/systemd/system/cue-scheduler.service" "ExecStart=/opt/cue/bin/cue-scheduler "
check "--init systemd installs no init script" absent "$P/etc/init.d/cue-scheduler"
check "--env-dir /etc/sysconfig is honoured" mode_is "$P/etc/sysconfig/cue-scheduler" 600
S="$TMP/sysv"
"$INSTALL" --destdir "$S" --prefix /opt/cue --init sysv --skip-build --binary "$TMP/cue-scheduler" >"$TMP/sysv.out" 2>&1
check "--init sysv installs no unit" absent "$S/etc/systemd/system/cue-scheduler.service"
check "--prefix is written into the init script" has_line "$S/etc/init.d/cue-scheduler" "DAEMON=/opt/cue/bin/cue-scheduler"

"$INSTALL" --no-such-option >"$TMP/bad.out" 2>&1
check "an unknown option is refused" test $? != 0
"$INSTALL" --destdir "$TMP/x" --enable --skip-build --binary "$TMP/cue-scheduler" >"$TMP/bad.out" 2>&1
check "--enable with --destdir is refused" test $? != 0
"$INSTALL" --destdir "$TMP/x" --binary "$TMP/does-not-exist" >"$TMP/bad.out" 2>&1
check "a missing --binary is refused" test $? != 0
"$INSTALL" --destdir "$TMP/x" --prefix relative/dir --skip-build --binary "$TMP/cue-scheduler" >"$TMP/bad.out" 2>&1
check "a relative --prefix is refused" test $? != 0
check "refused runs write nothing" absent "$TMP/x"
"$INSTALL" --help >"$TMP/help.out" 2>&1
check "--help exits 0 and lists --destdir" contains "$TMP/help.out" "--destdir"

echo "== conf/cue-scheduler.service"
UNIT="$D/etc/systemd/system/cue-scheduler.service"
# shellcheck disable=SC2016 # literal $MAINPID
for line in \
  "Type=simple" "User=cue-scheduler" "After=network-online.target" "Wants=network-online.target" \
  "Environment=OPENCUE_SCHEDULER_CONFIG=/etc/cue-scheduler/scheduler.yaml" \
  "EnvironmentFile=-/etc/default/cue-scheduler" "EnvironmentFile=-/etc/sysconfig/cue-scheduler" \
  'ExecReload=/bin/kill -HUP $MAINPID' "KillSignal=SIGTERM" "TimeoutStopSec=30" \
  "Restart=on-failure" "RestartSec=5" "RestartPreventExitStatus=2" "NoNewPrivileges=yes" \
  "ProtectSystem=strict" "ReadWritePaths=-/var/log/cue-scheduler" "PrivateTmp=yes" \
  "WantedBy=multi-user.target"; do
  check "unit has $line" has_line "$UNIT" "$line"
done
# shellcheck disable=SC2016 # literal ${...}
check "unit passes --config \${OPENCUE_SCHEDULER_CONFIG}" contains "$UNIT" 'cue-scheduler --config ${OPENCUE_SCHEDULER_CONFIG}'
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify needs the ExecStart binary to exist: point a copy at the staged stand-in.
  mkdir -p "$TMP/verify"
  sed "s#/usr/local/bin/cue-scheduler#$D/usr/local/bin/cue-scheduler#" "$UNIT" >"$TMP/verify/cue-scheduler.service"
  verify_out=$(cd "$TMP/verify" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify ./cue-scheduler.service 2>&1)
  verify_rc=$?
  check "systemd-analyze verify accepts the unit" test "$verify_rc" = 0
  # Unknown or misspelt keys are only warnings (exit 0): any line about our unit counts.
  if printf '%s\n' "$verify_out" | grep -q 'cue-scheduler'; then
    fail "systemd-analyze verify has no warnings for the unit"
    printf '%s\n' "$verify_out" | sed 's/^/      /'
  else
    pass "systemd-analyze verify has no warnings for the unit"
  fi
else
  skip "systemd-analyze not installed: unit not verified"
fi

echo "== conf/cue-scheduler.logrotate"
LR="$D/etc/logrotate.d/cue-scheduler"
check "logrotate rules cover /var/log/cue-scheduler/*.log" contains "$LR" "/var/log/cue-scheduler/*.log {"
check "logrotate uses copytruncate" bash -c "grep -Eq '^[[:space:]]*copytruncate[[:space:]]*$' '$LR'"
check "logrotate rotates as the service account" bash -c "grep -Eq '^[[:space:]]*su cue-scheduler cue-scheduler$' '$LR'"
if command -v logrotate >/dev/null 2>&1; then
  # -d only parses and plans; the account may not exist here, so run as ourselves.
  sed "s/su cue-scheduler cue-scheduler/su $(id -un) $(id -gn)/" "$LR" >"$TMP/logrotate.conf"
  logrotate -d -s "$TMP/logrotate.state" "$TMP/logrotate.conf" >"$TMP/logrotate.out" 2>&1
  lr_rc=$?
  check "logrotate -d parses the rules" test "$lr_rc" = 0
  check "logrotate -d reports no error" bash -c "! grep -qi 'error' '$TMP/logrotate.out'"
else
  skip "logrotate not installed: rules not parsed"
fi

echo "== conf/cue-scheduler.init"
INIT="$D/etc/init.d/cue-scheduler"
check "init script parses (bash -n)" bash -n "$INIT"
if command -v dash >/dev/null 2>&1; then
  check "init script parses as POSIX sh (dash -n)" dash -n "$INIT"
fi
check "init script has an LSB header" bash -c "grep -q '^### BEGIN INIT INFO' '$INIT' && grep -q '^# Provides: *cue-scheduler' '$INIT' && grep -q '^### END INIT INFO' '$INIT'"
if [ -e /run/cue-scheduler.pid ] || [ -e /var/run/cue-scheduler.pid ]; then
  skip "a cue-scheduler pid file exists on this host: the installed script's status not probed"
else
  "$INIT" status >"$TMP/status.out" 2>&1
  rc=$?
  check "status of a stopped service exits 3 (got $rc)" test "$rc" = 3
  check "status says not running" contains "$TMP/status.out" "not running"
fi
"$INIT" bogus-action >/dev/null 2>&1
check "an unknown action exits 2" test $? = 2

# A full cycle with the stand-in, through a copy of the script that reads its settings from a
# file of ours (daemon, pid file, log file, account) instead of /etc/default.
# cycle LABEL LAUNCHER RUN_USER RUN_GROUP
cycle() {
  local label=$1 launcher=$2 user=$3 group=$4 dir="$TMP/cycle-$1" rc pid
  mkdir -p "$dir"
  chmod 0755 "$dir"
  make_standin "$dir/cue-scheduler" 3.0.0
  echo "logging: {}" >"$dir/scheduler.yaml"
  chmod 0644 "$dir/scheduler.yaml"
  cat >"$dir/defaults" <<EOF
DAEMON=$dir/cue-scheduler
OPENCUE_SCHEDULER_CONFIG=$dir/scheduler.yaml
CUE_SCHEDULER_OPTS="--facility lax --dry-run"
RUN_USER=$user
RUN_GROUP=$group
PIDFILE=$dir/cue-scheduler.pid
LOG_FILE=$dir/log/scheduler.log
START_WAIT=1
STOP_TIMEOUT=3
USE_START_STOP_DAEMON=$launcher
EOF
  sed "s#^for defaults in .*; do\$#for defaults in $dir/defaults; do#" "$INIT" >"$dir/init"
  chmod 0755 "$dir/init"
  STARTED_PIDFILES+=("$dir/cue-scheduler.pid")
  local log="$dir/log/scheduler.log" init="$dir/init"

  "$init" start >"$dir/out" 2>&1
  check "[$label] start exits 0" test $? = 0
  pid=$(cat "$dir/cue-scheduler.pid" 2>/dev/null)
  check "[$label] start writes the pid file" test -n "$pid"
  "$init" status >/dev/null 2>&1
  check "[$label] status of a running service exits 0" test $? = 0
  if [ -n "$pid" ]; then
    check "[$label] daemon runs as $user" test "$(ps -o user= -p "$pid" 2>/dev/null | tr -d ' ')" = "$user"
  fi
  check "[$label] daemon got --config and the extra flags" \
    contains "$log" "stand-in started: --config $dir/scheduler.yaml --facility lax --dry-run"
  "$init" start >"$dir/out" 2>&1
  rc=$?
  check "[$label] start when running exits 0 and says so" bash -c "[ $rc = 0 ] && grep -q 'already running' '$dir/out'"
  check "[$label] ... and keeps the same pid" test "$(cat "$dir/cue-scheduler.pid" 2>/dev/null)" = "$pid"
  "$init" reload >/dev/null 2>&1
  check "[$label] reload exits 0" test $? = 0
  "$init" debug >/dev/null 2>&1
  sleep 1
  if hup_ignored_on_entry; then
    skip "[$label] reload sends SIGHUP: this run was started with SIGHUP ignored (nohup?), which the sh stand-in cannot trap"
  else
    check "[$label] reload sends SIGHUP" contains "$log" "stand-in: SIGHUP"
  fi
  check "[$label] debug sends SIGUSR1" contains "$log" "stand-in: SIGUSR1"
  "$init" stop >"$dir/out" 2>&1
  check "[$label] stop exits 0" test $? = 0
  check "[$label] stop sends SIGTERM" contains "$log" "stand-in: SIGTERM"
  check "[$label] stop removes the pid file" absent "$dir/cue-scheduler.pid"
  "$init" status >/dev/null 2>&1
  check "[$label] status after stop exits 3" test $? = 3
  "$init" stop >/dev/null 2>&1
  check "[$label] stop when stopped exits 0" test $? = 0
  "$init" reload >/dev/null 2>&1
  check "[$label] reload when stopped exits 7" test $? = 7
  "$init" restart >/dev/null 2>&1
  check "[$label] restart from stopped exits 0" test $? = 0
  "$init" stop >/dev/null 2>&1

  echo 999999 >"$dir/cue-scheduler.pid"
  "$init" status >/dev/null 2>&1
  check "[$label] status with a stale pid file exits 1" test $? = 1
  "$init" start >/dev/null 2>&1
  check "[$label] start replaces a stale pid file" test $? = 0
  "$init" stop >/dev/null 2>&1

  STANDIN_MODE=fail "$init" start >"$dir/out" 2>&1
  rc=$?
  check "[$label] start of a daemon that exits at once fails" test "$rc" != 0
  check "[$label] ... shows the daemon's last words" contains "$dir/out" "bad configuration"
  check "[$label] ... and leaves no pid file" absent "$dir/cue-scheduler.pid"

  STANDIN_MODE=stubborn "$init" start >/dev/null 2>&1
  pid=$(cat "$dir/cue-scheduler.pid" 2>/dev/null)
  "$init" stop >"$dir/out" 2>&1
  check "[$label] stop of a daemon ignoring SIGTERM ends it after STOP_TIMEOUT" gone "$pid"
  check "[$label] ... and says it used SIGKILL" contains "$dir/out" "did not stop within"

  mv "$dir/scheduler.yaml" "$dir/scheduler.yaml.away"
  "$init" start >/dev/null 2>&1
  check "[$label] start without a configuration file exits 6" test $? = 6
  mv "$dir/scheduler.yaml.away" "$dir/scheduler.yaml"
}

me_user=$(id -un)
me_group=$(id -gn)
if command -v start-stop-daemon >/dev/null 2>&1 && start-stop-daemon --help 2>&1 | grep -q -- --output; then
  cycle ssd auto "$me_user" "$me_group"
else
  skip "start-stop-daemon (with --output) not available: its launch path not exercised"
fi
cycle builtin no "$me_user" "$me_group"
if [ "$(id -u)" = 0 ] && id -u nobody >/dev/null 2>&1; then
  nobody_group=$(id -gn nobody)
  if command -v start-stop-daemon >/dev/null 2>&1 && start-stop-daemon --help 2>&1 | grep -q -- --output; then
    cycle ssd-nobody auto nobody "$nobody_group"
  fi
  cycle builtin-nobody no nobody "$nobody_group"
else
  skip "not root (or no user nobody): switching accounts not exercised"
fi

echo "== the daemon's side of the contract"
BIN=${CUE_SCHEDULER_BIN:-${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/cue-scheduler/target}/release/cue-scheduler}
if [ -x "$BIN" ]; then
  "$BIN" --version >/dev/null 2>&1
  check "cue-scheduler --version exits 0" test $? = 0
  env -u HOME OPENCUE_SCHEDULER_CONFIG="$TMP/no-such.yaml" "$BIN" >/dev/null 2>&1
  check "a missing configuration file exits 2 (unit: RestartPreventExitStatus=2)" test $? = 2
  "$BIN" --no-such-flag >/dev/null 2>&1
  check "an unknown flag exits 2" test $? = 2
  env -u HOME OPENSCHEDULER_NO_SUCH__KEY=1 OPENCUE_SCHEDULER_CONFIG="$D/etc/cue-scheduler/scheduler.yaml" "$BIN" >/dev/null 2>&1
  check "an unknown OPENSCHEDULER_* variable exits 2" test $? = 2
  "$BIN" --config "$D/etc/cue-scheduler/scheduler.yaml.example" --help >/dev/null 2>&1
  check "--help exits 0" test $? = 0
else
  skip "no release binary at $BIN (set CUE_SCHEDULER_BIN): exit codes not checked"
fi

echo "ops checks: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
