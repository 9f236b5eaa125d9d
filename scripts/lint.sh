#!/usr/bin/env bash
# Every lint, every target: formatting, then clippy on the lib, bins, tests, examples and
# benches with warnings as errors. CI runs the same lints inside its test build (see .ci/run),
# benches excepted; run this before pushing a change to a bench.
# Usage: scripts/lint.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "lint: clean"
