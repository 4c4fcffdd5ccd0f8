#!/usr/bin/env bash
# Berth's tests: unit tests of every crate and end-to-end tests that drive the real
# docker CLI against a real daemon running real VMs. Two test threads: each running
# container is a VM, and these machines have two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --locked --workspace --lib --bins --tests --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "all test binaries: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
