#!/usr/bin/env bash
# Fuzzes every reader of untrusted input (protocol messages, update streams, CSV files) with
# property-based tests, far beyond the 256 cases per property that `cargo test` runs.
# Usage: scripts/fuzz.sh [CASES_PER_PROPERTY] [SECONDS_LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-20000}"
limit="${2:-900}"
echo "fuzzing with $cases cases per property (time limit ${limit}s)"
PROPTEST_CASES="$cases" timeout "$limit" cargo test --locked -p flotilla-common --test fuzz -- --nocapture
echo "fuzz: $cases cases x 5 properties, no panic"
