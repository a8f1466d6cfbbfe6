#!/usr/bin/env bash
# The fault-injection run (issue 12): three scheduler processes on one farm while a simulated
# Cuebot releases frames, moves jobs and changes caps and limits, and instances are killed
# with SIGKILL, COMMITs are cut, RQDs refuse, hang or lose frames and PostgreSQL restarts.
# Caps are sampled during the run; it exits non-zero on any violation and prints a summary.
#   scripts/chaos.sh [--chaos-secs N] [--schema project|real|both] [--out DIR]
# It always uses a throwaway PostgreSQL of its own (it restarts it). PROFILE=debug reuses the
# test build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_build_tools
THROWAWAY_PG_PORT=${CHAOS_PG_PORT:-54331} start_throwaway_db
export CHAOS_PGDATA="$THROWAWAY_PGDATA" CHAOS_PGUSER="$THROWAWAY_OWNER"
bin_dir=$(build_bins cue-scheduler cue-bench)
args=(--workload chaos)
"$bin_dir/cue-bench" "${args[@]}" "$@"
