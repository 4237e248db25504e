#!/usr/bin/env bash
# Benchmarks: builds release binaries, runs every workload for herd and for the Python peers
# (scripts/peers.py) in one go, prints one table and writes it, with every raw figure, to
# target/bench/results.json. QUICK=1 runs smaller sizes (a smoke test of the script).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "bench: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
cargo build --release --quiet --bins
exec python3 scripts/bench.py all --out "${OUT:-target/bench}" ${QUICK:+--quick} "$@"
