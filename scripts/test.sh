#!/usr/bin/env bash
# The project's test command (what CI and the README run): format check, lints, every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# Everything the suite needs is checked before anything runs. The tests that need a package fail
# loudly rather than skip, so a missing one is installed when we can (root with apt-get, as CI
# runs) and otherwise stops the script here, naming it.
if ! have cargo; then
    echo "test.sh: cargo not found: install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

# The Python SDK's tests run in a venv of their own, with the SDK installed from sdk/python as a
# user would, plus pytest. Debian's python3 makes a venv with pip only with python3-venv; other
# systems' can bootstrap pip with ensurepip into a venv made --without-pip.
venv=target/pyvenv
python_venv() {
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        return
    fi
    rm -rf "$venv"
    have python3 || return 1
    python3 -m venv "$venv" >/dev/null 2>&1 && return
    rm -rf "$venv"
    python3 -m venv --without-pip "$venv" >/dev/null 2>&1 &&
        "$venv/bin/python" -m ensurepip --upgrade >/dev/null 2>&1 && return
    rm -rf "$venv"
    return 1
}

# The (Debian) packages this machine lacks, one a line.
missing_packages() {
    # tests/jetstream.rs starts a real nats-server ($NATS_SERVER if set); Debian puts it in
    # /usr/sbin, which a user's PATH may leave out.
    local nats=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
    [ -x "$nats" ] || echo nats-server
    # tests/redis.rs starts a real redis-server ($REDIS_SERVER if set).
    local redis=${REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}
    [ -x "$redis" ] || echo redis-server
    # The MQTT example (examples/mqtt, run by tests/jetstream.rs).
    { have mosquitto_pub && have mosquitto_sub; } || echo mosquitto-clients
    # tests/dashboard.rs loads the dashboard in headless Chromium.
    have chromium || echo chromium
    have python3 || echo python3
    python_venv || echo python3-venv
}

mapfile -t missing < <(missing_packages)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && have apt-get; then
    step "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    mapfile -t missing < <(missing_packages)
fi
if [ ${#missing[@]} -gt 0 ]; then
    {
        echo "test.sh: the tests need these packages, which this machine lacks: ${missing[*]}"
        echo "Install them (Debian: apt-get install ${missing[*]}) and run again; run as root"
        echo "with apt-get, test.sh installs them itself."
    } >&2
    exit 1
fi

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

step "cargo test"
cargo test --workspace --locked
# The tests that switch users (tests/privilege.rs) are #[ignore = "needs root"].
if [ "$(id -u)" = 0 ]; then
    step "cargo test: the tests that need root"
    cargo test --locked --test tests -- --ignored
else
    echo "test.sh: not root, so the tests marked \"needs root\" did not run" >&2
fi

# The Python worker SDK's tests, against the herd binary just built, in the venv made above.
step "Python SDK tests (sdk/python, pytest)"
cargo build --workspace --bins --locked --quiet
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check pytest
# Forced: the package keeps its version number while its code changes, and pip would keep an
# older copy of the same version.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
    --no-deps ./sdk/python
rm -rf sdk/python/build sdk/python/herd_worker.egg-info
set +e
(cd sdk/python && HERD_BIN="$PWD/../../target/debug/herd" \
    "../../$venv/bin/python" -m pytest -p no:cacheprovider -q tests)
rc=$?
set -e
case $rc in
    0) ;;
    5) echo "test.sh: pytest collected no tests in sdk/python/tests" >&2; exit 1 ;;
    *) echo "test.sh: Python SDK tests failed (pytest exit $rc)" >&2; exit "$rc" ;;
esac
