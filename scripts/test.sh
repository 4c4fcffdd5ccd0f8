#!/usr/bin/env bash
# Berth's tests: the fast lanes (formatting, lints, unit tests: scripts/lanes.sh), then
# end-to-end tests that drive the real docker CLI against a real daemon running real
# VMs. Two test threads: each running container is a VM, and these machines have two
# cores.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
./scripts/lanes.sh 2>&1 | tee "$log"
cargo build --release --locked
status=0
# Lab attempts given up and booted again (tests/common: run_lab), and suites that failed
# once in the lab and ran again (tests/lab_suites.rs), are reported below.
rm -f target/lab-retries.log
cargo test --release --locked --workspace --test '*' --no-fail-fast -- --test-threads=2 2>&1 | tee -a "$log" || status=$?
# The reliability suite's short form (docs/reliability.md has the long one).
./scripts/reliability.sh --clients 4 --runs 3 --faults 5 || status=1
if [ -s target/lab-retries.log ]; then
    echo "lab retries: $(grep -c '^== ' target/lab-retries.log) (target/lab-retries.log):"
    grep '^== ' target/lab-retries.log
fi
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "all test binaries: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
