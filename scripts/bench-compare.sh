#!/usr/bin/env bash
# Before/after benchmark in one run: builds release binaries of REV (default: the commit before
# HEAD) in a temporary worktree and of the working tree, then runs the tiny, latency, cpu and
# memory workloads for both, interleaved (scripts/bench.py compare). QUICK=1 for smaller sizes.
#   scripts/bench-compare.sh [REV] [--repeat N]
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-HEAD~1}"
shift || true
command -v /usr/bin/time >/dev/null || { echo "bench: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
base="target/bench-baseline"
tree="$(mktemp -d)"
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git worktree add --detach --quiet "$tree" "$rev"
# The baseline reuses this checkout's target directory for its dependencies.
CARGO_TARGET_DIR="$PWD/target/baseline-build" cargo build --release --quiet --bins --manifest-path "$tree/Cargo.toml"
mkdir -p "$base"
cp target/baseline-build/release/herd target/baseline-build/release/herd-chaos "$base/"
cargo build --release --quiet --bins
python3 scripts/bench.py compare --baseline "$base" --out "${OUT:-target/bench}" ${QUICK:+--quick} "$@"
