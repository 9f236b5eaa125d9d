#!/usr/bin/env bash
# The bounded soak test of issue 4: 200 in-process sites, 50 rounds, 10% of the selected
# sites crashing each round. Prints a line per round and a summary with peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p flotilla-tests --test integration soak:: -- --ignored --nocapture 2>&1 | grep -E "^(round|soak:)|test result|panicked"
