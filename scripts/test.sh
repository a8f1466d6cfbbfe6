#!/usr/bin/env bash
# Runs every test of cue-scheduler against a real PostgreSQL (see scripts/lib/common.sh for
# how one is found or started). Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_build_tools
ensure_database
log "building (the first build of the gRPC core takes about 6 minutes on 2 cores)"
cargo build --locked --all-targets
out=$(mktemp)
trap 'rm -f "$out"; stop_throwaway_db' EXIT
set +e
cargo test --locked "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "cue-scheduler tests: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
