#!/usr/bin/env bash
# Benchmarks the scheduler on the issue-4 workloads and prints one results table.
#
#   scripts/bench.sh                         # drain, saturation, latency on both schemas
#   scripts/bench.sh --workload scale        # 10,000 hosts, 100,000 frames
#   scripts/bench.sh --instances 3 --workload drain,saturation
#   scripts/bench.sh --shrink 24             # tiny farms (CI)
#   scripts/bench.sh --workload quality      # the farm simulator: legacy vs smart policy
#   scripts/bench.sh --workload quality --shrink 4 --assert-targets
#
# It always starts its own throwaway PostgreSQL with pg_stat_statements preloaded (set
# BENCH_DATABASE_URL to use a server you prepared the same way). Release build unless
# PROFILE=debug (CI's smoke run reuses the test build).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_build_tools
if [ -n "${BENCH_DATABASE_URL:-}" ]; then
  export DATABASE_URL="$BENCH_DATABASE_URL"
else
  unset DATABASE_URL
  THROWAWAY_PG_PORT=${THROWAWAY_PG_PORT:-54331} start_throwaway_db
fi
bin_dir=$(build_bins cue-scheduler cue-bench)
log "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(psql "$DATABASE_URL dbname=postgres" -Atc 'show server_version' 2>/dev/null | sed 's/^/PostgreSQL /')"
"$bin_dir/cue-bench" "$@"
