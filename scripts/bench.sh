#!/usr/bin/env bash
# Benchmarks: builds release binaries, runs every workload for herd, for the Python peers
# (scripts/peers.py) and for the socket limit (examples/rawsock.rs) in one go, prints one
# table and writes it, with every raw figure, to target/bench/results.json. QUICK=1 runs smaller sizes (a smoke test of the script).
# The JetStream rows need nats-server, the Redis rows redis-server (apt-get install nats-server
# redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "bench: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
cargo build --release --quiet --bins --example rawsock --example nats_bare --example redis_bare
# The Python workers' native serve loop (herd._native), in place in sdk/python/src.
scripts/native-dev.sh >/dev/null
exec python3 scripts/bench.py all --out "${OUT:-target/bench}" ${QUICK:+--quick} "$@"
