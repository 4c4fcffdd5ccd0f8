#!/usr/bin/env bash
# Berth's tests: unit tests of every crate and end-to-end tests that drive the real
# docker CLI against a real daemon running real VMs. Two test threads: each running
# container is a VM, and these machines have two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
cargo test --release --locked --workspace --no-fail-fast -- --test-threads=2
