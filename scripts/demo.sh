#!/usr/bin/env bash
# The demo: builds, finds or starts PostgreSQL, seeds a ~200-host farm with simulated RQDs,
# runs the real scheduler until the farm drains, prints a summary and writes demo-out/farm.svg.
#   scripts/demo.sh [--hosts N] [--jobs N] [--frame-secs S] [--failure-rate F] [--out DIR]
# PROFILE=debug reuses the test build instead of building release.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_build_tools
ensure_database
bin_dir=$(build_bins cue-scheduler cue-demo)
"$bin_dir/cue-demo" "$@"
