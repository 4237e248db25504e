#!/usr/bin/env bash
# The project's test command (what CI and the README run): format check, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        step "installing $c"
        rustup component add "$c"
    fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# tests/jetstream.rs fails (loudly, never skips) without these; .ci/run installs them.
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 ||
    echo "test.sh: the JetStream tests need nats-server: apt-get install nats-server" >&2
command -v mosquitto_pub >/dev/null 2>&1 ||
    echo "test.sh: the MQTT example test needs mosquitto-clients: apt-get install mosquitto-clients" >&2
command -v chromium >/dev/null 2>&1 ||
    echo "test.sh: the dashboard tests need headless Chromium: apt-get install chromium" >&2

step "cargo test"
cargo test --workspace --locked
# The tests that switch users (tests/privilege.rs) are #[ignore = "needs root"].
if [ "$(id -u)" = 0 ]; then
    step "cargo test: the tests that need root"
    cargo test --locked --test tests -- --ignored
else
    echo "test.sh: not root, so the tests marked \"needs root\" did not run" >&2
fi

# The Python worker SDK's tests, against the herd binary just built. They run in a venv of their
# own (target/pyvenv) with the SDK installed from sdk/python as a user would, plus pytest.
# Debian's python3 needs the python3-venv package for `python3 -m venv`: install it when we can
# (CI runs as root), else bootstrap pip with ensurepip into a venv made --without-pip.
python_venv() {
    local venv=$1
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        return
    fi
    rm -rf "$venv"
    if python3 -m venv "$venv" 2>/dev/null; then
        return
    fi
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing python3-venv (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$venv" && return
        rm -rf "$venv"
    fi
    python3 -m venv --without-pip "$venv" && "$venv/bin/python" -m ensurepip --upgrade >/dev/null \
        && return
    echo "test.sh: cannot create a Python venv: install python3-venv (Debian/Ubuntu) or pip" >&2
    exit 1
}

step "Python SDK tests (sdk/python, pytest)"
cargo build --workspace --bins --locked --quiet
python_venv target/pyvenv
target/pyvenv/bin/python -m pip install --quiet --disable-pip-version-check pytest
# Forced: the package keeps its version number while its code changes, and pip would keep an
# older copy of the same version.
target/pyvenv/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall \
    --no-deps ./sdk/python
rm -rf sdk/python/build sdk/python/herd_worker.egg-info
set +e
(cd sdk/python && HERD_BIN="$PWD/../../target/debug/herd" \
    ../../target/pyvenv/bin/python -m pytest -p no:cacheprovider -q tests)
rc=$?
set -e
case $rc in
    0) ;;
    5) echo "test.sh: pytest collected no tests in sdk/python/tests" >&2; exit 1 ;;
    *) echo "test.sh: Python SDK tests failed (pytest exit $rc)" >&2; exit "$rc" ;;
esac
