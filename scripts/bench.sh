#!/usr/bin/env bash
# Benchmarks: builds release binaries, runs every workload for herd, for the Python peers
# (scripts/peers.py, scripts/bench_peers.py) and for the socket limit (examples/rawsock.rs) in
# one go, prints one table and the "Python peers" section and writes them, with every raw
# figure, to target/bench/results.json. QUICK=1 runs smaller sizes (a smoke test of the script).
# `scripts/bench.sh peers` runs only the "Python peers" section.
# The JetStream rows need nats-server, the Redis rows redis-server (apt-get install nats-server
# redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "bench: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
what=all
if [ "${1:-}" = peers ]; then
    what=peers
    shift
else
    cargo build --release --quiet --bins --example rawsock --example nats_bare --example redis_bare
    # The Python workers' native serve loop (herd._native), in place in sdk/python/src.
    scripts/native-dev.sh >/dev/null
fi

# The Python peers run in a venv of the bench's own: loky, pebble, mpire and joblib from PyPI
# (and numpy, for the vector rows' workers),
# each installed on its own so that one that does not install is named and the others still
# run (bench_peers.py leaves it out, loudly), and herd as a user installs it, from this tree's
# wheel (its binary and package; pip runs maturin, which builds bin/herd in release into target/).
venv=target/benchvenv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
for pkg in maturin cloudpickle loky pebble mpire joblib numpy; do
    "$venv/bin/python" -m pip show --quiet "$pkg" >/dev/null 2>&1 ||
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$pkg" ||
        echo "bench: ***** $pkg DID NOT INSTALL: the rows that need it are left out *****" >&2
done
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-build-isolation --no-deps --force-reinstall ./sdk/python

exec python3 scripts/bench.py "$what" --out "${OUT:-target/bench}" ${QUICK:+--quick} \
    --peers-python "$venv/bin/python" "$@"
