# Shared by scripts/*.sh: toolchain prerequisites and a PostgreSQL to talk to.
# Source it; it defines functions and sets nothing until they are called.

log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The gRPC C core in grpcio-sys builds with cmake; install it when missing (Debian).
ensure_build_tools() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  if ! command -v cmake >/dev/null; then
    log "cmake missing (needed to build gRPC): installing it with apt-get"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake >/dev/null \
        || die "could not install cmake"
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake >/dev/null \
        || die "could not install cmake; install it and re-run"
    fi
  fi
  # Builds are shared between checkouts of this project on one machine (a clean clone then
  # reuses the ~6 minute gRPC build). Override with CARGO_TARGET_DIR.
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/cue-scheduler/target}"
}

pg_bin_dir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && { echo "$dir"; return; }
  command -v initdb >/dev/null && dirname "$(command -v initdb)"
}

pg_reachable() { # $1 = connection string
  if command -v psql >/dev/null; then
    psql "$1" -Atqc 'select 1' >/dev/null 2>&1
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

THROWAWAY_PGDATA=""
stop_throwaway_db() {
  [ -n "$THROWAWAY_PGDATA" ] || return 0
  log "stopping the throwaway PostgreSQL in $THROWAWAY_PGDATA"
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$THROWAWAY_OWNER" -- "$(pg_bin_dir)/pg_ctl" -D "$THROWAWAY_PGDATA" -m fast stop >/dev/null 2>&1
  else
    "$(pg_bin_dir)/pg_ctl" -D "$THROWAWAY_PGDATA" -m fast stop >/dev/null 2>&1
  fi
  rm -rf "$(dirname "$THROWAWAY_PGDATA")"
  THROWAWAY_PGDATA=""
}

# Exports DATABASE_URL: the given one, else 127.0.0.1:5432 (user postgres), else a throwaway
# cluster started with initdb/pg_ctl (as a non-root user) and stopped when the script exits.
ensure_database() {
  if [ -n "${DATABASE_URL:-}" ]; then
    pg_reachable "$DATABASE_URL" || die "DATABASE_URL is set but PostgreSQL does not answer there"
    log "using PostgreSQL at DATABASE_URL"
    return
  fi
  local local_url="host=127.0.0.1 port=5432 user=postgres dbname=postgres"
  if pg_reachable "$local_url"; then
    export DATABASE_URL="host=127.0.0.1 port=5432 user=postgres"
    log "using PostgreSQL on 127.0.0.1:5432"
    return
  fi
  start_throwaway_db
}

# Starts a private PostgreSQL cluster (initdb + pg_ctl, as a non-root user) with
# pg_stat_statements preloaded, exports DATABASE_URL, and stops it when the script exits.
start_throwaway_db() {
  local bin port
  bin=$(pg_bin_dir) || true
  [ -n "$bin" ] && [ -x "$bin/initdb" ] || die "no PostgreSQL reachable and no initdb found: install postgresql or set DATABASE_URL"
  port=${THROWAWAY_PG_PORT:-54329}
  THROWAWAY_PGDATA=$(mktemp -d /tmp/cue-scheduler-pg.XXXXXX)
  THROWAWAY_OWNER=$(id -un)
  local run=()
  if [ "$(id -u)" = 0 ]; then
    THROWAWAY_OWNER=postgres
    id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown "$THROWAWAY_OWNER" "$THROWAWAY_PGDATA"
    run=(runuser -u "$THROWAWAY_OWNER" --)
  fi
  log "starting a throwaway PostgreSQL on 127.0.0.1:$port ($THROWAWAY_PGDATA)"
  "${run[@]}" "$bin/initdb" -D "$THROWAWAY_PGDATA/data" -U postgres --auth=trust >/dev/null || die "initdb failed"
  THROWAWAY_PGDATA="$THROWAWAY_PGDATA/data"
  "${run[@]}" "$bin/pg_ctl" -D "$THROWAWAY_PGDATA" -w -l "$THROWAWAY_PGDATA/server.log" \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_preload_libraries=pg_stat_statements" start >/dev/null \
    || die "pg_ctl start failed (see $THROWAWAY_PGDATA/server.log)"
  trap stop_throwaway_db EXIT
  export DATABASE_URL="host=127.0.0.1 port=$port user=postgres"
}

# Builds the named binaries with the profile in $PROFILE (release unless PROFILE=debug) and
# prints the directory they are in.
build_bins() {
  local profile=${PROFILE:-release} bins=()
  for bin in "$@"; do bins+=(--bin "$bin"); done
  log "building ($profile)"
  if [ "$profile" = release ]; then
    cargo build --locked --release "${bins[@]}" >&2
  else
    cargo build --locked "${bins[@]}" >&2
  fi
  echo "$CARGO_TARGET_DIR/$profile"
}
