#!/usr/bin/env bash
# Runs clippy on every target. The library and the daemon deny clippy::unwrap_used and
# clippy::expect_used (src/lib.rs, src/main.rs), so a new unwrap on a daemon path fails here.
# Usage: scripts/lint.sh [extra cargo clippy args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ensure_build_tools
cargo clippy --version >/dev/null 2>&1 || die "clippy not found: rustup component add clippy"
cargo clippy --locked --all-targets "$@"
