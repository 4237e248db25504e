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

# The Python package is checked in a venv of its own, installed from its wheel as a user
# would, with maturin, mypy and pytest. Debian's python3 makes a venv with pip only with python3-venv; other
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
    # CPython's own concurrent.futures tests, run against herd.Executor by Debian's Python
    # 3.11 (sdk/python/tests/cpython_conformance.py).
    [ -x /usr/bin/python3.11 ] || echo python3.11
    [ -f /usr/lib/python3.11/test/test_concurrent_futures.py ] || echo libpython3.11-testsuite
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

# The Python package (sdk/python: the herd binary and `import herd`, one wheel built by maturin),
# in the venv made above, which holds only what it installs from PyPI (maturin, mypy, pytest,
# and cloudpickle, which herd.Executor uses when it is installed: its tests send lambdas).
step "Python package: mypy --strict (sdk/python)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check maturin mypy pytest \
    cloudpickle
(cd sdk/python && "../../$venv/bin/python" -m mypy)

# The wheel is built once, from source, as a developer's `pip install ./sdk/python` builds it
# (pip runs maturin, which builds herd._native from crates/python in release into target/, and
# its build script bin/herd in release into target/wheel-herd): no build isolation, so pip uses
# the venv's maturin (found on PATH, as its build backend runs it) and downloads nothing.
step "Python package: building the wheel (pip wheel ./sdk/python)"
rm -rf target/wheels
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation --wheel-dir target/wheels ./sdk/python
wheels=(target/wheels/herd-*.whl)
if [ ${#wheels[@]} -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    echo "test.sh: expected one herd wheel in target/wheels, found: ${wheels[*]}" >&2
    exit 1
fi
wheel=${wheels[0]}

# A machine with no Rust toolchain: a fresh venv, a PATH without cargo or rustc, the wheel
# installed with no index; then the command, the import, and a real run of Python workers.
step "Python package: the wheel on a machine without Rust ($wheel)"
bare=target/pyvenv-bare
rm -rf "$bare"
python3 -m venv "$bare"
nocargo=$PWD/$bare/bin
while IFS= read -r -d: dir; do
    [ -n "$dir" ] && [ ! -e "$dir/cargo" ] && [ ! -e "$dir/rustc" ] && nocargo+=":$dir"
done <<< "$PATH:"
(
    export PATH=$nocargo
    if command -v cargo >/dev/null || command -v rustc >/dev/null; then
        echo "test.sh: cargo or rustc still on PATH for the no-Rust install" >&2
        exit 1
    fi
    pip install --quiet --disable-pip-version-check --no-index "$wheel"
    herd --version
    python -c "import herd; print('import herd:', herd.__version__)"
    # The native serve loop is in the wheel (herd.worker falls back to pure Python without it).
    python -c "import herd._native as n; print('import herd._native:', n.__file__)"
    out=$(printf 'hello\nw\xc3\xb6rld\n' | herd run -w 2 -- python -m herd.examples.upper)
    echo "$out"
    for want in '"seq":0,"ok":true,"output":"HELLO"' '"seq":1,"ok":true,"output":"WÖRLD"'; do
        if [[ $out != *"$want"* ]]; then
            echo "test.sh: herd run with the wheel's Python workers: no record like $want" >&2
            exit 1
        fi
    done
)
rm -rf "$bare"

# The SDK's tests, against the wheel installed in the test venv (its herd binary and package).
step "Python package: pytest (sdk/python/tests)"
# Forced: the package keeps its version number while its code changes, and pip would keep an
# older copy of the same version.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
    --no-deps "$wheel"
set +e
(cd sdk/python && "../../$venv/bin/python" -m pytest -p no:cacheprovider -q tests)
rc=$?
set -e
case $rc in
    0) ;;
    5) echo "test.sh: pytest collected no tests in sdk/python/tests" >&2; exit 1 ;;
    *) echo "test.sh: Python package tests failed (pytest exit $rc)" >&2; exit "$rc" ;;
esac

# CPython's own tests of concurrent.futures against herd.Executor, run by Debian's Python 3.11
# (which has them), with the package from the source tree and the wheel's herd binary. Calls go
# by pickle there (no cloudpickle). Every case passes or is skipped with its reason, listed in
# docs/PYTHON.md ("CPython conformance").
step "Python package: CPython's concurrent.futures tests against herd.Executor"
PYTHONPATH=$PWD/sdk/python/src HERD_BIN=$PWD/$venv/bin/herd \
    /usr/bin/python3.11 sdk/python/tests/cpython_conformance.py
