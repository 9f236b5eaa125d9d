#!/usr/bin/env bash
# Fuzzes the round state machine (coordinator/tests/state_machine_fuzz.rs) far beyond what
# `cargo test` runs: CASES random sequences of up to STEPS messages and clock ticks each, in the
# debug build CI already has (about 40 µs a step), with the invariants checked after every step.
# Usage: scripts/fuzz_state.sh [CASES] [STEPS]   (defaults: 10000 sequences of up to 200 steps,
# about 10^6 steps). Set FLOTILLA_TARGET_DIR to reuse a build elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-10000}"
steps="${2:-200}"
export CARGO_TARGET_DIR="${FLOTILLA_TARGET_DIR:-${CARGO_TARGET_DIR:-target}}"
echo "fuzzing the state machine: $cases sequences of up to $steps steps"
start=$(date +%s)
FUZZ_CASES="$cases" FUZZ_STEPS="$steps" cargo test --locked --workspace --test state_machine_fuzz -- --nocapture
echo "state machine fuzz: $cases sequences, up to $((cases * steps)) steps (between $((steps / 2)) and $steps a sequence; the test prints the exact count), no failure, $(( $(date +%s) - start )) s"
