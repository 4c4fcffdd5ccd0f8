#!/usr/bin/env bash
# The fast lanes, run before the end-to-end tests (scripts/test.sh runs this first):
# formatting, lints, and every crate's unit tests, which need no VM, no guest kernel
# and no network namespace. A style slip costs seconds here, not a whole test run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "lane: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "lane: cargo clippy -D warnings" >&2
cargo clippy --release --locked --workspace --all-targets -- -D warnings
echo "lane: unit tests" >&2
cargo test --release --locked --workspace --lib --bins --no-fail-fast -- --test-threads=2
