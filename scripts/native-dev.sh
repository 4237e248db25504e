#!/usr/bin/env bash
# Builds herd._native (crates/python) in release and puts it in the source tree's package
# (sdk/python/src/herd/_native.abi3.so, ignored by git), for running the SDK's tests with
# PYTHONPATH=sdk/python/src without installing the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet -p herd-python
cp target/release/lib_native.so sdk/python/src/herd/_native.abi3.so
